import { assertEquals } from "@std/assert";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { VirtioBlkFeature } from "../../../devices/blk/constants.ts";
import {
  BlkHarness,
  DISCARD,
  FLUSH,
  GET_ID,
  IN,
  IOERR,
  OK,
  OUT,
  pattern,
  UNSUPP,
  WRITE_ZEROES,
} from "./helpers/harness.ts";

const MiB = 1 << 20;

Deno.test("VirtioBlk IN and OUT move sectors between the disk and guest memory", async (t) => {
  await t.step("OUT then IN round-trips 4 KiB and reports used lengths", () => {
    const h = new BlkHarness();
    const bytes = pattern(4096, 1);
    const w = h.write(8, bytes);
    assertEquals(h.status(w), OK);
    assertEquals(h.used(), [{ id: w.head, len: 1 }]);
    assertEquals((h.backend as MemoryBackend).bytes.slice(8 * 512, 8 * 512 + 4096), bytes);
    const r = h.read(8, 4096);
    assertEquals(h.status(r), OK);
    assertEquals(h.data(r), bytes);
    assertEquals(h.used(), [{ id: r.head, len: 4097 }]);
    assertEquals(h.device.stats.bytesRead, 4096);
    assertEquals(h.device.stats.bytesWritten, 4096);
  });
  await t.step("data split over many descriptors, and a header split in two, are accepted", () => {
    const h = new BlkHarness();
    const bytes = pattern(64 * 512, 2);
    const w = h.write(100, bytes, { split: 37 });
    assertEquals(h.status(w), OK);
    const r = h.read(100, bytes.length, { split: 50 });
    assertEquals(h.status(r), OK);
    assertEquals(h.data(r), bytes);
    // A header in two pieces (8 + 8 bytes) with the data in the same chain.
    const hdr = h.header(IN, 100);
    const data = h.alloc(512);
    const status = h.statusByte();
    h.submitRaw([
      { addr: hdr, len: 8 },
      { addr: hdr + 8, len: 8 },
      { addr: data, len: 512, write: true },
      { addr: status, len: 1, write: true },
    ]);
    assertEquals(h.mem.read8(status), OK);
    assertEquals(h.mem.view(data, 512).slice(), bytes.slice(0, 512));
  });
  await t.step("the status byte may share the last descriptor with the data", () => {
    const h = new BlkHarness();
    (h.backend as MemoryBackend).bytes.set(pattern(512, 3), 0);
    const hdr = h.header(IN, 0);
    const buf = h.alloc(513);
    h.submitRaw([{ addr: hdr, len: 16 }, { addr: buf, len: 513, write: true }]);
    assertEquals(h.mem.view(buf, 512).slice(), pattern(512, 3));
    assertEquals(h.mem.read8(buf + 512), OK);
  });
  await t.step("the last sector of the disk is readable and writable", () => {
    const h = new BlkHarness({ diskSize: MiB });
    const last = MiB / 512 - 1;
    assertEquals(h.status(h.write(last, pattern(512, 4))), OK);
    const r = h.read(last, 512);
    assertEquals([h.status(r), h.data(r)], [OK, pattern(512, 4)]);
  });
  await t.step("a zero-length IN or OUT completes OK and touches nothing", () => {
    const h = new BlkHarness();
    assertEquals(h.status(h.read(0, 0)), OK);
    assertEquals(h.status(h.write(0, new Uint8Array(0))), OK);
  });
});

Deno.test("VirtioBlk IN and OUT report IOERR for bad ranges and lengths", async (t) => {
  await t.step("a sector past the capacity, or a range that runs past it", () => {
    const h = new BlkHarness({ diskSize: MiB });
    const cap = MiB / 512;
    const r1 = h.read(cap, 512);
    const r2 = h.read(cap - 1, 1024);
    const w1 = h.write(cap + 5, pattern(512, 0));
    assertEquals([h.status(r1), h.status(r2), h.status(w1)], [IOERR, IOERR, IOERR]);
    assertEquals(h.data(r2), new Uint8Array(1024).fill(0xee), "nothing read");
    assertEquals(h.used().map((u) => u.len), [1, 1, 1]);
    assertEquals(h.device.stats.outOfRange, 3);
  });
  await t.step("a sector at or above 2^53 (64-bit header) is out of range, not a crash", () => {
    const h = new BlkHarness();
    const r = h.read(0, 512, { kick: false });
    h.mem.write32(r.header + 8, 0);
    h.mem.write32(r.header + 12, 0xffffffff);
    h.device.notify(0);
    assertEquals(h.status(r), IOERR);
  });
  await t.step("data lengths that are not a multiple of 512", () => {
    const h = new BlkHarness();
    const r = h.read(0, 100);
    const w = h.write(0, pattern(513, 1));
    assertEquals([h.status(r), h.status(w)], [IOERR, IOERR]);
    assertEquals((h.backend as MemoryBackend).bytes.slice(0, 513), new Uint8Array(513));
    assertEquals(h.device.stats.misaligned, 2);
  });
  await t.step("with a 4 KiB logical block, lengths and sectors must be 4 KiB aligned", () => {
    const h = new BlkHarness({ blockSize: 4096 });
    assertEquals(h.status(h.read(8, 4096)), OK);
    assertEquals(h.status(h.read(8, 512)), IOERR);
    assertEquals(h.status(h.read(4, 4096)), IOERR);
  });
});

Deno.test("VirtioBlk on a read-only disk", async (t) => {
  await t.step(
    "offers VIRTIO_BLK_F_RO; reads work; every write is IOERR and changes nothing",
    () => {
      const disk = new MemoryBackend(MiB, { readOnly: true });
      disk.bytes.set(pattern(512, 9), 0);
      const h = new BlkHarness({ backend: disk });
      assertEquals((h.device.deviceFeatures >> BigInt(VirtioBlkFeature.RO)) & 1n, 1n);
      const r = h.read(0, 512);
      assertEquals([h.status(r), h.data(r)], [OK, pattern(512, 9)]);
      const w = h.write(0, new Uint8Array(512));
      const z = h.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 1 }]);
      const d = h.ranges(DISCARD, [{ sector: 0, sectors: 1 }]);
      assertEquals([h.status(w), h.status(z), h.status(d)], [IOERR, IOERR, IOERR]);
      assertEquals(disk.bytes.slice(0, 512), pattern(512, 9));
      assertEquals(h.device.stats.readOnlyWrites, 3);
    },
  );
  await t.step("the readOnly option makes a writable backend read-only", () => {
    const h = new BlkHarness({ readOnly: true });
    assertEquals(h.status(h.write(0, pattern(512, 1))), IOERR);
    assertEquals((h.backend as MemoryBackend).bytes.slice(0, 512), new Uint8Array(512));
  });
});

Deno.test("VirtioBlk FLUSH", async (t) => {
  await t.step("completes OK with no data when FLUSH was negotiated", () => {
    const h = new BlkHarness();
    const f = h.flush();
    assertEquals(h.status(f), OK);
    assertEquals(h.used(), [{ id: f.head, len: 1 }]);
    assertEquals(h.status(h.command(5)), OK, "legacy FLUSH_OUT");
  });
  await t.step("is UNSUPP when FLUSH was not negotiated", () => {
    const h = new BlkHarness({
      withoutFeatures: [VirtioBlkFeature.FLUSH, VirtioBlkFeature.CONFIG_WCE],
    });
    assertEquals(h.status(h.flush()), UNSUPP);
  });
});

Deno.test("VirtioBlk GET_ID padding rules", async (t) => {
  await t.step("a short serial is NUL-padded to all 20 bytes", () => {
    const h = new BlkHarness({ serial: "vireo-1" });
    const r = h.getId();
    const expected = new Uint8Array(20);
    expected.set(new TextEncoder().encode("vireo-1"));
    assertEquals([h.status(r), h.data(r)], [OK, expected]);
    assertEquals(h.used(), [{ id: r.head, len: 21 }]);
  });
  await t.step("a 20-character serial has no NUL", () => {
    const serial = "ABCDEFGHIJKLMNOPQRST";
    const h = new BlkHarness({ serial });
    const r = h.getId();
    assertEquals(new TextDecoder().decode(h.data(r)), serial);
  });
  await t.step("no serial: 20 NUL bytes", () => {
    const h = new BlkHarness();
    assertEquals(h.data(h.getId()), new Uint8Array(20));
  });
  await t.step(
    "a larger buffer gets 20 bytes, the rest untouched; a smaller one is truncated",
    () => {
      const h = new BlkHarness({ serial: "abc" });
      const big = h.getId(32);
      const data = h.data(big);
      assertEquals(data.slice(0, 4), new Uint8Array([97, 98, 99, 0]));
      assertEquals(data.slice(20), new Uint8Array(12).fill(0xee));
      const small = h.getId(2);
      assertEquals([h.status(small), h.data(small)], [OK, new Uint8Array([97, 98])]);
    },
  );
});

Deno.test("VirtioBlk WRITE_ZEROES", async (t) => {
  await t.step("zeroes every segment (with or without the unmap flag) and reads back zero", () => {
    const disk = new MemoryBackend(MiB);
    disk.bytes.fill(0x55);
    const h = new BlkHarness({ backend: disk });
    const z = h.ranges(WRITE_ZEROES, [{ sector: 2, sectors: 3 }, {
      sector: 10,
      sectors: 1,
      flags: 1,
    }]);
    assertEquals(h.status(z), OK);
    const r = h.read(0, 12 * 512);
    const data = h.data(r);
    assertEquals(data.slice(2 * 512, 5 * 512), new Uint8Array(3 * 512));
    assertEquals(data.slice(10 * 512, 11 * 512), new Uint8Array(512));
    assertEquals(data[2 * 512 - 1], 0x55);
    assertEquals(data[5 * 512], 0x55);
    assertEquals(data[11 * 512], 0x55);
  });
  await t.step("unknown flags are UNSUPP and nothing is zeroed, even in a later segment", () => {
    const disk = new MemoryBackend(MiB);
    disk.bytes.fill(0x55);
    const h = new BlkHarness({ backend: disk });
    const z = h.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 1 }, {
      sector: 4,
      sectors: 1,
      flags: 2,
    }]);
    assertEquals(h.status(z), UNSUPP);
    assertEquals(disk.bytes[0], 0x55);
  });
  await t.step("a segment past the capacity or over max_write_zeroes_sectors is IOERR", () => {
    const h = new BlkHarness({ diskSize: MiB, writeZeroes: { maxSectors: 8 } });
    assertEquals(h.status(h.ranges(WRITE_ZEROES, [{ sector: 2047, sectors: 2 }])), IOERR);
    assertEquals(h.status(h.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 9 }])), IOERR);
    assertEquals(h.status(h.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 8 }])), OK);
  });
  await t.step(
    "more segments than max_write_zeroes_seg is UNSUPP; an empty payload is IOERR",
    () => {
      const h = new BlkHarness({ writeZeroes: { maxSegments: 2 } });
      const three = [0, 1, 2].map((s) => ({ sector: s, sectors: 1 }));
      assertEquals(h.status(h.ranges(WRITE_ZEROES, three)), UNSUPP);
      assertEquals(h.status(h.ranges(WRITE_ZEROES, [])), IOERR);
    },
  );
  await t.step("a payload that is not whole 16-byte segments is IOERR", () => {
    const h = new BlkHarness();
    const hdr = h.header(WRITE_ZEROES, 0);
    const seg = h.alloc(24);
    const status = h.statusByte();
    h.submitRaw([{ addr: hdr, len: 16 }, { addr: seg, len: 24 }, {
      addr: status,
      len: 1,
      write: true,
    }]);
    assertEquals(h.mem.read8(status), IOERR);
  });
  await t.step("is UNSUPP when WRITE_ZEROES was not negotiated or not offered", () => {
    const a = new BlkHarness({ withoutFeatures: [VirtioBlkFeature.WRITE_ZEROES] });
    assertEquals(a.status(a.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 1 }])), UNSUPP);
    const b = new BlkHarness({ writeZeroes: false });
    assertEquals((b.device.deviceFeatures >> 14n) & 1n, 0n);
    assertEquals(b.status(b.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 1 }])), UNSUPP);
  });
});

Deno.test("VirtioBlk DISCARD", async (t) => {
  await t.step("discards several segments", () => {
    const disk = new MemoryBackend(MiB);
    disk.bytes.fill(0x55);
    const h = new BlkHarness({ backend: disk });
    const d = h.ranges(DISCARD, [{ sector: 0, sectors: 2 }, { sector: 8, sectors: 8 }]);
    assertEquals(h.status(d), OK);
    assertEquals(h.device.stats.discardRequests, 1);
  });
  await t.step("the unmap flag is UNSUPP for DISCARD; so is any unknown flag", () => {
    const h = new BlkHarness();
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 0, sectors: 1, flags: 1 }])), UNSUPP);
    assertEquals(
      h.status(h.ranges(DISCARD, [{ sector: 0, sectors: 1, flags: 0x80000000 }])),
      UNSUPP,
    );
  });
  await t.step("unknown flags win over a bad range (UNSUPP, not IOERR)", () => {
    const h = new BlkHarness();
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 1 << 30, sectors: 1, flags: 4 }])), UNSUPP);
  });
  await t.step("an unaligned discard on a 4 KiB-block disk is IOERR", () => {
    const h = new BlkHarness({ blockSize: 4096 });
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 1, sectors: 8 }])), IOERR);
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 8, sectors: 4 }])), IOERR);
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 8, sectors: 8 }])), OK);
  });
  await t.step("past the capacity or over max_discard_sectors is IOERR", () => {
    const h = new BlkHarness({ diskSize: MiB, discard: { maxSectors: 16 } });
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 2040, sectors: 16 }])), IOERR);
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 0, sectors: 17 }])), IOERR);
  });
  await t.step("is UNSUPP when DISCARD was not negotiated", () => {
    const h = new BlkHarness({ withoutFeatures: [VirtioBlkFeature.DISCARD] });
    assertEquals(h.status(h.ranges(DISCARD, [{ sector: 0, sectors: 1 }])), UNSUPP);
  });
});

Deno.test("VirtioBlk unknown and unsupported request types are UNSUPP", () => {
  const h = new BlkHarness();
  for (const type of [2, 3, 10, 14, 15, 16, 18, 26, 99, 0x80000000, 0x80000001]) {
    assertEquals(h.status(h.command(type)), UNSUPP, `type ${type}`);
  }
  assertEquals(h.device.stats.unsupported, 11);
  assertEquals(h.host.failures, []);
});

Deno.test("VirtioBlk requests on several queues (MQ)", async (t) => {
  await t.step("each queue serves its own ring and interrupts its own vector", () => {
    const h = new BlkHarness({ numQueues: 4 });
    assertEquals((h.device.deviceFeatures >> BigInt(VirtioBlkFeature.MQ)) & 1n, 1n);
    for (let q = 0; q < 4; q++) h.write(q * 8, pattern(4096, q), { q });
    for (let q = 0; q < 4; q++) {
      const r = h.read(q * 8, 4096, { q });
      assertEquals(h.data(r), pattern(4096, q));
      assertEquals(h.used(q).length, 2);
    }
    assertEquals(h.host.interrupts, [0, 1, 2, 3, 0, 1, 2, 3]);
  });
  await t.step("a single-queue device does not offer MQ", () => {
    const h = new BlkHarness();
    assertEquals((h.device.deviceFeatures >> BigInt(VirtioBlkFeature.MQ)) & 1n, 0n);
  });
});

Deno.test("VirtioBlk interrupts follow the driver's suppression flag", () => {
  const h = new BlkHarness();
  h.rings[0].setAvailFlags(1);
  h.read(0, 512);
  assertEquals(h.host.interrupts, []);
  h.rings[0].setAvailFlags(0);
  h.read(0, 512);
  assertEquals(h.host.interrupts, [0]);
  // Several requests made available before one kick: one interrupt for the batch.
  h.read(0, 512, { kick: false });
  h.read(1, 512, { kick: false });
  h.flush({ kick: false });
  h.device.notify(0);
  assertEquals(h.host.interrupts, [0, 0]);
  assertEquals(h.used().length, 5);
});

Deno.test("VirtioBlk ignores the reserved (ioprio) header field", () => {
  const h = new BlkHarness();
  const r = h.read(0, 512, { kick: false });
  h.mem.write32(r.header + 4, 0xdeadbeef);
  h.device.notify(0);
  assertEquals(h.status(r), OK);
  assertEquals([IN, OUT, FLUSH, GET_ID].length, 4);
});
