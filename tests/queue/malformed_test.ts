/**
 * A hostile driver: every rule of the ring layouts broken on purpose, on both
 * layouts. Each case must end in a typed VirtqueueError (or DmaFault for
 * memory the device cannot reach), never another exception, a hang or an
 * unbounded allocation.
 */
import { assertEquals, assertThrows } from "@std/assert";
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { GuestFault } from "../../src/guest_fault.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import { PackedQueue } from "../../src/queue/packed_queue.ts";
import { SplitQueue } from "../../src/queue/split_queue.ts";
import { VirtqueueError, type VirtqueueErrorKind } from "../../src/queue/virtqueue_error.ts";
import {
  F_INDIRECT,
  F_NEXT,
  F_WRITE,
  PackedDriver,
  smallMemory,
  SplitDriver,
  writePackedTable,
  writeRaw64,
  writeSplitTable,
} from "./ring_writer.ts";

/** Asserts that `pop` fails with `kind`, twice (the queue does not move on a bad chain). */
function rejects(q: DeviceQueue, chain: DescriptorChain, kind: VirtqueueErrorKind): void {
  for (let i = 0; i < 2; i++) {
    const e = assertThrows(() => q.pop(chain), VirtqueueError);
    assertEquals(e.kind, kind, e.message);
    assertEquals(e.queue, q.index);
    assertEquals(e instanceof GuestFault, true);
  }
}

function split(size = 8, capacity = 64, indirect = true) {
  const mem = smallMemory();
  const dma = new DirectDmaSpace(mem);
  const drv = new SplitDriver(mem, size);
  const q = new SplitQueue(drv.config({ index: 3, indirect }), dma);
  return { mem, drv, q, chain: new DescriptorChain(dma, capacity) };
}

function packed(size = 8, capacity = 64, indirect = true) {
  const mem = smallMemory();
  const dma = new DirectDmaSpace(mem);
  const drv = new PackedDriver(mem, size);
  const q = new PackedQueue(drv.config({ index: 4, indirect }), dma);
  return { mem, drv, q, chain: new DescriptorChain(dma, capacity) };
}

// ---------------------------------------------------------------- split ring

Deno.test("SplitQueue.pop() rejects a descriptor loop", async (t) => {
  await t.step("in the descriptor table", () => {
    const { drv, q, chain } = split();
    drv.setDesc(0, 0x8000, 1, F_NEXT, 1);
    drv.setDesc(1, 0x8000, 1, F_NEXT, 0);
    drv.publish(0);
    rejects(q, chain, "descriptor-loop");
  });
  await t.step("inside an indirect table", () => {
    const { mem, drv, q, chain } = split();
    writeSplitTable(mem, 0x4000, [
      { addr: 0x8000, len: 1, flags: F_NEXT, next: 1 },
      { addr: 0x8000, len: 1, flags: F_NEXT, next: 0 },
    ]);
    drv.setDesc(0, 0x4000, 32, F_INDIRECT);
    drv.publish(0);
    rejects(q, chain, "descriptor-loop");
  });
  await t.step("a self-loop inside a huge indirect table ends at the chain capacity", () => {
    const { mem, drv, q, chain } = split(8, 1000);
    writeSplitTable(mem, 0x4000, [{ addr: 0x8000, len: 0, flags: F_NEXT, next: 0 }]);
    drv.setDesc(0, 0x4000, 0xffff_fff0, F_INDIRECT);
    drv.publish(0);
    rejects(q, chain, "chain-too-long");
  });
});

Deno.test("SplitQueue.pop() rejects a chain longer than the queue size", () => {
  // Every descriptor of the table chained in a ring: more than Q descriptors.
  const { drv, q, chain } = split(8, 1000);
  for (let i = 0; i < 8; i++) drv.setDesc(i, 0x8000, 1, F_NEXT, (i + 1) % 8);
  drv.publish(0);
  rejects(q, chain, "descriptor-loop");
});

Deno.test("SplitQueue.pop() rejects a chain longer than the DescriptorChain capacity", async (t) => {
  await t.step("direct descriptors", () => {
    const { drv, q, chain } = split(8, 2);
    drv.add([{ addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }]);
    rejects(q, chain, "chain-too-long");
  });
  await t.step("an indirect table", () => {
    const { mem, drv, q, chain } = split(8, 2);
    writeSplitTable(
      mem,
      0x4000,
      [0, 1, 2].map((i) => ({ addr: 0x8000, len: 1, flags: i < 2 ? F_NEXT : 0, next: i + 1 })),
    );
    drv.setDesc(0, 0x4000, 48, F_INDIRECT);
    drv.publish(0);
    rejects(q, chain, "chain-too-long");
  });
});

Deno.test("SplitQueue.pop() rejects an indirect descriptor inside an indirect table", () => {
  const { mem, drv, q, chain } = split();
  writeSplitTable(mem, 0x4000, [{ addr: 0x4000, len: 16, flags: F_INDIRECT }]);
  drv.setDesc(0, 0x4000, 16, F_INDIRECT);
  drv.publish(0);
  rejects(q, chain, "nested-indirect");
});

Deno.test("SplitQueue.pop() rejects an indirect descriptor with NEXT", () => {
  const { mem, drv, q, chain } = split();
  writeSplitTable(mem, 0x4000, [{ addr: 0x8000, len: 16, flags: 0 }]);
  drv.setDesc(0, 0x4000, 16, F_INDIRECT | F_NEXT, 1);
  drv.setDesc(1, 0x8000, 16, 0);
  drv.publish(0);
  rejects(q, chain, "indirect-with-next");
});

Deno.test("SplitQueue.pop() rejects an indirect table whose length is zero or not a multiple of 16", async (t) => {
  for (const len of [0, 8, 24, 0xffff_ffff]) {
    await t.step(`length ${len}`, () => {
      const { drv, q, chain } = split();
      drv.setDesc(0, 0x4000, len, F_INDIRECT);
      drv.publish(0);
      rejects(q, chain, "bad-indirect-length");
    });
  }
});

Deno.test("SplitQueue.pop() rejects an indirect descriptor when INDIRECT_DESC was not negotiated", () => {
  const { mem, drv, q, chain } = split(8, 8, false);
  writeSplitTable(mem, 0x4000, [{ addr: 0x8000, len: 16, flags: 0 }]);
  drv.setDesc(0, 0x4000, 16, F_INDIRECT);
  drv.publish(0);
  rejects(q, chain, "indirect-not-negotiated");
});

Deno.test("SplitQueue.pop() rejects a readable descriptor after a writable one", async (t) => {
  await t.step("in the descriptor table", () => {
    const { drv, q, chain } = split();
    drv.add([{ addr: 0x8000, len: 1, write: true }, { addr: 0x8000, len: 1 }]);
    rejects(q, chain, "readable-after-writable");
  });
  await t.step("across a direct descriptor and an indirect table", () => {
    const { mem, drv, q, chain } = split();
    writeSplitTable(mem, 0x4000, [{ addr: 0x8000, len: 1, flags: 0 }]);
    drv.setDesc(0, 0x8000, 1, F_WRITE | F_NEXT, 1);
    drv.setDesc(1, 0x4000, 16, F_INDIRECT);
    drv.publish(0);
    rejects(q, chain, "readable-after-writable");
  });
});

Deno.test("SplitQueue.pop() rejects addresses at or beyond 2^53", async (t) => {
  await t.step("a buffer address with a high word above 2^21", () => {
    const { mem, drv, q, chain } = split();
    drv.setDesc(0, 0, 16, 0);
    writeRaw64(mem, drv.desc, 0, 0x0020_0000);
    drv.publish(0);
    rejects(q, chain, "bad-address");
  });
  await t.step("a buffer that ends above 2^53", () => {
    const { drv, q, chain } = split();
    drv.setDesc(0, 2 ** 53 - 4, 8, 0);
    drv.publish(0);
    rejects(q, chain, "bad-address");
  });
  await t.step("an indirect table that ends above 2^53", () => {
    const { mem, drv, q, chain } = split();
    drv.setDesc(0, 0, 32, F_INDIRECT);
    writeRaw64(mem, drv.desc, 0xffff_fff0, 0x001f_ffff);
    drv.publish(0);
    rejects(q, chain, "bad-address");
  });
});

Deno.test("SplitQueue reports memory outside RAM as DmaFault", async (t) => {
  await t.step("an indirect table outside memory, at pop()", () => {
    const { drv, q, chain } = split();
    drv.setDesc(0, 0x100_0000, 32, F_INDIRECT);
    drv.publish(0);
    assertThrows(() => q.pop(chain), DmaFault);
  });
  await t.step("a buffer outside memory, when the device touches it", () => {
    const { drv, q, chain } = split();
    drv.add([{ addr: 0xfff0, len: 0x100 }, { addr: 0x100_0000, len: 4, write: true }]);
    assertEquals(q.pop(chain), true);
    assertThrows(() => chain.reader.read(new Uint8Array(0x100)), DmaFault);
    assertThrows(() => chain.writer.writeU32(1), DmaFault);
  });
});

Deno.test("SplitQueue.pop() rejects an avail index more than the queue size ahead", () => {
  const { drv, q, chain } = split();
  drv.setAvailIdx(9);
  rejects(q, chain, "avail-index-jump");
  drv.setAvailIdx(0xffff); // "minus one": 65535 entries ahead
  rejects(q, chain, "avail-index-jump");
  drv.setAvailIdx(8); // exactly Q is fine
  drv.setDesc(0, 0x8000, 1, 0);
  assertEquals(q.pop(chain), true);
});

Deno.test("SplitQueue.pop() rejects a head index at or beyond the queue size", () => {
  const { drv, q, chain } = split();
  drv.publish(8);
  rejects(q, chain, "bad-head");
});

Deno.test("SplitQueue.pop() rejects a head made available again while in flight", () => {
  const { drv, q, chain } = split();
  drv.setDesc(0, 0x8000, 1, 0);
  drv.publish(0, 0);
  assertEquals(q.pop(chain), true);
  rejects(q, chain, "bad-head");
});

Deno.test("SplitQueue.pop() rejects a next index out of range", async (t) => {
  await t.step("in the descriptor table", () => {
    const { drv, q, chain } = split();
    drv.setDesc(0, 0x8000, 1, F_NEXT, 8);
    drv.publish(0);
    rejects(q, chain, "bad-next");
  });
  await t.step("in an indirect table", () => {
    const { mem, drv, q, chain } = split();
    writeSplitTable(mem, 0x4000, [{ addr: 0x8000, len: 1, flags: F_NEXT, next: 1 }]);
    drv.setDesc(0, 0x4000, 16, F_INDIRECT);
    drv.publish(0);
    rejects(q, chain, "bad-next");
  });
});

// --------------------------------------------------------------- packed ring

Deno.test("PackedQueue.pop() rejects a chain that loops round the whole ring", () => {
  // Packed chains cannot name a next descriptor; a loop is a ring all of NEXT.
  const { drv, q, chain } = packed(4, 100);
  for (let s = 0; s < 4; s++) drv.setDesc(s, 0x8000, 1, 0, F_NEXT | drv.availBits());
  rejects(q, chain, "chain-too-long");
});

Deno.test("PackedQueue.pop() rejects a chain longer than the slots not in flight", () => {
  const { drv, q, chain } = packed(4, 100);
  drv.add([{ addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }], 0);
  assertEquals(q.pop(chain), true);
  // Only 2 slots are free but the driver makes 3 available (overwriting in-flight slot 0).
  drv.add([{ addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }], 1);
  rejects(q, chain, "avail-index-jump");
});

Deno.test("PackedQueue.pop() rejects a chain longer than the DescriptorChain capacity", async (t) => {
  await t.step("ring descriptors", () => {
    const { drv, q, chain } = packed(8, 2);
    drv.add([{ addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }, { addr: 0x8000, len: 1 }], 0);
    rejects(q, chain, "chain-too-long");
  });
  await t.step("a huge indirect table", () => {
    const { drv, q, chain } = packed(8, 1000);
    drv.addIndirect(0x4000, 0xffff_fff0, 0);
    rejects(q, chain, "chain-too-long");
  });
});

Deno.test("PackedQueue.pop() rejects an indirect descriptor inside an indirect table", () => {
  const { mem, drv, q, chain } = packed();
  writePackedTable(mem, 0x4000, [
    { addr: 0x8000, len: 1, flags: 0 },
    { addr: 0x4000, len: 32, flags: F_INDIRECT },
  ]);
  drv.addIndirect(0x4000, 32, 0);
  rejects(q, chain, "nested-indirect");
});

Deno.test("PackedQueue.pop() rejects an indirect descriptor with NEXT", async (t) => {
  await t.step("INDIRECT and NEXT on one descriptor", () => {
    const { mem, drv, q, chain } = packed();
    writePackedTable(mem, 0x4000, [{ addr: 0x8000, len: 1, flags: 0 }]);
    drv.addIndirect(0x4000, 16, 0, F_NEXT);
    rejects(q, chain, "indirect-with-next");
  });
  await t.step("an INDIRECT descriptor continuing a NEXT chain", () => {
    const { mem, drv, q, chain } = packed();
    writePackedTable(mem, 0x4000, [{ addr: 0x8000, len: 1, flags: 0 }]);
    drv.setDesc(1, 0x4000, 16, 0, F_INDIRECT | drv.availBits());
    drv.setDesc(0, 0x8000, 1, 0, F_NEXT | drv.availBits());
    rejects(q, chain, "indirect-with-next");
  });
});

Deno.test("PackedQueue.pop() rejects an indirect table whose length is zero or not a multiple of 16", async (t) => {
  for (const len of [0, 8, 24, 0xffff_ffff]) {
    await t.step(`length ${len}`, () => {
      const { drv, q, chain } = packed();
      drv.addIndirect(0x4000, len, 0);
      rejects(q, chain, "bad-indirect-length");
    });
  }
});

Deno.test("PackedQueue.pop() rejects an indirect descriptor when INDIRECT_DESC was not negotiated", () => {
  const { mem, drv, q, chain } = packed(8, 8, false);
  writePackedTable(mem, 0x4000, [{ addr: 0x8000, len: 1, flags: 0 }]);
  drv.addIndirect(0x4000, 16, 0);
  rejects(q, chain, "indirect-not-negotiated");
});

Deno.test("PackedQueue.pop() rejects a readable descriptor after a writable one", async (t) => {
  await t.step("in the ring", () => {
    const { drv, q, chain } = packed();
    drv.add([{ addr: 0x8000, len: 1, write: true }, { addr: 0x8000, len: 1 }], 0);
    rejects(q, chain, "readable-after-writable");
  });
  await t.step("in an indirect table", () => {
    const { mem, drv, q, chain } = packed();
    writePackedTable(mem, 0x4000, [
      { addr: 0x8000, len: 1, flags: F_WRITE },
      { addr: 0x8000, len: 1, flags: 0 },
    ]);
    drv.addIndirect(0x4000, 32, 0);
    rejects(q, chain, "readable-after-writable");
  });
});

Deno.test("PackedQueue.pop() rejects addresses at or beyond 2^53", async (t) => {
  await t.step("a buffer address with a high word above 2^21", () => {
    const { mem, drv, q, chain } = packed();
    drv.add([{ addr: 0, len: 16 }], 0);
    writeRaw64(mem, drv.desc, 0, 0xffff_ffff);
    rejects(q, chain, "bad-address");
  });
  await t.step("a buffer that ends above 2^53", () => {
    const { drv, q, chain } = packed();
    drv.add([{ addr: 2 ** 53 - 1, len: 2, write: true }], 0);
    rejects(q, chain, "bad-address");
  });
  await t.step("an indirect table that ends above 2^53", () => {
    const { drv, q, chain } = packed();
    drv.addIndirect(2 ** 53 - 16, 32, 0);
    rejects(q, chain, "bad-address");
  });
});

Deno.test("PackedQueue reports memory outside RAM as DmaFault", async (t) => {
  await t.step("an indirect table outside memory, at pop()", () => {
    const { drv, q, chain } = packed();
    drv.addIndirect(0x100_0000, 32, 0);
    assertThrows(() => q.pop(chain), DmaFault);
  });
  await t.step("a buffer outside memory, when the device touches it", () => {
    const { drv, q, chain } = packed();
    drv.add([{ addr: 0x100_0000, len: 4, write: true }], 0);
    assertEquals(q.pop(chain), true);
    assertThrows(() => chain.writer.writeU32(1), DmaFault);
  });
});

Deno.test("PackedQueue.pop() rejects a buffer id out of range", () => {
  const { drv, q, chain } = packed(8);
  drv.add([{ addr: 0x8000, len: 1 }], 8);
  rejects(q, chain, "bad-buffer-id");
});

Deno.test("PackedQueue.pop() rejects a buffer id already in flight", () => {
  const { drv, q, chain } = packed(8);
  drv.add([{ addr: 0x8000, len: 1 }], 2);
  drv.add([{ addr: 0x8000, len: 1 }], 2);
  assertEquals(q.pop(chain), true);
  rejects(q, chain, "bad-buffer-id");
});
