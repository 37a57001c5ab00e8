/**
 * Echo round trips of 1500-byte frames over VDUSE against direct virtio
 * queues, with the same guest virtqueue code on both sides.
 *
 * One iteration = 16 frames: the guest adds 16 chains (1500 readable bytes,
 * 1500 writable bytes), kicks once, the echo device copies each frame back,
 * one interrupt, the guest takes the 16 used buffers.
 *
 * - direct: no ACCESS_PLATFORM; the device reads guest physical memory.
 * - VDUSE: virtio_vdpa → VDUSE map ops (bounce copy in and out) → kick
 *   eventfd → daemon → device queues over the daemon's IOTLB mappings →
 *   VQ_INJECT_IRQ (interrupt work run synchronously here).
 *
 * Run: `deno bench --allow-all tests/transports/vduse/vduse_bench.ts`
 */
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { PageAllocator } from "../../../src/guest/page_allocator.ts";
import { VirtqueueMapper } from "../../../src/guest/virtio/map_ops.ts";
import { createVirtqueue, type Virtqueue } from "../../../src/guest/virtio/virtqueue.ts";
import type { VdpaDevice } from "../../../src/guest/vdpa/vdpa_device.ts";
import { probeVirtioVdpa } from "../../../src/guest/vdpa/virtio_vdpa.ts";
import { createDeviceQueue } from "../../../src/queue/create_device_queue.ts";
import { featureMask } from "../../../src/virtio/features.ts";
import { VduseDaemon } from "../../../transports/vduse/daemon.ts";
import { EmulatedVduseBackend } from "../../../transports/vduse/kernel/emulated_backend.ts";
import { VduseKernel } from "../../../transports/vduse/kernel/vduse_kernel.ts";
import { ECHO_F_GOOD, EchoDevice } from "../../helpers/echo_device.ts";

const FRAME = 1500;
const BATCH = 16;
const OUT = 0x1_0000;
const IN = 0x10_0000;

function guestMemory() {
  const memory = new GuestMemory([{ base: 0, size: 16 << 20 }]);
  const pages = new PageAllocator(memory, { base: 4 << 20, size: 12 << 20 });
  for (let i = 0; i < BATCH; i++) memory.fill(OUT + i * 2048, FRAME, i);
  return { memory, pages };
}

function roundTrips(vq: Virtqueue<number>): () => number {
  const out = Array.from({ length: BATCH }, (_, i) => [{ addr: OUT + i * 2048, length: FRAME }]);
  const inn = Array.from({ length: BATCH }, (_, i) => [{ addr: IN + i * 2048, length: FRAME }]);
  return () => {
    for (let i = 0; i < BATCH; i++) {
      if (vq.addSgs(out[i], inn[i], i) !== 0) throw new Error("add failed");
    }
    vq.kick();
    let n = 0;
    while (vq.getBuf() !== null) n++;
    if (n !== BATCH) throw new Error(`got ${n} of ${BATCH} buffers back`);
    return n;
  };
}

function direct(): () => number {
  const { memory, pages } = guestMemory();
  const device = new EchoDevice(1, 256);
  let vq: Virtqueue<number> | null = null;
  device.bind({ interrupt: () => vq!.interrupt(), configChanged: () => {}, fail: () => {} });
  vq = createVirtqueue<number>({
    index: 0,
    size: 256,
    layout: "split",
    eventIdx: true,
    indirect: true,
    mapper: new VirtqueueMapper({ pages, accessPlatform: false }),
    notify: () => device.notify(0),
    callback: () => {},
  })!;
  const dma = new DirectDmaSpace(memory);
  const queue = createDeviceQueue(
    {
      index: 0,
      size: 256,
      descAddr: vq.descAddr,
      driverAddr: vq.driverAddr,
      deviceAddr: vq.deviceAddr,
      eventIdx: true,
      indirect: true,
      inOrder: false,
    },
    dma,
    false,
  );
  device.activate({ features: 0n, queues: [queue], dma });
  return roundTrips(vq);
}

function vduse(): () => number {
  const { memory, pages } = guestMemory();
  const kernel = new VduseKernel({
    memory,
    pages,
    schedule: (work) => work(),
    msgTimeout: 0,
    extraDeviceIds: [0x3f],
  });
  const daemon = new VduseDaemon(new EmulatedVduseBackend(kernel), new EchoDevice(1, 256), {
    name: "echo",
    packed: false,
  });
  if (daemon.start() !== 0) throw new Error(daemon.lastError);
  const guest = probeVirtioVdpa(kernel.vdpaDevAdd("echo") as VdpaDevice, { pages });
  guest.negotiate(featureMask(ECHO_F_GOOD));
  const [vq] = guest.setupQueues<number>([{ name: "echo", callback: () => {} }]);
  guest.setDriverOk();
  return roundTrips(vq);
}

const runDirect = direct();
const runVduse = vduse();
runDirect();
runVduse();

Deno.bench(`${BATCH} echo round trips of ${FRAME} B, direct virtio queues`, {
  group: "vduse",
  baseline: true,
}, () => {
  runDirect();
});
Deno.bench(`${BATCH} echo round trips of ${FRAME} B, over VDUSE (bounce + daemon)`, {
  group: "vduse",
}, () => {
  runVduse();
});
