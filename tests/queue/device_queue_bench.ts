/**
 * Device hot path: pop + push + publishUsed of 64 one-descriptor chains per
 * iteration, on both layouts, with the ring refilled by a tiny inline driver
 * writer (a few stores per chain, so most of the time is the device's; the
 * device part alone is too short for `b.start()`/`b.end()`).
 *
 * One iteration = 64 chains: chains/s = 64 × iter/s. The "round trip" benches
 * add the driver's side (make available, then collect the used entries).
 *
 * Run: deno bench tests/queue/device_queue_bench.ts
 */
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import { PackedQueue } from "../../src/queue/packed_queue.ts";
import { SplitQueue } from "../../src/queue/split_queue.ts";

const SIZE = 256;
const BATCH = 64;
const DESC = 0x1000;
const AVAIL = DESC + 16 * SIZE;
const USED = 0x3000;
const DRIVER_EVENT = 0x5000;
const DEVICE_EVENT = 0x5004;
const BUFFERS = 0x10000;

function setupSplit(eventIdx: boolean) {
  const mem = new GuestMemory([{ base: 0, size: 0x100000 }]);
  const dma = new DirectDmaSpace(mem);
  const ram = mem.regions[0].data;
  // Descriptors 0..SIZE-1 each describe one 64-byte readable buffer.
  for (let i = 0; i < SIZE; i++) {
    ram.setUint32(DESC + 16 * i, BUFFERS + 64 * i, true);
    ram.setUint32(DESC + 16 * i + 8, 64, true);
  }
  const q = new SplitQueue({
    index: 0,
    size: SIZE,
    descAddr: DESC,
    driverAddr: AVAIL,
    deviceAddr: USED,
    eventIdx,
    indirect: true,
    inOrder: false,
  }, dma);
  const chain = new DescriptorChain(dma, 64);
  let availIdx = 0;
  let lastUsed = 0;
  return {
    /** The driver makes BATCH chains available (avail ring entries + one idx store). */
    add(): void {
      for (let i = 0; i < BATCH; i++) {
        const slot = (availIdx + i) & (SIZE - 1);
        ram.setUint16(AVAIL + 4 + 2 * slot, slot, true);
      }
      availIdx = (availIdx + BATCH) & 0xffff;
      ram.setUint16(AVAIL + 2, availIdx, true);
    },
    /** The device pops, completes and publishes everything available. */
    device(): number {
      let n = 0;
      while (q.pop(chain)) {
        q.push(chain.token, 0);
        n++;
      }
      q.publishUsed();
      return n;
    },
    /** The driver collects the used entries (getBuf). */
    get(): number {
      const usedIdx = ram.getUint16(USED + 2, true);
      let sum = 0;
      while (lastUsed !== usedIdx) {
        sum += ram.getUint32(USED + 4 + 8 * (lastUsed & (SIZE - 1)), true);
        lastUsed = (lastUsed + 1) & 0xffff;
      }
      return sum;
    },
  };
}

function setupPacked(eventIdx: boolean) {
  const mem = new GuestMemory([{ base: 0, size: 0x100000 }]);
  const dma = new DirectDmaSpace(mem);
  const ram = mem.regions[0].data;
  const q = new PackedQueue({
    index: 0,
    size: SIZE,
    descAddr: DESC,
    driverAddr: DRIVER_EVENT,
    deviceAddr: DEVICE_EVENT,
    eventIdx,
    indirect: true,
    inOrder: false,
  }, dma);
  const chain = new DescriptorChain(dma, 64);
  let next = 0;
  let wrap = 1;
  let usedNext = 0;
  let usedWrap = 1;
  return {
    add(): void {
      const flags = wrap ? 0x80 : 0x8000;
      for (let i = 0; i < BATCH; i++) {
        const o = DESC + 16 * next;
        ram.setUint32(o, BUFFERS + 64 * next, true);
        ram.setUint32(o + 8, 64, true);
        ram.setUint16(o + 12, next, true);
        ram.setUint16(o + 14, flags, true);
        if (++next === SIZE) next = 0;
      }
      if (next === 0) wrap ^= 1;
    },
    device(): number {
      let n = 0;
      while (q.pop(chain)) {
        q.push(chain.token, 0);
        n++;
      }
      q.publishUsed();
      return n;
    },
    get(): number {
      let sum = 0;
      for (;;) {
        const f = ram.getUint16(DESC + 16 * usedNext + 14, true);
        const bit = usedWrap ? 0x8080 : 0;
        if ((f & 0x8080) !== bit) break;
        sum += ram.getUint16(DESC + 16 * usedNext + 12, true);
        if (++usedNext === SIZE) {
          usedNext = 0;
          usedWrap ^= 1;
        }
      }
      return sum;
    },
  };
}

for (const eventIdx of [false, true]) {
  const tag = eventIdx ? " (event idx)" : "";
  const s = setupSplit(eventIdx);
  Deno.bench(`split: device pop+push+publish of 64 one-descriptor chains${tag}`, {
    group: `device${tag}`,
    baseline: true,
  }, () => {
    s.add();
    s.device();
  });
  const s2 = setupSplit(eventIdx);
  Deno.bench(`split: round trip of 64 chains (driver add, device, driver get)${tag}`, {
    group: `round trip${tag}`,
    baseline: true,
  }, () => {
    s2.add();
    s2.device();
    s2.get();
  });
  const p = setupPacked(eventIdx);
  Deno.bench(`packed: device pop+push+publish of 64 one-descriptor chains${tag}`, {
    group: `device${tag}`,
  }, () => {
    p.add();
    p.device();
  });
  const p2 = setupPacked(eventIdx);
  Deno.bench(`packed: round trip of 64 chains (driver add, device, driver get)${tag}`, {
    group: `round trip${tag}`,
  }, () => {
    p2.add();
    p2.device();
    p2.get();
  });
}

// Guard: each iteration really moves BATCH chains (a bench of an empty ring would flatter us).
for (const make of [setupSplit, setupPacked]) {
  const r = make(true);
  for (let i = 0; i < 10; i++) {
    r.add();
    const n = r.device();
    if (n !== BATCH) throw new Error(`Expected ${BATCH} chains per iteration, got ${n}`);
    r.get();
  }
}
