# virtio-net served by vireo's VDUSE daemon (examples/vduse_host.ts --net
# --attach), its wire a UDP socket to net_peer_udp.ts (an IPv4 host at
# 10.0.2.2). The guest kernel's virtio_net binds through virtio_vdpa; the guest
# pings the peer and exchanges UDP datagrams with it.
. ./lib.sh

NAME=vireo-net
MAC=52:54:00:12:34:56
PEER_MAC=52:54:00:00:00:02
LOG=/tmp/daemon.log
PLOG=/tmp/peer.log

ip link set lo up
$DENO_RUN ./net_peer_udp.ts 5556 5555 "$PEER_MAC" 10.0.2.2 >"$PLOG" 2>&1 &
peer=$!
t0=$(now_ms)
$DENO_RUN /vireo/examples/vduse_host.ts --net --name "$NAME" --attach --mac "$MAC" \
  --udp-port 5555 --udp-remote 127.0.0.1:5556 >"$LOG" 2>&1 &
pid=$!
if wait_for "$LOG" "created /dev/vduse/$NAME" 60 "$pid"; then
  ok net-accepted "VDUSE_CREATE_DEV took a virtio-net device ($(($(now_ms) - t0)) ms)"
else
  fail net-accepted "the daemon did not create /dev/vduse/$NAME"
  show "$LOG" daemon
  finish
fi
if wait_for "$LOG" "attached $NAME" 30 "$pid"; then ok vdpa-attach; else
  fail vdpa-attach "the daemon's vdpa dev add did not succeed"
  show "$LOG" daemon
  finish
fi
vdpa dev show "$NAME" 2>&1 | sed 's/^/  vdpa: /'
iface=
deadline=$(($(now_ms) + 30000))
while [ -z "$iface" ] && [ "$(now_ms)" -lt "$deadline" ]; do
  iface=$(ls /sys/bus/vdpa/devices/$NAME/virtio*/net/ 2>/dev/null | head -n 1)
  [ -n "$iface" ] || usleep 50000
done
if [ -n "$iface" ]; then ok iface "$iface"; else
  fail iface "no network interface under /sys/bus/vdpa/devices/$NAME"
  show "$LOG" daemon
  finish
fi
wait_for "$LOG" "driver ok" 10 "$pid" && ok driver-ok || fail driver-ok "daemon did not report DRIVER_OK"
vdev=$(basename "$(readlink -f /sys/bus/vdpa/devices/$NAME/virtio*)")
echo "@@vireo info net-driver $(basename "$(readlink /sys/bus/virtio/devices/$vdev/driver)") $vdev $iface"
echo "@@vireo info net-features $(cat /sys/bus/virtio/devices/$vdev/features)"
mac=$(cat /sys/class/net/$iface/address)
[ "$mac" = "$MAC" ] && ok mac "$mac" || fail mac "interface has $mac, device config says $MAC"

ip addr add 10.0.2.15/24 dev "$iface"
check link-up ip link set "$iface" up
m0=$(now_ms)
out=$(ping -c 5 -i 0.2 -W 3 10.0.2.2 2>&1)
m1=$(now_ms)
echo "$out" | sed 's/^/  ping: /'
case "$out" in
  *" 0% packet loss"*) ok ping "5 of 5 in $((m1 - m0)) ms" ;;
  *) fail ping "$(echo "$out" | tail -n 2 | tr '\n' ' ')" ;;
esac
out=$(ping -c 3 -s 1400 -W 3 10.0.2.2 2>&1)
case "$out" in
  *" 0% packet loss"*) ok ping-1400 ;;
  *) fail ping-1400 "$(echo "$out" | tail -n 2 | tr '\n' ' ')" ;;
esac
# UDP datagrams through the peer's echo port, every byte checked.
m0=$(now_ms)
out=$($DENO_RUN ./udp_echo_client.ts 10.0.2.2 7 200 1024 8 2>&1)
st=$?
m1=$(now_ms)
echo "  $out"
[ "$st" = 0 ] && ok udp-echo "$out" || fail udp-echo "$out"
# The carrier (VIRTIO_NET_S_LINK_UP) and the link state the kernel sees.
echo "@@vireo info net-operstate $(cat /sys/class/net/$iface/operstate) carrier $(cat /sys/class/net/$iface/carrier 2>/dev/null)"
rx=$(cat /sys/class/net/$iface/statistics/rx_packets)
tx=$(cat /sys/class/net/$iface/statistics/tx_packets)
echo "@@vireo info net-packets rx $rx tx $tx"

kill -TERM "$pid"
wait "$pid"
st=$?
kill -TERM "$peer"
wait "$peer"
show "$LOG" daemon
show "$PLOG" peer
[ "$st" = 0 ] && ok daemon-exit || fail daemon-exit "status $st"
[ -e "/dev/vduse/$NAME" ] && fail destroyed "/dev/vduse/$NAME still exists" || ok destroyed
finish
