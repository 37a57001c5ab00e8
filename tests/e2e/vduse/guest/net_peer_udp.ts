/**
 * The far end of the guest's vireo virtio-net device for the VDUSE net test:
 * tests/e2e/net_peer.ts's tiny IPv4 host (ARP, ICMP echo, UDP) on a UDP
 * wire, the same wire examples/vduse_host.ts --net speaks (one Ethernet frame
 * per datagram). It also echoes UDP datagrams sent to its port 7.
 *
 * Usage: `deno run -A net_peer_udp.ts LOCAL_PORT REMOTE_PORT MAC IP`; stops
 * on SIGTERM and prints its counters.
 *
 * @module
 */
import { NetPeer } from "../../net_peer.ts";
import { UdpBackend } from "../../../../devices/net/backends/udp_deno.ts";
import type { PairBackend } from "../../../../devices/net/backends/pair.ts";

const [local, remote, mac, ip] = Deno.args;
const udp = await UdpBackend.open({
  port: Number(local),
  remote: { hostname: "127.0.0.1", port: Number(remote) },
});
// NetPeer only calls attach/send/flush, which every NetBackend has.
const peer = new NetPeer(udp as unknown as PairBackend, mac, ip);
peer.onUdp(7, (d) => peer.sendUdp(d.from, d.sourcePort, 7, d.data));
console.log(`net_peer: ${ip} (${mac}) on udp ${local}, wire to udp ${remote}`);
const done = Promise.withResolvers<void>();
Deno.addSignalListener("SIGTERM", () => done.resolve());
await done.promise;
const s = peer.stats;
console.log(
  `net_peer: stopped: ${s.frames} frames in, ${s.sent} out, ${s.arpRequests} ARP requests, ` +
    `${s.echoRequests} echo requests, ${s.udpDatagrams} UDP datagrams`,
);
udp.close();
Deno.exit(0);
