import { assert, assertEquals, assertThrows } from "@std/assert";
import { createVirtqueue, type Virtqueue } from "../../src/guest/virtio/virtqueue.ts";
import { VirtqueueMapper } from "../../src/guest/virtio/map_ops.ts";
import { Errno } from "../../src/guest/dma/dma_api.ts";
import type { GuestMemory } from "../../src/memory/guest_memory.ts";
import type { PageAllocator } from "../../src/guest/page_allocator.ts";
import { makeGuest, splitDesc, SplitDevice } from "./guest_helpers.ts";

const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;

interface Fixture {
  memory: GuestMemory;
  pages: PageAllocator;
  vq: Virtqueue<string>;
  dev: SplitDevice;
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
  const size = opts.size ?? 8;
  const vq = createVirtqueue<string>({
    index: 3,
    size,
    layout: "split",
    eventIdx: opts.eventIdx ?? false,
    indirect: opts.indirect ?? false,
    inOrder: opts.inOrder ?? false,
    mapper,
    notify: (i) => {
      kicks.push(i);
    },
    callback: opts.callback === false ? null : (q) => irqs.push(q.index),
  })!;
  const dev = new SplitDevice(memory, vq.size, vq.descAddr, vq.driverAddr, vq.deviceAddr);
  return { memory, pages, vq, dev, kicks, irqs };
}

Deno.test("SplitVirtqueue layout", async (t) => {
  await t.step(
    "createVirtqueue() lays out one zeroed block: desc, avail, used aligned to 64",
    () => {
      const { vq, memory } = setup({ size: 8 });
      assertEquals(vq.layout, "split");
      assertEquals(vq.size, 8);
      assertEquals(vq.numFree, 8);
      assertEquals(vq.descAddr % 4096, 0);
      assertEquals(vq.driverAddr, vq.descAddr + 16 * 8);
      // avail = 6 + 2*8 = 22 bytes after 128: used at align(150, 64) = 192
      assertEquals(vq.deviceAddr, vq.descAddr + 192);
      assertEquals(memory.read16(vq.driverAddr), 0);
      assertEquals(memory.read16(vq.driverAddr + 2), 0);
    },
  );

  await t.step("createVirtqueue() rejects a non-power-of-two split size", () => {
    const { pages } = makeGuest();
    const mapper = new VirtqueueMapper({ pages, accessPlatform: false });
    assertThrows(
      () =>
        createVirtqueue({
          index: 0,
          size: 6,
          layout: "split",
          eventIdx: false,
          indirect: false,
          mapper,
          notify: () => {},
        }),
      RangeError,
    );
  });

  await t.step(
    "createVirtqueue() halves the size while ring memory is short (may_reduce_num)",
    () => {
      const { pages } = makeGuest();
      const mapper = new VirtqueueMapper({ pages, accessPlatform: false });
      // Leave 3 free pages: a 1024-entry ring needs 7 pages, 512 needs 4, 256 fits in 2.
      pages.allocPages(pages.freeCount - 3);
      const vq = createVirtqueue({
        index: 0,
        size: 1024,
        layout: "split",
        eventIdx: false,
        indirect: false,
        mapper,
        notify: () => {},
      })!;
      assertEquals(vq.size, 256);
      const none = createVirtqueue({
        index: 1,
        size: 1024,
        layout: "split",
        eventIdx: false,
        indirect: false,
        mapper,
        notify: () => {},
        mayReduceNum: false,
      });
      assertEquals(none, null);
    },
  );

  await t.step("a queue without a callback starts with NO_INTERRUPT set", () => {
    const { vq, memory } = setup({ callback: false });
    assertEquals(memory.read16(vq.driverAddr), 1);
    const withEvent = setup({ callback: false, eventIdx: true });
    // With event idx the flag stays in the shadow only.
    assertEquals(withEvent.memory.read16(withEvent.vq.driverAddr), 0);
  });
});

Deno.test("SplitVirtqueue.addSgs()", async (t) => {
  await t.step("writes a chain: readable then writable, NEXT links, head in the avail ring", () => {
    const { vq, memory } = setup();
    const r = vq.addSgs(
      [{ addr: 0x1000, length: 16 }, { addr: 0x2000, length: 100 }],
      [{ addr: 0x3000, length: 1 }],
      "req",
    );
    assertEquals(r, 0);
    assertEquals(splitDesc(memory, vq.descAddr, 0), {
      addr: 0x1000,
      len: 16,
      flags: NEXT,
      next: 1,
    });
    assertEquals(splitDesc(memory, vq.descAddr, 1), {
      addr: 0x2000,
      len: 100,
      flags: NEXT,
      next: 2,
    });
    assertEquals(splitDesc(memory, vq.descAddr, 2), {
      addr: 0x3000,
      len: 1,
      flags: WRITE,
      next: 3,
    });
    assertEquals(memory.read16(vq.driverAddr + 4), 0); // ring[0] = head 0
    assertEquals(memory.read16(vq.driverAddr + 2), 1); // idx
    assertEquals(vq.numFree, 5);
    vq.addInbuf([{ addr: 0x4000, length: 64 }], "rx");
    assertEquals(splitDesc(memory, vq.descAddr, 3), {
      addr: 0x4000,
      len: 64,
      flags: WRITE,
      next: 4,
    });
    assertEquals(memory.read16(vq.driverAddr + 6), 3);
    assertEquals(memory.read16(vq.driverAddr + 2), 2);
  });

  await t.step("writes 64-bit addresses above 4 GiB exactly", () => {
    const { vq, memory } = setup();
    vq.addOutbuf([{ addr: 0x1_2345_6789_a, length: 4 }], "x");
    assertEquals(splitDesc(memory, vq.descAddr, 0).addr, 0x1_2345_6789_a);
  });

  await t.step("returns -ENOSPC when full and kicks for outgoing buffers", () => {
    const { vq, kicks } = setup({ size: 2 });
    assertEquals(vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x2000, length: 1 }], "a"), 0);
    assertEquals(vq.addInbuf([{ addr: 0x1000, length: 1 }], "b"), -Errno.ENOSPC);
    assertEquals(kicks, []);
    assertEquals(vq.addOutbuf([{ addr: 0x1000, length: 1 }], "c"), -Errno.ENOSPC);
    assertEquals(kicks, [3]);
  });

  await t.step("rejects misuse: no token, no entries, bad lengths", () => {
    const { vq } = setup();
    assertThrows(
      () => vq.addOutbuf([{ addr: 0, length: 1 }], null as unknown as string),
      TypeError,
    );
    assertThrows(() => vq.addSgs([], [], "x"), RangeError);
    assertThrows(() => vq.addOutbuf([{ addr: 0, length: 2 ** 32 }], "x"), RangeError);
    assertThrows(() => vq.addOutbuf([{ addr: -1, length: 1 }], "x"), RangeError);
    assertEquals(vq.numFree, 8);
  });

  await t.step("uses one indirect descriptor for more than one entry when negotiated", () => {
    const { vq, memory, pages } = setup({ indirect: true });
    const before = pages.freeCount;
    vq.addSgs([{ addr: 0x1000, length: 16 }], [{ addr: 0x2000, length: 512 }, {
      addr: 0x3000,
      length: 1,
    }], "blk");
    const head = splitDesc(memory, vq.descAddr, 0);
    assertEquals(head.flags, INDIRECT);
    assertEquals(head.len, 48);
    assertEquals(vq.numFree, 7);
    assertEquals(splitDesc(memory, head.addr, 0), { addr: 0x1000, len: 16, flags: NEXT, next: 1 });
    assertEquals(splitDesc(memory, head.addr, 1), {
      addr: 0x2000,
      len: 512,
      flags: NEXT | WRITE,
      next: 2,
    });
    assertEquals(splitDesc(memory, head.addr, 2), { addr: 0x3000, len: 1, flags: WRITE, next: 3 });
    assertEquals(pages.freeCount, before - 1); // one slab page for the table
    // A single entry goes direct.
    vq.addInbuf([{ addr: 0x4000, length: 8 }], "one");
    assertEquals(splitDesc(memory, vq.descAddr, 1).flags, WRITE);
  });

  await t.step(
    "falls back to direct descriptors when the indirect table cannot be allocated",
    () => {
      const { vq, memory, pages } = setup({ indirect: true });
      pages.allocPages(pages.freeCount);
      assertEquals(
        vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x2000, length: 2 }], "t"),
        0,
      );
      assertEquals(splitDesc(memory, vq.descAddr, 0).flags, NEXT);
      assertEquals(vq.numFree, 6);
    },
  );

  await t.step("returns -EIO on a broken queue", () => {
    const { vq } = setup();
    vq.markBroken("test");
    assertEquals(vq.addOutbuf([{ addr: 0x1000, length: 1 }], "x"), -Errno.EIO);
    assert(vq.isBroken());
  });
});

Deno.test("SplitVirtqueue.getBuf()", async (t) => {
  await t.step("returns tokens and lengths of used entries, recycling descriptors", () => {
    const { vq, dev } = setup();
    vq.addSgs([{ addr: 0x1000, length: 10 }], [{ addr: 0x2000, length: 20 }], "a");
    vq.addInbuf([{ addr: 0x3000, length: 30 }], "b");
    assertEquals(vq.getBuf(), null);
    assertEquals(dev.popHeads(), [0, 2]);
    dev.writeUsed(2, 7);
    dev.writeUsed(0, 20);
    dev.publish();
    assert(vq.moreUsed());
    assertEquals(vq.getBuf(), { token: "b", len: 7 });
    const out = { token: "", len: 0 };
    assertEquals(vq.getBuf(out), out);
    assertEquals(out, { token: "a", len: 20 });
    assertEquals(vq.getBuf(), null);
    assertEquals(vq.numFree, 8);
    // used_event follows the last used index (interrupts are enabled).
    assertEquals(dev.usedEvent, 2);
  });

  await t.step("reuses freed descriptors from the free list", () => {
    const { vq, dev, memory } = setup({ size: 4 });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1100, length: 1 }], "a"); // descs 0,1
    vq.addOutbuf([{ addr: 0x2000, length: 1 }], "b"); // desc 2
    dev.popHeads();
    dev.writeUsed(0, 0);
    dev.publish();
    vq.getBuf();
    // Free list is now 0 -> 1 -> 3.
    vq.addOutbuf([{ addr: 0x3000, length: 1 }, { addr: 0x3100, length: 1 }, {
      addr: 0x3200,
      length: 1,
    }], "c");
    assertEquals(splitDesc(memory, vq.descAddr, 0).next, 1);
    assertEquals(splitDesc(memory, vq.descAddr, 1).next, 3);
    assertEquals(splitDesc(memory, vq.descAddr, 3).flags, 0);
    assertEquals(dev.popHeads(), [0]);
  });

  await t.step("breaks the queue on an out-of-range or non-head id (BAD_RING)", () => {
    const a = setup();
    a.vq.addOutbuf([{ addr: 0x1000, length: 1 }], "x");
    a.dev.writeUsed(8, 0);
    a.dev.publish();
    assertEquals(a.vq.getBuf(), null);
    assert(a.vq.isBroken());
    assert(a.vq.brokenReason!.includes("id 8 out of range"));

    const b = setup();
    b.vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1000, length: 1 }], "x");
    b.dev.writeUsed(1, 0);
    b.dev.publish();
    assertEquals(b.vq.getBuf(), null);
    assert(b.vq.brokenReason!.includes("id 1 is not a head"));
    assertEquals(b.vq.addOutbuf([{ addr: 0x1000, length: 1 }], "y"), -Errno.EIO);
  });

  await t.step("handles a 16-bit index wrap", () => {
    const { vq, dev } = setup({ size: 4 });
    for (let i = 0; i < 70000; i++) {
      assertEquals(vq.addOutbuf([{ addr: 0x1000, length: 4 }], `t${i}`), 0);
      const [head] = dev.popHeads();
      dev.writeUsed(head, 0);
      dev.publish();
      assertEquals(vq.getBuf()?.token, `t${i}`);
    }
    assertEquals(vq.numFree, 4);
  });

  await t.step("in order: a single used entry completes a batch", () => {
    const { vq, dev, memory } = setup({ inOrder: true });
    vq.addSgs([{ addr: 0x1000, length: 10 }], [{ addr: 0x1100, length: 20 }], "a"); // descs 0,1
    vq.addInbuf([{ addr: 0x2000, length: 30 }], "b"); // desc 2
    vq.addInbuf([{ addr: 0x3000, length: 40 }], "c"); // desc 3
    assertEquals(dev.popHeads(), [0, 2, 3]);
    assertEquals(splitDesc(memory, vq.descAddr, 0).next, 1);
    // The device reports only the batch's last buffer and skips three used slots.
    dev.writeUsed(3, 5);
    dev.skipUsed(2);
    dev.publish();
    assertEquals(vq.getBuf(), { token: "a", len: 30 }); // whole buffer
    assertEquals(vq.getBuf(), { token: "b", len: 30 });
    assertEquals(vq.getBuf(), { token: "c", len: 5 });
    assertEquals(vq.getBuf(), null);
    assertEquals(vq.numFree, 8);
    // Descriptors continue sequentially: the next chain starts at 4.
    vq.addOutbuf([{ addr: 0x4000, length: 1 }], "d");
    assertEquals(dev.popHeads(), [4]);
    dev.writeUsed(4, 0);
    dev.publish();
    assertEquals(vq.getBuf(), { token: "d", len: 0 });
  });
});

Deno.test("SplitVirtqueue notifications", async (t) => {
  await t.step("kick() notifies the transport with the queue index", () => {
    const { vq, kicks } = setup();
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    assert(vq.kick());
    assertEquals(kicks, [3]);
    // Without event idx the device's flag alone decides, even with nothing new.
    assertEquals(vq.kickPrepare(), true);
  });

  await t.step("kickPrepare() honours NO_NOTIFY", () => {
    const { vq, memory, kicks } = setup();
    memory.write16(vq.deviceAddr, 1);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    assertEquals(vq.kickPrepare(), false);
    assert(vq.kick());
    assertEquals(kicks, []);
  });

  await t.step("kickPrepare() with event idx kicks only when avail_event is crossed", () => {
    const { vq, dev, kicks } = setup({ eventIdx: true });
    dev.availEvent = 0;
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a"); // avail 0 -> 1 crosses 0
    assertEquals(vq.kickPrepare(), true);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b"); // 1 -> 2, event still 0
    assertEquals(vq.kickPrepare(), false);
    dev.availEvent = 3;
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "c"); // 2 -> 3 does not pass 3
    assertEquals(vq.kickPrepare(), false);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "d");
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "e"); // 3 -> 5 passes 3
    assert(vq.kick());
    assertEquals(kicks, [3]);
  });

  await t.step("disableCb() and enableCb() write avail.flags without event idx", () => {
    const { vq, memory } = setup();
    vq.disableCb();
    assertEquals(memory.read16(vq.driverAddr), 1);
    assertEquals(vq.enableCb(), true);
    assertEquals(memory.read16(vq.driverAddr), 0);
  });

  await t.step("disableCb() and enableCbPrepare() move used_event with event idx", () => {
    const { vq, dev, memory } = setup({ eventIdx: true });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b");
    dev.popHeads();
    dev.writeUsed(0, 0);
    dev.publish();
    vq.getBuf();
    assertEquals(dev.usedEvent, 1);
    vq.disableCb();
    assertEquals(dev.usedEvent, 0);
    assertEquals(memory.read16(vq.driverAddr), 0); // flags untouched with event idx
    const opaque = vq.enableCbPrepare();
    assertEquals(opaque, 1);
    assertEquals(dev.usedEvent, 1);
    assertEquals(vq.poll(opaque), false);
    dev.writeUsed(1, 0);
    dev.publish();
    assertEquals(vq.poll(opaque), true);
    assertEquals(vq.enableCb(), false); // pending buffer
  });

  await t.step("enableCbDelayed() asks for an interrupt after 3/4 of outstanding buffers", () => {
    const { vq, dev } = setup({ eventIdx: true });
    for (let i = 0; i < 8; i++) vq.addOutbuf([{ addr: 0x1000, length: 1 }], `t${i}`);
    vq.disableCb();
    assertEquals(vq.enableCbDelayed(), true);
    assertEquals(dev.usedEvent, 6); // 0 + 8 * 3 / 4
    dev.popHeads();
    for (let i = 0; i < 7; i++) dev.writeUsed(i, 0);
    dev.publish();
    assertEquals(vq.enableCbDelayed(), false); // 7 used > 6
  });

  await t.step("interrupt() calls the callback only when there is work", () => {
    const { vq, dev, irqs } = setup();
    assertEquals(vq.interrupt(), false);
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    dev.popHeads();
    dev.writeUsed(0, 0);
    dev.publish();
    assertEquals(vq.interrupt(), true);
    assertEquals(irqs, [3]);
  });

  await t.step("a device that triggered an event is not asked again by disableCb()", () => {
    const { vq, dev } = setup({ eventIdx: true });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    dev.popHeads();
    dev.writeUsed(0, 0);
    dev.publish();
    vq.getBuf();
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b");
    dev.popHeads();
    dev.writeUsed(1, 0);
    dev.publish();
    vq.interrupt(); // event_triggered
    vq.disableCb();
    assertEquals(dev.usedEvent, 1); // not rewritten to 0
  });

  await t.step("notify() returning false breaks the queue", () => {
    const { pages } = makeGuest();
    const mapper = new VirtqueueMapper({ pages, accessPlatform: false });
    const vq = createVirtqueue({
      index: 0,
      size: 4,
      layout: "split",
      eventIdx: false,
      indirect: false,
      mapper,
      notify: () => false,
    })!;
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    assertEquals(vq.kick(), false);
    assert(vq.isBroken());
    vq.unbreak();
    assert(!vq.isBroken());
  });

  await t.step("notificationData() carries the avail index above the queue index", () => {
    const { vq } = setup();
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b");
    assertEquals(vq.notificationData(), (2 << 16) | 3);
  });
});

Deno.test("SplitVirtqueue.detachUnusedBuf()", async (t) => {
  await t.step("returns every outstanding token and rewinds the avail index", () => {
    const { vq, memory } = setup({ indirect: true });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    vq.addSgs([{ addr: 0x1000, length: 1 }], [{ addr: 0x2000, length: 1 }], "b");
    vq.addInbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1000, length: 1 }], "c");
    const got: string[] = [];
    for (let t = vq.detachUnusedBuf(); t !== null; t = vq.detachUnusedBuf()) got.push(t);
    assertEquals(got.sort(), ["a", "b", "c"]);
    assertEquals(vq.numFree, 8);
    assertEquals(memory.read16(vq.driverAddr + 2), 0);
  });

  await t.step("reset() recycles tokens and restores the initial ring", () => {
    const { vq, memory, dev } = setup();
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
    vq.addOutbuf([{ addr: 0x1000, length: 1 }], "b");
    dev.popHeads();
    dev.writeUsed(0, 0);
    dev.publish();
    const recycled: string[] = [];
    vq.reset((t) => recycled.push(t));
    assertEquals(recycled.sort(), ["a", "b"]);
    assertEquals(memory.read16(vq.deviceAddr + 2), 0);
    assertEquals(vq.numFree, 8);
    assertEquals(vq.addOutbuf([{ addr: 0x1000, length: 1 }], "c"), 0);
    assertEquals(memory.read16(vq.driverAddr + 2), 1);
  });

  await t.step("destroy() returns the ring pages", () => {
    const { vq, pages } = setup({ indirect: true });
    vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x1000, length: 1 }], "a");
    const before = pages.freeCount;
    vq.destroy();
    assertEquals(pages.freeCount, before + 1); // the ring page (the slab page stays with the heap)
    assert(vq.isBroken());
  });
});
