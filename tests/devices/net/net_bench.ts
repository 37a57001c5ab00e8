/**
 * virtio-net end to end between two devices on a pair backend (direct DMA):
 * a driver-side stand-in posts a batch of transmit chains on A and receive
 * buffers on B, kicks A's tx queue, and the frames travel A's tx ring → pair
 * → B's rx ring with one copy each. Each iteration moves BATCH frames.
 *
 * Targets: ≥ 1 million 64-byte frames/s, ≥ 10 Gbit/s at 1500 bytes. The
 * baseline is `Uint8Array.set` of the same bytes between two buffers.
 *
 * Run: deno bench tests/devices/net/net_bench.ts
 */
import { createPair, VirtioNet, VirtioNetFeature as F } from "../../../devices/net/mod.ts";
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import type { DeviceQueue } from "../../../src/queue/device_queue.ts";
import { SplitQueue } from "../../../src/queue/split_queue.ts";
import { featureMask, VirtioFeature } from "../../../src/virtio/features.ts";

const RING = 256;
const BATCH = 128;
const HDR = 12;

/** One guest: memory, a device and fixed rings at fixed addresses. */
class Side {
  readonly mem = new GuestMemory([{ base: 0, size: 0x200_0000 }]);
  readonly dma = new DirectDmaSpace(this.mem);
  readonly queues: (DeviceQueue | null)[] = [];
  readonly view: DataView;
  constructor(readonly device: VirtioNet) {
    this.view = this.mem.regions[0].data;
    device.bind({
      interrupt() {},
      configChanged() {},
      fail(r) {
        throw new Error(r);
      },
    });
    for (let q = 0; q < 3; q++) {
      this.queues.push(
        new SplitQueue({
          index: q,
          size: RING,
          descAddr: this.desc(q),
          driverAddr: this.avail(q),
          deviceAddr: this.used(q),
          eventIdx: true,
          indirect: false,
          inOrder: false,
        }, this.dma),
      );
    }
    const features = featureMask(
      F.MAC,
      F.MRG_RXBUF,
      VirtioFeature.VERSION_1,
      VirtioFeature.EVENT_IDX,
    );
    device.activate({ features, queues: this.queues, dma: this.dma });
  }
  desc(q: number): number {
    return 0x10000 + q * 0x10000;
  }
  avail(q: number): number {
    return this.desc(q) + 16 * RING;
  }
  used(q: number): number {
    return this.desc(q) + 0x8000;
  }
  /** Fills every descriptor of queue `q` with one buffer of `len` bytes. */
  fill(q: number, len: number, write: boolean, content?: Uint8Array): void {
    const v = this.view;
    for (let i = 0; i < RING; i++) {
      const addr = 0x100000 + q * RING * 0x1000 + i * 0x1000;
      const d = this.desc(q) + 16 * i;
      v.setUint32(d, addr, true);
      v.setUint32(d + 4, 0, true);
      v.setUint32(d + 8, len, true);
      v.setUint16(d + 12, write ? 2 : 0, true);
      v.setUint16(this.avail(q) + 4 + 2 * i, i, true);
      if (content) this.mem.write(addr, content);
    }
    // used_event far away: the device interrupts rarely, as with NAPI.
    v.setUint16(this.avail(q) + 4 + 2 * RING, 0xffff, true);
  }
  /** Makes `n` more chains available on queue `q` (the ring entries are fixed). */
  post(q: number, n: number): void {
    const off = this.avail(q) + 2;
    this.view.setUint16(off, (this.view.getUint16(off, true) + n) & 0xffff, true);
  }
  usedIdx(q: number): number {
    return this.view.getUint16(this.used(q) + 2, true);
  }
}

function setup(frameLength: number): { a: Side; b: Side; run: () => void } {
  const [ea, eb] = createPair();
  const a = new Side(new VirtioNet({ mac: "52:54:00:00:00:0a", backend: ea, queueSize: RING }));
  const b = new Side(new VirtioNet({ mac: "52:54:00:00:00:0b", backend: eb, queueSize: RING }));
  const frame = new Uint8Array(HDR + frameLength);
  frame.set([0x52, 0x54, 0, 0, 0, 0x0b, 0x52, 0x54, 0, 0, 0, 0x0a, 0x08, 0x00], HDR);
  a.fill(1, HDR + frameLength, false, frame);
  b.fill(0, 2048, true);
  const run = () => {
    a.post(1, BATCH);
    b.post(0, BATCH);
    a.device.notify(1);
  };
  // Warm up and check that frames really arrive.
  const before = b.usedIdx(0);
  run();
  if (((b.usedIdx(0) - before) & 0xffff) !== BATCH) throw new Error("frames did not arrive");
  if (b.device.metrics.rx[0].bytes !== BATCH * frameLength) throw new Error("wrong byte count");
  return { a, b, run };
}

function baseline(frameLength: number): () => void {
  const src = new Uint8Array(RING * 0x1000);
  const dst = new Uint8Array(RING * 0x1000);
  let i = 0;
  return () => {
    for (let n = 0; n < BATCH; n++) {
      const off = (i++ & (RING - 1)) * 0x1000;
      dst.set(src.subarray(off, off + HDR + frameLength), off);
    }
  };
}

for (const size of [64, 1500]) {
  const { run } = setup(size);
  Deno.bench({
    name: `virtio-net pair: ${BATCH} frames of ${size} bytes`,
    group: `${size}`,
    baseline: false,
    fn: run,
  });
  Deno.bench({
    name: `Uint8Array.set baseline: ${BATCH} copies of ${HDR + size} bytes`,
    group: `${size}`,
    baseline: true,
    fn: baseline(size),
  });
}

/** Prints frames/s and Gbit/s when run directly: deno run tests/devices/net/net_bench.ts */
if (import.meta.main) {
  for (const size of [64, 1500]) {
    const { run, b } = setup(size);
    const start = b.device.metrics.rx[0].packets;
    const t0 = performance.now();
    let iterations = 0;
    while (performance.now() - t0 < 2000) {
      run();
      iterations++;
    }
    const seconds = (performance.now() - t0) / 1000;
    const frames = b.device.metrics.rx[0].packets - start;
    console.log(
      `${size}-byte frames: ${(frames / seconds / 1e6).toFixed(2)} Mframes/s, ` +
        `${(frames * size * 8 / seconds / 1e9).toFixed(2)} Gbit/s (${iterations} batches)`,
    );
  }
}
