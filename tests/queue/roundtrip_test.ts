/**
 * The guest driver's virtqueues (src/guest) against the device's queues
 * (src/queue) over shared guest memory: each side only sees the bytes the
 * other wrote, so the two models check each other. The "transport" here is
 * two callbacks: the driver's notify runs the device, the device's interrupt
 * runs the driver's `interrupt()`.
 */
import { assert, assertEquals } from "@std/assert";
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import type { DmaAccess } from "../../src/dma/dma_access.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "../../src/dma/dma_space.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import { createDeviceQueue } from "../../src/queue/create_device_queue.ts";
import type { DmaSpace } from "../../src/dma/dma_space.ts";
import { PageAllocator } from "../../src/guest/page_allocator.ts";
import { VirtqueueMapper } from "../../src/guest/virtio/map_ops.ts";
import {
  createVirtqueue,
  type SgEntry,
  type Virtqueue,
  type VirtqueueLayout,
} from "../../src/guest/virtio/virtqueue.ts";
import { IOVA_OFFSET, MockMapOps } from "../guest/guest_helpers.ts";

/** Buffers live below this; the page allocator owns the rest. */
const HEAP = 0x80000;

interface Options {
  layout: VirtqueueLayout;
  eventIdx: boolean;
  indirect?: boolean;
  inOrder?: boolean;
  size?: number;
  mapOps?: boolean;
}

/** A device space that undoes {@linkcode MockMapOps}' offset: the IOMMU of the mock. */
class OffsetDmaSpace extends TranslatingDmaSpace {
  constructor(readonly memory: GuestMemory) {
    super();
  }
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    const phys = address - IOVA_OFFSET;
    const r = this.memory.regionOf(phys, length > 0 ? 1 : 0);
    if (r === undefined) throw new DmaFault(address, length, access, "unmapped");
    out.bytes = r.bytes;
    out.offset = phys - r.base;
    out.length = Math.min(length, r.end - phys);
  }
}

/**
 * A driver virtqueue wired to a device queue. The device echoes: it reads the
 * readable part and writes `~byte` of it into the writable part, so the driver
 * can check every byte crossed both ways.
 */
class Link {
  readonly memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
  readonly pages = new PageAllocator(this.memory, { base: HEAP, size: (1 << 20) - HEAP });
  readonly vq: Virtqueue<number>;
  readonly dev: DeviceQueue;
  readonly dma: DmaSpace;
  readonly chain: DescriptorChain;
  readonly ops: MockMapOps | null;
  kicks = 0;
  irqs = 0;
  callbacks = 0;
  /** Chains the device holds back instead of completing at once. */
  held: number[] = [];
  /** When set, the device keeps chains until `release()`. */
  hold = false;
  /** Runs inside the driver's interrupt callback. */
  onIrq: (() => void) | null = null;
  readonly #scratch = new Uint8Array(4096);

  constructor(readonly opts: Options) {
    this.ops = opts.mapOps ? new MockMapOps(this.pages) : null;
    const mapper = new VirtqueueMapper({
      pages: this.pages,
      accessPlatform: opts.mapOps === true,
      mapOps: this.ops,
      map: "group0",
    });
    this.vq = createVirtqueue<number>({
      index: 0,
      size: opts.size ?? 16,
      layout: opts.layout,
      eventIdx: opts.eventIdx,
      indirect: opts.indirect ?? false,
      inOrder: opts.inOrder ?? false,
      mapper,
      notify: () => {
        this.kicks++;
        this.serve();
      },
      callback: () => {
        this.callbacks++;
        this.onIrq?.();
      },
    })!;
    this.dma = opts.mapOps ? new OffsetDmaSpace(this.memory) : new DirectDmaSpace(this.memory);
    this.dev = createDeviceQueue(
      {
        index: 0,
        size: this.vq.size,
        descAddr: this.vq.descAddr,
        driverAddr: this.vq.driverAddr,
        deviceAddr: this.vq.deviceAddr,
        eventIdx: opts.eventIdx,
        indirect: opts.indirect ?? false,
        inOrder: opts.inOrder ?? false,
      },
      this.dma,
      opts.layout === "packed",
    );
    this.chain = new DescriptorChain(this.dma, 64);
  }

  /** The device's notify handler: pop everything, echo, push, publish, maybe interrupt. */
  serve(): void {
    const { dev, chain } = this;
    while (dev.pop(chain)) {
      if (this.hold) {
        // Keep the chain: record its readable bytes' complement now.
        this.held.push(this.echo());
        continue;
      }
      dev.push(chain.token, this.echoWritten());
    }
    this.publish();
  }

  /** Completes held chains in reverse order (out of order unless IN_ORDER). */
  release(order: "reverse" | "fifo" = "reverse"): void {
    const pairs: [number, number][] = [];
    for (let i = 0; i < this.held.length; i += 2) pairs.push([this.held[i], this.held[i + 1]]);
    if (order === "reverse") pairs.reverse();
    for (const [token, written] of pairs) this.dev.push(token, written);
    this.held = [];
    this.publish();
  }

  publish(): void {
    if (this.dev.publishUsed()) {
      this.irqs++;
      this.vq.interrupt();
    }
  }

  /** Echoes the current chain; returns [token, written] flattened for `held`. */
  echo(): number {
    const written = this.echoWritten();
    this.held.push(this.chain.token);
    return written;
  }

  echoWritten(): number {
    const { chain } = this;
    const buf = this.#scratch.subarray(0, chain.readableLength);
    chain.reader.read(buf);
    for (let i = 0; i < buf.length; i++) buf[i] = ~buf[i];
    return chain.writer.write(buf);
  }

  /** A readable buffer filled with `seed`-derived bytes and a writable one of the same size. */
  buffers(seed: number, shape: number[], writable: number): { out: SgEntry[]; in: SgEntry[] } {
    const out: SgEntry[] = [];
    let addr = 0x1000 + (seed % 64) * 0x1000;
    for (const len of shape) {
      for (let i = 0; i < len; i++) this.memory.write8(addr + i, (seed + i) & 0xff);
      out.push({ addr, length: len });
      addr += len;
    }
    const inn: SgEntry[] = [];
    if (writable > 0) {
      this.memory.fill(addr, writable, 0);
      inn.push({ addr, length: writable });
    }
    return { out, in: inn };
  }
}

/** Checks that `sg` (writable) holds the complement of the readable bytes `out`. */
function checkEcho(link: Link, out: SgEntry[], inn: SgEntry[], len: number): void {
  const src: number[] = [];
  for (const sg of out) {
    for (let i = 0; i < sg.length; i++) src.push(link.memory.read8(sg.addr + i));
  }
  let k = 0;
  for (const sg of inn) {
    for (let i = 0; i < sg.length && k < len; i++, k++) {
      assertEquals(link.memory.read8(sg.addr + i), ~src[k] & 0xff);
    }
  }
  assertEquals(k, len);
}

const LAYOUTS: VirtqueueLayout[] = ["split", "packed"];

for (const layout of LAYOUTS) {
  for (const eventIdx of [false, true]) {
    Deno.test(`round trip: ${layout}, event idx ${eventIdx ? "on" : "off"}`, async (t) => {
      await t.step("1-descriptor chains, one at a time", () => {
        const link = new Link({ layout, eventIdx });
        for (let i = 0; i < 100; i++) {
          const { out } = link.buffers(i, [32], 0);
          assertEquals(link.vq.addOutbuf(out, i), 0);
          assert(link.vq.kick());
          assertEquals(link.vq.getBuf(), { token: i, len: 0 });
        }
        assertEquals(link.vq.numFree, link.vq.size);
        assertEquals(link.kicks, 100);
        assert(!link.vq.isBroken());
      });

      await t.step("3-descriptor chains (header out, data in, status in) with data checked", () => {
        const link = new Link({ layout, eventIdx });
        for (let i = 0; i < 50; i++) {
          const { out } = link.buffers(i, [16], 0);
          const data = { addr: 0x50000, length: 12 };
          const status = { addr: 0x50100, length: 4 };
          link.memory.fill(0x50000, 0x200, 0);
          assertEquals(link.vq.addSgs(out, [data, status], i), 0);
          link.vq.kick();
          const used = link.vq.getBuf();
          assertEquals(used, { token: i, len: 16 });
          checkEcho(link, out, [data, status], 16);
        }
      });

      await t.step("batches: several buffers per kick, completed out of order", () => {
        const link = new Link({ layout, eventIdx });
        const pending = new Map<number, { out: SgEntry[]; in: SgEntry[] }>();
        let next = 0;
        for (let round = 0; round < 40; round++) {
          link.hold = true;
          const n = 1 + (round % 5);
          for (let k = 0; k < n; k++) {
            const b = link.buffers(next, [8, 8 + (next % 7)], 24);
            assertEquals(link.vq.addSgs(b.out, b.in, next), 0);
            pending.set(next++, b);
          }
          link.vq.kick();
          link.hold = false;
          link.release("reverse");
          for (let used = link.vq.getBuf(); used !== null; used = link.vq.getBuf()) {
            const b = pending.get(used.token)!;
            const readable = b.out.reduce((s, sg) => s + sg.length, 0);
            assertEquals(used.len, readable);
            checkEcho(link, b.out, b.in, used.len);
            pending.delete(used.token);
          }
          assertEquals(pending.size, 0);
        }
        assertEquals(link.vq.numFree, link.vq.size);
        assert(!link.vq.isBroken());
      });

      await t.step("indirect 3-descriptor chains", () => {
        const link = new Link({ layout, eventIdx, indirect: true });
        for (let i = 0; i < 60; i++) {
          const b = link.buffers(i, [16], 20);
          const status = { addr: 0x60000, length: 1 };
          assertEquals(link.vq.addSgs(b.out, [...b.in, status], i), 0);
          assertEquals(link.vq.numFree, link.vq.size - 1);
          link.vq.kick();
          const used = link.vq.getBuf()!;
          assertEquals(used, { token: i, len: 16 });
          checkEcho(link, b.out, b.in, 16);
        }
      });

      await t.step("in order", () => {
        const link = new Link({ layout, eventIdx, inOrder: true });
        let next = 0;
        let done = 0;
        for (let round = 0; round < 30; round++) {
          link.hold = true;
          for (let k = 0; k < 3; k++) {
            const b = link.buffers(next, [4, 4, 4].slice(0, 1 + (next % 3)), 0);
            assertEquals(link.vq.addOutbuf(b.out, next++), 0);
          }
          link.vq.kick();
          link.hold = false;
          link.release("fifo");
          for (let used = link.vq.getBuf(); used !== null; used = link.vq.getBuf()) {
            assertEquals(used.token, done++);
          }
        }
        assertEquals(done, next);
        assert(!link.vq.isBroken());
      });

      await t.step("over map ops: the device sees only device addresses, nothing leaks", () => {
        const link = new Link({ layout, eventIdx, indirect: true, mapOps: true });
        for (let i = 0; i < 40; i++) {
          const b = link.buffers(i, i % 2 === 0 ? [16] : [8, 8], 16);
          assertEquals(link.vq.addSgs(b.out, b.in, i), 0);
          link.vq.kick();
          const used = link.vq.getBuf()!;
          assertEquals(used.token, i);
          checkEcho(link, b.out, b.in, used.len);
        }
        assertEquals(link.ops!.live.size, 0);
        assertEquals(link.ops!.errors, []);
      });
    });
  }

  Deno.test(`round trip: ${layout}, notification suppression`, async (t) => {
    await t.step("with event idx the device interrupts once per batch it publishes", () => {
      const link = new Link({ layout, eventIdx: true });
      link.hold = true;
      for (let i = 0; i < 8; i++) link.vq.addOutbuf(link.buffers(i, [8], 0).out, i);
      link.vq.kick();
      link.hold = false;
      link.release("fifo");
      assertEquals(link.irqs, 1);
      assertEquals(link.callbacks, 1);
      let n = 0;
      while (link.vq.getBuf() !== null) n++;
      assertEquals(n, 8);
    });

    await t.step("disableCb() stops interrupts; enableCb() brings them back", () => {
      for (const eventIdx of [false, true]) {
        const link = new Link({ layout, eventIdx });
        const roundTrip = (i: number): void => {
          link.vq.addOutbuf(link.buffers(i, [8], 0).out, i);
          link.vq.kick();
          assertEquals(link.vq.getBuf()?.token, i);
        };
        roundTrip(0);
        // A packed ring starts in ENABLE mode; like Linux, it moves to DESC mode
        // (with event idx) only through a disable/enable cycle.
        link.vq.disableCb();
        assertEquals(link.vq.enableCb(), true);
        // NAPI style: the interrupt handler disables further interrupts. (Linux
        // relies on this order: after vring_interrupt() set event_triggered,
        // disableCb() only updates its shadow, and getBuf() then leaves
        // used_event / off_wrap where the device already passed it.)
        link.onIrq = () => link.vq.disableCb();
        const before = link.irqs;
        roundTrip(1);
        assertEquals(link.irqs, before + 1, `event idx ${eventIdx}`);
        roundTrip(2);
        assertEquals(link.irqs, before + 1, `event idx ${eventIdx}`);
        link.onIrq = null;
        assertEquals(link.vq.enableCb(), true);
        roundTrip(3);
        assertEquals(link.irqs, before + 2, `event idx ${eventIdx}`);
      }
    });

    await t.step("the device's setNotification(false) suppresses the driver's kicks", () => {
      for (const eventIdx of [false, true]) {
        const link = new Link({ layout, eventIdx });
        link.dev.setNotification(false);
        link.vq.addOutbuf(link.buffers(0, [8], 0).out, 0);
        // A split device with event idx "disables" by no longer moving
        // avail_event, which still stands at 0: the first add crosses it.
        assertEquals(
          link.vq.kickPrepare(),
          layout === "split" && eventIdx,
          `event idx ${eventIdx}`,
        );
        link.vq.addOutbuf(link.buffers(1, [8], 0).out, 1);
        assertEquals(link.vq.kickPrepare(), false, `event idx ${eventIdx}`);
        // Re-enabling tells the device that work arrived meanwhile.
        assertEquals(link.dev.setNotification(true), true);
        link.serve();
        assertEquals(link.vq.getBuf()?.token, 0);
        assertEquals(link.vq.getBuf()?.token, 1);
        link.vq.addOutbuf(link.buffers(2, [8], 0).out, 2);
        assertEquals(link.vq.kickPrepare(), true, `event idx ${eventIdx}`);
      }
    });

    await t.step("enableCbDelayed() lets most of a big batch complete before interrupting", () => {
      const link = new Link({ layout, eventIdx: true, size: 16 });
      link.hold = true;
      for (let i = 0; i < 16; i++) link.vq.addOutbuf(link.buffers(i, [8], 0).out, i);
      link.vq.kick();
      link.hold = false;
      link.vq.disableCb();
      assertEquals(link.vq.enableCbDelayed(), true);
      // Complete one at a time: no interrupt until 3/4 (12) are used.
      const held = link.held;
      link.held = [];
      let firstIrqAt = -1;
      for (let k = 0; k < held.length; k += 2) {
        link.dev.push(held[k], held[k + 1]);
        link.publish();
        if (link.irqs > 0 && firstIrqAt < 0) firstIrqAt = k / 2 + 1;
      }
      assert(firstIrqAt >= 12, `first interrupt after ${firstIrqAt} buffers`);
      let n = 0;
      while (link.vq.getBuf() !== null) n++;
      assertEquals(n, 16);
    });
  });

  Deno.test(`round trip: ${layout}, detach after a device reset`, async (t) => {
    await t.step("detachUnusedBuf() returns what the device never completed", () => {
      const link = new Link({ layout, eventIdx: true, indirect: true });
      link.hold = true;
      for (let i = 0; i < 6; i++) {
        link.vq.addSgs(link.buffers(i, [8, 8], 0).out, [], i);
      }
      link.vq.kick();
      link.hold = false;
      // Complete the first two only, then "reset".
      link.dev.push(link.held[0], link.held[1]);
      link.dev.push(link.held[2], link.held[3]);
      link.publish();
      assertEquals(link.vq.getBuf()?.token, 0);
      assertEquals(link.vq.getBuf()?.token, 1);
      const left: number[] = [];
      for (let t = link.vq.detachUnusedBuf(); t !== null; t = link.vq.detachUnusedBuf()) {
        left.push(t);
      }
      assertEquals(left.sort(), [2, 3, 4, 5]);
      assertEquals(link.vq.numFree, link.vq.size);
    });
  });
}

/** A small deterministic PRNG (mulberry32) so failures replay. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

for (const layout of LAYOUTS) {
  Deno.test(`round trip: ${layout}, seeded stress over many wraps`, async (t) => {
    for (
      const [eventIdx, indirect, size] of [[true, true, 8], [false, false, 5], [
        true,
        false,
        16,
      ]] as const
    ) {
      if (layout === "split" && size === 5) continue;
      await t.step(`event idx ${eventIdx}, indirect ${indirect}, size ${size}`, () => {
        const link = new Link({ layout, eventIdx, indirect, size });
        const rand = prng(size * 1000 + (eventIdx ? 1 : 0) + (indirect ? 2 : 0));
        const pending = new Map<number, { out: SgEntry[]; in: SgEntry[] }>();
        let next = 0;
        let completed = 0;
        for (let step = 0; step < 3000; step++) {
          // Add a few buffers while there is room.
          link.hold = true;
          const adds = 1 + Math.floor(rand() * 4);
          for (let k = 0; k < adds; k++) {
            const parts = 1 + Math.floor(rand() * 3);
            const shape = Array.from({ length: parts }, () => 1 + Math.floor(rand() * 20));
            const b = link.buffers(next, shape, rand() < 0.5 ? 0 : 24);
            const r = link.vq.addSgs(b.out, b.in, next);
            if (r !== 0) break; // -ENOSPC
            pending.set(next++, b);
          }
          link.vq.kick();
          link.hold = false;
          // Complete a random subset of what the device holds, in random order.
          const pairs: [number, number][] = [];
          for (let i = 0; i < link.held.length; i += 2) {
            pairs.push([link.held[i], link.held[i + 1]]);
          }
          link.held = [];
          pairs.sort(() => rand() - 0.5);
          const keep = Math.floor(rand() * pairs.length);
          for (const [token, written] of pairs.slice(keep)) link.dev.push(token, written);
          for (const [token, written] of pairs.slice(0, keep)) link.held.push(token, written);
          link.publish();
          for (let used = link.vq.getBuf(); used !== null; used = link.vq.getBuf()) {
            const b = pending.get(used.token);
            if (b === undefined) throw new Error(`token ${used.token} returned twice`);
            checkEcho(link, b.out, b.in, used.len);
            pending.delete(used.token);
            completed++;
          }
          assert(!link.vq.isBroken(), link.vq.brokenReason ?? "");
        }
        // Drain.
        link.release("fifo");
        for (let used = link.vq.getBuf(); used !== null; used = link.vq.getBuf()) {
          pending.delete(used.token);
          completed++;
        }
        assertEquals(pending.size, 0);
        assertEquals(completed, next);
        assertEquals(link.vq.numFree, link.vq.size);
        assert(completed > 3000);
      });
    }
  });
}
