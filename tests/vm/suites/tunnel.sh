#!/usr/bin/env bash
# Replication through the WireGuard tunnel bdr brings up itself, from one config file per
# volume and host. Three network namespaces: the primary (bdrp) and the replica (bdrr) joined
# by a veth pair (the "internet"), and an intruder (bdrx) on a second veth to the replica.
# - `bdr keygen` on both sides, one TOML file each, `bdr config check` ok;
# - a control run first: the same volume synced in the clear to a serve on the underlay, and
#   a capture on the veth shows the canary (so the capture below can see plaintext);
# - `bdr primary run tv` / `bdr replica serve tv` with their config only: the tunnel comes up,
#   the replica listens on its tunnel address bound to its WireGuard interface, data written
#   with a canary replicates, a capture on the veth during it holds WireGuard UDP only and no
#   canary, and the replica equals the primary byte for byte;
# - the intruder reaches the replica's port neither routed straight to the tunnel address
#   (Linux accepts a local address on any interface: the socket is bound to the interface)
#   nor through a WireGuard interface of its own with a key the replica does not know;
# - a key file open to others is refused; garbage sent over the tunnel is refused with the
#   reason in the log and in `bdr status`, the committed cut untouched.
# vm-timeout: 300
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/../lib.sh"

B=$BDR_BIN
SIZE_MB=64
P=$T_SCRATCH/p # the primary's /etc/bdr
R=$T_SCRATCH/r # the replica's /etc/bdr
X=$T_SCRATCH/x
CAP=$T_SCRATCH/cap
mkdir -p "$P" "$R" "$X" "$CAP"
chmod 700 "$P" "$R" "$X"

inp() { BDR_CONFIG_DIR=$P ip netns exec bdrp "$@"; }
inr() { BDR_CONFIG_DIR=$R ip netns exec bdrr "$@"; }
inx() { ip netns exec bdrx "$@"; }
# wait_file_json FILE KEY VALUE SECONDS
wait_json() {
	local end=$((SECONDS + $4)) v
	while [ $SECONDS -lt $end ]; do
		v=$({ jget "$2" <"$1"; } 2>/dev/null)
		[ "$v" = "$3" ] && return 0
		sleep 0.3
	done
	t_fail "$1: $2 is '$v' after $4 s, wanted '$3'"
}
# canary_fill TAG: 8 MiB of random data with "BDR-CANARY-TAG-<n>" every 4 KiB at the start
# of /dev/mapper/tv, through the page cache with an fsync. zstd cannot shrink random bytes,
# so the canaries travel as literals: plain text on the wire if nothing encrypts it.
canary_fill() {
	python3 - "$1" <<'EOF'
import os, sys
tag = sys.argv[1].encode()
fd = os.open("/dev/mapper/tv", os.O_WRONLY)
for i in range(2048):
    c = b"BDR-CANARY-" + tag + b"-%06d" % i
    os.pwrite(fd, c + os.urandom(4096 - len(c)), i * 4096)
os.fsync(fd)
os.close(fd)
EOF
}
# has_canary PCAP TAG: the capture holds the canary text
has_canary() { grep -a -q "BDR-CANARY-$2-" "$1"; }
capture_start() { # PCAP
	ip netns exec bdrp tcpdump -i vbdrp -U -s 0 -w "$1" >"$1.log" 2>&1 &
	echo $! >"$T_SCRATCH/tcpdump.pid"
	local end=$((SECONDS + 10))
	while [ $SECONDS -lt $end ]; do
		grep -q "listening on" "$1.log" 2>/dev/null && return 0
		sleep 0.2
	done
	t_fail "tcpdump did not start: $(cat "$1.log")"
}
capture_stop() {
	local p
	p=$(cat "$T_SCRATCH/tcpdump.pid")
	sleep 0.5
	kill -INT "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	: >"$T_SCRATCH/tcpdump.pid"
}
# tcp_reach NS ADDR PORT: a TCP connection from NS succeeds within 4 s
tcp_reach() { ip netns exec "$1" timeout 4 bash -c ": </dev/tcp/$2/$3" 2>/dev/null; }

t_case "three namespaces, keys, config files"
[ -n "$B" ] && [ -x "$B" ] || { t_fail "no bdr binary (BDR_BIN='$B')"; exit 1; }
assert_ok command -v tcpdump || exit 1
load_bdr || { t_fail "load_bdr"; exit 1; }
for ns in bdrp bdrr bdrx; do
	ip netns add $ns || { t_fail "ip netns add $ns"; exit 1; }
	t_defer ip netns del $ns
	ip -n $ns link set lo up
done
assert_ok ip link add vbdrp netns bdrp type veth peer name vbdrr netns bdrr || exit 1
assert_ok ip -n bdrp addr add 192.168.77.1/24 dev vbdrp
assert_ok ip -n bdrr addr add 192.168.77.2/24 dev vbdrr
assert_ok ip link add vbdrx netns bdrx type veth peer name vbdrrx netns bdrr || exit 1
assert_ok ip -n bdrx addr add 192.168.78.1/24 dev vbdrx
assert_ok ip -n bdrr addr add 192.168.78.2/24 dev vbdrrx
for l in bdrp:vbdrp bdrr:vbdrr bdrx:vbdrx bdrr:vbdrrx; do
	assert_ok ip -n "${l%%:*}" link set "${l#*:}" up
done
PUBP=$(inp "$B" keygen --out "$P/tv.key") || { t_fail "keygen (primary)"; exit 1; }
PUBR=$(inr "$B" keygen --out "$R/tv.key") || { t_fail "keygen (replica)"; exit 1; }
assert_eq "$(stat -c %a "$P/tv.key")" 600 "mode of the primary's key"
assert_eq "${#PUBP}" 44 "public key length"
[ "$PUBP" != "$PUBR" ] || t_fail "the two public keys are equal"
assert_fails inp "$B" keygen --out "$P/tv.key" # never overwritten without --force
RDEV=$(mk_loop "$SIZE_MB") || { t_fail "mk_loop"; exit 1; }
PLOWER=$(mk_nullb "$SIZE_MB" memory_backed=1) || { t_fail "mk_nullb"; exit 1; }
mkdir -p "$T_SCRATCH/cow"
cat >"$P/tv.toml" <<EOF
role = "primary"
device = "$PLOWER"
region_size = "64KiB"
interval = "1s"
cow = "$T_SCRATCH/cow"
cow_size = "64MiB"
state_dir = "$T_SCRATCH/pstate"

[tunnel]
private_key = "$P/tv.key"
address = "10.99.0.1/30"
peer_public_key = "$PUBR"
peer_endpoint = "192.168.77.2:51820"
peer_address = "10.99.0.2"
keepalive = 5
EOF
cat >"$R/tv.toml" <<EOF
role = "replica"
device = "$RDEV"
state_dir = "$T_SCRATCH/rstate"

[tunnel]
private_key = "$R/tv.key"
address = "10.99.0.2/30"
listen_port = 51820
peer_public_key = "$PUBP"
peer_address = "10.99.0.1"
EOF
assert_ok inp "$B" config check tv
assert_ok inr "$B" config check tv
# Every command of the primary takes its device from the file.
assert_ok inp "$B" attach tv --kmod "$BDR_KO" || exit 1
t_defer rm_dm tv
touch "$T_SCRATCH/serve.pid" "$T_SCRATCH/daemon.pid" "$T_SCRATCH/tcpdump.pid" "$T_SCRATCH/plain.pid"
t_defer kill_pidfile "$T_SCRATCH/tcpdump.pid"
t_defer kill_pidfile "$T_SCRATCH/serve.pid"
t_defer kill_pidfile "$T_SCRATCH/daemon.pid"
t_defer kill_pidfile "$T_SCRATCH/plain.pid"

t_case "control: a sync in the clear shows the canary on the wire"
PLAIN=$T_SCRATCH/plain.img
truncate -s ${SIZE_MB}M "$PLAIN"
ip netns exec bdrr "$B" replica serve --device "$PLAIN" --listen 192.168.77.2:7701 \
	--state-dir "$T_SCRATCH/plainstate" >"$RESULTS/tunnel-plain-serve.log" 2>&1 &
echo $! >"$T_SCRATCH/plain.pid"
wait_json "$T_SCRATCH/plainstate/replica-status.json" state serving 30 || exit 1
canary_fill PLAIN
capture_start "$CAP/plain.pcap" || exit 1
assert_ok inp "$B" sync --once tv --peer 192.168.77.2:7701 --state-dir "$T_SCRATCH/plainpstate" \
	--config "$P/tv.toml"
capture_stop
has_canary "$CAP/plain.pcap" PLAIN || t_fail "no canary in the clear-text capture ($(stat -c %s "$CAP/plain.pcap") bytes): this test could not see plaintext"
kill_pidfile "$T_SCRATCH/plain.pid"

t_case "replica serve from its config: tunnel up, listening on the tunnel address only"
# Started directly (not through inr): $! must be bdr itself (ip netns exec execs it).
BDR_CONFIG_DIR=$R ip netns exec bdrr "$B" -v replica serve tv >"$RESULTS/tunnel-serve.log" 2>&1 &
echo $! >"$T_SCRATCH/serve.pid"
wait_json "$T_SCRATCH/rstate/replica-status.json" state serving 30 || exit 1
assert_eq "$(jget listen <"$T_SCRATCH/rstate/replica-status.json")" "10.99.0.2:7700" "listen address"
assert_ok ip -n bdrr link show bdr-tv
inr ss -ltn >"$T_SCRATCH/ss.txt"
grep -q '10.99.0.2%bdr-tv:7700' "$T_SCRATCH/ss.txt" || t_fail "the listening socket is not bound to bdr-tv: $(cat "$T_SCRATCH/ss.txt")"
inr "$B" tunnel status tv >"$RESULTS/tunnel-status-replica.txt" 2>&1 || t_fail "bdr tunnel status: $(cat "$RESULTS/tunnel-status-replica.txt")"

t_case "primary run from its config: replication through WireGuard, no plaintext on the wire"
capture_start "$CAP/wg.pcap" || exit 1
canary_fill SECRET
BDR_CONFIG_DIR=$P ip netns exec bdrp "$B" -v primary run tv >"$RESULTS/tunnel-primary.log" 2>&1 &
echo $! >"$T_SCRATCH/daemon.pid"
# wait_caught_up N SECONDS: at least N cuts committed and nothing left to ship.
wait_caught_up() {
	local end=$((SECONDS + $2)) j c p
	while [ $SECONDS -lt $end ]; do
		j=$(inp "$B" status tv --json 2>/dev/null)
		c=$(jget cuts_committed <<<"$j") p=$(jget pending_regions <<<"$j")
		[ "${c:-0}" -ge "$1" ] && [ "$p" = 0 ] && return 0
		sleep 0.5
	done
	t_fail "after $2 s: ${c:-0} cuts committed (wanted $1), ${p:-?} regions pending; $(tail -n 5 "$RESULTS/tunnel-primary.log")"
}
wait_caught_up 1 120 # the seed of the new replica (a rescan)
c0=$(inp "$B" status tv --json | jget cuts_committed)
canary_fill SECRET2 # written while the daemon runs: shipped by an incremental cut
wait_caught_up $((c0 + 1)) 60
kill -TERM "$(cat "$T_SCRATCH/daemon.pid")"
wait "$(cat "$T_SCRATCH/daemon.pid")"
assert_eq "$?" 0 "exit status of bdr primary run after SIGTERM"
: >"$T_SCRATCH/daemon.pid"
capture_stop
sz=$(stat -c %s "$CAP/wg.pcap")
t_info "capture: $sz bytes"
[ "$sz" -gt $((8 * 1048576)) ] || t_fail "the capture holds $sz bytes: the data did not cross this veth"
has_canary "$CAP/wg.pcap" SECRET && t_fail "plaintext canary SECRET in the capture of the tunnel"
has_canary "$CAP/wg.pcap" SECRET2 && t_fail "plaintext canary SECRET2 in the capture of the tunnel"
has_canary "$CAP/wg.pcap" PLAIN && t_fail "plaintext canary PLAIN in the capture of the tunnel"
tcpdump -nr "$CAP/wg.pcap" 2>/dev/null | awk '{print $3, $4, $5}' | sort | uniq -c | sort -rn | head -n 8 >"$RESULTS/tunnel-capture-flows.txt"
tcp=$(tcpdump -nr "$CAP/wg.pcap" tcp 2>/dev/null | wc -l)
udp=$(tcpdump -nr "$CAP/wg.pcap" udp port 51820 2>/dev/null | wc -l)
t_info "packets on the veth: $udp WireGuard UDP, $tcp TCP"
assert_eq "$tcp" 0 "TCP packets on the veth (all of bdr's traffic must be inside WireGuard)"
[ "$udp" -gt 100 ] || t_fail "only $udp WireGuard packets"
cmp "/dev/mapper/tv" "$RDEV" || t_fail "the replica differs from the primary"
inp "$B" tunnel status tv >"$RESULTS/tunnel-status-primary.txt" 2>&1
grep -q "handshake" "$RESULTS/tunnel-status-primary.txt" || t_fail "tunnel status: $(cat "$RESULTS/tunnel-status-primary.txt")"
assert_ok inp "$B" verify tv

t_case "an intruder without the key cannot reach the replica's port"
assert_ok ip -n bdrx route add 10.99.0.0/30 via 192.168.78.2
assert_ok ip netns exec bdrr sysctl -qw net.ipv4.ip_forward=0
# Control: a socket on the tunnel address NOT bound to the interface is reachable straight
# through the underlay (the weak host model), so this probe can see a bypass.
ip netns exec bdrr python3 -c '
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.2", 7702)); s.listen(8); time.sleep(60)' &
ctl=$!
sleep 1.5
tcp_reach bdrx 10.99.0.2 7702 || t_fail "control: an unbound socket on 10.99.0.2 was not reachable from bdrx; the probe is blind"
kill $ctl 2>/dev/null
wait $ctl 2>/dev/null
tcp_reach bdrx 10.99.0.2 7700 && t_fail "bdrx reached 10.99.0.2:7700 through the underlay"
tcp_reach bdrx 192.168.78.2 7700 && t_fail "bdrx reached the replica's underlay address on 7700"
# Its own WireGuard with a key the replica does not know, aimed at the replica's endpoint.
inx "$B" keygen --out "$X/x.key" >/dev/null || t_fail "keygen (intruder)"
assert_ok ip -n bdrx link add wgx type wireguard
assert_ok inx wg set wgx private-key "$X/x.key" peer "$PUBR" endpoint 192.168.78.2:51820 allowed-ips 10.99.0.2/32
assert_ok ip -n bdrx route del 10.99.0.0/30 via 192.168.78.2
assert_ok ip -n bdrx addr add 10.99.0.1/30 dev wgx
assert_ok ip -n bdrx link set wgx up
tcp_reach bdrx 10.99.0.2 7700 && t_fail "bdrx reached 10.99.0.2:7700 with a key of its own"
hs=$(inx wg show wgx latest-handshakes | awk '{print $2}')
assert_eq "${hs:-0}" 0 "handshakes of the intruder's tunnel"

t_case "a key file readable by others is refused"
chmod 644 "$P/tv.key"
out=$(inp "$B" tunnel up tv 2>&1) && t_fail "tunnel up with a 0644 key succeeded"
[[ $out == *"chmod 600"* ]] || t_fail "no fix named: $out"
out=$(inp "$B" config check tv 2>&1) && t_fail "config check accepted a 0644 key"
[[ $out == *"tunnel.private_key"* ]] || t_fail "config check did not name the key: $out"
chmod 600 "$P/tv.key"

t_case "garbage over the tunnel: refused, reason in bdr status, committed cut kept"
cut=$(jget last_cut <"$T_SCRATCH/rstate/replica-status.json")
assert_ok inp "$B" tunnel up tv
ip netns exec bdrp python3 -c '
import socket
s = socket.create_connection(("10.99.0.2", 7700), timeout=10)
s.sendall(b"GET / HTTP/1.1\r\nHost: replica\r\n\r\n" * 4)
s.settimeout(10)
try:
    while s.recv(4096): pass
except OSError: pass' || t_fail "could not send garbage through the tunnel"
sleep 1
st=$(inr "$B" status tv 2>&1)
t_info "$st"
[[ $st == *"BDRF"* || $st == *"magic"* ]] || t_fail "bdr status does not show the bad frame: $st"
assert_eq "$(inr "$B" status tv --json | jget last_cut)" "$cut" "last committed cut after garbage"
grep -q "magic" "$RESULTS/tunnel-serve.log" || t_fail "the serve log does not name the bad frame"
kill -TERM "$(cat "$T_SCRATCH/serve.pid")"
wait "$(cat "$T_SCRATCH/serve.pid")"
assert_eq "$?" 0 "exit status of replica serve after SIGTERM"
: >"$T_SCRATCH/serve.pid"
cmp "/dev/mapper/tv" "$RDEV" || t_fail "the replica changed"
assert_ok inp "$B" tunnel down tv
assert_fails ip -n bdrp link show bdr-tv
assert_ok inp "$B" tunnel down tv # gone already: still fine
