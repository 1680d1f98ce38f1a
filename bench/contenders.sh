# The configurations of the three contenders when they serve HTTP (plain, h2c or TLS),
# one generator each, for bench/run's sections that start them with listeners of their
# own (tls and h2 through bench/tls_contenders.sh, memory). Functions only, loaded once.
#
# A listener is "NAME PORT KIND [CERT]", KIND one of
#   http      plain HTTP/1.1
#   h2c       plain HTTP/1.1 and HTTP/2 with prior knowledge
#   tls       TLS, ALPN http/1.1
#   tls-h2    TLS, ALPN h2 and http/1.1
# A TLS listener serves the certificate $work/tls/CERT.crt with key $work/tls/CERT.key
# (HAProxy: both in $work/tls/CERT.pem), as tls_certs below makes them; CERT is
# ecdsa or rsa, NAME when not given.
# Each contender is one thread, relays to the nginx backend of bench/run
# (127.0.0.1:$be_http) over plain HTTP/1.1 kept alive, and logs into its directory.
[ -n "${contenders_loaded:-}" ] && return 0
contenders_loaded=1

# Self-signed certificates in $work/tls (ecdsa: P-256, rsa: 2048 bits), shared by every
# contender and section: $work/tls/KIND.crt, .key and .pem (chain and key, HAProxy's).
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

# Runs "$@" (a contender, pinned) in the background as $contender_pid, killed on exit.
contender_spawn() {
    pin_proxy "$@" &
    contender_pid=$!
    pids+=("$contender_pid")
}

# Calls "FN NAME PORT KIND CERT" for each listener after FN, CERT the certificate's
# path without its extension.
each_listener() {
    local fn=$1 listener name port kind cert
    shift
    for listener in "$@"; do
        read -r name port kind cert <<< "$listener"
        "$fn" "$name" "$port" "$kind" "$work/tls/${cert:-$name}"
    done
}

# tandem_start TOML NAME HEADER_TIMEOUT LISTENER...: writes TOML and starts tandem on
# it (logs to TOML with .log); HEADER_TIMEOUT "-" keeps tandem's default. Each listener
# is an http mode service of its NAME (h2c: tandem's plain HTTP, which takes both; tls
# and tls-h2 alike: tandem offers h2 and http/1.1).
tandem_start() {
    local toml=$1 node=$2 header_timeout=$3 timeout=''
    shift 3
    [ "$header_timeout" = - ] || timeout="header_timeout = \"$header_timeout\""$'\n'
    # Called by each_listener below, with toml and timeout in scope.
    tandem_service() {
        cat >> "$toml" <<EOF

[[service]]
name = "$1"
listen = ["127.0.0.1:$2"]
mode = "http"
pool = "http"
$([[ $3 == tls* ]] && echo "tls = { cert = \"$4.crt\", key = \"$4.key\" }")
[service.http]
${timeout}max_requests_per_connection = 0
EOF
    }
    cat > "$toml" <<EOF
[global]
name = "$node"
control_socket = "${toml%.toml}.sock"
threads = 1
log_format = "json"

[[pool]]
name = "http"
backends = [{ address = "127.0.0.1:$be_http" }]
EOF
    each_listener tandem_service "$@"
    RUST_LOG=warn TANDEM_ALLOW_ROOT=1 contender_spawn "$tandem" run --config "$toml" 2>"${toml%.toml}.log"
}

# haproxy_start CFG MAXCONN KEEPALIVE LISTENER...: writes CFG and starts HAProxy on it
# (logs to CFG with .log); KEEPALIVE "-" keeps HAProxy's http-keep-alive timeout.
haproxy_start() {
    local cfg=$1 maxconn=$2 keepalive=$3
    shift 3
    haproxy_frontend() {
        local bind="127.0.0.1:$2"
        case $3 in
            h2c) bind+=" proto h2" ;;
            tls) bind+=" ssl crt $4.pem alpn http/1.1" ;;
            tls-h2) bind+=" ssl crt $4.pem alpn h2,http/1.1" ;;
        esac
        printf 'frontend %s\n  bind %s\n  default_backend be\n' "$1" "$bind" >> "$cfg"
    }
    cat > "$cfg" <<EOF
global
  nbthread 1
  maxconn $maxconn
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
EOF
    [ "$keepalive" = - ] || echo "  timeout http-keep-alive $keepalive" >> "$cfg"
    each_listener haproxy_frontend "$@"
    cat >> "$cfg" <<EOF
backend be
  http-reuse always
  server s1 127.0.0.1:$be_http
EOF
    contender_spawn haproxy -db -f "$cfg" >"${cfg%.cfg}.log" 2>&1
}

# nginx_start DIR KEEPALIVE PROTOCOLS LISTENER...: writes DIR/nginx.conf and starts
# nginx on it (logs in DIR); KEEPALIVE "-" keeps nginx's keepalive_timeout, PROTOCOLS
# "-" its ssl_protocols (which include TLS 1.0 and 1.1, and cost its TLS connections
# about 0.9 KiB less memory each than "TLSv1.2 TLSv1.3": measured in bench/run memory).
nginx_start() {
    local dir=$1 keepalive=$2 protocols=$3 timeout='' tls='' servers=''
    shift 3
    mkdir -p "$dir"
    [ "$keepalive" = - ] || timeout="  keepalive_timeout $keepalive;"$'\n'
    [ "$protocols" = - ] || tls="  ssl_protocols $protocols;"$'\n'
    local loc='location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }'
    nginx_server() {
        local listen="listen 127.0.0.1:$2"
        case $3 in
            http) listen+=";" ;;
            h2c) listen+=" http2;" ;;
            tls) listen+=" ssl; ssl_certificate $4.crt; ssl_certificate_key $4.key;" ;;
            tls-h2) listen+=" ssl http2; ssl_certificate $4.crt; ssl_certificate_key $4.key;" ;;
        esac
        servers+="  server { $listen $loc }"$'\n'
    }
    each_listener nginx_server "$@"
    cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 19000; }
http {
  access_log off;
  keepalive_requests 1000000;
${timeout}  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  upstream be { server 127.0.0.1:$be_http; keepalive 64; }
${tls}${servers}}
EOF
    contender_spawn nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
}
