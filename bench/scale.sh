# bench/run section "scale": costs that grow with the configuration and the state, not
# with the traffic. Sourced by bench/run. tandem and HAProxy, one thread each on the
# proxy's core (nginx has no counterpart to most of these).
#
# Rows (the full run's counts; --quick uses 100 services, 1,000 backends, 100,000
# sticky entries, 1,000 checked backends):
#  - 1,000 tcp services (127.0.0.1:22000...) with 10,000 backends in all (127.1.X.Y:23100,
#    one nginx on 0.0.0.0:23100 serves them all): RSS once started, and a reload that
#    adds one service, timed from the reload command (tandem ctl reload; HAProxy -W, its
#    master signalled with USR2) until the new service accepts, while a client opens
#    connection after connection to the first service, counting the failed ones;
#  - a sticky table of 1,000,000 client addresses: RSS per entry (tandem loads them from
#    a generated global.state_dir/sticky.state; HAProxy gets them through its runtime API,
#    `set table`), then a second node joins ([sync] / `peers`): time until it holds the
#    whole table, and the bytes both ways on the sync connection (ss bytes_received);
#  - tcp health checks of 10,000 backends every 2 s: the proxy's CPU time per second.
if [ "$quick" = 1 ]; then
    sc_services=100 sc_backends=1000 sc_entries=100000 sc_checked=1000 sc_window=2 sc_warm=2.5
else
    sc_services=1000 sc_backends=10000 sc_entries=1000000 sc_checked=10000 sc_window=10 sc_warm=4.5
fi
sc_base=22000 sc_be=23100 sc_sticky_port=23131
sc=$work/scale
mkdir -p "$sc"
sc_py() { python3 bench/scale.py "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# Starts the proxy command given (pinned like the other sections' proxies) and sets
# $contender_pid.
sc_start() {
    local log=$1
    shift
    RUST_LOG=warn TANDEM_ALLOW_ROOT=1 pin_proxy "$@" >"$log" 2>&1 &
    contender_pid=$!
    pids+=("$contender_pid")
}
sc_stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
# Waits until 127.0.0.1:PORT accepts (every 5 ms, for at most TIMEOUT seconds). Bash
# itself connects (/dev/tcp): a Python poller's own start (100-400 ms, its imports)
# would count in the times measured.
sc_wait_port() {
    local port=$1 end=$(($(now_ms) + $2 * 1000))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if [ "$(now_ms)" -ge "$end" ]; then
            echo "127.0.0.1:$port does not accept after $2 s" >&2
            return 1
        fi
        sleep 0.005
    done
}

# The backends: one nginx on every 127.x address of port $sc_be.
mkdir -p "$sc/be"
cat > "$sc/be/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $sc/be/nginx.pid;
error_log $sc/be/error.log;
events { worker_connections 10000; }
http {
  access_log off;
  client_body_temp_path $sc/be/body; proxy_temp_path $sc/be/proxy;
  fastcgi_temp_path $sc/be/fcgi; uwsgi_temp_path $sc/be/uwsgi; scgi_temp_path $sc/be/scgi;
  server { listen 0.0.0.0:$sc_be; location / { return 200 "hello from the backend\n"; } }
}
EOF
taskset -c "$load_cpu" nginx -e "$sc/be/error.log" -p "$sc/be" -c "$sc/be/nginx.conf" & pids+=($!)
wait_port $sc_be

# --- many services and backends: RSS and reload --------------------------------------
sc_last=$((sc_base + sc_services - 1)) sc_marker=$((sc_base + sc_services))
for who in tandem haproxy; do
    echo "  $who: $sc_services services, $sc_backends backends"
    rm -f "$sc/stop"
    # Timed from the proxy's start (the configuration is written before).
    if [ "$who" = tandem ]; then
        sc_py tandem-conf "$sc/big.toml" $sc_services $sc_backends $sc_base $sc_be "$sc/tandem.sock"
        t0=$(now_ms)
        sc_start "$sc/tandem.log" "$tandem" run --config "$sc/big.toml"
    else
        sc_py haproxy-conf "$sc/big.cfg" $sc_services $sc_backends $sc_base $sc_be
        t0=$(now_ms)
        sc_start "$sc/haproxy.log" haproxy -W -db -f "$sc/big.cfg"
    fi
    sc_wait_port $sc_last 60
    record "$who" sc_start_ms $(($(now_ms) - t0))
    sleep 1
    # HAProxy: the master and its worker.
    sc_procs=("$contender_pid" $(pgrep -P "$contender_pid" || true))
    record "$who" sc_rss_mib "$(python3 -c "print($(python3 bench/lib.py rss "${sc_procs[@]}") / 1024)")"
    taskset -c "$load_cpu" python3 bench/scale.py stream $sc_base "$sc/stop" "$sc/stream.txt" &
    sc_stream=$!
    sleep 0.5
    sc_reloader=""
    if [ "$who" = tandem ]; then
        sc_py tandem-conf "$sc/big.toml" $sc_services $sc_backends $sc_base $sc_be "$sc/tandem.sock" extra
        t0=$(now_ms)
        TANDEM_SOCKET="$sc/tandem.sock" "$tandem" ctl reload >/dev/null &
        sc_reloader=$!
    else
        sc_py haproxy-conf "$sc/big.cfg" $sc_services $sc_backends $sc_base $sc_be extra
        t0=$(now_ms)
        kill -USR2 "$contender_pid"
    fi
    sc_wait_port $sc_marker 60
    record "$who" sc_reload_ms $(($(now_ms) - t0))
    [ -z "$sc_reloader" ] || wait "$sc_reloader" || true
    sleep 1
    touch "$sc/stop"
    wait "$sc_stream" || true
    read -r ok failed < "$sc/stream.txt"
    record "$who" sc_reload_failed "$failed"
    echo "    reload: $ok connections served, $failed failed"
    sc_stop "$contender_pid"
    sleep 0.5
done

# --- sticky table: RSS per entry, bulk sync -----------------------------------------
head -c 32 /dev/urandom | base64 > "$sc/sync.key"
# Node a (127.0.0.2) holds the table; node b (127.0.0.1, the lower address, so it is b
# that connects, at once) joins.
sc_sticky_conf() {
    local node=$1 me=$2 peer=$3 admin=$4
    mkdir -p "$sc/state-$node"
    cat > "$sc/sticky-$node.toml" <<EOF
[global]
name = "scale-$node"
control_socket = "$sc/sticky-$node.sock"
admin_listen = "127.0.0.1:$admin"
state_dir = "$sc/state-$node"
threads = 1
log_format = "json"

[[pool]]
name = "st"
sticky = { key = "source-ip", ttl = "2h", max_entries = $((sc_entries * 11 / 10)) }
backends = [$(for b in $(seq 1 10); do printf '{ address = "127.1.0.%d:%d" }, ' $((b + 1)) $sc_be; done)]

[[service]]
name = "st"
listen = ["$me:$sc_sticky_port"]
pool = "st"

[sync]
listen = "$me:23101"
peers = ["$peer:23101"]
key_file = "$sc/sync.key"
EOF
}
echo "  tandem: sticky table of $sc_entries entries"
sc_sticky_conf a 127.0.0.2 127.0.0.1 23111
sc_sticky_conf b 127.0.0.1 127.0.0.2 23112
sc_start "$sc/sticky-a.log" "$tandem" run --config "$sc/sticky-a.toml"
sc_py wait-metric http://127.0.0.1:23111/metrics tandem_pool_sticky_entries 0 10 >/dev/null
sleep 1
sc_empty=$(python3 bench/lib.py rss "$contender_pid")
sc_stop "$contender_pid"
sc_py state-file "$sc/state-a/sticky.state" $sc_entries st $sc_be
sc_start "$sc/sticky-a.log" "$tandem" run --config "$sc/sticky-a.toml"
sc_a=$contender_pid
sc_py wait-metric http://127.0.0.1:23111/metrics tandem_pool_sticky_entries $sc_entries 60 >/dev/null
sleep 1
sc_full=$(python3 bench/lib.py rss "$sc_a")
record tandem sc_sticky_bytes "$(python3 -c "print(($sc_full - $sc_empty) * 1024 / $sc_entries)")"
t0=$(now_ms)
sc_start "$sc/sticky-b.log" "$tandem" run --config "$sc/sticky-b.toml"
sc_b=$contender_pid
sc_py wait-metric http://127.0.0.1:23112/metrics tandem_pool_sticky_entries $sc_entries 120 >/dev/null
record tandem sc_sync_ms $(($(now_ms) - t0))
record tandem sc_sync_mib "$(python3 -c "print($(sc_py ss-bytes 23101) / 1048576)")"
sc_stop "$sc_b"
sc_stop "$sc_a"

echo "  haproxy: stick table of $sc_entries entries"
sc_haproxy_sticky() {
    local node=$1 me=$2
    cat > "$sc/sticky-$node.cfg" <<EOF
global
  nbthread 1
  stats socket $sc/sticky-$node.sock level admin
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
peers p
  peer a 127.0.0.2:23121
  peer b 127.0.0.1:23121
listen st
  bind $me:$sc_sticky_port
  stick-table type ip size $((sc_entries * 11 / 10)) expire 2h peers p
  stick on src
$(for b in $(seq 1 10); do echo "  server b$b 127.1.0.$((b + 1)):$sc_be"; done)
EOF
}
sc_haproxy_sticky a 127.0.0.2
sc_haproxy_sticky b 127.0.0.1
sc_start "$sc/sticky-a.log" haproxy -db -L a -f "$sc/sticky-a.cfg"
sc_a=$contender_pid
for _ in $(seq 100); do [ -S "$sc/sticky-a.sock" ] && break; sleep 0.05; done
sleep 1
sc_empty=$(python3 bench/lib.py rss "$sc_a")
timeout 120 python3 bench/scale.py fill-table "$sc/sticky-a.sock" st $sc_entries
sleep 1
sc_full=$(python3 bench/lib.py rss "$sc_a")
echo "    filled: $(sc_py table-used "$sc/sticky-a.sock" st) entries"
record haproxy sc_sticky_bytes "$(python3 -c "print(($sc_full - $sc_empty) * 1024 / $sc_entries)")"
t0=$(now_ms)
sc_start "$sc/sticky-b.log" haproxy -db -L b -f "$sc/sticky-b.cfg"
sc_b=$contender_pid
for _ in $(seq 100); do [ -S "$sc/sticky-b.sock" ] && break; sleep 0.05; done
sc_py wait-table "$sc/sticky-b.sock" st $sc_entries 120 >/dev/null
record haproxy sc_sync_ms $(($(now_ms) - t0))
record haproxy sc_sync_mib "$(python3 -c "print($(sc_py ss-bytes 23121) / 1048576)")"
sc_stop "$sc_b"
sc_stop "$sc_a"

# --- health checks: CPU per second ----------------------------------------------------
sc_check_services=$((sc_checked / 10))
for who in tandem haproxy; do
    echo "  $who: tcp checks of $sc_checked backends every 2 s"
    if [ "$who" = tandem ]; then
        sc_py tandem-conf "$sc/check.toml" $sc_check_services $sc_checked $sc_base $sc_be "$sc/tandem.sock" check admin=23113
        sc_start "$sc/tandem.log" "$tandem" run --config "$sc/check.toml"
    else
        sc_py haproxy-conf "$sc/check.cfg" $sc_check_services $sc_checked $sc_base $sc_be check "sock=$sc/check.sock"
        sc_start "$sc/haproxy.log" haproxy -db -f "$sc/check.cfg"
    fi
    sc_py wait-port $((sc_base + sc_check_services - 1)) 60 >/dev/null
    # Checks under way (the full run: two rounds, rise 2) before the window.
    sleep $sc_warm
    t_before=$(sc_py ticks "$contender_pid")
    sleep $sc_window
    t_after=$(sc_py ticks "$contender_pid")
    record "$who" sc_check_cpu "$(python3 -c "import os; print(($t_after - $t_before) * 1000 / os.sysconf('SC_CLK_TCK') / $sc_window)")"
    if [ "$who" = tandem ]; then
        up=$(sc_py metric http://127.0.0.1:23113/metrics tandem_backend_up)
    else
        up=$(sc_py haproxy-up "$sc/check.sock")
    fi
    echo "    backends up: $up of $sc_checked"
    sc_stop "$contender_pid"
    sleep 0.5
done
