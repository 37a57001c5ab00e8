import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  BufferFrame,
  createPair,
  FrameBacklog,
  NetGso,
  NetHdrFlag,
  NullBackend,
  PCAP_MAGIC,
  PcapRecorder,
  VirtioNet,
  VirtioNetFeature as F,
} from "../../../devices/net/mod.ts";
import { openPcapFile } from "../../../devices/net/backends/pcap_deno.ts";
import { UdpBackend } from "../../../devices/net/backends/udp_deno.ts";
import { cable, concat, ethFrame, Harness, HDR } from "./harness.ts";

const A_MAC = "52:54:00:00:00:0a";
const B_MAC = "52:54:00:00:00:0b";

/** Parses a pcap file into its records. */
function parsePcap(
  bytes: Uint8Array,
): { linktype: number; records: Uint8Array[]; lengths: number[] } {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  assertEquals(v.getUint32(0, true), PCAP_MAGIC);
  assertEquals([v.getUint16(4, true), v.getUint16(6, true)], [2, 4]);
  const records: Uint8Array[] = [];
  const lengths: number[] = [];
  for (let off = 24; off < bytes.length;) {
    const captured = v.getUint32(off + 8, true);
    lengths.push(v.getUint32(off + 12, true));
    records.push(bytes.slice(off + 16, off + 16 + captured));
    off += 16 + captured;
  }
  return { linktype: v.getUint32(20, true), records, lengths };
}

async function waitFor(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("pair backend", async (t) => {
  await t.step("an end accepts one device only; ends connect once", () => {
    const [a] = createPair();
    new VirtioNet({ backend: a });
    assertThrows(() => new VirtioNet({ backend: a }), TypeError, "already attached");
    const [c, d] = createPair();
    assertEquals(c.peer, d);
  });
  await t.step("frames sent before the peer has a device are dropped and counted", () => {
    const [a] = createPair();
    const h = new Harness(new VirtioNet({ mac: A_MAC, backend: a }));
    h.activate([F.MAC]);
    h.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(a.stats.dropped, 1);
    assertEquals(h.device.metrics.tx[0].backendDrops, 1);
  });
  await t.step("with a backlog, frames wait for the peer's buffers, in order, bounded", () => {
    const { a, b } = cable({}, {}, { backlog: 3 });
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    for (let i = 0; i < 5; i++) {
      a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 50 + i));
      a.txDone(1);
    }
    const end = b.device.backend as ReturnType<typeof createPair>[0];
    assertEquals(end.backlog.length, 3);
    assertEquals(end.backlog.drops, 2);
    assertEquals(b.device.metrics.rx[0].deferred, 1, "later frames queue behind the first");
    b.postRx(0, 1526, 1526);
    b.kick(0);
    assertEquals(b.received(0).map((f) => f.frame.length), [64, 65]);
    assertEquals(end.backlog.length, 1);
    b.postRx(0, 1526, 1526);
    b.kick(0);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 80));
    assertEquals(b.received(0).map((f) => f.frame.length), [66, 94], "the backlog goes first");
  });
  await t.step("closing an end drops frames both ways", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.postRx(0, 1526);
    a.device.backend.close();
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.received(0).length, 0);
    assertEquals(a.device.metrics.tx[0].backendDrops, 1);
  });
});

Deno.test("NullBackend drops every frame", () => {
  const h = new Harness(new VirtioNet({ mac: A_MAC, backend: new NullBackend() }));
  h.activate([F.MAC]);
  h.transmit(1, ethFrame(B_MAC, A_MAC));
  assertEquals(h.txDone(1), 1);
  assertEquals(h.device.metrics.tx[0].backendDrops, 1);
});

Deno.test("FrameBacklog", async (t) => {
  await t.step("copies frames with their header and refuses beyond capacity", () => {
    const backlog = new FrameBacklog(1);
    const frame = new BufferFrame().set(new Uint8Array([1, 2, 3]));
    frame.header.flags = NetHdrFlag.NEEDS_CSUM;
    assert(backlog.push(frame));
    assert(!backlog.push(frame));
    assertEquals(backlog.drops, 1);
    const got: Uint8Array[] = [];
    backlog.drain({
      receive: (f) => {
        const bytes = new Uint8Array(f.length);
        f.read(bytes);
        got.push(bytes);
        assertEquals(f.header.flags, NetHdrFlag.NEEDS_CSUM);
        return true;
      },
      flush: () => {},
    });
    assertEquals(got, [new Uint8Array([1, 2, 3])]);
  });
  await t.step("rejects a capacity out of range", () => {
    assertThrows(() => new FrameBacklog(-1), RangeError, "capacity -1");
  });
});

Deno.test("PcapRecorder", async (t) => {
  await t.step("records both directions of a device as Ethernet frames", () => {
    const chunks: Uint8Array[] = [];
    const [ea, eb] = createPair();
    let clock = 1_700_000_000_123.5;
    const recorder = new PcapRecorder(ea, (bytes) => chunks.push(bytes.slice()), {
      now: () => clock++,
    });
    const a = new Harness(new VirtioNet({ mac: A_MAC, backend: recorder }));
    const b = new Harness(new VirtioNet({ mac: B_MAC, backend: eb }));
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    a.postRx(0, 1526);
    b.postRx(0, 1526);
    const out = ethFrame(B_MAC, A_MAC, 0x0800, 100);
    const back = ethFrame(A_MAC, B_MAC, 0x0806, 28);
    a.transmit(1, out);
    b.transmit(1, back);
    assertEquals(b.received(0)[0].frame, out);
    assertEquals(a.received(0)[0].frame, back);
    const pcap = parsePcap(concat(...chunks));
    assertEquals(pcap.linktype, 1);
    assertEquals(pcap.records, [out, back]);
    assertEquals(recorder.frames, 2);
    const v = new DataView(chunks[1].buffer);
    assertEquals(v.getUint32(0, true), 1_700_000_000);
    assertEquals(v.getUint32(4, true), 123500);
  });
  await t.step("snaplen truncates records but keeps the original length", () => {
    const chunks: Uint8Array[] = [];
    const [ea, eb] = createPair();
    const recorder = new PcapRecorder(ea, (bytes) => chunks.push(bytes.slice()), {
      snaplen: 20,
      direction: "tx",
    });
    const a = new Harness(new VirtioNet({ mac: A_MAC, backend: recorder }));
    new VirtioNet({ backend: eb });
    a.activate([F.MAC]);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 100));
    const pcap = parsePcap(concat(...chunks));
    assertEquals(pcap.records[0].length, 20);
    assertEquals(pcap.lengths, [114]);
  });
  await t.step("bad options throw", () => {
    const [ea] = createPair();
    assertThrows(() => new PcapRecorder(ea, () => {}, { snaplen: 0 }), RangeError, "snaplen 0");
    // deno-lint-ignore no-explicit-any
    assertThrows(() => new PcapRecorder(ea, null as any), TypeError, "sink");
  });
  await t.step("openPcapFile writes a readable capture file", () => {
    const path = Deno.makeTempFileSync({ suffix: ".pcap" });
    try {
      const file = openPcapFile(path);
      const [ea, eb] = createPair();
      const a = new Harness(
        new VirtioNet({ mac: A_MAC, backend: new PcapRecorder(ea, file.sink) }),
      );
      new VirtioNet({ backend: eb });
      a.activate([F.MAC]);
      const frame = ethFrame(B_MAC, A_MAC, 0x0800, 64);
      a.transmit(1, frame);
      file.close();
      file.close();
      assertEquals(parsePcap(Deno.readFileSync(path)).records, [frame]);
    } finally {
      Deno.removeSync(path);
    }
  });
});

Deno.test({
  name: "UdpBackend carries frames between two devices over UDP",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    await t.step("plain frames, with checksums finished and GSO frames dropped", async () => {
      const ua = await UdpBackend.open();
      const ub = await UdpBackend.open({ remote: ua.address });
      ua.remote = ub.address;
      try {
        const a = new Harness(new VirtioNet({ mac: A_MAC, backend: ua }));
        const b = new Harness(new VirtioNet({ mac: B_MAC, backend: ub }));
        a.activate([F.MAC, F.CSUM, F.HOST_TSO4]);
        b.activate([F.MAC]);
        b.postRx(0, 1526, 1526);
        const frame = ethFrame(B_MAC, A_MAC, 0x0800, 100);
        a.transmit(1, frame);
        await waitFor(() => b.device.metrics.rx[0].packets === 1, "the frame");
        assertEquals(b.received(0)[0].frame, frame);
        const partial = ethFrame(B_MAC, A_MAC, 0x0800, 40);
        a.transmit(1, partial, { flags: NetHdrFlag.NEEDS_CSUM, csumStart: 14, csumOffset: 4 });
        await waitFor(() => b.device.metrics.rx[0].packets === 2, "the second frame");
        const got = b.received(0)[0];
        assertEquals(got.flags, 0);
        assert(got.frame[18] !== partial[18] || got.frame[19] !== partial[19], "checksum written");
        a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 3000), {
          flags: NetHdrFlag.NEEDS_CSUM,
          gsoType: NetGso.TCPV4,
          gsoSize: 1000,
          csumStart: 34,
          csumOffset: 16,
        });
        assertEquals(ua.stats.dropped, 1);
        assertEquals(a.device.metrics.tx[0].backendDrops, 1);
      } finally {
        ua.close();
        ub.close();
      }
    });
    await t.step(
      "with vnet headers offload metadata crosses; frames wait for buffers",
      async () => {
        const ua = await UdpBackend.open({ vnetHeader: true });
        const ub = await UdpBackend.open({ vnetHeader: true, remote: ua.address, backlog: 8 });
        ua.remote = ub.address;
        try {
          const a = new Harness(new VirtioNet({ mac: A_MAC, backend: ua }));
          const b = new Harness(new VirtioNet({ mac: B_MAC, backend: ub }));
          a.activate([F.MAC, F.CSUM, F.HOST_TSO4]);
          b.activate([F.MAC, F.MRG_RXBUF, F.GUEST_CSUM, F.GUEST_TSO4]);
          const frame = ethFrame(B_MAC, A_MAC, 0x0800, 3000);
          a.transmit(1, frame, {
            flags: NetHdrFlag.NEEDS_CSUM,
            gsoType: NetGso.TCPV4,
            gsoSize: 1000,
            csumStart: 34,
            csumOffset: 16,
          });
          await waitFor(() => ub.stats.received === 1, "the datagram");
          assertEquals(ub.backlog.length, 1, "no buffers yet: held in the backlog");
          b.postRx(0, 4096);
          b.kick(0);
          const [got] = b.received(0);
          assertEquals(got.frame, frame);
          assertEquals(got.gsoType, NetGso.TCPV4);
          assertEquals(got.gsoSize, 1000);
          assertEquals(ub.backlog.length, 0);
        } finally {
          ua.close();
          ub.close();
        }
      },
    );
    await t.step("a short datagram is counted as malformed", async () => {
      const ub = await UdpBackend.open({ vnetHeader: true });
      const ua = await UdpBackend.open({ remote: ub.address });
      try {
        const b = new Harness(new VirtioNet({ mac: B_MAC, backend: ub }));
        b.activate([F.MAC]);
        const a = new Harness(new VirtioNet({ mac: A_MAC, backend: ua }));
        a.activate([F.MAC]);
        b.postRx(0, HDR + 1514);
        // Without vnet headers on A's side, B reads A's frame header bytes as a vnet header:
        // a 20-byte frame is too short for B's header plus an Ethernet header.
        a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 0).subarray(0, 14));
        await waitFor(() => ub.stats.received === 1, "the datagram");
        assertEquals(b.device.metrics.rx[0].malformedFrames + ub.stats.malformed, 1);
      } finally {
        ua.close();
        ub.close();
      }
    });
    await t.step("bad ports are refused", async () => {
      let error: unknown;
      try {
        await UdpBackend.open({ port: 70000 });
      } catch (e) {
        error = e;
      }
      assert(error instanceof RangeError);
    });
  },
});
