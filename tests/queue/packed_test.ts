import { assertEquals, assertThrows } from "@std/assert";
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import { PackedQueue } from "../../src/queue/packed_queue.ts";
import { VirtqueueError } from "../../src/queue/virtqueue_error.ts";
import {
  F_AVAIL,
  F_USED,
  F_WRITE,
  PackedDriver,
  ShiftingDmaSpace,
  smallMemory,
  writePackedTable,
} from "./ring_writer.ts";

function setup(size = 8, over: Parameters<PackedDriver["config"]>[0] = {}) {
  const mem = smallMemory();
  const dma = new DirectDmaSpace(mem);
  const drv = new PackedDriver(mem, size);
  const q = new PackedQueue(drv.config(over), dma);
  const chain = new DescriptorChain(dma, 64);
  return { mem, dma, drv, q, chain };
}

/** Pops, pushes with `written` and publishes every available chain; returns the interrupts. */
function drain(q: PackedQueue, chain: DescriptorChain, written = 0): boolean {
  while (q.pop(chain)) q.push(chain.token, written);
  return q.publishUsed();
}

Deno.test("PackedQueue.pop() returns false on an empty ring", () => {
  const { q, chain } = setup();
  assertEquals(q.pop(chain), false);
});

Deno.test("PackedQueue.pop() takes a one-descriptor chain and push() marks it used", () => {
  const { mem, drv, q, chain } = setup();
  drv.add([{ addr: 0x8000, len: 64, write: true }], 5);
  assertEquals(q.pop(chain), true);
  assertEquals(chain.head, 5);
  assertEquals(chain.ringSlots, 1);
  assertEquals(chain.writableLength, 64);
  assertEquals(q.inFlight, 1);
  assertEquals(q.pop(chain), false);
  chain.writer.writeU32(0x01020304);
  q.push(chain.token, chain.writer.written);
  assertEquals(drv.getUsed(), null, "the first used descriptor waits for publishUsed");
  assertEquals(q.publishUsed(), true);
  assertEquals(drv.getUsed(), { id: 5, len: 4, flags: F_AVAIL | F_USED | F_WRITE });
  assertEquals(mem.read32(0x8000), 0x01020304);
  assertEquals(q.inFlight, 0);
});

Deno.test("PackedQueue.pop() reads a NEXT chain and takes the id from its last descriptor", () => {
  const { mem, drv, q, chain } = setup();
  mem.write(0x8000, new Uint8Array([1, 2, 3, 4]));
  drv.add([
    { addr: 0x8000, len: 2 },
    { addr: 0x8002, len: 2 },
    { addr: 0x9000, len: 16, write: true },
  ], 3);
  // A driver writes the id in every descriptor; make the non-last ones differ.
  mem.write16(drv.desc + 12, 0x7777);
  assertEquals(q.pop(chain), true);
  assertEquals(chain.head, 3);
  assertEquals(chain.ringSlots, 3);
  assertEquals(chain.token, 3 * 0x10000 + 3);
  assertEquals(chain.readableLength, 4);
  assertEquals(chain.reader.readU32(), 0x04030201);
  q.push(chain.token, 0);
  q.publishUsed();
  assertEquals(drv.getUsed(), { id: 3, len: 0, flags: F_AVAIL | F_USED });
  assertEquals(q.nextUsed, 3);
});

Deno.test("PackedQueue follows the wrap counters around a ring of odd size", () => {
  const { drv, q, chain } = setup(5);
  const seen: number[] = [];
  for (let round = 0; round < 12; round++) {
    // Chains of 1 or 2 descriptors so that they straddle the end of the ring.
    const segs = round % 2 === 0 ? 1 : 2;
    drv.add(
      Array.from({ length: segs }, (_, k) => ({ addr: 0x8000 + k, len: 1 })),
      round % 5,
    );
    assertEquals(q.pop(chain), true);
    seen.push(chain.head);
    q.push(chain.token, round);
    q.publishUsed();
    const u = drv.getUsed();
    assertEquals(u?.id, round % 5);
    assertEquals(u?.len, round);
    assertEquals(q.pop(chain), false);
  }
  assertEquals(seen, Array.from({ length: 12 }, (_, i) => i % 5));
  assertEquals(q.nextAvail, drv.nextAvail);
  assertEquals(q.availWrapCounter, drv.availWrap);
  assertEquals(q.nextUsed, drv.nextUsed);
  assertEquals(q.usedWrapCounter, drv.usedWrap);
});

Deno.test("PackedQueue.push() writes used descriptors in completion order", () => {
  const { drv, q } = setup(8);
  const dma = new DirectDmaSpace(drv.mem);
  drv.add([{ addr: 0x8000, len: 1 }, { addr: 0x8001, len: 1 }], 0); // 2 slots
  drv.add([{ addr: 0x8000, len: 1 }], 1); // 1 slot
  drv.add([{ addr: 0x8000, len: 1 }, { addr: 0x8001, len: 1 }, { addr: 0x8002, len: 1 }], 2);
  const c = [0, 1, 2].map(() => new DescriptorChain(dma, 8));
  for (const x of c) assertEquals(q.pop(x), true);
  q.push(c[2].token, 30); // 3 slots at used slot 0
  q.push(c[0].token, 10); // 2 slots at used slot 3
  assertEquals(q.publishUsed(), true);
  q.push(c[1].token, 20); // 1 slot at used slot 5
  q.publishUsed();
  // The driver walks the used descriptors by the slot count of each id.
  assertEquals(drv.getAllUsed().map((u) => [u.id, u.len]), [[2, 30], [0, 10], [1, 20]]);
  assertEquals(q.nextUsed, 6);
});

Deno.test("PackedQueue.publishUsed() exposes a batch by writing its first flags last", () => {
  const { mem, drv, q, chain } = setup(8);
  for (let i = 0; i < 3; i++) drv.add([{ addr: 0x8000, len: 1 }], i);
  while (q.pop(chain)) q.push(chain.token, 0);
  assertEquals(mem.read16(drv.desc + 14) & F_USED, 0, "first is not yet used");
  assertEquals(mem.read16(drv.desc + 16 + 14) & F_USED, F_USED, "later ones may be");
  assertEquals(q.publishUsed(), true);
  assertEquals(drv.getAllUsed().length, 3);
  assertEquals(q.publishUsed(), false, "nothing new");
});

Deno.test("PackedQueue.pop() reads an indirect table", () => {
  const { mem, drv, q, chain } = setup(8, { indirect: true });
  writePackedTable(mem, 0x4000, [
    { addr: 0x8000, len: 10, flags: 0 },
    { addr: 0x8100, len: 11, flags: 1 }, // NEXT is meaningless inside a packed table
    { addr: 0x9000, len: 20, flags: F_WRITE },
  ]);
  drv.addIndirect(0x4000, 48, 6, F_WRITE); // WRITE on the indirect descriptor is ignored
  assertEquals(q.pop(chain), true);
  assertEquals(chain.head, 6);
  assertEquals(chain.ringSlots, 1);
  assertEquals(chain.segmentCount, 3);
  assertEquals(chain.readableLength, 21);
  assertEquals(chain.writableLength, 20);
  q.push(chain.token, 0);
  q.publishUsed();
  assertEquals(drv.getUsed()?.id, 6);
  assertEquals(q.nextUsed, 1);
});

Deno.test("PackedQueue.publishUsed() applies driver event suppression", async (t) => {
  await t.step("ENABLE interrupts, DISABLE does not", () => {
    const { drv, q, chain } = setup(8);
    drv.add([{ addr: 0x8000, len: 1 }], 0);
    assertEquals(drain(q, chain), true);
    drv.setDriverEvent(1);
    drv.add([{ addr: 0x8000, len: 1 }], 1);
    assertEquals(drain(q, chain), false);
  });
  await t.step("DESC mode interrupts when the used position passes off_wrap", () => {
    const { drv, q, chain } = setup(4, { eventIdx: true });
    // Ask for an interrupt when slot 1 of the second pass (wrap 0) is used.
    drv.setDriverEvent(2, 1 | (0 << 15));
    const got: boolean[] = [];
    for (let i = 0; i < 8; i++) {
      drv.add([{ addr: 0x8000, len: 1 }], i % 4);
      got.push(drain(q, chain));
      drv.getAllUsed();
    }
    assertEquals(got, [false, false, false, false, false, true, false, false]);
  });
  await t.step("DESC mode is ignored without event idx", () => {
    const { drv, q, chain } = setup(4);
    drv.setDriverEvent(2, 3);
    drv.add([{ addr: 0x8000, len: 1 }], 0);
    assertEquals(drain(q, chain), true);
  });
});

Deno.test("PackedQueue.setNotification() writes the device event suppression area", async (t) => {
  await t.step("without event idx: DISABLE and ENABLE, with a re-check", () => {
    const { drv, q, chain } = setup(8);
    assertEquals(q.setNotification(false), false);
    assertEquals(drv.deviceEventFlags(), 1);
    drv.add([{ addr: 0x8000, len: 1 }], 0);
    assertEquals(q.setNotification(true), true);
    assertEquals(drv.deviceEventFlags(), 0);
    q.pop(chain);
    assertEquals(q.setNotification(true), false);
  });
  await t.step("with event idx: DESC mode at the next avail slot, kept current by pop()", () => {
    const { drv, q, chain } = setup(2, { eventIdx: true });
    assertEquals(q.setNotification(true), false);
    assertEquals(drv.deviceEventFlags(), 2);
    assertEquals(drv.deviceEventOffWrap(), 0 | (1 << 15));
    drv.add([{ addr: 0x8000, len: 1 }], 0);
    drv.add([{ addr: 0x8000, len: 1 }], 1);
    q.pop(chain);
    assertEquals(drv.deviceEventOffWrap(), 1 | (1 << 15));
    q.pop(chain);
    assertEquals(drv.deviceEventOffWrap(), 0 | (0 << 15), "wrapped");
    q.setNotification(false);
    assertEquals(drv.deviceEventFlags(), 1);
  });
});

Deno.test("PackedQueue re-translates its rings after a DMA invalidation", () => {
  const mem = smallMemory();
  const dma = new ShiftingDmaSpace(mem);
  const chain = new DescriptorChain(dma, 4);
  // Device addresses 0x1000.. map to guest 0x1000.. first, then to 0x5000.. after remap.
  const before = new PackedDriver(mem, 4, 0x1000, 0x1100, 0x1104);
  const after = new PackedDriver(mem, 4, 0x5000, 0x5100, 0x5104);
  const q = new PackedQueue(before.config(), dma);
  before.add([{ addr: 0x8000, len: 1 }], 2);
  assertEquals(q.pop(chain), true);
  q.push(chain.token, 0);
  q.publishUsed();
  assertEquals(before.getUsed()?.id, 2);
  // The new ring continues where the device is: slot 1.
  after.nextAvail = 1;
  after.nextUsed = 1;
  after.add([{ addr: 0x8000, len: 1 }], 3);
  dma.remap(0x4000);
  assertEquals(q.pop(chain), true);
  assertEquals(chain.head, 3);
  q.push(chain.token, 9);
  q.publishUsed();
  assertEquals(after.getUsed(), { id: 3, len: 9, flags: F_AVAIL | F_USED | F_WRITE });
  q.detach();
  assertEquals(dma.listenerCount, 0);
});

Deno.test("PackedQueue.detach() makes later use throw", () => {
  const { q, chain } = setup();
  q.detach();
  assertThrows(() => q.pop(chain), Error, "detached");
});

Deno.test("PackedQueue reports a ring that is not contiguous in host memory", () => {
  const mem = new GuestMemory([{ base: 0, size: 0x1000 }, { base: 0x1000, size: 0x1000 }]);
  const dma = new DirectDmaSpace(mem);
  const drv = new PackedDriver(mem, 8, 0xfc0);
  const q = new PackedQueue(drv.config(), dma);
  const e = assertThrows(() => q.pop(new DescriptorChain(dma, 4)), VirtqueueError);
  assertEquals(e.kind, "ring-not-contiguous");
});

Deno.test("PackedQueue raises DmaFault for a ring outside memory", () => {
  const mem = smallMemory();
  const dma = new DirectDmaSpace(mem);
  const drv = new PackedDriver(mem, 8, 0x1000, 0x2000, 0x10_0000);
  const q = new PackedQueue(drv.config(), dma);
  assertThrows(() => q.pop(new DescriptorChain(dma, 4)), DmaFault);
});

Deno.test("PackedQueue.push() rejects a token that is not in flight", () => {
  const { drv, q, chain } = setup();
  assertThrows(() => q.push(0x10000, 0), RangeError);
  drv.add([{ addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }], 2);
  q.pop(chain);
  assertThrows(() => q.push(0x10000 + 2, 0), RangeError, undefined, "wrong slot count");
  assertThrows(() => q.push(chain.token + 0.5, 0), RangeError);
  q.push(chain.token, 0);
  assertThrows(() => q.push(chain.token, 0), RangeError);
});

Deno.test("PackedQueue survives many wraps with out-of-order completion", () => {
  const { drv, q } = setup(7);
  const dma = new DirectDmaSpace(drv.mem);
  const pool = Array.from({ length: 7 }, () => new DescriptorChain(dma, 4));
  let nextId = 0;
  const freeIds = [0, 1, 2, 3, 4, 5, 6];
  let completed = 0;
  for (let round = 0; round < 2000; round++) {
    // The driver fills what it can (chains of 1..2 slots), the device completes in reverse.
    let free = 7 - [...drv.slotsOf.values()].reduce((a, b) => a + b, 0);
    const popped: DescriptorChain[] = [];
    while (freeIds.length > 0 && free > 0) {
      const n = Math.min(free, 1 + ((nextId++) % 2));
      const id = freeIds.shift()!;
      drv.add(Array.from({ length: n }, () => ({ addr: 0x8000, len: 1 })), id);
      free -= n;
    }
    for (let c = pool[popped.length]; q.pop(c); c = pool[popped.length]) popped.push(c);
    for (const c of popped.reverse()) q.push(c.token, c.head);
    q.publishUsed();
    for (const u of drv.getAllUsed()) {
      assertEquals(u.len, u.id);
      drv.slotsOf.delete(u.id);
      freeIds.push(u.id);
      completed++;
    }
  }
  assertEquals(q.inFlight, 0);
  assertEquals(completed > 2000, true);
});

Deno.test("PackedQueue.push() under IN_ORDER requires the oldest chain first", () => {
  const { drv, q } = setup(3, { inOrder: true });
  const dma = new DirectDmaSpace(drv.mem);
  const c = [0, 1].map(() => new DescriptorChain(dma, 4));
  for (let round = 0; round < 4; round++) {
    drv.add([{ addr: 0x8000, len: 1 }], 0);
    drv.add([{ addr: 0x8000, len: 1 }], 1);
    assertEquals(q.pop(c[0]), true);
    assertEquals(q.pop(c[1]), true);
    assertThrows(() => q.push(c[1].token, 0), RangeError, "IN_ORDER");
    q.push(c[0].token, 0);
    q.push(c[1].token, 0);
    q.publishUsed();
    assertEquals(drv.getAllUsed().map((u) => u.id), [0, 1]);
  }
});
