import { assertEquals, assertThrows } from "@std/assert";
import { GuestMemory } from "../../src/memory/mod.ts";
import { DirectDmaSpace, DmaFault } from "../../src/dma/mod.ts";
import { DescriptorChain } from "../../src/queue/mod.ts";

function setup() {
  const mem = new GuestMemory([{ base: 0, size: 0x10000 }, { base: 0x20000, size: 0x1000 }]);
  const dma = new DirectDmaSpace(mem);
  const chain = new DescriptorChain(dma, 8);
  return { mem, dma, chain };
}

Deno.test("DescriptorChain reader and writer", async (t) => {
  await t.step("the reader streams readable segments as one, across descriptors", () => {
    const { mem, dma, chain } = setup();
    mem.write(0x100, Uint8Array.of(1, 2, 3));
    mem.write(0x200, Uint8Array.of(4, 5, 6, 7, 8));
    chain.clear(dma);
    chain.addSegment(0x100, 3, false);
    chain.addSegment(0x200, 0, false);
    chain.addSegment(0x200, 5, false);
    chain.addSegment(0x300, 16, true);
    assertEquals([chain.readableLength, chain.writableLength], [8, 16]);
    assertEquals(chain.reader.readU16(), 0x0201);
    assertEquals(chain.reader.readU32(), 0x06050403);
    assertEquals(chain.reader.remaining, 2);
    const rest = new Uint8Array(4);
    assertEquals(chain.reader.read(rest), 2);
    assertEquals(rest, Uint8Array.of(7, 8, 0, 0));
    assertEquals(chain.reader.readU8(), -1);
    assertEquals(chain.reader.readU64(), -1n);
  });

  await t.step("the writer starts at the first writable segment and reports written", () => {
    const { mem, dma, chain } = setup();
    chain.clear(dma);
    chain.addSegment(0x100, 4, false);
    chain.addSegment(0x400, 2, true);
    chain.addSegment(0x500, 8, true);
    assertEquals(chain.writer.writeU32(0xaabbccdd), true);
    assertEquals(mem.read16(0x400), 0xccdd);
    assertEquals(mem.read16(0x500), 0xaabb);
    assertEquals(chain.writer.fill(100, 0xee), 6);
    assertEquals(chain.writer.written, 10);
    assertEquals(chain.writer.writeU8(1), false);
    assertEquals(mem.read32(0x100), 0, "readable segment untouched");
  });

  await t.step("copyTo moves bytes chain to chain in one copy", () => {
    const { mem, dma, chain } = setup();
    const other = new DescriptorChain(dma, 4);
    mem.write(0x1000, Uint8Array.from({ length: 0x80 }, (_, i) => i));
    chain.clear(dma);
    chain.addSegment(0x1000, 60, false);
    chain.addSegment(0x1040, 40, false);
    other.clear(dma);
    other.addSegment(0x2000, 30, true);
    other.addSegment(0x3000, 50, true);
    chain.reader.skip(10);
    assertEquals(chain.reader.copyTo(other.writer, 1000), 80);
    assertEquals(mem.read8(0x2000), 10);
    assertEquals(mem.read8(0x2000 + 29), 39);
    assertEquals(mem.read8(0x3000), 40);
    assertEquals(mem.read8(0x3000 + 19), 59);
    assertEquals(mem.read8(0x3000 + 20), 0x40, "second segment starts at 0x1040");
    assertEquals(other.writer.written, 80);
  });

  await t.step("segments over a hole fault as DmaFault when touched", () => {
    const { dma, chain } = setup();
    chain.clear(dma);
    chain.addSegment(0xfff0, 0x20, true);
    assertThrows(() => chain.writer.fill(0x20), DmaFault);
  });

  await t.step("a full chain refuses more segments; copyFrom keeps segments", () => {
    const { dma } = setup();
    const small = new DescriptorChain(dma, 2);
    small.clear(dma);
    assertEquals(small.addSegment(0, 1, false), true);
    assertEquals(small.addSegment(0, 1, true), true);
    assertEquals(small.addSegment(0, 1, true), false);
    const copy = new DescriptorChain(dma, 2);
    small.token = 77;
    copy.copyFrom(small);
    assertEquals([copy.token, copy.segmentCount, copy.readableLength], [77, 2, 1]);
    assertThrows(() => new DescriptorChain(dma, 1).copyFrom(small), RangeError);
    assertThrows(() => new DescriptorChain(dma, 0), RangeError);
  });
});
