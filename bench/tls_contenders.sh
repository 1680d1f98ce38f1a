# Contenders that terminate TLS (and h2c), for bench/run's tls and h2 sections (sourced
# by bench/tls.sh and bench/h2.sh; defines functions only, once).
#
# Each proxy, one thread pinned as in the core section, listens on
#   $tls_ecdsa  TLS, ECDSA P-256 certificate, ALPN h2 and http/1.1
#   $tls_rsa    TLS, RSA 2048 certificate, ALPN h2 and http/1.1
#   $tls_h2c    plain HTTP: HTTP/1.1 and HTTP/2 with prior knowledge (h2c)
# and relays to the nginx backend of bench/run over plain HTTP/1.1 kept alive. The
# certificates are self-signed, made with openssl in $work/tls, shared by all three.
[ -n "${tls_contenders_loaded:-}" ] && return 0
tls_contenders_loaded=1
tls_ecdsa=19011 tls_rsa=19012 tls_h2c=19013

tls_certs() {
    [ -e "$work/tls/rsa.pem" ] && return 0
    mkdir -p "$work/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
        -keyout "$work/tls/ecdsa.key" -out "$work/tls/ecdsa.crt" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
        -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
        -keyout "$work/tls/rsa.key" -out "$work/tls/rsa.crt" 2>/dev/null
    # HAProxy wants the chain and the key in one file.
    for k in ecdsa rsa; do cat "$work/tls/$k.crt" "$work/tls/$k.key" > "$work/tls/$k.pem"; done
}

tls_start_tandem() {
    local svc name port kind
    cat > "$work/tandem-tls.toml" <<EOF
[global]
name = "bench-tls"
control_socket = "$work/tandem-tls.sock"
threads = 1
log_format = "json"

[[pool]]
name = "http"
backends = [{ address = "127.0.0.1:$be_http" }]
EOF
    for svc in "ecdsa $tls_ecdsa ecdsa" "rsa $tls_rsa rsa" "h2c $tls_h2c -"; do
        read -r name port kind <<< "$svc"
        cat >> "$work/tandem-tls.toml" <<EOF

[[service]]
name = "$name"
listen = ["127.0.0.1:$port"]
mode = "http"
pool = "http"
$([ "$kind" = - ] || echo "tls = { cert = \"$work/tls/$kind.crt\", key = \"$work/tls/$kind.key\" }")
[service.http]
max_requests_per_connection = 0
EOF
    done
    RUST_LOG=warn TANDEM_ALLOW_ROOT=1 pin_proxy "$tandem" run --config "$work/tandem-tls.toml" 2>"$work/tandem-tls.log" &
    contender_pid=$!
    pids+=("$contender_pid")
}

tls_start_haproxy() {
    cat > "$work/haproxy-tls.cfg" <<EOF
global
  nbthread 1
  maxconn 7700
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
frontend ecdsa
  bind 127.0.0.1:$tls_ecdsa ssl crt $work/tls/ecdsa.pem alpn h2,http/1.1
  default_backend be
frontend rsa
  bind 127.0.0.1:$tls_rsa ssl crt $work/tls/rsa.pem alpn h2,http/1.1
  default_backend be
frontend h2c
  bind 127.0.0.1:$tls_h2c proto h2
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$be_http
EOF
    pin_proxy haproxy -db -f "$work/haproxy-tls.cfg" >"$work/haproxy-tls.log" 2>&1 &
    contender_pid=$!
    pids+=("$contender_pid")
}

tls_start_nginx() {
    mkdir -p "$work/ngtls"
    local loc='location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }'
    cat > "$work/ngtls/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $work/ngtls/nginx.pid;
error_log $work/ngtls/error.log;
events { worker_connections 19000; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/ngtls/body; proxy_temp_path $work/ngtls/proxy;
  fastcgi_temp_path $work/ngtls/fcgi; uwsgi_temp_path $work/ngtls/uwsgi; scgi_temp_path $work/ngtls/scgi;
  upstream be { server 127.0.0.1:$be_http; keepalive 64; }
  ssl_protocols TLSv1.2 TLSv1.3;
  server { listen 127.0.0.1:$tls_ecdsa ssl http2; ssl_certificate $work/tls/ecdsa.crt; ssl_certificate_key $work/tls/ecdsa.key; $loc }
  server { listen 127.0.0.1:$tls_rsa ssl http2; ssl_certificate $work/tls/rsa.crt; ssl_certificate_key $work/tls/rsa.key; $loc }
  server { listen 127.0.0.1:$tls_h2c http2; $loc }
}
EOF
    pin_proxy nginx -e "$work/ngtls/error.log" -p "$work/ngtls" -c "$work/ngtls/nginx.conf" &
    contender_pid=$!
    pids+=("$contender_pid")
}

# Starts contender $1 and waits for its three ports.
tls_start() {
    tls_certs
    "tls_start_$1"
    wait_port $tls_ecdsa
    wait_port $tls_rsa
    wait_port $tls_h2c
}

tls_stop() {
    kill "$contender_pid"
    wait "$contender_pid" 2>/dev/null || true
    sleep 0.5
}

# Busy ticks of the proxy's core now (see bench/lib.py busy).
tls_busy() { python3 bench/lib.py busy "$proxy_cpu"; }

# Records KEY = the proxy core's busy time per unit (us) since busy ticks $3, for $4
# units of work; nothing when the proxy shares its core with the load.
tls_record_cpu() {
    local who=$1 key=$2 before=$3 count=$4
    [ "$proxy_cpu" = "$load_cpu" ] && return 0
    record "$who" "$key" "$(python3 bench/lib.py per_count "$before" "$(tls_busy)" "$count")"
}
