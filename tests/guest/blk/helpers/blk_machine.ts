/**
 * A whole machine for the guest blk driver tests (src/machine.ts): a VirtioBlk
 * device over a backend, behind virtio-pci or virtio-mmio, driven by the guest
 * VirtioBlkDriver through the guest's real transport drivers, interrupts and
 * memory.
 */
import { VirtioBlk } from "../../../../devices/blk/device.ts";
import type { VirtioBlkOptions } from "../../../../devices/blk/config.ts";
import { MemoryBackend } from "../../../../devices/blk/backends/memory.ts";
import {
  VirtioBlkDriver,
  type VirtioBlkDriverOptions,
} from "../../../../src/guest/blk/virtio_blk_driver.ts";
import {
  createMachine,
  type Machine,
  type MachineIommuHook,
  type MachineTransport,
} from "../../../../src/machine.ts";
import type { RingFeatureOptions, VirtioCore } from "../../../../transports/core/virtio_core.ts";
import type { VirtioGuestDevice } from "../../../../src/guest/virtio/virtio_guest_device.ts";

/** Options of {@linkcode blkMachine}. */
export interface BlkMachineOptions {
  /** Device options (backend defaults to a 4 MiB memory disk). */
  device?: Partial<VirtioBlkOptions>;
  /** The transport (default virtio-pci). */
  transport?: MachineTransport;
  /** Ring features the device side offers. */
  ring?: RingFeatureOptions;
  /** Feature bits the guest refuses. */
  guestFilterFeatures?: bigint;
  /** Platform MSI (default true). */
  msi?: boolean;
  /** An IOMMU hook (device DMA space and guest DMA API). */
  iommu?: MachineIommuHook;
  /** Driver options. */
  driver?: VirtioBlkDriverOptions;
  /** Called with the machine before the blk driver is probed. */
  beforeProbe?: (machine: Machine) => void;
}

/** Builds the machine and probes the blk driver on device 0. */
export function blkMachine(options: BlkMachineOptions = {}): {
  device: VirtioBlk;
  backend: VirtioBlkOptions["backend"];
  driver: VirtioBlkDriver;
  machine: Machine;
  guest: VirtioGuestDevice;
} {
  const backend = options.device?.backend ?? new MemoryBackend(4 << 20);
  const device = new VirtioBlk({ ...options.device, backend });
  const machine = createMachine({
    memorySize: 32 << 20,
    msi: options.msi,
    iommu: options.iommu,
    devices: [{
      device,
      transport: options.transport ?? "pci",
      ring: options.ring,
      guestFilterFeatures: options.guestFilterFeatures,
    }],
  });
  const guest = machine.guest(0);
  options.beforeProbe?.(machine);
  const driver = VirtioBlkDriver.probe(guest, options.driver);
  return { device, backend, driver, machine, guest };
}

/** The transport and ring combinations every I/O test runs under. */
export const RING_MATRIX: {
  name: string;
  transport: MachineTransport;
  ring: RingFeatureOptions;
  msi?: boolean;
}[] = [
  {
    name: "pci split",
    transport: "pci",
    ring: { packed: false, eventIdx: false, indirect: false },
  },
  {
    name: "pci split+event_idx+indirect",
    transport: "pci",
    ring: { packed: false, eventIdx: true, indirect: true },
  },
  {
    name: "pci packed (INTx)",
    transport: "pci",
    ring: { packed: true, eventIdx: false, indirect: false },
    msi: false,
  },
  {
    name: "pci packed+event_idx+indirect",
    transport: "pci",
    ring: { packed: true, eventIdx: true, indirect: true },
  },
  {
    name: "mmio split",
    transport: "mmio",
    ring: { packed: false, eventIdx: true, indirect: false },
  },
  {
    name: "mmio packed",
    transport: "mmio",
    ring: { packed: true, eventIdx: false, indirect: true },
  },
];

/** `n` bytes of a pattern seeded by `seed`. */
export function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 13 + seed * 101 + (i >> 12)) & 0xff;
  return out;
}

/** A machine around an already built device, with the transport probed but no blk driver. */
export function guestFor(
  device: VirtioBlk,
  transport: MachineTransport = "pci",
): { machine: Machine; guest: VirtioGuestDevice } {
  const machine = createMachine({ memorySize: 32 << 20, devices: [{ device, transport }] });
  return { machine, guest: machine.guest(0) };
}

/** The transport core of device 0 (to break it from the host side, read diagnostics). */
export function coreOf(machine: Machine): VirtioCore {
  const e = machine.entries[0];
  return (e.pci?.core ?? e.mmio?.core)!;
}
