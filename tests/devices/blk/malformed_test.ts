import { assertEquals, assertMatch } from "@std/assert";
import { DmaAccess } from "../../../src/dma/dma_access.ts";
import { DmaFault } from "../../../src/dma/dma_fault.ts";
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "../../../src/dma/dma_space.ts";
import type { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { SplitQueue } from "../../../src/queue/split_queue.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { BlkHarness, IN, IOERR, OK, OUT, pattern } from "./helpers/harness.ts";

/** A DMA space that refuses device writes into one window (a read-only IOMMU mapping). */
class ReadOnlyWindowDma extends TranslatingDmaSpace {
  readonly #direct: DirectDmaSpace;
  constructor(mem: GuestMemory, readonly start: number, readonly end: number) {
    super();
    this.#direct = new DirectDmaSpace(mem);
  }
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    if ((access & DmaAccess.Write) !== 0 && address < this.end && address + length > this.start) {
      if (address >= this.start) throw new DmaFault(address, length, access, "permission");
      length = this.start - address;
    }
    this.#direct.translate(address, length, access, out);
  }
}

const OUTSIDE = 0x4000_0000; // beyond the harness's 16 MiB of RAM

Deno.test("VirtioBlk breaks (NEEDS_RESET) on malformed request chains", async (t) => {
  await t.step("a chain with no device-writable byte for the status", () => {
    const h = new BlkHarness();
    const hdr = h.header(IN, 0);
    h.submitRaw([{ addr: hdr, len: 16 }]);
    assertEquals(h.host.failures.length, 1);
    assertMatch(h.host.failures[0], /no device-writable byte for the status/);
    assertEquals(h.device.broken, true);
    assertEquals(h.device.stats.deviceErrors, 1);
    assertEquals(h.device.inFlight, 0);
  });
  await t.step("a writable part made only of zero-length descriptors", () => {
    const h = new BlkHarness();
    const hdr = h.header(IN, 0);
    h.submitRaw([{ addr: hdr, len: 16 }, { addr: h.alloc(1), len: 0, write: true }]);
    assertMatch(h.host.failures[0], /no device-writable byte/);
  });
  await t.step("a header shorter than 16 bytes", () => {
    const h = new BlkHarness();
    const hdr = h.header(IN, 0);
    h.submitRaw([{ addr: hdr, len: 12 }, { addr: h.statusByte(), len: 1, write: true }]);
    assertMatch(h.host.failures[0], /12-byte header, expected 16/);
  });
  await t.step("a header with no readable descriptor at all", () => {
    const h = new BlkHarness();
    h.submitRaw([{ addr: h.alloc(528), len: 528, write: true }]);
    assertMatch(h.host.failures[0], /0-byte header/);
  });
  await t.step("a status byte outside guest memory", () => {
    const h = new BlkHarness();
    const hdr = h.header(IN, 0);
    h.submitRaw([{ addr: hdr, len: 16 }, { addr: OUTSIDE, len: 1, write: true }]);
    assertMatch(h.host.failures[0], /cannot write the status byte/);
  });
  await t.step("once broken, the device ignores kicks until reset, then works again", () => {
    const h = new BlkHarness();
    h.submitRaw([{ addr: h.header(IN, 0), len: 16 }]);
    const r = h.read(0, 512);
    assertEquals(h.status(r), 0xff);
    assertEquals(h.host.failures.length, 1);
    h.device.reset();
    assertEquals(h.device.broken, false);
  });
  await t.step("a ring outside guest memory breaks the device (DMA fault on the ring)", () => {
    const h = new BlkHarness({ noActivate: true });
    const bad = new SplitQueue({
      index: 0,
      size: 16,
      descAddr: OUTSIDE,
      driverAddr: OUTSIDE + 0x1000,
      deviceAddr: OUTSIDE + 0x2000,
      eventIdx: false,
      indirect: false,
      inOrder: false,
    }, h.dma);
    h.device.validateFeatures(h.features);
    h.device.activate({ features: h.features, queues: [bad], dma: h.dma });
    h.device.notify(0);
    assertEquals(h.host.failures.length, 1);
    assertMatch(h.host.failures[0], /DMA read/);
  });
  await t.step("a descriptor loop is a ring error, reported once", () => {
    const h = new BlkHarness();
    const ring = h.rings[0];
    const o = ring.desc;
    h.mem.write64(o, h.header(IN, 0));
    h.mem.write32(o + 8, 16);
    h.mem.write16(o + 12, 1);
    h.mem.write16(o + 14, 0); // next = itself
    h.mem.write16(ring.avail + 4, 0);
    h.mem.write16(ring.avail + 2, 1);
    h.device.notify(0);
    assertEquals(h.host.failures.length, 1);
    assertMatch(h.host.failures[0], /descriptor-loop/);
  });
});

Deno.test("VirtioBlk DMA faults on request data are IOERR for that request only", async (t) => {
  await t.step("an IN buffer outside guest memory", () => {
    const h = new BlkHarness();
    const hdr = h.header(IN, 0);
    const status = h.statusByte();
    h.submitRaw([
      { addr: hdr, len: 16 },
      { addr: OUTSIDE, len: 512, write: true },
      { addr: status, len: 1, write: true },
    ]);
    assertEquals(h.mem.read8(status), IOERR);
    assertEquals(h.device.stats.dataDmaFaults, 1);
    assertEquals(h.host.failures, []);
    assertEquals(h.status(h.read(0, 512)), OK, "the device keeps working");
  });
  await t.step("an OUT buffer partly outside memory writes nothing to the disk", () => {
    const disk = new MemoryBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    const hdr = h.header(OUT, 0);
    const good = h.alloc(512);
    h.mem.write(good, pattern(512, 1));
    const status = h.statusByte();
    h.submitRaw([
      { addr: hdr, len: 16 },
      { addr: good, len: 512 },
      { addr: OUTSIDE, len: 512 },
      { addr: status, len: 1, write: true },
    ]);
    assertEquals(h.mem.read8(status), IOERR);
    assertEquals(disk.bytes.slice(0, 1024), new Uint8Array(1024));
  });
  await t.step("a header outside guest memory", () => {
    const h = new BlkHarness();
    const status = h.statusByte();
    h.submitRaw([{ addr: OUTSIDE, len: 16 }, { addr: status, len: 1, write: true }]);
    assertEquals(h.mem.read8(status), IOERR);
    assertEquals(h.host.failures, []);
  });
  await t.step("an IN buffer the IOMMU maps read-only (permission fault)", () => {
    let window = 0;
    const h = new BlkHarness({
      dma: (mem) => new ReadOnlyWindowDma(mem, 0x800000, 0x900000),
    });
    window = 0x800000;
    const hdr = h.header(IN, 0);
    const status = h.statusByte();
    h.submitRaw([
      { addr: hdr, len: 16 },
      { addr: window, len: 512, write: true },
      { addr: status, len: 1, write: true },
    ]);
    assertEquals(h.mem.read8(status), IOERR);
    // ...while an OUT from that window is fine (the device only reads it).
    const ohdr = h.header(OUT, 0);
    const ostatus = h.statusByte();
    h.submitRaw([
      { addr: ohdr, len: 16 },
      { addr: window, len: 512 },
      { addr: ostatus, len: 1, write: true },
    ]);
    assertEquals(h.mem.read8(ostatus), OK);
  });
  await t.step("a GET_ID buffer outside memory", () => {
    const h = new BlkHarness({ serial: "x" });
    const hdr = h.header(8, 0);
    const status = h.statusByte();
    h.submitRaw([
      { addr: hdr, len: 16 },
      { addr: OUTSIDE, len: 20, write: true },
      { addr: status, len: 1, write: true },
    ]);
    assertEquals(h.mem.read8(status), IOERR);
  });
  await t.step("DISCARD segments outside memory", () => {
    const h = new BlkHarness();
    const hdr = h.header(11, 0);
    const status = h.statusByte();
    h.submitRaw([
      { addr: hdr, len: 16 },
      { addr: OUTSIDE, len: 16 },
      { addr: status, len: 1, write: true },
    ]);
    assertEquals(h.mem.read8(status), IOERR);
  });
});
