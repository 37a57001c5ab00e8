/**
 * Driver ↔ device round trips through shared guest memory: the guest model's
 * virtqueue adds a batch of 64 chains and kicks; the kick runs the device,
 * which pops, pushes and publishes every chain; the driver takes them all back
 * with getBuf. Event idx on, queue size 256, no mapping (guest physical).
 *
 * One iteration = 64 round trips: round trips/s = 64 / (time per iteration).
 * The baselines copy, with `Uint8Array.set`, as many bytes as one iteration's
 * buffers describe (the device here does not touch the data).
 *
 * Run: deno bench tests/queue/roundtrip_bench.ts
 */
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import { createDeviceQueue } from "../../src/queue/create_device_queue.ts";
import { PageAllocator } from "../../src/guest/page_allocator.ts";
import { VirtqueueMapper } from "../../src/guest/virtio/map_ops.ts";
import {
  createVirtqueue,
  type SgEntry,
  type UsedBuffer,
  type VirtqueueLayout,
} from "../../src/guest/virtio/virtqueue.ts";

const BATCH = 64;
const SIZE = 256;

interface Shape {
  out: SgEntry[];
  in: SgEntry[];
}

/** 1 descriptor: a 64-byte readable buffer. */
const ONE: Shape = { out: [{ addr: 0x1000, length: 64 }], in: [] };
/** 3 descriptors: a 16-byte header, 64 bytes of data, a 1-byte status (a block read). */
const THREE: Shape = {
  out: [{ addr: 0x2000, length: 16 }],
  in: [{ addr: 0x3000, length: 64 }, { addr: 0x4000, length: 1 }],
};

function bytesOf(shape: Shape): number {
  return [...shape.out, ...shape.in].reduce((s, sg) => s + sg.length, 0);
}

function setup(layout: VirtqueueLayout, shape: Shape, indirect: boolean): () => void {
  const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
  const pages = new PageAllocator(memory, { base: 0x40000, size: (1 << 20) - 0x40000 });
  const mapper = new VirtqueueMapper({ pages, accessPlatform: false });
  const dma = new DirectDmaSpace(memory);
  const chain = new DescriptorChain(dma, 16);
  let device: ReturnType<typeof createDeviceQueue> | null = null;
  const vq = createVirtqueue<number>({
    index: 0,
    size: SIZE,
    layout,
    eventIdx: true,
    indirect,
    mapper,
    notify: () => {
      const q = device!;
      while (q.pop(chain)) q.push(chain.token, chain.writableLength);
      if (q.publishUsed()) vq.interrupt();
    },
    callback: () => {},
  })!;
  device = createDeviceQueue(
    {
      index: 0,
      size: vq.size,
      descAddr: vq.descAddr,
      driverAddr: vq.driverAddr,
      deviceAddr: vq.deviceAddr,
      eventIdx: true,
      indirect,
      inOrder: false,
    },
    dma,
    layout === "packed",
  );
  const out: UsedBuffer<number> = { token: 0, len: 0 };
  const outs = shape.out;
  const ins = shape.in;
  return () => {
    for (let i = 0; i < BATCH; i++) {
      if (vq.addSgs(outs, ins, i) !== 0) throw new Error("add failed");
    }
    vq.kick();
    let n = 0;
    while (vq.getBuf(out) !== null) n++;
    if (n !== BATCH) throw new Error(`expected ${BATCH} used buffers, got ${n}`);
  };
}

function copier(bytes: number): () => void {
  const src = new Uint8Array(bytes).fill(1);
  const dst = new Uint8Array(bytes);
  return () => dst.set(src);
}

for (const [name, shape] of [["1-desc", ONE], ["3-desc", THREE]] as const) {
  const bytes = bytesOf(shape) * BATCH;
  Deno.bench({
    name: `Uint8Array.set of ${bytes} bytes (baseline)`,
    group: name,
    baseline: true,
    fn: copier(bytes),
  });
  for (const layout of ["split", "packed"] as const) {
    Deno.bench({
      name: `${layout}: ${BATCH} round trips of ${name} chains, event idx`,
      group: name,
      fn: setup(layout, shape, false),
    });
    if (name === "3-desc") {
      Deno.bench({
        name: `${layout}: ${BATCH} round trips of ${name} chains, indirect, event idx`,
        group: name,
        fn: setup(layout, shape, true),
      });
    }
  }
}
