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
# services below, an ECDSA P-256 certificate made for the run, keep-alive timeouts long
# enough to hold every connection (tandem http.header_timeout, HAProxy timeout
# http-keep-alive, nginx keepalive_timeout), HAProxy maxconn and nginx
# worker_connections above what is held (the open-files hard limit is 20,000 a process).
mem_http=19150 mem_https=19151
mkdir -p "$work/mem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench \
    -keyout "$work/mem/key.pem" -out "$work/mem/cert.pem" 2>/dev/null
cat "$work/mem/cert.pem" "$work/mem/key.pem" > "$work/mem/both.pem"

mem_start_tandem() {
    cat > "$work/mem/tandem.toml" <<EOF
[global]
name = "bench-memory"
control_socket = "$work/mem/tandem.sock"
threads = 1
log_format = "json"

[[pool]]
name = "http"
backends = [{ address = "127.0.0.1:$be_http" }]

[[service]]
name = "http"
listen = ["127.0.0.1:$mem_http"]
mode = "http"
pool = "http"
[service.http]
header_timeout = "300s"
max_requests_per_connection = 0

[[service]]
name = "https"
listen = ["127.0.0.1:$mem_https"]
mode = "http"
pool = "http"
tls = { cert = "$work/mem/cert.pem", key = "$work/mem/key.pem" }
[service.http]
header_timeout = "300s"
max_requests_per_connection = 0
EOF
    RUST_LOG=warn TANDEM_ALLOW_ROOT=1 pin_proxy "$tandem" run --config "$work/mem/tandem.toml" 2>"$work/mem/tandem.log" &
    contender_pid=$!
    pids+=("$contender_pid")
}
mem_start_haproxy() {
    cat > "$work/mem/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 300s
frontend http
  bind 127.0.0.1:$mem_http
  default_backend be
frontend https
  bind 127.0.0.1:$mem_https ssl crt $work/mem/both.pem alpn http/1.1
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$be_http
EOF
    pin_proxy haproxy -db -f "$work/mem/haproxy.cfg" >"$work/mem/haproxy.log" 2>&1 &
    contender_pid=$!
    pids+=("$contender_pid")
}
mem_start_nginx() {
    mkdir -p "$work/mem/ng"
    cat > "$work/mem/ng/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $work/mem/ng/nginx.pid;
error_log $work/mem/ng/error.log;
events { worker_connections 19000; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $work/mem/ng/body; proxy_temp_path $work/mem/ng/proxy;
  fastcgi_temp_path $work/mem/ng/fcgi; uwsgi_temp_path $work/mem/ng/uwsgi; scgi_temp_path $work/mem/ng/scgi;
  upstream be { server 127.0.0.1:$be_http; keepalive 64; }
  server {
    listen 127.0.0.1:$mem_http;
    listen 127.0.0.1:$mem_https ssl;
    ssl_certificate $work/mem/cert.pem;
    ssl_certificate_key $work/mem/key.pem;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
    pin_proxy nginx -e "$work/mem/ng/error.log" -p "$work/mem/ng" -c "$work/mem/ng/nginx.conf" &
    contender_pid=$!
    pids+=("$contender_pid")
}

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
