import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  IOVA_MAG_SIZE,
  IovaAllocator,
  orderBase2,
  roundupPowOfTwo,
} from "../../../src/guest/dma/iova_allocator.ts";

const G = 4096;
const LIMIT32 = 0xfffff; // pfn limit of a 32-bit mask with 4 KiB granules

Deno.test("IovaAllocator.allocIovaFast", async (t) => {
  await t.step(
    "sizes are size-aligned; sizes below 32 granules are rounded to a power of two",
    () => {
      const iovad = new IovaAllocator({ granule: G });
      for (const size of [1, 2, 3, 5, 16, 31, 33, 100]) {
        const pfn = iovad.allocIovaFast(size, LIMIT32, false);
        assert(pfn > 0);
        assertEquals(pfn % roundupPowOfTwo(size), 0, `size ${size} at ${pfn.toString(16)}`);
        const r = iovad.findIova(pfn)!;
        const want = size < 32 ? roundupPowOfTwo(size) : size;
        assertEquals(r.pfnHi - r.pfnLo + 1, want, `size ${size} occupies ${want}`);
      }
    },
  );

  await t.step("allocation is top-down from the limit", () => {
    const iovad = new IovaAllocator({ granule: G });
    assertEquals(iovad.allocIovaFast(1, LIMIT32, false), 0xfffff);
    assertEquals(iovad.allocIovaFast(1, LIMIT32, false), 0xffffe);
    assertEquals(iovad.allocIovaFast(4, LIMIT32, false), 0xffff8, "below, 4-aligned");
    assertEquals(
      iovad.allocIovaFast(1, LIMIT32, false),
      0xffff7,
      "next fit: on below the last allocation, not into the hole above",
    );
    assertEquals(iovad.allocIovaFast(1, 0x1000, false), 0x1000, "a lower limit starts lower");
    assertEquals(iovad.allocIovaFast(2, 2 ** 40, false), 2 ** 40 - 2, "64-bit space, 2-aligned");
  });

  await t.step("never hands out pfn 0, nor anything below the start pfn", () => {
    const iovad = new IovaAllocator({ granule: G });
    const got: number[] = [];
    for (let i = 0; i < 16; i++) got.push(iovad.allocIovaFast(1, 15, false));
    assertEquals(got.slice(0, 15), Array.from({ length: 15 }, (_, i) => 15 - i));
    assertEquals(got[15], 0, "0 means failure: the space [1, 15] is full");
    const high = new IovaAllocator({ granule: G, startPfn: 8 });
    for (let i = 0; i < 8; i++) assertEquals(high.allocIovaFast(1, 15, false), 15 - i);
    assertEquals(high.allocIovaFast(1, 15, false), 0);
  });

  await t.step("reserved regions are holes the allocator skips", () => {
    const iovad = new IovaAllocator({ granule: G });
    assert(iovad.reserveIova(0x0c, 0x0d));
    const got: number[] = [];
    for (let i = 0; i < 4; i++) got.push(iovad.allocIovaFast(1, 0x0f, false));
    assertEquals(got, [0x0f, 0x0e, 0x0b, 0x0a]);
    assertEquals(iovad.allocIovaFast(4, 0x0f, false), 0x04, "4-aligned below the hole");
  });

  await t.step("reserving over allocated or reserved ranges keeps them and fills the gaps", () => {
    const iovad = new IovaAllocator({ granule: G });
    iovad.allocIovaFast(1, 0x20, false); // 0x20
    iovad.reserveIova(0x10, 0x12);
    assert(iovad.reserveIova(0x0e, 0x22));
    assertEquals(iovad.ranges(), [
      { pfnLo: 0x0e, pfnHi: 0x0f },
      { pfnLo: 0x10, pfnHi: 0x12 },
      { pfnLo: 0x13, pfnHi: 0x1f },
      { pfnLo: 0x20, pfnHi: 0x20 },
      { pfnLo: 0x21, pfnHi: 0x22 },
    ]);
    assertEquals(iovad.reserveIova(5, 4), false, "inverted");
  });

  await t.step("freed small ranges are reused last-in first-out", () => {
    const iovad = new IovaAllocator({ granule: G });
    const a = iovad.allocIovaFast(1, LIMIT32, true);
    const b = iovad.allocIovaFast(1, LIMIT32, true);
    iovad.freeIovaFast(a, 1);
    iovad.freeIovaFast(b, 1);
    assertEquals(iovad.cachedPfns(1), [a, b]);
    assertEquals(iovad.allocIovaFast(1, LIMIT32, true), b);
    assertEquals(iovad.allocIovaFast(1, LIMIT32, true), a);
    assertEquals(iovad.stats.cacheHits, 2);
  });

  await t.step("a cached range above the limit is skipped", () => {
    const iovad = new IovaAllocator({ granule: G });
    const low = iovad.allocIovaFast(1, LIMIT32, true);
    const high = iovad.allocIovaFast(1, 2 ** 40, true);
    iovad.freeIovaFast(low, 1);
    iovad.freeIovaFast(high, 1);
    assertEquals(iovad.allocIovaFast(1, LIMIT32, true), low, "the newer one does not fit");
    assertEquals(iovad.cachedPfns(1), [high]);
  });

  await t.step("each size class has its own cache; sizes above 32 granules are not cached", () => {
    const iovad = new IovaAllocator({ granule: G });
    const two = iovad.allocIovaFast(2, LIMIT32, true);
    const big = iovad.allocIovaFast(64, LIMIT32, true);
    iovad.freeIovaFast(two, 2);
    iovad.freeIovaFast(big, 64);
    assertEquals(iovad.cachedPfns(1), []);
    assertEquals(iovad.cachedPfns(2), [two]);
    assertEquals(iovad.cachedPfns(64), []);
    assertEquals(iovad.findIova(big), null, "back to the tree");
    assertEquals(iovad.allocIovaFast(3, LIMIT32, true) === two, false, "3 rounds to 4");
  });

  await t.step("the caches are bounded; overflow goes back to the tree", () => {
    const iovad = new IovaAllocator({ granule: G, magazineSize: 2, depotMax: 1 });
    const pfns: number[] = [];
    for (let i = 0; i < 10; i++) pfns.push(iovad.allocIovaFast(1, LIMIT32, true));
    for (const p of pfns) iovad.freeIovaFast(p, 1);
    // loaded + prev + one depot magazine of 2 each: 6 at most.
    assertEquals(iovad.cachedCount, 6);
    assertEquals(iovad.rangeCount, 6, "the rest returned to the tree");
    const big = new IovaAllocator({ granule: G });
    for (let i = 0; i < IOVA_MAG_SIZE * 40; i++) big.allocIovaFast(1, 2 ** 30, true);
    for (const r of big.ranges()) big.freeIovaFast(r.pfnLo, 1);
    assertEquals(big.cachedCount, IOVA_MAG_SIZE * 34);
  });

  await t.step("when the tree is full the caches are drained and the allocation retried", () => {
    const iovad = new IovaAllocator({ granule: G });
    const ones: number[] = [];
    for (let i = 0; i < 15; i++) ones.push(iovad.allocIovaFast(1, 15, true));
    for (const p of ones.slice(0, 4)) iovad.freeIovaFast(p, 1); // 15, 14, 13, 12 cached
    assertEquals(iovad.allocIovaFast(2, 15, false), 0, "no flush allowed");
    assertEquals(iovad.allocIovaFast(2, 15, true), 14, "caches drained, then found");
    assertEquals(iovad.stats.cacheFlushes, 1);
    assertEquals(iovad.cachedCount, 0);
  });

  await t.step("a failure below 4 GiB is remembered until something below 4 GiB is freed", () => {
    const iovad = new IovaAllocator({ granule: G });
    const r = iovad.allocIova(LIMIT32, LIMIT32, false)!; // all of [1, 0xfffff]
    assertEquals(r.pfnLo, 1);
    assertEquals(iovad.allocIovaFast(8, LIMIT32, false), 0);
    const tree = iovad.stats.treeAllocs;
    assertEquals(iovad.allocIovaFast(16, LIMIT32, false), 0, "fails fast");
    assertEquals(iovad.stats.treeAllocs, tree);
    assert(iovad.freeIova(5));
    assert(iovad.allocIovaFast(8, LIMIT32, false) > 0, "retried after a free");
  });

  await t.step("the 32-bit and 64-bit searches keep their own cached positions", () => {
    const iovad = new IovaAllocator({ granule: G });
    const a = iovad.allocIovaFast(1, LIMIT32, false);
    const hi = iovad.allocIovaFast(1, 2 ** 41 - 1, false);
    const b = iovad.allocIovaFast(1, LIMIT32, false);
    assertEquals([a, b, hi], [LIMIT32, LIMIT32 - 1, 2 ** 41 - 1]);
    assert(iovad.freeIova(a));
    assertEquals(
      iovad.allocIovaFast(1, LIMIT32, false),
      a,
      "a hole above the cached node is found",
    );
  });

  await t.step("the number of ranges is bounded", () => {
    const iovad = new IovaAllocator({ granule: G, maxRanges: 3 });
    for (let i = 0; i < 3; i++) assert(iovad.allocIovaFast(64, LIMIT32, false) > 0);
    assertEquals(iovad.allocIovaFast(64, LIMIT32, false), 0);
    assertEquals(iovad.reserveIova(1, 2), false);
  });

  await t.step("bad arguments throw RangeError", () => {
    assertThrows(() => new IovaAllocator({ granule: 3000 }), RangeError);
    assertThrows(() => new IovaAllocator({ granule: G, startPfn: 0 }), RangeError);
    const iovad = new IovaAllocator({ granule: G });
    assertThrows(() => iovad.allocIovaFast(0, LIMIT32, false), RangeError);
    assertThrows(() => iovad.allocIova(1, 0.5, false), RangeError);
  });
});

Deno.test("IovaAllocator helpers", () => {
  assertEquals([1, 2, 3, 4, 5, 31, 33].map(roundupPowOfTwo), [1, 2, 4, 4, 8, 32, 64]);
  assertEquals([1, 2, 3, 4, 5, 32, 33].map(orderBase2), [0, 1, 2, 2, 3, 5, 6]);
  const iovad = new IovaAllocator({ granule: G });
  assertEquals([iovad.iovaOffset(0x1234), iovad.iovaAlign(0x1001), iovad.iovaPfn(0x5fff)], [
    0x234,
    0x2000,
    5,
  ]);
  assertEquals(iovad.dma32BitPfn, 0x100000);
});
