# bench/run section "h2": HTTP/2 from clients, over TLS (ALPN h2, the ECDSA
# certificate) and h2c (prior knowledge), each proxy one thread pinned as in the core
# section, relaying to the nginx backend over HTTP/1.1 kept alive (contenders in
# bench/tls_contenders.sh). Sourced by bench/run.
#
# Rows: requests/s of h2load (10 connections x 10 streams), p99 from its per-request
# log (h2load prints no percentiles), and the proxy core's busy time per request.
# shellcheck source=bench/tls_contenders.sh
. bench/tls_contenders.sh

# An h2load run against URL $3: records ${key}_rps, ${key}_p99 and ${key}_cpu.
h2_run() {
    local who=$1 key=$2 url=$3 before rps p99 done errors
    before=$(tls_busy)
    on_load h2load -t1 -c10 -m10 -D "$duration" --log-file="$work/h2.log" "$url" > "$work/h2load.txt" 2>&1 || true
    read -r rps p99 done errors <<< "$(python3 bench/lib.py h2load "$work/h2load.txt" "$work/h2.log")"
    tls_record_cpu "$who" "${key}_cpu" "$before" "$done"
    [ "$errors" = 0 ] || echo "bench/run: $who $key: $errors requests failed" >&2
    record "$who" "${key}_rps" "$rps"
    record "$who" "${key}_p99" "$p99"
}

for r in $(seq "$repeats"); do
    echo "  round $r of $repeats"
    for who in tandem haproxy nginx; do
        tls_start "$who"
        h2_run "$who" h2 "https://127.0.0.1:$tls_ecdsa/"
        h2_run "$who" h2c "http://127.0.0.1:$tls_h2c/"
        echo "    $who: $(grep -c "^$who h2" "$results") figures"
        tls_stop
    done
done
