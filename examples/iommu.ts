/**
 * A device working through vireo's emulated IOMMU, and a fault being caught.
 *
 * The machine has a virtio-iommu on virtio-pci (slot 1) and a small echo
 * device on virtio-pci (slot 2) behind it. The guest model probes the
 * virtio-iommu like Linux's driver, attaches the echo device to a DMA domain
 * and maps every ring and buffer through it; the device only ever sees IOVAs.
 * Then the guest links a buffer with the IOVA-based DMA API but "forgets"
 * `dma_iova_sync`, so the MAP request never reaches the IOMMU: the device's DMA
 * faults, the device reports DEVICE_NEEDS_RESET, and the fault arrives on the
 * virtio-iommu event queue.
 *
 *     deno run examples/iommu.ts
 *
 * @module
 */
import { createMachine } from "../src/machine.ts";
import { Iommu } from "../src/iommu/iommu.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { DeviceStatus } from "../src/virtio/status.ts";
import { DmaDirection } from "../src/guest/dma/dma_api.ts";
import { DeferredDmaApi } from "../src/guest/dma/deferred_dma.ts";
import { iovaLink, iovaTryAlloc, newIovaState } from "../src/guest/dma/iova_api.ts";
import { VirtioIommuDriver } from "../src/guest/iommu/virtio_iommu_driver.ts";
import { VirtioIommu } from "../devices/iommu/virtio_iommu.ts";
import { EchoDevice } from "./_echo_device.ts";

const say = (line: string) => console.log(line);
const hex = (n: number) => `0x${n.toString(16)}`;

const memory = new GuestMemory([{ base: 0, size: 16 << 20 }]);
const iommu = new Iommu({ memory });
const ENDPOINT = 2 << 3; // the echo device's requester id: bus 0, slot 2, function 0
const endpoint = iommu.addEndpoint(ENDPOINT);
const echo = new EchoDevice(1);
const guestDma = new DeferredDmaApi();
const machine = createMachine({
  memory,
  devices: [
    { device: new VirtioIommu(iommu), transport: "pci" },
    { device: echo, transport: "pci" },
  ],
  iommu: {
    deviceDma: (i) => (i === 1 ? endpoint : undefined),
    guestDma: (i) => (i === 1 ? guestDma : undefined),
  },
});

// The guest: probe the virtio-iommu, then give the echo device a DMA domain.
const viommu = VirtioIommuDriver.probe(machine.guest(0));
const dma = viommu.setupDma(ENDPOINT, { name: "echo" });
guestDma.target = dma;
say(`guest: virtio-iommu probed; echo device attached to a DMA domain (endpoint ${hex(ENDPOINT)})`);

const guest = machine.guest(1);
guest.negotiate(0n);
const [vq] = guest.setupQueues<string>([{ name: "echo", callback: () => {} }]);
guest.setDriverOk();
say(`guest: echo ring mapped at IOVA ${hex(vq.descAddr)} (guest physical memory is below 16 MiB)`);

// 1. Round trips through the IOMMU: each buffer is mapped, used by the device, unmapped.
const encoder = new TextEncoder();
const ROUNDS = 1000;
let ok = 0;
for (let i = 0; i < ROUNDS; i++) {
  const text = encoder.encode(`message ${i} through the IOMMU`);
  memory.write(0x10000, text);
  memory.fill(0x20000, 64, 0);
  vq.addSgs([{ addr: 0x10000, length: text.length }], [{ addr: 0x20000, length: 64 }], "echo");
  vq.kick();
  const used = vq.getBuf();
  const back = new Uint8Array(text.length);
  memory.read(0x20000, back);
  if (used?.len === text.length && back.every((b, k) => b === text[k])) ok++;
}
const hits = endpoint.stats.hits;
const lookups = hits + endpoint.stats.misses;
say(`device: echoed ${ok} of ${ROUNDS} buffers, every address translated by the IOMMU`);
say(
  `iommu: ${viommu.stats.map} MAP and ${viommu.stats.unmap} UNMAP requests, ` +
    `${lookups} buffer translations (${hits} cache hits: each buffer is a fresh streaming ` +
    `mapping, while the rings are translated once and kept)`,
);

// 2. A guest bug: link a buffer into an IOVA range but skip dma_iova_sync.
// The chain is added first: adding it maps an indirect table, and that mapping's
// sync point would send every queued MAP too (virtio-iommu's iotlb_sync_map
// kicks the whole request queue, in Linux as here).
memory.write(0x30000, encoder.encode("never seen by the device"));
const state = newIovaState();
if (!iovaTryAlloc(dma, state, 0x30000, 4096)) throw new Error("iovaTryAlloc failed");
// The driver passes the IOVA premapped, as a block layer using the IOVA API does.
vq.addSgs([{ addr: state.addr, length: 24 }], [{ addr: state.addr + 2048, length: 24 }], "x", true);
const linked = iovaLink(dma, state, 0x30000, 0, 4096, DmaDirection.BIDIRECTIONAL);
say(`guest: linked 4 KiB at IOVA ${hex(state.addr)} (status ${linked}) and skipped iovaSync`);
vq.kick();
await new Promise((resolve) => setTimeout(resolve, 0));

const status = guest.getStatus();
const fault = viommu.faults.at(-1);
const caught = (status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0 && fault !== undefined;
say(
  `device: ${
    (status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0 ? "DEVICE_NEEDS_RESET set" : "still running"
  } after the faulting DMA`,
);
if (fault !== undefined) {
  say(
    `guest: virtio-iommu fault event: reason ${fault.reason} (2 = mapping), endpoint ${
      hex(fault.endpoint)
    }, address ${fault.address === null ? "unknown" : hex(fault.address)}`,
  );
}
say(
  caught && ok === ROUNDS
    ? "done: the IOMMU translated every access and caught the bad one"
    : "FAILED",
);
if (!(caught && ok === ROUNDS)) Deno.exit(1);
