import { assert, assertEquals } from "@std/assert";
import {
  addChecksum,
  finishChecksum,
  foldChecksum,
  NetAck,
  NetCtrl,
  NetGso,
  NetHdrFlag,
  VirtioNetFeature as F,
} from "../../../devices/net/mod.ts";
import { cable, ethFrame, HDR, patterned } from "./harness.ts";

const A_MAC = "52:54:00:00:00:0a";
const B_MAC = "52:54:00:00:00:0b";
const NEEDS_CSUM = NetHdrFlag.NEEDS_CSUM;
const TX_OFFLOADS = [F.MAC, F.CSUM, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN, F.HOST_UFO, F.HOST_USO];

/** An IPv4/UDP frame whose UDP checksum field holds the pseudo-header sum (a partial checksum). */
function udp4Partial(payloadLength: number): { frame: Uint8Array; csumStart: number } {
  const udpLen = 8 + payloadLength;
  const ip = new Uint8Array(20);
  ip.set([0x45, 0, (20 + udpLen) >> 8, (20 + udpLen) & 0xff, 0, 1, 0x40, 0, 64, 17, 0, 0]);
  ip.set([10, 0, 0, 1], 12);
  ip.set([10, 0, 0, 2], 16);
  const ipSum = foldChecksum(addChecksum(0, ip, 0, 20, false));
  ip[10] = ipSum >> 8;
  ip[11] = ipSum & 0xff;
  const udp = new Uint8Array(udpLen);
  udp.set([0x30, 0x39, 0x00, 0x35, udpLen >> 8, udpLen & 0xff, 0, 0]);
  udp.set(patterned(payloadLength, 3), 8);
  // Pseudo-header sum, not complemented, in the checksum field.
  const pseudo = new Uint8Array([10, 0, 0, 1, 10, 0, 0, 2, 0, 17, udpLen >> 8, udpLen & 0xff]);
  let sum = addChecksum(0, pseudo, 0, pseudo.length, false);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  udp[6] = sum >> 8;
  udp[7] = sum & 0xff;
  const body = new Uint8Array(20 + udpLen);
  body.set(ip);
  body.set(udp, 20);
  return { frame: ethFrame(B_MAC, A_MAC, 0x0800, body), csumStart: 34 };
}

/** True when the UDP checksum of an IPv4/UDP frame verifies. */
function udpChecksumValid(frame: Uint8Array): boolean {
  const udpLen = (frame[38] << 8) | frame[39];
  const pseudo = new Uint8Array(12);
  pseudo.set(frame.subarray(26, 34));
  pseudo[9] = 17;
  pseudo[10] = udpLen >> 8;
  pseudo[11] = udpLen & 0xff;
  let sum = addChecksum(0, pseudo, 0, 12, false);
  sum = addChecksum(sum, frame, 34, 34 + udpLen, false);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum === 0xffff;
}

Deno.test("VirtioNet checksum offload", async (t) => {
  await t.step("a receiver with GUEST_CSUM gets NEEDS_CSUM and the csum fields as sent", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC, F.GUEST_CSUM]);
    b.postRx(0, 2048);
    const { frame, csumStart } = udp4Partial(100);
    a.transmit(1, frame, { flags: NEEDS_CSUM, csumStart, csumOffset: 6 });
    const [got] = b.received(0);
    assertEquals(got.flags, NEEDS_CSUM);
    assertEquals([got.csumStart, got.csumOffset], [csumStart, 6]);
    assertEquals(got.frame, frame, "the device leaves the partial checksum alone");
  });
  await t.step("a receiver without GUEST_CSUM gets the checksum finished and flags 0", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC]);
    b.postRx(0, 2048);
    const { frame, csumStart } = udp4Partial(101);
    assert(!udpChecksumValid(frame));
    a.transmit(1, frame, { flags: NEEDS_CSUM, csumStart, csumOffset: 6 }, [
      HDR + 7,
      frame.length - 7,
    ]);
    const [got] = b.received(0);
    assertEquals(got.flags, 0);
    assertEquals([got.csumStart, got.csumOffset], [0, 0]);
    assert(udpChecksumValid(got.frame));
    const expected = frame.slice();
    finishChecksum(expected, csumStart, 6);
    assertEquals(got.frame, expected);
  });
  await t.step("the finished checksum may straddle two mergeable buffers", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC, F.MRG_RXBUF]);
    // The checksum field is at frame offset 40: header 12 + 41 bytes puts its 2nd byte in buffer 2.
    b.postRx(0, HDR + 41, 1024);
    const { frame, csumStart } = udp4Partial(200);
    a.transmit(1, frame, { flags: NEEDS_CSUM, csumStart, csumOffset: 6 });
    const [got] = b.received(0);
    assertEquals(got.numBuffers, 2);
    assert(udpChecksumValid(got.frame));
  });
  await t.step("a NEEDS_CSUM field beyond the frame is malformed", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC]);
    b.postRx(0, 2048);
    a.transmit(1, ethFrame(B_MAC, A_MAC), { flags: NEEDS_CSUM, csumStart: 50, csumOffset: 10 });
    assertEquals(a.device.metrics.tx[0].malformedFrames, 1);
    assertEquals(b.received(0).length, 0);
  });
});

Deno.test("VirtioNet segmentation offload metadata", async (t) => {
  const gso = (gsoType: number) => ({
    flags: NEEDS_CSUM,
    gsoType,
    gsoSize: 1448,
    hdrLen: 54,
    csumStart: 34,
    csumOffset: 16,
  });
  const big = () => ethFrame(B_MAC, A_MAC, 0x0800, 20000);
  await t.step("a TSO4 frame reaches a GUEST_TSO4 receiver with its metadata", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC, F.MRG_RXBUF, F.GUEST_CSUM, F.GUEST_TSO4]);
    for (let i = 0; i < 6; i++) b.postRx(0, 4096);
    const frame = big();
    a.transmit(1, frame, gso(NetGso.TCPV4));
    const [got] = b.received(0);
    assertEquals(got.gsoType, NetGso.TCPV4);
    assertEquals(got.gsoSize, 1448);
    assertEquals(got.hdrLen, 54);
    assertEquals(got.flags, NEEDS_CSUM);
    assertEquals([got.csumStart, got.csumOffset], [34, 16]);
    assertEquals(got.frame, frame);
  });
  await t.step("a GSO frame for a receiver without that offload is dropped and counted", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC, F.MRG_RXBUF, F.GUEST_CSUM, F.GUEST_TSO6]);
    for (let i = 0; i < 6; i++) b.postRx(0, 4096);
    a.transmit(1, big(), gso(NetGso.TCPV4));
    assertEquals(b.received(0).length, 0);
    assertEquals(b.device.metrics.rx[0].offloadDrops, 1);
    assertEquals(a.device.metrics.tx[0].packets, 1, "the sender transmitted it");
  });
  await t.step("the ECN bit needs GUEST_ECN", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC, F.MRG_RXBUF, F.GUEST_CSUM, F.GUEST_TSO4]);
    for (let i = 0; i < 6; i++) b.postRx(0, 4096);
    a.transmit(1, big(), gso(NetGso.TCPV4 | NetGso.ECN));
    assertEquals(b.device.metrics.rx[0].offloadDrops, 1);
    const c = cable();
    c.a.activate(TX_OFFLOADS);
    c.b.activate([F.MAC, F.MRG_RXBUF, F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_ECN]);
    for (let i = 0; i < 6; i++) c.b.postRx(0, 4096);
    c.a.transmit(1, big(), gso(NetGso.TCPV4 | NetGso.ECN));
    assertEquals(c.b.received(0)[0].gsoType, NetGso.TCPV4 | NetGso.ECN);
  });
  await t.step("USO over IPv6 needs GUEST_USO6, over IPv4 GUEST_USO4", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([F.MAC, F.MRG_RXBUF, F.GUEST_CSUM, F.GUEST_USO4]);
    for (let i = 0; i < 12; i++) b.postRx(0, 4096);
    const v6 = ethFrame(B_MAC, A_MAC, 0x86dd, 9000);
    a.transmit(1, v6, { ...gso(NetGso.UDP_L4), csumStart: 54, csumOffset: 6 });
    assertEquals(b.device.metrics.rx[0].offloadDrops, 1);
    a.transmit(1, big(), { ...gso(NetGso.UDP_L4), csumOffset: 6 });
    assertEquals(b.received(0)[0].gsoType, NetGso.UDP_L4);
  });
  await t.step(
    "GSO without the HOST_* feature, without NEEDS_CSUM or with gso_size 0 is malformed",
    () => {
      const { a, b } = cable();
      a.activate([F.MAC, F.CSUM, F.HOST_TSO4]);
      b.activate([F.MAC, F.MRG_RXBUF, F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6]);
      a.transmit(1, big(), gso(NetGso.TCPV6));
      a.transmit(1, big(), { ...gso(NetGso.TCPV4), flags: 0 });
      a.transmit(1, big(), { ...gso(NetGso.TCPV4), gsoSize: 0 });
      a.transmit(1, big(), gso(0x21));
      assertEquals(a.device.metrics.tx[0].malformedFrames, 4);
    },
  );
  await t.step("GUEST_OFFLOADS_SET turns negotiated receive offloads off and on", () => {
    const { a, b } = cable();
    a.activate(TX_OFFLOADS);
    b.activate([
      F.MAC,
      F.MRG_RXBUF,
      F.GUEST_CSUM,
      F.GUEST_TSO4,
      F.CTRL_VQ,
      F.CTRL_GUEST_OFFLOADS,
    ]);
    for (let i = 0; i < 12; i++) b.postRx(0, 4096);
    const le64 = (v: number) => {
      const out = new Uint8Array(8);
      new DataView(out.buffer).setBigUint64(0, BigInt(v), true);
      return out;
    };
    const set = (mask: number) =>
      b.ctrl(2, NetCtrl.GUEST_OFFLOADS, NetCtrl.GUEST_OFFLOADS_SET, le64(mask));
    assertEquals(set(1 << F.GUEST_CSUM), NetAck.OK);
    a.transmit(1, big(), gso(NetGso.TCPV4));
    assertEquals(b.device.metrics.rx[0].offloadDrops, 1);
    assertEquals(set(0), NetAck.OK);
    const { frame, csumStart } = udp4Partial(64);
    a.transmit(1, frame, { flags: NEEDS_CSUM, csumStart, csumOffset: 6 });
    const [got] = b.received(0);
    assertEquals(got.flags, 0, "without GUEST_CSUM in use the checksum is finished");
    assert(udpChecksumValid(got.frame));
    assertEquals(set((1 << F.GUEST_CSUM) | (1 << F.GUEST_TSO4)), NetAck.OK);
    a.transmit(1, big(), gso(NetGso.TCPV4));
    assertEquals(b.received(0)[0].gsoType, NetGso.TCPV4);
    assertEquals(set(1 << F.GUEST_UFO), NetAck.ERR, "not negotiated");
  });
});

Deno.test("VirtioNet MTU", async (t) => {
  await t.step("with MTU negotiated, non-GSO frames over mtu + 14 are dropped; VLAN adds 4", () => {
    const { a, b } = cable({}, { mtu: 1500 });
    a.activate([F.MAC]);
    b.activate([F.MAC, F.MTU, F.MRG_RXBUF]);
    for (let i = 0; i < 4; i++) b.postRx(0, 4096);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 1500));
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 1501));
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x8100, 1504));
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x8100, 1505));
    assertEquals(b.received(0).map((f) => f.frame.length), [1514, 1518]);
    assertEquals(b.device.metrics.rx[0].oversize, 2);
  });
  await t.step("without MTU negotiated large frames pass", () => {
    const { a, b } = cable({}, { mtu: 1500 });
    a.activate([F.MAC]);
    b.activate([F.MAC, F.MRG_RXBUF]);
    for (let i = 0; i < 4; i++) b.postRx(0, 4096);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 9000));
    assertEquals(b.received(0).length, 1);
  });
});
