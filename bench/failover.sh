#!/usr/bin/env bash
# Failover time in a network-namespace lab (needs root, iproute2; keepalived and
# HAProxy for the comparison): two balancers share a virtual address with the same
# VRRP advert interval (100 ms); the master's processes get SIGKILL; a client in its
# own namespace measures the time to the first answered request.
#
#   bench/failover.sh TANDEM_BINARY RESULTS_FILE REPEATS
#
# Appends "tandem failover_ms N" and "haproxy failover_ms N" (HAProxy + keepalived)
# lines to RESULTS_FILE. Every namespace it makes is deleted at the end.
set -euo pipefail
tandem=$1 results=$2 repeats=$3
tag="tdb$$"
dir=$(mktemp -d)
chmod 755 "$dir"
vip=10.98.0.100
cleanup() {
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag-" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip netns add "$tag-sw"
ip -n "$tag-sw" link add br0 type bridge
ip -n "$tag-sw" link set br0 up
n=0
host() {
    local name=$1 addr=$2
    n=$((n + 1))
    ip netns add "$tag-$name"
    ip link add "tbh$$x$n" type veth peer name "tbs$$x$n"
    ip link set "tbh$$x$n" netns "$tag-$name" name eth0
    ip link set "tbs$$x$n" netns "$tag-sw"
    ip -n "$tag-sw" link set "tbs$$x$n" master br0 up
    ip -n "$tag-$name" addr add "$addr/24" dev eth0
    ip -n "$tag-$name" link set eth0 up
    ip -n "$tag-$name" link set lo up
}
host lb1 10.98.0.1
host lb2 10.98.0.2
host be 10.98.0.11
host client 10.98.0.50
in_ns() { local ns=$1; shift; ip netns exec "$tag-$ns" "$@"; }

mkdir -p "$dir/www" && echo hello > "$dir/www/index.html"
in_ns be python3 -m http.server 80 --bind 10.98.0.11 --directory "$dir/www" >/dev/null 2>&1 </dev/null &

# The tandem pair runs as deployed: with [sync] between the nodes (sticky tables and
# the sync session that tells a backup at once that its master's process is gone).
echo "the failover bench key, 32 bytes" > "$dir/sync.key"
tandem_node() {
    local name=$1 prio=$2 me peer
    if [ "$name" = lb1 ]; then me=10.98.0.1 peer=10.98.0.2; else me=10.98.0.2 peer=10.98.0.1; fi
    cat > "$dir/$name.toml" <<EOC
[global]
name = "$name"
control_socket = "$dir/$name.sock"
drain_timeout = "1s"
[[pool]]
name = "web"
backends = [{ address = "10.98.0.11:80" }]
[[service]]
name = "www"
listen = ["$vip:80"]
pool = "web"
[ha]
interface = "eth0"
vrid = 61
priority = $prio
advert_interval = "100ms"
virtual_ips = ["$vip/24"]
[sync]
listen = "$me:7946"
peers = ["$peer:7946"]
key_file = "$dir/sync.key"
EOC
    # Not through in_ns: $! must be tandem itself (ip netns exec execs it).
    RUST_LOG=warn TANDEM_ALLOW_ROOT=1 ip netns exec "$tag-$name" "$tandem" run --config "$dir/$name.toml" >"$dir/$name.log" 2>&1 &
    disown
}

keepalived_node() {
    local name=$1 prio=$2
    cat > "$dir/$name-ka.conf" <<EOC
global_defs {
  router_id $name
  vrrp_version 3
}
vrrp_instance VI_1 {
  state BACKUP
  interface eth0
  virtual_router_id 62
  priority $prio
  advert_int 0.1
  virtual_ipaddress {
    $vip/24 dev eth0
  }
}
EOC
    cat > "$dir/$name-hap.cfg" <<EOC
global
  nbthread 1
defaults
  mode tcp
  timeout connect 1s
  timeout client 10s
  timeout server 10s
frontend www
  bind $vip:80 transparent
  default_backend web
backend web
  server s1 10.98.0.11:80
EOC
    ip netns exec "$tag-$name" haproxy -db -f "$dir/$name-hap.cfg" >"$dir/$name-hap.log" 2>&1 &
    disown
    ip netns exec "$tag-$name" keepalived --dont-fork --vrrp -f "$dir/$name-ka.conf" \
        -p "$dir/$name-ka.pid" -r "$dir/$name-vrrp.pid" >"$dir/$name-ka.log" 2>&1 &
    disown
}

has_vip() { ip -n "$tag-$1" -4 addr show dev eth0 | grep -q "inet $vip/"; }
wait_vip() {
    for _ in $(seq 200); do has_vip "$1" && return 0; sleep 0.05; done
    echo "bench/failover: $1 never took $vip" >&2
    return 1
}
stop_all() {
    for ns in lb1 lb2; do ip netns pids "$tag-$ns" | xargs -r kill -9 2>/dev/null || true; done
    sleep 0.3
    for ns in lb1 lb2; do ip -n "$tag-$ns" addr del "$vip/24" dev eth0 2>/dev/null || true; done
    in_ns client ip neigh flush dev eth0
}

# One failover of the pair started by `$1_node`: every process of the master host is
# killed at once (a dead machine says no goodbye; keepalived's VRRP child would send a
# priority-0 advert if only its parent died). Records the time under column $2.
failover() {
    local start=$1 column=$2 label=$3 ms
    "${start}_node" lb1 150 >/dev/null
    "${start}_node" lb2 100 >/dev/null
    wait_vip lb1 && sleep 1
    ms=$(in_ns client python3 bench/failover_probe.py "$vip" 80 $(ip netns pids "$tag-lb1"))
    echo "  $label: first request served ${ms} ms after SIGKILL of the master"
    [[ $ms =~ ^[0-9]+$ ]] && echo "$column failover_ms $ms" >> "$results"
    stop_all
}

for _ in $(seq "$repeats"); do
    failover tandem tandem tandem
    if command -v keepalived >/dev/null; then
        failover keepalived haproxy "keepalived + HAProxy"
    fi
done
