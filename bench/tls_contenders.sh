# Contenders that terminate TLS (and h2c), for bench/run's tls and h2 sections (sourced
# by bench/tls.sh and bench/h2.sh; defines functions only, once).
#
# Each proxy, one thread pinned as in the core section, listens on
#   $tls_ecdsa  TLS, ECDSA P-256 certificate, ALPN h2 and http/1.1
#   $tls_rsa    TLS, RSA 2048 certificate, ALPN h2 and http/1.1
#   $tls_h2c    plain HTTP: HTTP/1.1 and HTTP/2 with prior knowledge (h2c)
# and relays to the nginx backend of bench/run over plain HTTP/1.1 kept alive (the
# configurations: bench/contenders.sh). The certificates are self-signed, made with
# openssl in $work/tls (tls_certs), shared by all three.
[ -n "${tls_contenders_loaded:-}" ] && return 0
tls_contenders_loaded=1
tls_ecdsa=19011 tls_rsa=19012 tls_h2c=19013

# shellcheck source=bench/contenders.sh
. bench/contenders.sh

tls_listeners=("ecdsa $tls_ecdsa tls-h2" "rsa $tls_rsa tls-h2" "h2c $tls_h2c h2c")
tls_start_tandem() { tandem_start "$work/tandem-tls.toml" bench-tls - "${tls_listeners[@]}"; }
tls_start_haproxy() { haproxy_start "$work/haproxy-tls.cfg" 7700 - "${tls_listeners[@]}"; }
tls_start_nginx() { nginx_start "$work/ngtls" - "TLSv1.2 TLSv1.3" "${tls_listeners[@]}"; }

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
