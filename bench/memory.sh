# bench/run section "memory": what an idle client connection costs each proxy in
# memory, one thread each, pinned as in the core section. Sourced by bench/run.
#
# Rows: memory per idle keep-alive HTTP connection (through an HTTP service: each
# connection sends one request, reads the answer, then stays open and idle) and per
# idle TLS connection (the same through a service that terminates TLS: handshake, one
# request, then idle). The figure is the proxy's RSS growth while $idle_conns such
# connections are held (7,000 in a full run, 300 in --quick), divided by how many were
# held, after two seconds idle (tandem gives a client's backend connection back to the
# service's pool after one). Each contender runs its own configuration here: the
# services below (configurations: bench/contenders.sh), the run's ECDSA P-256
# certificate (tls_certs), keep-alive timeouts long
# enough to hold every connection (tandem http.header_timeout, HAProxy timeout
# http-keep-alive, nginx keepalive_timeout), HAProxy maxconn and nginx
# worker_connections above what is held (the open-files hard limit is 20,000 a process).
mem_http=19150 mem_https=19151
# shellcheck source=bench/contenders.sh
. bench/contenders.sh
tls_certs
mkdir -p "$work/mem"
mem_listeners=("http $mem_http http" "https $mem_https tls ecdsa")
mem_start_tandem() { tandem_start "$work/mem/tandem.toml" bench-memory 300s "${mem_listeners[@]}"; }
mem_start_haproxy() { haproxy_start "$work/mem/haproxy.cfg" 9000 300s "${mem_listeners[@]}"; }
mem_start_nginx() { nginx_start "$work/mem/ng" 300s - "${mem_listeners[@]}"; }

# Holds $idle_conns connections of MODE (http or https) to PORT and records the RSS
# growth per connection held as KEY.
mem_hold() {
    local who=$1 key=$2 port=$3 mode=$4 before after held hold
    # One connection first, so that what any first connection sets up (buffers,
    # session caches) is in "before".
    on_load python3 bench/hold.py 127.0.0.1 "$port" 1 0 "$mode" > /dev/null
    sleep 0.5
    before=$(python3 bench/lib.py rss "$contender_pid")
    rm -f "$work/mem/held.txt"
    # (taskset execs: $! is the holder itself, which the kill below ends.)
    taskset -c "$load_cpu" python3 bench/hold.py 127.0.0.1 "$port" "$idle_conns" 120 "$mode" > "$work/mem/held.txt" &
    hold=$!
    # Bounded: until the holder says how many it holds (it holds them for 120 s at
    # most), then two seconds idle.
    for _ in $(seq 1200); do
        [ -s "$work/mem/held.txt" ] && break
        kill -0 "$hold" 2>/dev/null || break
        sleep 0.1
    done
    sleep 2
    after=$(python3 bench/lib.py rss "$contender_pid")
    kill "$hold" 2>/dev/null || true
    wait "$hold" 2>/dev/null || true
    held=$(head -1 "$work/mem/held.txt")
    if [ "${held:-0}" -gt 0 ]; then
        record "$who" "$key" "$(python3 -c "print(($after - $before) / $held)")"
    fi
    echo "    $who $mode: ${held:-0} idle connections held, RSS $before -> $after KiB"
}

# Each contender started afresh for each kind, so that memory freed by the first
# kind's connections does not hide what the second's cost. Once per contender: RSS is
# steady from run to run, unlike rates.
for who in tandem haproxy nginx; do
    echo "  $who"
    for kind in http https; do
        "mem_start_$who"
        wait_port $mem_http
        wait_port $mem_https
        if [ $kind = http ]; then
            mem_hold "$who" mem_http_kib $mem_http http
        else
            mem_hold "$who" mem_tls_kib $mem_https https
        fi
        kill "$contender_pid"
        wait "$contender_pid" 2>/dev/null || true
        sleep 0.5
    done
done
