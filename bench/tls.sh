# bench/run section "tls": TLS termination, each proxy one thread pinned as in the core
# section, relaying to the nginx backend over plain HTTP/1.1 (contenders in
# bench/tls_contenders.sh). Sourced by bench/run.
#
# Rows: full TLS 1.3 handshakes per second (wrk, a new connection per request,
# `Connection: close`; wrk never offers a session) with an ECDSA P-256 and an RSA 2048
# certificate; resumed TLS 1.3 handshakes (bench/tls_resume.py, which checks that the
# server resumed each one); HTTPS keep-alive (wrk); each with the proxy core's busy
# time per handshake or request.
# shellcheck source=bench/tls_contenders.sh
. bench/tls_contenders.sh

# A wrk run over https: records ${key}_rps (and ${key}_p99 with $5 = p99) and the
# proxy core's busy time per request as ${key}_cpu.
tls_wrk() {
    local who=$1 key=$2 port=$3 close=$4 p99_too=${5:-} before rps p99 errors
    before=$(tls_busy)
    if [ "$close" = close ]; then
        on_load wrk -t1 -c32 -d"${duration}s" --latency -H "Connection: close" "https://127.0.0.1:$port/" > "$work/wrk.txt"
    else
        on_load wrk -t1 -c64 -d"${duration}s" --latency "https://127.0.0.1:$port/" > "$work/wrk.txt"
    fi
    [ "$proxy_cpu" = "$load_cpu" ] || record "$who" "${key}_cpu" "$(python3 bench/lib.py per_request "$before" "$(tls_busy)" "$work/wrk.txt")"
    read -r rps _ p99 errors <<< "$(python3 bench/lib.py wrk "$work/wrk.txt")"
    [ "$errors" = 0 ] || echo "bench/run: $who $key had errors" >&2
    record "$who" "${key}_rps" "$rps"
    [ -z "$p99_too" ] || record "$who" "${key}_p99" "$p99"
}

for r in $(seq "$repeats"); do
    echo "  round $r of $repeats"
    for who in tandem haproxy nginx; do
        tls_start "$who"
        tls_wrk "$who" tls_ecdsa $tls_ecdsa close
        tls_wrk "$who" tls_rsa $tls_rsa close
        before=$(tls_busy)
        read -r conns resumed rate failed <<< "$(on_load python3 bench/tls_resume.py 127.0.0.1 $tls_ecdsa "$duration" 4)"
        tls_record_cpu "$who" tls_resume_cpu "$before" "$conns"
        record "$who" tls_resume_rps "$rate"
        # Each client's first handshake is a full one.
        [ "$resumed" -ge $((conns - 4)) ] && [ "$failed" = 0 ] \
            || echo "bench/run: $who resumed $resumed of $conns handshakes ($failed failed)" >&2
        tls_wrk "$who" tls_ka $tls_ecdsa keep p99
        echo "    $who: $(grep -c "^$who tls_" "$results") figures; resumed $resumed of $conns"
        tls_stop
    done
done
