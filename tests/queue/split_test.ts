import { assertEquals, assertThrows } from "@std/assert";
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { createDeviceQueue } from "../../src/queue/create_device_queue.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import { PackedQueue } from "../../src/queue/packed_queue.ts";
import { SplitQueue } from "../../src/queue/split_queue.ts";
import { VirtqueueError } from "../../src/queue/virtqueue_error.ts";
import {
  F_INDIRECT,
  F_NEXT,
  F_WRITE,
  ShiftingDmaSpace,
  smallMemory,
  SplitDriver,
  writeSplitTable,
} from "./ring_writer.ts";

function setup(size = 8, over: Parameters<SplitDriver["config"]>[0] = {}) {
  const mem = smallMemory();
  const dma = new DirectDmaSpace(mem);
  const drv = new SplitDriver(mem, size);
  const q = new SplitQueue(drv.config(over), dma);
  const chain = new DescriptorChain(dma, 64);
  return { mem, dma, drv, q, chain };
}

Deno.test("SplitQueue.pop() returns false on an empty ring", () => {
  const { q, chain } = setup();
  assertEquals(q.pop(chain), false);
  assertEquals(q.inFlight, 0);
});

Deno.test("SplitQueue.pop() takes a one-descriptor chain and push() + publishUsed() return it", () => {
  const { mem, drv, q, chain } = setup();
  const head = drv.add([{ addr: 0x8000, len: 64, write: true }]);
  assertEquals(q.pop(chain), true);
  assertEquals(chain.head, head);
  assertEquals(chain.token, head);
  assertEquals(chain.ringSlots, 1);
  assertEquals(chain.segmentCount, 1);
  assertEquals(chain.readableCount, 0);
  assertEquals(chain.writableLength, 64);
  assertEquals(q.inFlight, 1);
  assertEquals(q.pop(chain), false);
  chain.writer.writeU32(0xdeadbeef);
  q.push(chain.token, chain.writer.written);
  assertEquals(q.inFlight, 0);
  assertEquals(drv.usedIdx(), 0, "used.idx moves only at publishUsed");
  assertEquals(q.publishUsed(), true);
  assertEquals(drv.getUsed(), [{ id: head, len: 4 }]);
  assertEquals(mem.read32(0x8000), 0xdeadbeef);
});

Deno.test("SplitQueue.pop() collects readable then writable segments of a NEXT chain", () => {
  const { mem, drv, q, chain } = setup();
  mem.write(0x8000, new Uint8Array([1, 2, 3]));
  mem.write(0x8100, new Uint8Array([4, 5]));
  drv.add([
    { addr: 0x8000, len: 3 },
    { addr: 0x8100, len: 2 },
    { addr: 0x9000, len: 3, write: true },
    { addr: 0x9100, len: 5, write: true },
  ]);
  assertEquals(q.pop(chain), true);
  assertEquals(chain.segmentCount, 4);
  assertEquals(chain.readableCount, 2);
  assertEquals(chain.readableLength, 5);
  assertEquals(chain.writableLength, 8);
  assertEquals(chain.ringSlots, 4);
  const data = new Uint8Array(5);
  assertEquals(chain.reader.read(data), 5);
  assertEquals([...data], [1, 2, 3, 4, 5]);
  assertEquals(chain.writer.write(new Uint8Array([9, 9, 9, 8, 8])), 5);
  assertEquals(mem.read8(0x9002), 9);
  assertEquals(mem.read16(0x9100), 0x0808);
});

Deno.test("SplitQueue.pop() accepts a zero-length descriptor", () => {
  const { drv, q, chain } = setup();
  drv.add([{ addr: 0x8000, len: 0 }, { addr: 0x9000, len: 0, write: true }]);
  assertEquals(q.pop(chain), true);
  assertEquals(chain.segmentCount, 2);
  assertEquals(chain.reader.remaining, 0);
  assertEquals(chain.writer.remaining, 0);
});

Deno.test("SplitQueue.pop() follows an indirect table", async (t) => {
  await t.step("a lone indirect descriptor (its WRITE flag is ignored)", () => {
    const { mem, drv, q, chain } = setup(8, { indirect: true });
    writeSplitTable(mem, 0x4000, [
      { addr: 0x8000, len: 10, flags: F_NEXT, next: 2 },
      { addr: 0xdead, len: 1, flags: 0 }, // unused entry
      { addr: 0x9000, len: 20, flags: F_WRITE },
    ]);
    drv.setDesc(3, 0x4000, 48, F_INDIRECT | F_WRITE);
    drv.publish(3);
    assertEquals(q.pop(chain), true);
    assertEquals(chain.head, 3);
    assertEquals(chain.ringSlots, 1);
    assertEquals(chain.segmentCount, 2);
    assertEquals([chain.addrs[0], chain.lengths[0]], [0x8000, 10]);
    assertEquals([chain.addrs[1], chain.lengths[1]], [0x9000, 20]);
    assertEquals(chain.readableCount, 1);
  });
  await t.step("direct descriptors followed by one indirect descriptor", () => {
    const { mem, drv, q, chain } = setup(8, { indirect: true });
    writeSplitTable(mem, 0x4000, [{ addr: 0x9000, len: 20, flags: F_WRITE }]);
    drv.setDesc(0, 0x8000, 4, F_NEXT, 5);
    drv.setDesc(5, 0x4000, 16, F_INDIRECT);
    drv.publish(0);
    assertEquals(q.pop(chain), true);
    assertEquals(chain.ringSlots, 2);
    assertEquals(chain.segmentCount, 2);
    assertEquals(chain.readableLength, 4);
    assertEquals(chain.writableLength, 20);
  });
  await t.step("a table that spans two memory regions is read entry by entry", () => {
    const mem = new GuestMemory([{ base: 0, size: 0x8000 }, { base: 0x8000, size: 0x8000 }]);
    const dma = new DirectDmaSpace(mem);
    const drv = new SplitDriver(mem, 8);
    const q = new SplitQueue(drv.config({ indirect: true }), dma);
    const chain = new DescriptorChain(dma, 8);
    writeSplitTable(mem, 0x8000 - 24, [
      { addr: 0x100, len: 1, flags: F_NEXT, next: 1 },
      { addr: 0x200, len: 2, flags: F_NEXT, next: 2 },
      { addr: 0x300, len: 3, flags: F_WRITE },
    ]);
    drv.setDesc(0, 0x8000 - 24, 48, F_INDIRECT);
    drv.publish(0);
    assertEquals(q.pop(chain), true);
    assertEquals([...chain.lengths.subarray(0, chain.segmentCount)], [1, 2, 3]);
  });
});

Deno.test("SplitQueue.push() writes used elements in completion order", () => {
  const { drv, q } = setup();
  const chains = [0, 1, 2].map(() => new DescriptorChain(new DirectDmaSpace(drv.mem), 4));
  const heads = [0, 1, 2].map((i) => drv.add([{ addr: 0x8000 + i * 0x100, len: 8, write: true }]));
  for (const c of chains) assertEquals(q.pop(c), true);
  q.push(chains[2].token, 3);
  q.push(chains[0].token, 1);
  assertEquals(q.publishUsed(), true);
  q.push(chains[1].token, 2);
  assertEquals(q.publishUsed(), true);
  assertEquals(drv.getUsed(), [
    { id: heads[2], len: 3 },
    { id: heads[0], len: 1 },
    { id: heads[1], len: 2 },
  ]);
});

Deno.test("SplitQueue.publishUsed() stores used.idx once per batch and skips empty batches", () => {
  const { drv, q, chain } = setup();
  assertEquals(q.publishUsed(), false);
  for (let i = 0; i < 5; i++) drv.add([{ addr: 0x8000, len: 1 }]);
  for (let i = 0; i < 5; i++) {
    assertEquals(q.pop(chain), true);
    q.push(chain.token, 0);
  }
  assertEquals(drv.usedIdx(), 0);
  assertEquals(q.usedIdx, 5);
  assertEquals(q.publishUsed(), true);
  assertEquals(drv.usedIdx(), 5);
  assertEquals(q.publishUsed(), false);
});

Deno.test("SplitQueue.publishUsed() honours VRING_AVAIL_F_NO_INTERRUPT without event idx", () => {
  const { drv, q, chain } = setup();
  drv.setAvailFlags(1);
  drv.add([{ addr: 0x8000, len: 1 }]);
  q.pop(chain);
  q.push(chain.token, 0);
  assertEquals(q.publishUsed(), false);
  assertEquals(drv.usedIdx(), 1);
  drv.setAvailFlags(0);
  drv.add([{ addr: 0x8000, len: 1 }]);
  q.pop(chain);
  q.push(chain.token, 0);
  assertEquals(q.publishUsed(), true);
});

Deno.test("SplitQueue.publishUsed() applies used_event with event idx", async (t) => {
  await t.step("interrupts exactly when used idx crosses used_event", () => {
    const { drv, q, chain } = setup(8, { eventIdx: true });
    drv.setAvailFlags(1); // must be ignored with event idx
    drv.setUsedEvent(2); // interrupt when used idx passes 2 (becomes 3)
    const results = [];
    for (let i = 0; i < 5; i++) {
      drv.add([{ addr: 0x8000, len: 1 }]);
      q.pop(chain);
      q.push(chain.token, 0);
      results.push(q.publishUsed());
    }
    assertEquals(results, [false, false, true, false, false]);
  });
  await t.step("a batch that jumps over used_event interrupts once", () => {
    const { drv, q, chain } = setup(8, { eventIdx: true });
    drv.setUsedEvent(1);
    for (let i = 0; i < 4; i++) drv.add([{ addr: 0x8000, len: 1 }]);
    while (q.pop(chain)) q.push(chain.token, 0);
    assertEquals(q.publishUsed(), true);
    drv.add([{ addr: 0x8000, len: 1 }]);
    q.pop(chain);
    q.push(chain.token, 0);
    assertEquals(q.publishUsed(), false);
  });
  await t.step("works across the 16-bit wrap of the used index", () => {
    const { drv, q, chain } = setup(4, { eventIdx: true });
    drv.setUsedEvent(0xfff0);
    let interrupts = 0;
    for (let i = 0; i < 0x10000 + 8; i++) {
      drv.add([{ addr: 0x8000, len: 1 }]);
      assertEquals(q.pop(chain), true);
      q.push(chain.token, 0);
      if (q.publishUsed()) interrupts++;
      drv.getUsed();
    }
    assertEquals(interrupts, 1);
    assertEquals(drv.usedIdx(), 8);
    assertEquals(q.lastAvailIdx, 8);
  });
});

Deno.test("SplitQueue.setNotification() without event idx toggles VRING_USED_F_NO_NOTIFY", () => {
  const { drv, q, chain } = setup();
  assertEquals(q.setNotification(false), false);
  assertEquals(drv.usedFlags(), 1);
  assertEquals(q.setNotification(true), false);
  assertEquals(drv.usedFlags(), 0);
  drv.add([{ addr: 0x8000, len: 1 }]);
  q.setNotification(false);
  assertEquals(q.setNotification(true), true, "a buffer arrived while disabled");
  q.pop(chain);
  assertEquals(q.setNotification(true), false);
});

Deno.test("SplitQueue with event idx keeps avail_event current", async (t) => {
  await t.step("pop() writes avail_event = next entry while notifications are enabled", () => {
    const { drv, q, chain } = setup(8, { eventIdx: true });
    drv.add([{ addr: 0x8000, len: 1 }]);
    drv.add([{ addr: 0x8000, len: 1 }]);
    q.pop(chain);
    assertEquals(drv.availEvent(), 1);
    q.pop(chain);
    assertEquals(drv.availEvent(), 2);
    assertEquals(drv.usedFlags(), 0);
  });
  await t.step("disabling stops avail_event updates; enabling writes the avail idx", () => {
    const { drv, q, chain } = setup(8, { eventIdx: true });
    assertEquals(q.setNotification(false), false);
    drv.add([{ addr: 0x8000, len: 1 }]);
    drv.add([{ addr: 0x8000, len: 1 }]);
    q.pop(chain);
    assertEquals(drv.availEvent(), 0);
    assertEquals(drv.usedFlags(), 0, "used.flags stays 0 with event idx");
    assertEquals(q.setNotification(true), true, "one entry still pending");
    assertEquals(drv.availEvent(), 2);
    q.pop(chain);
    assertEquals(q.setNotification(true), false);
  });
});

Deno.test("SplitQueue re-translates its rings after a DMA invalidation", () => {
  const mem = smallMemory();
  const dma = new ShiftingDmaSpace(mem);
  const chain = new DescriptorChain(dma, 4);
  // Device addresses 0x1000.. map to guest 0x1000.. first, then to 0x5000.. after remap.
  const before = new SplitDriver(mem, 4, 0x1000, 0x1100, 0x1200);
  const after = new SplitDriver(mem, 4, 0x5000, 0x5100, 0x5200);
  const q = new SplitQueue(before.config(), dma);
  before.add([{ addr: 0x8000, len: 1 }]);
  assertEquals(q.pop(chain), true);
  q.push(chain.token, 0);
  q.publishUsed();
  assertEquals(before.usedIdx(), 1);
  // The same device addresses now point elsewhere: the cached views must be dropped.
  after.add([{ addr: 0x8000, len: 1 }]);
  after.add([{ addr: 0x8000, len: 1 }]);
  dma.remap(0x4000);
  assertEquals(q.pop(chain), true); // avail idx 2 in the new rings, last avail 1
  q.push(chain.token, 7);
  q.publishUsed();
  assertEquals(after.usedIdx(), 2);
  assertEquals(after.usedElem(1), { id: 1, len: 7 });
  assertEquals(before.usedIdx(), 1);
  q.detach();
  assertEquals(dma.listenerCount, 0);
});

Deno.test("SplitQueue.detach() unregisters and makes later use throw", () => {
  const { q, chain } = setup();
  q.detach();
  assertThrows(() => q.pop(chain), Error, "detached");
});

Deno.test("SplitQueue reports a ring that is not contiguous in host memory", () => {
  const mem = new GuestMemory([{ base: 0, size: 0x1000 }, { base: 0x1000, size: 0x1000 }]);
  const dma = new DirectDmaSpace(mem);
  const drv = new SplitDriver(mem, 8, 0xfc0);
  const q = new SplitQueue(drv.config(), dma);
  const e = assertThrows(() => q.pop(new DescriptorChain(dma, 4)), VirtqueueError);
  assertEquals(e.kind, "ring-not-contiguous");
});

Deno.test("SplitQueue raises DmaFault for a ring outside memory", () => {
  const mem = smallMemory();
  const dma = new DirectDmaSpace(mem);
  const drv = new SplitDriver(mem, 8, 0x1000, 0x2000, 0x10_0000);
  const q = new SplitQueue(drv.config(), dma);
  assertThrows(() => q.pop(new DescriptorChain(dma, 4)), DmaFault);
  assertThrows(() => q.publishUsed(), DmaFault);
});

Deno.test("SplitQueue.push() rejects a token that is not in flight", () => {
  const { drv, q, chain } = setup();
  assertThrows(() => q.push(0, 0), RangeError);
  drv.add([{ addr: 0x8000, len: 1 }]);
  q.pop(chain);
  assertThrows(() => q.push(chain.token, -1), RangeError);
  assertThrows(() => q.push(chain.token + 1, 0), RangeError);
  q.push(chain.token, 0);
  assertThrows(() => q.push(chain.token, 0), RangeError);
});

Deno.test("SplitQueue handles the 16-bit avail index wrap", () => {
  const { drv, q, chain } = setup(8);
  for (let i = 0; i < 0x10000 + 20; i++) {
    drv.add([{ addr: 0x8000, len: 1 }]);
    assertEquals(q.pop(chain), true);
    q.push(chain.token, 0);
    if (i % 7 === 0) q.publishUsed();
  }
  q.publishUsed();
  assertEquals(drv.usedIdx(), 20);
});

Deno.test("createDeviceQueue() picks the layout and checks the size", () => {
  const mem = smallMemory();
  const dma = new DirectDmaSpace(mem);
  const cfg = new SplitDriver(mem, 8).config();
  assertEquals(createDeviceQueue(cfg, dma, false) instanceof SplitQueue, true);
  assertEquals(createDeviceQueue(cfg, dma, true) instanceof PackedQueue, true);
  assertThrows(() => createDeviceQueue({ ...cfg, size: 6 }, dma, false), RangeError);
  assertEquals(createDeviceQueue({ ...cfg, size: 6 }, dma, true).size, 6);
  assertThrows(() => createDeviceQueue({ ...cfg, size: 0 }, dma, true), RangeError);
  assertThrows(() => createDeviceQueue({ ...cfg, size: 65536 }, dma, true), RangeError);
});

Deno.test("SplitQueue.push() under IN_ORDER requires the oldest chain first", () => {
  const { drv, q } = setup(4, { inOrder: true });
  const dma = new DirectDmaSpace(drv.mem);
  const c = [0, 1, 2, 3, 4, 5].map(() => new DescriptorChain(dma, 4));
  for (let round = 0; round < 3; round++) {
    drv.add([{ addr: 0x8000, len: 1 }]);
    drv.add([{ addr: 0x8000, len: 1 }]);
    assertEquals(q.pop(c[0]), true);
    assertEquals(q.pop(c[1]), true);
    assertThrows(() => q.push(c[1].token, 0), RangeError, "IN_ORDER");
    q.push(c[0].token, 0);
    q.push(c[1].token, 0);
    q.publishUsed();
    assertEquals(drv.getUsed().map((u) => u.id), [c[0].head, c[1].head]);
  }
});
