import { assertEquals, assertThrows } from "@std/assert";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { PageAllocator, SlabAllocator } from "../../src/guest/page_allocator.ts";

function guest(): { memory: GuestMemory; pages: PageAllocator } {
  const memory = new GuestMemory([{ base: 0, size: 0x20000 }, { base: 0x100000, size: 0x10000 }]);
  const pages = new PageAllocator(memory, { base: 0x10000, size: 0x10000 });
  return { memory, pages };
}

Deno.test("PageAllocator", async (t) => {
  await t.step("constructor() rejects ranges outside one RAM region or misaligned", () => {
    const memory = new GuestMemory([{ base: 0, size: 0x20000 }, { base: 0x20000, size: 0x1000 }]);
    assertThrows(() => new PageAllocator(memory, { base: 0x1f000, size: 0x2000 }), RangeError);
    assertThrows(() => new PageAllocator(memory, { base: 0x800, size: 0x1000 }), RangeError);
    assertThrows(() => new PageAllocator(memory, { base: 0, size: 0x1800 }), RangeError);
    assertThrows(
      () => new PageAllocator(memory, { base: 0, size: 0x1000, pageSize: 3000 }),
      RangeError,
    );
    assertThrows(() => new PageAllocator(memory, { base: 0x30000, size: 0x1000 }), RangeError);
  });

  await t.step("allocPages() hands out contiguous runs inside the range", () => {
    const { pages } = guest();
    assertEquals(pages.pageCount, 16);
    const a = pages.allocPages(3);
    const b = pages.allocPages(2);
    assertEquals(a, 0x10000);
    assertEquals(b, 0x13000);
    assertEquals(pages.freeCount, 11);
    assertEquals(pages.allocationPages(a!), 3);
  });

  await t.step("allocPages() honours alignment in guest physical terms", () => {
    const { pages } = guest();
    pages.allocPages(1);
    const aligned = pages.allocPages(2, { align: 0x4000 });
    assertEquals(aligned, 0x14000);
    const big = pages.allocPages(1, { align: 0x10000 });
    assertEquals(big, null); // the only 64 KiB-aligned page (0x10000) is taken
    assertThrows(() => pages.allocPages(1, { align: 0x3000 }), RangeError);
    assertThrows(() => pages.allocPages(0), RangeError);
  });

  await t.step("allocPages() returns null when exhausted, and succeeds again after a free", () => {
    const { pages } = guest();
    const all = pages.allocPages(16);
    assertEquals(all, 0x10000);
    assertEquals(pages.allocPages(1), null);
    assertEquals(pages.freeCount, 0);
    pages.freePages(all!, 16);
    assertEquals(pages.allocPages(17), null);
    assertEquals(pages.allocPages(16), 0x10000);
  });

  await t.step("allocPages() finds a run across fragmentation (next fit wraps)", () => {
    const { pages } = guest();
    const held: number[] = [];
    for (let i = 0; i < 16; i++) held.push(pages.allocPages(1)!);
    pages.freePages(held[2]);
    pages.freePages(held[3]);
    pages.freePages(held[9]);
    assertEquals(pages.allocPages(2), held[2]);
    assertEquals(pages.allocPages(2), null);
    assertEquals(pages.allocPages(1), held[9]);
  });

  await t.step("allocPages({ zero }) zeroes the pages", () => {
    const { memory, pages } = guest();
    memory.fill(0x10000, 0x2000, 0xaa);
    const a = pages.allocPages(2, { zero: true })!;
    assertEquals(memory.read32(a), 0);
    assertEquals(memory.read32(a + 0x1ffc), 0);
  });

  await t.step("freePages() rejects what was not allocated", () => {
    const { pages } = guest();
    const a = pages.allocPages(2)!;
    assertThrows(() => pages.freePages(a + 0x1000), RangeError);
    assertThrows(() => pages.freePages(a, 1), RangeError);
    assertThrows(() => pages.freePages(0x5000), RangeError);
    pages.freePages(a);
    assertThrows(() => pages.freePages(a), RangeError, "not the start of an allocation");
  });

  await t.step("allocPagesExact() rounds up to pages; freePagesExact() takes the same size", () => {
    const { pages } = guest();
    const a = pages.allocPagesExact(4097)!;
    assertEquals(pages.allocationPages(a), 2);
    pages.freePagesExact(a, 4097);
    assertEquals(pages.freeCount, 16);
  });
});

Deno.test("SlabAllocator", async (t) => {
  await t.step("kmalloc() rounds up to a size class and reuses freed objects", () => {
    const { pages } = guest();
    const heap = new SlabAllocator(pages);
    assertEquals(heap.classCount, 7); // 32 .. 2048
    const a = heap.kmalloc(48)!;
    const b = heap.kmalloc(64)!;
    assertEquals(b - a, 64);
    assertEquals(pages.freeCount, 15);
    heap.kfree(a);
    assertEquals(heap.kmalloc(33), a);
  });

  await t.step("kmalloc() takes whole pages above half a page", () => {
    const { pages } = guest();
    const heap = new SlabAllocator(pages);
    const big = heap.kmalloc(5000)!;
    assertEquals(pages.allocationPages(big), 2);
    heap.kfree(big);
    assertEquals(pages.freeCount, 16);
  });

  await t.step("kmalloc() returns null when pages run out", () => {
    const { pages } = guest();
    const heap = new SlabAllocator(pages);
    pages.allocPages(16);
    assertEquals(heap.kmalloc(32), null);
    assertEquals(heap.kmalloc(8192), null);
  });

  await t.step("kfree() rejects double frees and foreign addresses", () => {
    const { pages } = guest();
    const heap = new SlabAllocator(pages);
    const a = heap.kmalloc(100)!;
    assertThrows(() => heap.kfree(a + 8), RangeError);
    heap.kfree(a);
    assertThrows(() => heap.kfree(a), RangeError, "already freed");
    assertThrows(() => heap.kfree(0x5000), RangeError);
    const other = pages.allocPages(1)!;
    assertThrows(() => heap.kfree(other), RangeError);
  });

  await t.step("kzalloc() zeroes", () => {
    const { memory, pages } = guest();
    memory.fill(0x10000, 0x10000, 0xff);
    const heap = new SlabAllocator(pages);
    const a = heap.kzalloc(40)!;
    assertEquals(memory.read32(a), 0);
    assertEquals(memory.read32(a + 36), 0);
  });
});
