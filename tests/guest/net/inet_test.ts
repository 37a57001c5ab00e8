import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  buildArp,
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  buildUdp,
  EtherType,
  formatIpv4,
  InetHost,
  internetChecksum,
  IpProto,
  parseArp,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
  parseIpv4Packet,
  parseUdp,
} from "../../../src/guest/net/inet.ts";
import { settle, twoGuests, up } from "./helpers.ts";

Deno.test("inet helpers", async (t) => {
  await t.step("IPv4 addresses parse and format", () => {
    assertEquals(parseIpv4("10.0.0.1"), 0x0a000001);
    assertEquals(formatIpv4(0xc0a80101), "192.168.1.1");
    assertThrows(() => parseIpv4("10.0.0.256"), TypeError, '"10.0.0.256"');
  });
  await t.step("the Internet checksum matches RFC 1071's example", () => {
    const data = new Uint8Array([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    assertEquals(internetChecksum(data), ~0xddf2 & 0xffff);
  });
  await t.step("packets round-trip through their builders and parsers", () => {
    const src = parseIpv4("10.0.0.1");
    const dst = parseIpv4("10.0.0.2");
    const udp = buildUdp(src, dst, 1234, 53, new Uint8Array([1, 2, 3]));
    const ip = buildIpv4(src, dst, IpProto.UDP, udp, { id: 7 });
    const frame = buildEthernet("52:54:00:00:00:02", "52:54:00:00:00:01", EtherType.IPV4, ip);
    const eth = parseEthernet(frame)!;
    assertEquals([eth.dst, eth.src, eth.type, eth.vlan], [
      "52:54:00:00:00:02",
      "52:54:00:00:00:01",
      0x0800,
      -1,
    ]);
    const p = parseIpv4Packet(eth.payload)!;
    assertEquals([p.src, p.dst, p.proto, p.id], [src, dst, 17, 7]);
    const u = parseUdp(p.src, p.dst, p.payload)!;
    assertEquals([u.sport, u.dport, Array.from(u.data)], [1234, 53, [1, 2, 3]]);
    const bad = udp.slice();
    bad[8] ^= 1;
    assertEquals(parseUdp(src, dst, bad), null, "a corrupted datagram fails its checksum");
    const echo = parseIcmpEcho(buildIcmpEcho({ type: 8, id: 1, seq: 2, data: new Uint8Array(4) }))!;
    assertEquals([echo.type, echo.id, echo.seq], [8, 1, 2]);
    const arp = parseArp(buildArp({
      op: 1,
      senderMac: "52:54:00:00:00:01",
      senderIp: src,
      targetMac: "00:00:00:00:00:00",
      targetIp: dst,
    }))!;
    assertEquals([arp.op, arp.senderIp, arp.targetIp], [1, src, dst]);
    const ipBad = ip.slice();
    ipBad[8] = 1;
    assertEquals(parseIpv4Packet(ipBad), null, "a wrong header checksum is refused");
  });
});

Deno.test("InetHost: two guests ping each other and exchange UDP through two virtio-net devices", () => {
  const [ga, gb] = twoGuests();
  let hostA: InetHost | null = null;
  let hostB: InetHost | null = null;
  const a = up(ga, { onReceive: (f, info) => hostA!.receive(f, info) });
  const b = up(gb, { onReceive: (f, info) => hostB!.receive(f, info) });
  hostA = new InetHost({ mac: a.mac, send: (f) => a.send(f) }, "10.0.0.1");
  hostB = new InetHost({ mac: b.mac, send: (f) => b.send(f) }, "10.0.0.2");
  for (let seq = 1; seq <= 3; seq++) {
    hostA.ping("10.0.0.2", seq);
    settle(a, b);
  }
  assertEquals(hostA.echoReplies.map((r) => r.seq), [1, 2, 3]);
  assertEquals(formatIpv4(hostA.echoReplies[0].from), "10.0.0.2");
  assertEquals(hostA.arp.get(parseIpv4("10.0.0.2")), b.mac, "learnt by ARP");
  const received: string[] = [];
  hostB.bindUdp(7, (data, from, sport) => {
    received.push(new TextDecoder().decode(data));
    hostB!.sendUdp(formatIpv4(from), 7, sport, data);
  });
  const echoed: string[] = [];
  hostA.bindUdp(5000, (data) => echoed.push(new TextDecoder().decode(data)));
  const message = "x".repeat(1400);
  for (let i = 0; i < 50; i++) {
    hostA.sendUdp("10.0.0.2", 5000, 7, new TextEncoder().encode(`${i}:${message}`));
    settle(a, b);
  }
  assertEquals(received.length, 50);
  assertEquals(echoed.length, 50);
  assert(echoed.every((m, i) => m === `${i}:${message}`));
  assertEquals(hostA.stats.sendFailures + hostB.stats.sendFailures, 0);
  assertEquals(ga.device.metrics.rxTotal().drops + gb.device.metrics.rxTotal().drops, 0);
});

Deno.test("InetHost answers gratuitous ARP requests by learning, and announces", () => {
  const sent: Uint8Array[] = [];
  const host = new InetHost(
    { mac: "52:54:00:00:00:01", send: (f) => sent.push(f) > 0 },
    "10.0.0.1",
  );
  host.announce();
  const eth = parseEthernet(sent[0])!;
  assertEquals(eth.dst, "ff:ff:ff:ff:ff:ff");
  const arp = parseArp(eth.payload)!;
  assertEquals([arp.senderIp, arp.targetIp], [parseIpv4("10.0.0.1"), parseIpv4("10.0.0.1")]);
  const other = new InetHost({ mac: "52:54:00:00:00:02", send: () => true }, "10.0.0.2");
  other.receive(sent[0]);
  assertEquals(other.arp.get(parseIpv4("10.0.0.1")), "52:54:00:00:00:01");
});
