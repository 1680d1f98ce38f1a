# bench/run section "redirect": the kernel's forwarding path in a network-namespace
# lab, as the site is built (docs/operations.md): a client on the public leg, a
# balancer routing between the public and the private leg, a backend on the private
# leg whose default route is the balancer (return_path = "static"). Sourced by
# bench/run; needs root (namespaces, nftables, IPVS), skips loudly without it.
#
#   client 10.91.0.100 --veth-- 10.91.0.1 lb 10.91.1.1 --veth-- 10.91.1.11 backend
#                              (+ 10.91.0.10, the service address)
#
# Contenders, alternating in rounds, each alone on the balancer while it runs (a NAT
# table switches conntrack on for the whole namespace, so it is never left behind):
#   direct          the client talks to the backend's own address, routed by lb, no NAT
#                   (the ceiling);
#   tandem-redirect tandem, mode = "redirect": nftables DNAT, conntrack;
#   ipvs            IPVS NAT mode (ipvsadm -m, the kernel path of keepalived's LVS),
#                   where the kernel has IPVS (skipped with a note otherwise);
#   tandem          tandem's relay (mode = "tcp"), one thread on the proxy's core;
#   haproxy         HAProxy, mode tcp, one thread on the proxy's core.
# Rows: iperf3 bulk with 1 and 8 streams; connection rate (wrk, Connection: close, to
# nginx's small answer on the backend) and its p99.
#
# Each contender has its own backend ports (nginx and iperf3 listen on one per
# contender), as a real backend is reached by one path only. With one shared port,
# direct and the kernel modes both arrive at the backend as client:port ->
# backend:80, and the client's TCP timestamp offset is random per connection tuple
# (client -> backend for direct, client -> service address for the others): a SYN
# that meets the backend's TIME_WAIT socket of the other contender's connection with
# the same tuple (60 s) is refused about half the time as older (PAWS,
# TcpExtPAWSTimewait: the backend answers with an ACK, the client with a reset, and
# it sends the SYN again when its shortest retransmission timer runs out, 2 jiffies,
# TcpExtTCPSynRetrans). wrk's latency starts at the request, so that wait showed only
# as a lower rate: about a third of the row that ran after the other. The rows warn
# when the client retransmitted a SYN.
(
    if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v nft >/dev/null; then
        echo "bench/run: SKIPPED the redirect section: it needs root, iproute2 and nft (a network-namespace lab)" >&2
        exit 0
    fi
    rtag="tbr$$"
    rdir="$work/redirect"
    mkdir -p "$rdir"
    chmod 755 "$rdir"
    vip=10.91.0.10 backend=10.91.1.11
    redirect_cleanup() {
        for ns in client lb be; do
            ip netns pids "$rtag-$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
            ip netns del "$rtag-$ns" 2>/dev/null || true
        done
    }
    trap redirect_cleanup EXIT
    trap 'exit 1' INT TERM
    in_ns() { local ns=$1; shift; ip netns exec "$rtag-$ns" "$@"; }

    for ns in client lb be; do
        ip netns add "$rtag-$ns"
        ip -n "$rtag-$ns" link set lo up
    done
    # veth names are global while they are made: unique by $$.
    ip link add "rc$$" type veth peer name "rl$$"
    ip link set "rc$$" netns "$rtag-client"
    ip link set "rl$$" netns "$rtag-lb"
    ip link add "rb$$" type veth peer name "rp$$"
    ip link set "rb$$" netns "$rtag-be"
    ip link set "rp$$" netns "$rtag-lb"
    ip -n "$rtag-client" link set "rc$$" name eth0
    ip -n "$rtag-lb" link set "rl$$" name eth0
    ip -n "$rtag-lb" link set "rp$$" name eth1
    ip -n "$rtag-be" link set "rb$$" name eth0
    ip -n "$rtag-client" addr add 10.91.0.100/24 dev eth0
    ip -n "$rtag-lb" addr add 10.91.0.1/24 dev eth0
    ip -n "$rtag-lb" addr add "$vip/24" dev eth0
    ip -n "$rtag-lb" addr add 10.91.1.1/24 dev eth1
    ip -n "$rtag-be" addr add "$backend/24" dev eth0
    for dev in "client eth0" "lb eth0" "lb eth1" "be eth0"; do
        read -r ns d <<< "$dev"
        ip -n "$rtag-$ns" link set "$d" up
    done
    # The balancer's own receive processing on the proxy's core, as a balancer
    # machine's NIC queues are served by its own CPUs. A veth hands a packet to the
    # receiving namespace on the sender's CPU: without RPS the kernel modes' NAT and
    # forwarding (and the relays' TCP receive) would run on the load core, in the
    # client's and backend's time. RPS moves the balancer's half to $proxy_cpu for
    # every contender alike.
    rps_mask=$(printf '%x' $((1 << proxy_cpu)))
    for d in eth0 eth1; do
        in_ns lb sh -c "echo $rps_mask > /sys/class/net/$d/queues/rx-0/rps_cpus"
    done
    ip -n "$rtag-client" route add 10.91.1.0/24 via 10.91.0.1
    ip -n "$rtag-be" route add default via 10.91.1.1
    in_ns lb sysctl -qw net.ipv4.ip_forward=1
    # Connection-rate runs open tens of thousands of connections from one address.
    in_ns client sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
    in_ns client sysctl -qw net.ipv4.tcp_tw_reuse=1
    in_ns be sysctl -qw net.core.somaxconn=4096

    # The backend: nginx with a small answer and iperf3, on ports of each contender.
    declare -A be_http=([direct]=8000 [tandem-redirect]=8001 [ipvs]=8002 [tandem]=8003 [haproxy]=8004)
    declare -A be_iperf=([direct]=5200 [tandem-redirect]=5201 [ipvs]=5202 [tandem]=5203 [haproxy]=5204)
    be_listen=""
    for who in "${!be_http[@]}"; do be_listen+="listen $backend:${be_http[$who]} backlog=4096; "; done
    mkdir -p "$rdir/be"
    cat > "$rdir/be/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $rdir/be/nginx.pid;
error_log $rdir/be/error.log;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $rdir/be/body; proxy_temp_path $rdir/be/proxy;
  fastcgi_temp_path $rdir/be/fcgi; uwsgi_temp_path $rdir/be/uwsgi; scgi_temp_path $rdir/be/scgi;
  server { $be_listen location / { return 200 "hello from the backend\n"; } }
}
EOF
    in_ns be taskset -c "$load_cpu" nginx -e "$rdir/be/error.log" -p "$rdir/be" -c "$rdir/be/nginx.conf" >/dev/null 2>&1 &
    for who in "${!be_iperf[@]}"; do
        in_ns be taskset -c "$load_cpu" iperf3 -s -B "$backend" -p "${be_iperf[$who]}" >/dev/null 2>&1 &
    done
    ns_wait() {
        local addr=$1 port=$2
        for _ in $(seq 100); do
            in_ns client bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null && return 0
            sleep 0.05
        done
        echo "bench/run: redirect lab: nothing answers on $addr:$port" >&2
        exit 1
    }
    for who in "${!be_http[@]}"; do
        ns_wait "$backend" "${be_http[$who]}"
        ns_wait "$backend" "${be_iperf[$who]}"
    done

    # Ports on the service address: http, iperf per contender.
    declare -A http_port=([tandem-redirect]=1080 [ipvs]=2080 [tandem]=3080 [haproxy]=4080)
    declare -A iperf_port=([tandem-redirect]=1201 [ipvs]=2201 [tandem]=3201 [haproxy]=4201)

    rd_pid=""
    rd_tandem() {
        local mode=$1 who=$2
        cat > "$rdir/tandem.toml" <<EOF
[global]
name = "bench-redirect"
control_socket = "$rdir/tandem.sock"
threads = 1
log_format = "json"

[[pool]]
name = "http"
backends = [{ address = "$backend:${be_http[$who]}" }]

[[pool]]
name = "iperf"
backends = [{ address = "$backend:${be_iperf[$who]}" }]

[[service]]
name = "http"
listen = ["$vip:${http_port[$who]}"]
mode = "$mode"
pool = "http"
$([ "$mode" = redirect ] && echo 'return_path = "static"' || echo 'idle_timeout = "10m"')

[[service]]
name = "iperf"
listen = ["$vip:${iperf_port[$who]}"]
mode = "$mode"
pool = "iperf"
$([ "$mode" = redirect ] && echo 'return_path = "static"' || echo 'idle_timeout = "10m"')
EOF
        # Not through in_ns: $! must be tandem itself (ip netns exec execs its command).
        RUST_LOG=warn TANDEM_ALLOW_ROOT=1 ip netns exec "$rtag-lb" taskset -c "$proxy_cpu" \
            "$tandem" run --config "$rdir/tandem.toml" 2>"$rdir/tandem.log" &
        rd_pid=$!
    }
    start_rd() {
        local who=$1
        rd_pid=""
        case $who in
            tandem-redirect)
                rd_tandem redirect "$who"
                # The table is in place once the kernel lists its DNAT rules.
                for _ in $(seq 100); do
                    in_ns lb nft list table inet tandem 2>/dev/null | grep -q dnat && break
                    sleep 0.05
                done
                ;;
            tandem) rd_tandem tcp "$who" ;;
            ipvs)
                for p in http iperf; do
                    local port target
                    if [ $p = http ]; then port=${http_port[ipvs]} target=${be_http[ipvs]}; else port=${iperf_port[ipvs]} target=${be_iperf[ipvs]}; fi
                    in_ns lb ipvsadm -A -t "$vip:$port" -s rr
                    in_ns lb ipvsadm -a -t "$vip:$port" -r "$backend:$target" -m
                done
                ;;
            haproxy)
                cat > "$rdir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 7700
defaults
  mode tcp
  timeout connect 5s
  timeout client 600s
  timeout server 600s
listen http
  bind $vip:${http_port[haproxy]}
  option splice-auto
  server s1 $backend:${be_http[haproxy]}
listen iperf
  bind $vip:${iperf_port[haproxy]}
  option splice-auto
  server s1 $backend:${be_iperf[haproxy]}
EOF
                ip netns exec "$rtag-lb" taskset -c "$proxy_cpu" haproxy -db -f "$rdir/haproxy.cfg" >"$rdir/haproxy.log" 2>&1 &
                rd_pid=$!
                ;;
        esac
    }
    stop_rd() {
        local who=$1
        if [ -n "$rd_pid" ]; then
            kill "$rd_pid" 2>/dev/null || true
            wait "$rd_pid" 2>/dev/null || true
        fi
        [ "$who" != ipvs ] || in_ns lb ipvsadm -C
        # Nothing of a contender may stay behind for the next one: tandem removes its
        # table at exit; a killed one would leave it.
        in_ns lb nft delete table inet tandem 2>/dev/null || true
        sleep 0.3
    }
    # The client's SYN retransmissions so far: a contender's rows with any measured
    # the client's waits for its retransmission timer as well.
    syn_retrans() {
        in_ns client awk '$1 == "TcpExt:" { if (!n) { for (i = 2; i <= NF; i++) k[i] = $i; n = 1 }
            else for (i = 2; i <= NF; i++) if (k[i] == "TCPSynRetrans") print $i }' /proc/net/netstat
    }
    rd_measure() {
        local who=$1 addr=$2 http=$3 iperf=$4 streams rps p99 errors retrans
        retrans=$(syn_retrans)
        for streams in 1 8; do
            in_ns client taskset -c "$load_cpu" iperf3 -c "$addr" -p "$iperf" -t "$duration" -P $streams -J \
                > "$rdir/iperf.json" 2>/dev/null || true
            record "$who" "rd_bulk$streams" "$(python3 bench/lib.py iperf "$rdir/iperf.json")"
        done
        in_ns client taskset -c "$load_cpu" wrk -t1 -c32 -d"${duration}s" --latency -H "Connection: close" \
            "http://$addr:$http/" > "$rdir/wrk.txt"
        read -r rps _ p99 errors <<< "$(python3 bench/lib.py wrk "$rdir/wrk.txt")"
        [ "$errors" = 0 ] || echo "bench/run: redirect lab: $who had socket errors or non-2xx answers" >&2
        retrans=$(($(syn_retrans) - retrans))
        [ "$retrans" = 0 ] || echo "bench/run: redirect lab: $who: the client retransmitted $retrans SYNs (each a wait the rate shows and the latency does not)" >&2
        record "$who" rd_conn_rps "$rps"
        record "$who" rd_conn_p99 "$p99"
    }

    contenders=(direct tandem-redirect)
    if in_ns lb ipvsadm -Ln >/dev/null 2>&1; then
        contenders+=(ipvs)
    else
        echo "bench/run: redirect lab: no IPVS in this kernel (ipvsadm -Ln fails): no ipvs column" >&2
    fi
    contenders+=(tandem haproxy)
    for r in $(seq "$repeats"); do
        echo "  round $r of $repeats"
        for who in "${contenders[@]}"; do
            echo "    $who"
            if [ "$who" = direct ]; then
                rd_measure direct "$backend" "${be_http[direct]}" "${be_iperf[direct]}"
                continue
            fi
            start_rd "$who"
            ns_wait "$vip" "${http_port[$who]}"
            ns_wait "$vip" "${iperf_port[$who]}"
            rd_measure "$who" "$vip" "${http_port[$who]}" "${iperf_port[$who]}"
            stop_rd "$who"
        done
    done
)
