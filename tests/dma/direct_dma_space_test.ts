import { assertEquals, assertThrows } from "@std/assert";
import { GuestMemory } from "../../src/memory/mod.ts";
import {
  DirectDmaSpace,
  DmaAccess,
  DmaFault,
  DmaTranslation,
  TranslatingDmaSpace,
} from "../../src/dma/mod.ts";

function space(): { mem: GuestMemory; dma: DirectDmaSpace } {
  const mem = new GuestMemory([
    { base: 0, size: 0x10000 },
    { base: 0x10000, size: 0x1000 },
    { base: 0x100000, size: 0x1000 },
  ]);
  return { mem, dma: new DirectDmaSpace(mem) };
}

Deno.test("DirectDmaSpace", async (t) => {
  await t.step("device addresses are guest physical addresses", () => {
    const { mem, dma } = space();
    dma.write32(0x100004, 0xcafef00d);
    assertEquals(mem.read32(0x100004), 0xcafef00d);
    mem.write16(0x20, 0xbeef);
    assertEquals(dma.read16(0x20), 0xbeef);
    dma.write8(0x30, 0x1ff);
    assertEquals(dma.read8(0x30), 0xff);
    dma.write16(0x40, 0x1234);
    assertEquals(dma.read32(0x40), 0x1234);
  });

  await t.step("translate gives the contiguous run, cut at the end of a region", () => {
    const { dma } = space();
    const t = new DmaTranslation();
    dma.translate(0xfff0, 0x100, DmaAccess.Read, t);
    assertEquals([t.offset, t.length], [0xfff0, 0x10]);
    dma.translate(0x10000, 0x100, DmaAccess.Write, t);
    assertEquals([t.offset, t.length], [0, 0x100]);
  });

  await t.step("view returns a zero-copy view, or null across buffers", () => {
    const { mem, dma } = space();
    const v = dma.view(0x100000, 8, DmaAccess.Write)!;
    v[0] = 9;
    assertEquals(mem.read8(0x100000), 9);
    assertEquals(dma.view(0xfff8, 16, DmaAccess.Read), null);
  });

  await t.step("reads and writes span adjacent regions", () => {
    const { dma } = space();
    const src = Uint8Array.from({ length: 16 }, (_, i) => i);
    dma.write(0xfff8, src);
    const dest = new Uint8Array(16);
    dma.read(0xfff8, dest);
    assertEquals(dest, src);
    dma.fill(0xfffc, 8, 0x5a);
    assertEquals(dma.read32(0xfffc), 0x5a5a5a5a);
    assertEquals(dma.read32(0x10000), 0x5a5a5a5a);
  });

  await t.step("holes fault with the access kind, and nothing is written", () => {
    const { mem, dma } = space();
    const e = assertThrows(() => dma.write(0x10ff8, new Uint8Array(16).fill(1)), DmaFault);
    assertEquals([e.address, e.length, e.access, e.reason], [
      0x10ff8,
      16,
      DmaAccess.Write,
      "unmapped",
    ]);
    assertEquals(mem.read8(0x10ff8), 0);
    assertEquals(assertThrows(() => dma.read32(0x50000), DmaFault).access, DmaAccess.Read);
    assertThrows(() => dma.view(0x10ff8, 16, DmaAccess.Read), DmaFault);
    assertThrows(() => dma.fill(0x10ff8, 16, 0), DmaFault);
  });

  await t.step("invalid addresses fault as invalid", () => {
    const { dma } = space();
    assertEquals(assertThrows(() => dma.read16(-2), DmaFault).reason, "invalid");
    assertEquals(assertThrows(() => dma.read(NaN, new Uint8Array(1)), DmaFault).reason, "invalid");
    const t = new DmaTranslation();
    assertEquals(
      assertThrows(() => dma.translate(0, -5, DmaAccess.Read, t), DmaFault).reason,
      "invalid",
    );
  });

  await t.step("read64 rejects values at or above 2^53", () => {
    const { mem, dma } = space();
    mem.writeBigUint64(0x80, 1n << 60n);
    assertEquals(assertThrows(() => dma.read64(0x80), DmaFault).reason, "unrepresentable");
    mem.write64(0x80, 2 ** 40 + 3);
    assertEquals(dma.read64(0x80), 2 ** 40 + 3);
  });
});

/** A space mapping each 4 KiB device page to a scrambled guest page, to test the generic paths. */
class ScrambledSpace extends TranslatingDmaSpace {
  constructor(readonly mem: GuestMemory, readonly pages: number[], readonly readOnly = -1) {
    super();
  }
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    const page = Math.floor(address / 4096);
    if (!(page >= 0 && page < this.pages.length) || !Number.isInteger(address)) {
      throw new DmaFault(address, length, access, "unmapped");
    }
    if (page === this.readOnly && (access & DmaAccess.Write) !== 0) {
      throw new DmaFault(address, length, access, "permission");
    }
    const r = this.mem.regions[0];
    out.bytes = r.bytes;
    out.offset = this.pages[page] * 4096 + (address % 4096);
    out.length = Math.min(length, 4096 - (address % 4096));
  }
  drop(address: number, length: number): void {
    this.invalidate(address, length);
  }
}

Deno.test("TranslatingDmaSpace", async (t) => {
  const mem = new GuestMemory([{ base: 0, size: 0x4000 }]);

  await t.step("accessors split across discontiguous pages", () => {
    const dma = new ScrambledSpace(mem, [3, 1, 2, 0]);
    dma.write32(0xffe, 0x11223344);
    assertEquals(mem.read16(0x3ffe), 0x3344);
    assertEquals(mem.read16(0x1000), 0x1122);
    assertEquals(dma.read32(0xffe), 0x11223344);
    assertEquals(dma.read16(0xfff), 0x2233);
    dma.write16(0xfff, 0xabcd);
    assertEquals(dma.read16(0xfff), 0xabcd);
    assertEquals(dma.view(0xff0, 0x20, DmaAccess.Read), null);
    const data = Uint8Array.from({ length: 0x1800 }, (_, i) => i & 0xff);
    dma.write(0x800, data);
    const back = new Uint8Array(0x1800);
    dma.read(0x800, back);
    assertEquals(back, data);
  });

  await t.step("a write that would fault part-way writes nothing", () => {
    const dma = new ScrambledSpace(mem, [0, 1], 1);
    mem.fill(0, 0x2000, 0);
    const e = assertThrows(() => dma.write(0xff0, new Uint8Array(0x20).fill(7)), DmaFault);
    assertEquals(e.reason, "permission");
    assertEquals(mem.read8(0xff0), 0);
    assertThrows(() => dma.view(0xff0, 0x20, DmaAccess.Write), DmaFault);
  });

  await t.step("invalidation listeners are called until removed", () => {
    const dma = new ScrambledSpace(mem, [0]);
    const seen: number[][] = [];
    const off = dma.addInvalidationListener((a, l) => seen.push([a, l]));
    dma.drop(0x1000, 0x2000);
    off();
    dma.drop(0, 1);
    assertEquals(seen, [[0x1000, 0x2000]]);
  });
});
