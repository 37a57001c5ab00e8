import { assert, assertEquals } from "@std/assert";
import { createVirtqueue, type Virtqueue } from "../../src/guest/virtio/virtqueue.ts";
import { VirtqueueMapper } from "../../src/guest/virtio/map_ops.ts";
import { Errno } from "../../src/guest/dma/dma_api.ts";
import type { GuestMemory } from "../../src/memory/guest_memory.ts";
import type { PageAllocator } from "../../src/guest/page_allocator.ts";
import { makeGuest, packedDesc, PackedDevice } from "./guest_helpers.ts";

const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;
const AVAIL = 0x80;
const USED = 0x8000;

interface Fixture {
  memory: GuestMemory;
  pages: PageAllocator;
  vq: Virtqueue<string>;
  dev: PackedDevice;
  kicks: number[];
  irqs: number[];
}

function setup(
  opts: {
    size?: number;
    eventIdx?: boolean;
    indirect?: boolean;
    inOrder?: boolean;
    callback?: boolean;
  } = {},
): Fixture {
  const { memory, pages } = makeGuest();
  const mapper = new VirtqueueMapper({ pages, accessPlatform: false });
  const kicks: number[] = [];
  const irqs: number[] = [];
  const vq = createVirtqueue<string>({
    index: 1,
    size: opts.size ?? 8,
    layout: "packed",
    eventIdx: opts.eventIdx ?? false,
    indirect: opts.indirect ?? false,
    inOrder: opts.inOrder ?? false,
    mapper,
    notify: (i) => {
      kicks.push(i);
    },
    callback: opts.callback === false ? null : (q) => irqs.push(q.index),
  })!;
  const dev = new PackedDevice(memory, vq.size, vq.descAddr, vq.driverAddr, vq.deviceAddr);
  return { memory, pages, vq, dev, kicks, irqs };
}

Deno.test("PackedVirtqueue layout", async (t) => {
  await t.step("createVirtqueue() allocates ring and two event areas, any size", () => {
    const { vq, memory } = setup({ size: 6 });
    assertEquals(vq.layout, "packed");
    assertEquals(vq.size, 6);
    assertEquals(vq.numFree, 6);
    assert(vq.descAddr !== vq.driverAddr && vq.driverAddr !== vq.deviceAddr);
    assertEquals(memory.read32(vq.driverAddr), 0); // ENABLE, off_wrap 0
  });

  await t.step("a queue without a callback starts with the driver area DISABLEd", () => {
    const { dev } = setup({ callback: false });
    assertEquals(dev.driverEventArea, [0, 1]);
  });

  await t.step("createVirtqueue() returns null and frees what it took when memory runs out", () => {
    const { pages } = makeGuest();
    const mapper = new VirtqueueMapper({ pages, accessPlatform: false });
    pages.allocPages(pages.freeCount - 2);
    const before = pages.freeCount;
    const vq = createVirtqueue({
      index: 0,
      size: 8,
      layout: "packed",
      eventIdx: false,
      indirect: false,
      mapper,
      notify: () => {},
    });
    assertEquals(vq, null);
    assertEquals(pages.freeCount, before);
  });
});

Deno.test("PackedVirtqueue.addSgs()", async (t) => {
  await t.step(
    "writes a chain with AVAIL set, USED clear, the buffer id in every descriptor",
    () => {
      const { vq, memory } = setup();
      assertEquals(
        vq.addSgs([{ addr: 0x1000, length: 16 }], [{ addr: 0x2000, length: 1 }], "req"),
        0,
      );
      assertEquals(packedDesc(memory, vq.descAddr, 0), {
        addr: 0x1000,
        len: 16,
        id: 0,
        flags: AVAIL | NEXT,
      });
      assertEquals(packedDesc(memory, vq.descAddr, 1), {
        addr: 0x2000,
        len: 1,
        id: 0,
        flags: AVAIL | WRITE,
      });
      assertEquals(vq.numFree, 6);
      vq.addInbuf([{ addr: 0x3000, length: 64 }], "rx");
      // Ids come from the desc_extra free list, which the first chain advanced by two.
      assertEquals(packedDesc(memory, vq.descAddr, 2), {
        addr: 0x3000,
        len: 64,
        id: 2,
        flags: AVAIL | WRITE,
      });
    },
  );

  await t.step("flips AVAIL/USED bits after a wrap", () => {
    const { vq, dev, memory } = setup({ size: 4 });
    for (let i = 0; i < 3; i++) vq.addOutbuf([{ addr: 0x1000, length: 1 }], `t${i}`);
    for (let i = 0; i < 3; i++) {
      const c = dev.pop()!;
      dev.pushUsed(c.id, 0, c.slots);
    }
    for (let i = 0; i < 3; i++) vq.getBuf();
    // Slots 3, 0, 1: the chain wraps; slots 0 and 1 carry the flipped wrap counter.
    vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1100, length: 1 }, {
      addr: 0x1200,
      length: 1,
    }], "w");
    assertEquals(packedDesc(memory, vq.descAddr, 3).flags, AVAIL | NEXT);
    assertEquals(packedDesc(memory, vq.descAddr, 0).flags, USED | NEXT);
    assertEquals(packedDesc(memory, vq.descAddr, 1).flags, USED);
    const c = dev.pop()!;
    assertEquals(c.slots, 3);
    dev.pushUsed(c.id, 0, 3);
    assertEquals(vq.getBuf()?.token, "w");
    assertEquals(vq.notificationData(), ((2 | (0 << 15)) << 16 | 1) >>> 0);
  });

  await t.step("returns -ENOSPC without kicking when the ring is full", () => {
    const { vq, kicks } = setup({ size: 2 });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1000, length: 1 }], "a");
    assertEquals(vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b"), -Errno.ENOSPC);
    assertEquals(kicks, []);
  });

  await t.step("uses one indirect descriptor for more than one entry when negotiated", () => {
    const { vq, memory } = setup({ indirect: true });
    vq.addSgs([{ addr: 0x1000, length: 16 }], [{ addr: 0x2000, length: 512 }, {
      addr: 0x3000,
      length: 1,
    }], "blk");
    const head = packedDesc(memory, vq.descAddr, 0);
    assertEquals(head.flags, AVAIL | INDIRECT);
    assertEquals(head.len, 48);
    assertEquals(head.id, 0);
    assertEquals(vq.numFree, 7);
    assertEquals(packedDesc(memory, head.addr, 0), { addr: 0x1000, len: 16, id: 0, flags: 0 });
    assertEquals(packedDesc(memory, head.addr, 1), { addr: 0x2000, len: 512, id: 0, flags: WRITE });
    assertEquals(packedDesc(memory, head.addr, 2), { addr: 0x3000, len: 1, id: 0, flags: WRITE });
  });
});

Deno.test("PackedVirtqueue.getBuf()", async (t) => {
  await t.step("returns tokens of used descriptors out of order, recycling buffer ids", () => {
    const { vq, dev } = setup();
    vq.addSgs([{ addr: 0x1000, length: 10 }], [{ addr: 0x2000, length: 20 }], "a"); // id 0, slots 0-1
    vq.addInbuf([{ addr: 0x3000, length: 30 }], "b"); // id 2, slot 2
    assertEquals(vq.getBuf(), null);
    const a = dev.pop()!;
    const b = dev.pop()!;
    assertEquals([a.id, a.slots, b.id, b.slots], [0, 2, 2, 1]);
    dev.pushUsed(b.id, 7, b.slots); // slot 0
    assert(vq.moreUsed());
    assertEquals(vq.getBuf(), { token: "b", len: 7 });
    assertEquals(vq.getBuf(), null); // slot 1 is not used yet
    dev.pushUsed(a.id, 20, a.slots); // slot 1 (covers 2 slots)
    const out = { token: "", len: 0 };
    assertEquals(vq.getBuf(out), out);
    assertEquals(out, { token: "a", len: 20 });
    assertEquals(vq.numFree, 8);
    // Id 0 was freed last, so it is handed out first.
    vq.addOutbuf([{ addr: 0x4000, length: 1 }], "c");
    assertEquals(dev.pop()!.id, 0);
  });

  await t.step("breaks the queue on an out-of-range or unknown id", () => {
    const a = setup();
    a.vq.addOutbuf([{ addr: 0x1000, length: 1 }], "x");
    a.dev.pop();
    a.dev.pushUsed(9, 0, 1);
    assertEquals(a.vq.getBuf(), null);
    assert(a.vq.brokenReason!.includes("id 9 out of range"));

    const b = setup();
    b.vq.addOutbuf([{ addr: 0x1000, length: 1 }], "x");
    b.dev.pop();
    b.dev.pushUsed(5, 0, 1);
    assertEquals(b.vq.getBuf(), null);
    assert(b.vq.brokenReason!.includes("id 5 is not a head"));
  });

  await t.step("keeps going over many wraps", () => {
    const { vq, dev } = setup({ size: 5 });
    for (let i = 0; i < 1000; i++) {
      const n = 1 + (i % 3);
      const sgs = Array.from({ length: n }, (_, k) => ({ addr: 0x1000 * (k + 1), length: 8 }));
      assertEquals(vq.addOutbuf(sgs, `t${i}`), 0);
      const c = dev.pop()!;
      assertEquals(c.slots, n);
      dev.pushUsed(c.id, 0, c.slots);
      assertEquals(vq.getBuf()?.token, `t${i}`);
    }
    assertEquals(vq.numFree, 5);
  });

  await t.step("in order: one used descriptor completes a batch", () => {
    const { vq, dev, memory } = setup({ inOrder: true });
    vq.addSgs([{ addr: 0x1000, length: 10 }], [{ addr: 0x1100, length: 20 }], "a"); // slots 0-1, id 0
    vq.addInbuf([{ addr: 0x2000, length: 30 }], "b"); // slot 2, id 2
    vq.addInbuf([{ addr: 0x3000, length: 40 }], "c"); // slot 3, id 3
    assertEquals(packedDesc(memory, vq.descAddr, 1).id, 0);
    assertEquals(packedDesc(memory, vq.descAddr, 2).id, 2);
    dev.pop();
    dev.pop();
    dev.pop();
    // The device writes one used descriptor, at slot 0, naming the last buffer.
    dev.pushUsed(3, 5, 4);
    assertEquals(vq.getBuf(), { token: "a", len: 30 });
    assertEquals(vq.getBuf(), { token: "b", len: 30 });
    assertEquals(vq.getBuf(), { token: "c", len: 5 });
    assertEquals(vq.getBuf(), null);
    assertEquals(vq.numFree, 8);
    vq.addOutbuf([{ addr: 0x4000, length: 1 }], "d");
    const d = dev.pop()!;
    assertEquals(d.id, 4);
    dev.pushUsed(d.id, 0, 1);
    assertEquals(vq.getBuf(), { token: "d", len: 0 });
  });
});

Deno.test("PackedVirtqueue notifications", async (t) => {
  await t.step("kickPrepare() follows the device area flags", () => {
    const { vq, dev, kicks } = setup();
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    assert(vq.kick());
    assertEquals(kicks, [1]);
    dev.setDeviceEvent(0, 1); // DISABLE
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b");
    assertEquals(vq.kickPrepare(), false);
  });

  await t.step("kickPrepare() in DESC mode kicks when the named slot is made available", () => {
    const { vq, dev } = setup({ size: 4, eventIdx: true });
    dev.setDeviceEvent(2 | (1 << 15), 2); // slot 2, wrap 1
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a"); // slot 0
    assertEquals(vq.kickPrepare(), false);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1000, length: 1 }], "b"); // slots 1-2
    assertEquals(vq.kickPrepare(), true);
    // Across the wrap: ask for slot 0 of the next lap (wrap 0).
    for (let i = 0; i < 2; i++) {
      const c = dev.pop()!;
      dev.pushUsed(c.id, 0, c.slots);
      vq.getBuf();
    }
    dev.setDeviceEvent(0 | (0 << 15), 2);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "c"); // slot 3
    assertEquals(vq.kickPrepare(), false);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "d"); // slot 0, wrap 0
    assertEquals(vq.kickPrepare(), true);
  });

  await t.step("disableCb() / enableCbPrepare() write the driver area; event idx uses DESC", () => {
    const plain = setup();
    plain.vq.disableCb();
    assertEquals(plain.dev.driverEventArea, [0, 1]);
    assertEquals(plain.vq.enableCb(), true);
    assertEquals(plain.dev.driverEventArea, [0, 0]);

    const { vq, dev } = setup({ eventIdx: true });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1000, length: 1 }], "a");
    vq.disableCb();
    const opaque = vq.enableCbPrepare();
    assertEquals(opaque, 0x8000);
    assertEquals(dev.driverEventArea, [0x8000, 2]);
    assertEquals(vq.poll(opaque), false);
    const c = dev.pop()!;
    dev.pushUsed(c.id, 0, c.slots);
    assertEquals(vq.poll(opaque), true);
    vq.getBuf();
    // In DESC mode getBuf moves off_wrap to the next expected used slot.
    assertEquals(dev.driverEventArea, [0x8002, 2]);
  });

  await t.step("enableCbDelayed() names a slot 3/4 of the outstanding descriptors ahead", () => {
    const { vq, dev } = setup({ eventIdx: true });
    for (let i = 0; i < 8; i++) vq.addOutbuf([{ addr: 0x1000, length: 1 }], `t${i}`);
    vq.disableCb();
    assertEquals(vq.enableCbDelayed(), true);
    assertEquals(dev.driverEventArea, [0x8000 | 6, 2]);
    const c = dev.pop()!;
    dev.pushUsed(c.id, 0, 1);
    assertEquals(vq.enableCbDelayed(), false);
  });

  await t.step("interrupt() reports work and calls the callback", () => {
    const { vq, dev, irqs } = setup();
    assertEquals(vq.interrupt(), false);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    const c = dev.pop()!;
    dev.pushUsed(c.id, 0, 1);
    assertEquals(vq.interrupt(), true);
    assertEquals(irqs, [1]);
  });
});

Deno.test("PackedVirtqueue.detachUnusedBuf()", async (t) => {
  await t.step("returns every outstanding token", () => {
    const { vq } = setup({ indirect: true });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    vq.addSgs([{ addr: 0x1000, length: 1 }], [{ addr: 0x2000, length: 1 }], "b");
    vq.addInbuf([{ addr: 0x1000, length: 1 }], "c");
    const got: string[] = [];
    for (let t = vq.detachUnusedBuf(); t !== null; t = vq.detachUnusedBuf()) got.push(t);
    assertEquals(got.sort(), ["a", "b", "c"]);
    assertEquals(vq.numFree, 8);
  });

  await t.step("reset() restores the initial state", () => {
    const { vq, dev, memory } = setup();
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    const recycled: string[] = [];
    vq.reset((t) => recycled.push(t));
    assertEquals(recycled, ["a"]);
    assertEquals(memory.read16(vq.descAddr + 14), 0);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b");
    assertEquals(packedDesc(memory, vq.descAddr, 0).flags, AVAIL);
    const fresh = new PackedDevice(memory, vq.size, vq.descAddr, vq.driverAddr, vq.deviceAddr);
    assertEquals(fresh.pop()!.id, 0);
    void dev;
  });
});
