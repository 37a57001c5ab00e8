/**
 * Fixtures for the guest net driver tests: a guest (memory, page allocator)
 * whose virtio-net device sits behind vireo's virtio-mmio transport, reached
 * through the guest's virtio-mmio driver, as `createMachine` wires them.
 */
import type { PageAllocator } from "../../../src/guest/page_allocator.ts";
import type { VirtioGuestDevice } from "../../../src/guest/virtio/virtio_guest_device.ts";
import type { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { createMachine, type Machine, type MachineTransport } from "../../../src/machine.ts";
import type { VirtioMmio } from "../../../transports/mmio/virtio_mmio.ts";
import { createPair, type PairOptions } from "../../../devices/net/backends/pair.ts";
import { VirtioNet, type VirtioNetOptions } from "../../../devices/net/virtio_net.ts";
import {
  VirtioNetDriver,
  type VirtioNetDriverOptions,
} from "../../../src/guest/net/virtio_net_driver.ts";

/** One guest with one virtio-net device. */
export interface Guest {
  machine: Machine;
  memory: GuestMemory;
  pages: PageAllocator;
  device: VirtioNet;
  /** The transport (null over PCI). */
  mmio: VirtioMmio | null;
  /** The guest's transport driver for the device. */
  transport: VirtioGuestDevice;
}

/** Options of {@linkcode makeGuest}. */
export interface GuestOptions {
  /** Offer packed rings (default true, as vireo's transports do). */
  packed?: boolean;
  /** Offer event idx (default true). */
  eventIdx?: boolean;
  /** Guest RAM bytes (default 16 MiB). */
  memory?: number;
  /** The transport (default virtio-mmio). */
  transport?: MachineTransport;
}

/** Builds a machine around `device`; its transport driver is probed (reset, ACKNOWLEDGE). */
export function makeGuest(device: VirtioNet, options: GuestOptions = {}): Guest {
  const machine = createMachine({
    memorySize: options.memory ?? 16 << 20,
    devices: [{
      device,
      transport: options.transport ?? "mmio",
      ring: { packed: options.packed ?? true, eventIdx: options.eventIdx ?? true },
    }],
  });
  return {
    machine,
    memory: machine.memory,
    pages: machine.pages,
    device,
    mmio: machine.entries[0].mmio,
    transport: machine.guest(0),
  };
}

/** Two guests whose devices share a cable. */
export function twoGuests(
  a: VirtioNetOptions = {},
  b: VirtioNetOptions = {},
  guest: GuestOptions = {},
  pair: PairOptions = {},
): [Guest, Guest] {
  const [ea, eb] = createPair(pair);
  return [
    makeGuest(new VirtioNet({ mac: "52:54:00:00:00:01", ...a, backend: ea }), guest),
    makeGuest(new VirtioNet({ mac: "52:54:00:00:00:02", ...b, backend: eb }), guest),
  ];
}

/** Probes and opens a driver on `guest`. */
export function up(guest: Guest, options: VirtioNetDriverOptions = {}): VirtioNetDriver {
  const driver = VirtioNetDriver.probe(guest.transport, options);
  driver.open();
  return driver;
}

/** Runs the drivers' softirqs until nothing is pending (bounded). */
export function settle(...drivers: VirtioNetDriver[]): void {
  for (let round = 0; round < 1000; round++) {
    let busy = false;
    for (const d of drivers) {
      if (d.pending) {
        d.poll();
        busy = true;
      }
    }
    if (!busy) return;
  }
  throw new Error("drivers did not settle");
}
