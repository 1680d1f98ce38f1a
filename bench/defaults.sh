# bench/run section "defaults": every proxy as a user would start it, at its default
# thread count (tandem and HAProxy one thread per CPU, nginx `worker_processes auto`),
# nothing pinned, wrk with one thread beside it. Sourced by bench/run.
#
# Rows: L4 connection rate (Connection: close), keep-alive through L4 and L7 keep-alive.
defaults_measure() {
    local who=$1 l4=$2 l7=$3 rps
    wrk -t1 -c32 -d"${duration}s" --latency -H "Connection: close" "http://127.0.0.1:$l4/" > "$work/wrk.txt"
    read -r rps _ <<< "$(python3 bench/lib.py wrk "$work/wrk.txt")"
    record "$who" def_conn_rps "$rps"
    wrk -t1 -c32 -d"${duration}s" --latency "http://127.0.0.1:$l4/" > "$work/wrk.txt"
    read -r rps _ <<< "$(python3 bench/lib.py wrk "$work/wrk.txt")"
    record "$who" def_l4ka_rps "$rps"
    wrk -t1 -c64 -d"${duration}s" --latency "http://127.0.0.1:$l7/" > "$work/wrk.txt"
    read -r rps _ <<< "$(python3 bench/lib.py wrk "$work/wrk.txt")"
    record "$who" def_l7_rps "$rps"
}
one_thread=0
for r in $(seq "$repeats"); do
    echo "  round $r of $repeats"
    defaults_measure direct $be_http $be_http
    for who in tandem haproxy nginx; do
        echo "    $who"
        "start_$who"
        wait_port $l4_http
        wait_port $l7_http
        defaults_measure "$who" $l4_http $l7_http
        kill "$contender_pid"
        wait "$contender_pid" 2>/dev/null || true
        sleep 0.5
    done
done
one_thread=1
