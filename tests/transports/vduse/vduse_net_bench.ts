/**
 * 1500-byte Ethernet frames between two guests' virtio-net NICs joined by a
 * pair backend: over VDUSE against virtio-pci without an IOMMU, with the same
 * guest virtio_net driver and device model on both sides.
 *
 * One iteration: guest A's driver sends BATCH frames of 1514 bytes (1500 of
 * payload; one kick), A's device moves them through the pair into B's
 * receive buffers, both guests take their interrupts and run NAPI, B's driver
 * delivers the BATCH frames and refills, A reclaims its transmit buffers.
 *
 * - virtio-pci: the machine's PCI bus, MSI-X interrupts; the devices read
 *   and write guest physical memory (no ACCESS_PLATFORM).
 * - VDUSE: virtio_vdpa → VDUSE map ops (each transmit buffer bounced in,
 *   each receive buffer bounced out) → kick eventfd → daemon → device queues
 *   over the daemon's IOTLB mappings → VQ_INJECT_IRQ.
 *
 * Run: `deno bench tests/transports/vduse/vduse_net_bench.ts`
 */
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { PageAllocator } from "../../../src/guest/page_allocator.ts";
import type { VdpaDevice } from "../../../src/guest/vdpa/vdpa_device.ts";
import { probeVirtioVdpa } from "../../../src/guest/vdpa/virtio_vdpa.ts";
import { VirtioNetDriver } from "../../../src/guest/net/virtio_net_driver.ts";
import { createMachine } from "../../../src/machine.ts";
import { createPair } from "../../../devices/net/backends/pair.ts";
import type { NetBackend } from "../../../devices/net/backends/net_backend.ts";
import { VirtioNet } from "../../../devices/net/virtio_net.ts";
import { VduseDaemon } from "../../../transports/vduse/daemon.ts";
import { EmulatedVduseBackend } from "../../../transports/vduse/kernel/emulated_backend.ts";
import { VduseKernel } from "../../../transports/vduse/kernel/vduse_kernel.ts";

const FRAME = 1514;
const BATCH = 32;

interface Guest {
  driver: VirtioNetDriver;
  work: (() => void)[];
  received: number;
}

function guest(backend: NetBackend, mac: string, transport: "pci" | "vduse"): Guest {
  const device = new VirtioNet({ mac, backend, controlQueue: transport === "pci" });
  const g: Guest = { driver: null as unknown as VirtioNetDriver, work: [], received: 0 };
  const memory = new GuestMemory([{ base: 0, size: 64 << 20 }]);
  let net;
  if (transport === "vduse") {
    const pages = new PageAllocator(memory, { base: 1 << 20, size: 63 << 20 });
    const kernel = new VduseKernel({
      memory,
      pages,
      schedule: (w) => g.work.push(w),
      msgTimeout: 0,
    });
    const daemon = new VduseDaemon(new EmulatedVduseBackend(kernel), device, {
      name: "net",
      packed: false,
    });
    if (daemon.start() !== 0) throw new Error(daemon.lastError);
    net = probeVirtioVdpa(kernel.vdpaDevAdd("net") as VdpaDevice, { pages });
  } else {
    const machine = createMachine({
      memory,
      devices: [{ device, transport: "pci", ring: { packed: false } }],
    });
    net = machine.guest(0);
  }
  g.driver = VirtioNetDriver.probe(net, { onReceive: () => g.received++ });
  g.driver.open();
  return g;
}

function settle(a: Guest, b: Guest): void {
  for (let round = 0; round < 1000; round++) {
    let busy = false;
    for (const g of [a, b]) {
      while (g.work.length > 0) {
        g.work.shift()!();
        busy = true;
      }
      if (g.driver.pending) {
        g.driver.poll();
        busy = true;
      }
    }
    if (!busy) return;
  }
  throw new Error("the guests did not settle");
}

function setup(transport: "pci" | "vduse"): () => void {
  const [cableA, cableB] = createPair();
  const a = guest(cableA, "52:54:00:00:00:01", transport);
  const b = guest(cableB, "52:54:00:00:00:02", transport);
  settle(a, b);
  const frame = new Uint8Array(FRAME);
  frame.set([0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5]);
  for (let i = 14; i < FRAME; i++) frame[i] = i;
  return () => {
    const before = b.received;
    for (let i = 0; i < BATCH; i++) {
      if (!a.driver.send(frame, { more: i + 1 < BATCH })) throw new Error("tx ring full");
    }
    a.driver.flush();
    settle(a, b);
    if (b.received - before !== BATCH) {
      throw new Error(`${transport}: B got ${b.received - before} of ${BATCH} frames`);
    }
  };
}

const runPci = setup("pci");
const runVduse = setup("vduse");
runPci();
runVduse();

Deno.bench(`${BATCH} frames of ${FRAME} B guest to guest, virtio-pci, no IOMMU`, {
  group: "vduse-net",
  baseline: true,
}, () => {
  runPci();
});
Deno.bench(`${BATCH} frames of ${FRAME} B guest to guest, over VDUSE (bounce + daemon)`, {
  group: "vduse-net",
}, () => {
  runVduse();
});

// The floor: one plain copy of the same bytes (each frame crosses memory once).
const src = new Uint8Array(BATCH * FRAME);
const dst = new Uint8Array(BATCH * FRAME);
Deno.bench(`${BATCH} frames of ${FRAME} B, one Uint8Array.set of the same bytes`, {
  group: "vduse-net",
}, () => {
  dst.set(src);
});
