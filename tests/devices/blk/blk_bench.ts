/**
 * virtio-blk throughput on the memory backend, through a split ring and direct
 * DMA: 4 KiB random reads (target ≥ 300k IOPS) and 128 KiB sequential reads
 * (target ≥ 3 GB/s), each against a baseline that only copies the same bytes
 * with `Uint8Array.set`.
 *
 * One bench iteration = one batch of BATCH requests: the driver writes the
 * sectors and avail entries, kicks once, and reaps the used ring.
 *
 *   deno bench tests/devices/blk/blk_bench.ts
 *   deno run tests/devices/blk/blk_bench.ts --summary   # prints IOPS and GB/s
 */
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { SplitQueue } from "../../../src/queue/split_queue.ts";
import { VirtioBlk } from "../../../devices/blk/device.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";

const BATCH = 64;
const RING = 256;
const DISK = 256 << 20;

/** A device plus a minimal driver whose per-request cost is a few stores. */
class Rig {
  readonly mem: GuestMemory;
  readonly u8: Uint8Array;
  readonly dv: DataView;
  readonly device: VirtioBlk;
  readonly disk: MemoryBackend;
  readonly headers: number[] = [];
  readonly datas: number[] = [];
  readonly statuses: number[] = [];
  readonly heads: number[] = [];
  availIdx = 0;
  usedIdx = 0;
  readonly desc = 0x1000;
  readonly avail = 0x1000 + 16 * RING;
  readonly used = 0x4000;

  constructor(readonly len: number) {
    const dataBase = 0x100000;
    this.mem = new GuestMemory([{ base: 0, size: dataBase + BATCH * len + (1 << 20) }]);
    this.u8 = this.mem.view(0, this.mem.ramSize);
    this.dv = new DataView(this.u8.buffer, this.u8.byteOffset, this.u8.byteLength);
    const dma = new DirectDmaSpace(this.mem);
    this.disk = new MemoryBackend(DISK);
    for (let i = 0; i < DISK; i += 4096) this.disk.bytes[i] = i >>> 12;
    this.device = new VirtioBlk({ backend: this.disk, queueSize: RING });
    this.device.bind({
      interrupt() {},
      configChanged() {},
      fail: (r) => {
        throw new Error(r);
      },
    });
    const queue = new SplitQueue({
      index: 0,
      size: RING,
      descAddr: this.desc,
      driverAddr: this.avail,
      deviceAddr: this.used,
      eventIdx: false,
      indirect: false,
      inOrder: false,
    }, dma);
    const features = this.device.deviceFeatures | (1n << 32n);
    this.device.validateFeatures(features);
    this.device.activate({ features, queues: [queue], dma });
    // BATCH fixed chains: header (16) -> data (len, writable) -> status (1, writable).
    for (let i = 0; i < BATCH; i++) {
      const header = 0x8000 + 32 * i;
      const status = 0x8000 + 32 * i + 16;
      const data = dataBase + i * len;
      const d = 3 * i;
      this.setDesc(d, header, 16, 1, d + 1);
      this.setDesc(d + 1, data, len, 3, d + 2);
      this.setDesc(d + 2, status, 1, 2, 0);
      this.headers.push(header);
      this.datas.push(data);
      this.statuses.push(status);
      this.heads.push(d);
    }
  }

  setDesc(i: number, addr: number, len: number, flags: number, next: number): void {
    const o = this.desc + 16 * i;
    this.dv.setUint32(o, addr, true);
    this.dv.setUint32(o + 4, 0, true);
    this.dv.setUint32(o + 8, len, true);
    this.dv.setUint16(o + 12, flags, true);
    this.dv.setUint16(o + 14, next, true);
  }

  /** Submits BATCH reads at the given sectors, kicks once, reaps the used ring. */
  batch(sectors: Uint32Array, base: number): void {
    const dv = this.dv;
    let idx = this.availIdx;
    for (let i = 0; i < BATCH; i++) {
      dv.setUint32(this.headers[i], 0, true); // IN
      dv.setUint32(this.headers[i] + 8, sectors[(base + i) & (sectors.length - 1)], true);
      dv.setUint16(this.avail + 4 + 2 * (idx & (RING - 1)), this.heads[i], true);
      idx = (idx + 1) & 0xffff;
    }
    this.availIdx = idx;
    dv.setUint16(this.avail + 2, idx, true);
    this.device.notify(0);
    const used = dv.getUint16(this.used + 2, true);
    if (((used - this.usedIdx) & 0xffff) !== BATCH) throw new Error("requests did not complete");
    this.usedIdx = used;
  }
}

function randomSectors(len: number, sequential: boolean): Uint32Array {
  const n = 4096;
  const out = new Uint32Array(n);
  const per = len / 512;
  const slots = DISK / len;
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = (sequential ? i % slots : x % slots) * per;
  }
  return out;
}

const rand4k = new Rig(4096);
const randSectors = randomSectors(4096, false);
const seq128k = new Rig(128 << 10);
const seqSectors = randomSectors(128 << 10, true);
let pos4k = 0;
let pos128k = 0;

function copyBaseline(rig: Rig, sectors: Uint32Array, base: number): void {
  const src = rig.disk.bytes;
  const dst = rig.u8;
  const len = rig.len;
  for (let i = 0; i < BATCH; i++) {
    const off = sectors[(base + i) & (sectors.length - 1)] * 512;
    dst.set(src.subarray(off, off + len), rig.datas[i]);
  }
}

Deno.bench({
  name: "Uint8Array.set of 64 x 4 KiB (baseline)",
  group: "4 KiB random read",
  baseline: true,
  fn() {
    copyBaseline(rand4k, randSectors, pos4k);
    pos4k += BATCH;
  },
});

Deno.bench({
  name: "virtio-blk 64 x 4 KiB random IN, memory backend",
  group: "4 KiB random read",
  fn() {
    rand4k.batch(randSectors, pos4k);
    pos4k += BATCH;
  },
});

Deno.bench({
  name: "Uint8Array.set of 64 x 128 KiB (baseline)",
  group: "128 KiB sequential read",
  baseline: true,
  fn() {
    copyBaseline(seq128k, seqSectors, pos128k);
    pos128k += BATCH;
  },
});

Deno.bench({
  name: "virtio-blk 64 x 128 KiB sequential IN, memory backend",
  group: "128 KiB sequential read",
  fn() {
    seq128k.batch(seqSectors, pos128k);
    pos128k += BATCH;
  },
});

/** Runs `fn` for about `ms` milliseconds and returns the batches per second. */
function rate(fn: () => void, ms = 1000): number {
  for (let i = 0; i < 200; i++) fn();
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 50; i++) fn();
    n += 50;
    now = performance.now();
  }
  return (n * 1000) / (now - start);
}

if (import.meta.main && Deno.args.includes("--summary")) {
  let p = 0;
  const iops = rate(() => rand4k.batch(randSectors, p += BATCH)) * BATCH;
  const base4k = rate(() => copyBaseline(rand4k, randSectors, p += BATCH)) * BATCH;
  const gbps = (rate(() => seq128k.batch(seqSectors, p += BATCH)) * BATCH * (128 << 10)) / 1e9;
  const base128k = (rate(() =>
    copyBaseline(seq128k, seqSectors, p += BATCH)
  ) * BATCH * (128 << 10)) / 1e9;
  console.log(
    `4 KiB random read:     ${(iops / 1000).toFixed(0)}k IOPS (baseline copy ${
      (base4k / 1000).toFixed(0)
    }k/s, target 300k)`,
  );
  console.log(
    `128 KiB sequential:    ${gbps.toFixed(2)} GB/s (baseline copy ${
      base128k.toFixed(2)
    } GB/s, target 3)`,
  );
  const s = rand4k.device.stats;
  console.log(
    `requests ok: ${s.completedOk + seq128k.device.stats.completedOk}, errors: ${s.ioErrors}`,
  );
}
