/**
 * A whole small machine in one call, for tests and examples: guest memory, a
 * PCI host bridge, virtio-mmio windows, an interrupt controller that routes
 * MSI messages and INTx/MMIO lines to the guest's handlers, the devices on
 * their transports, and the guest model (page allocator, DMA API, PCI
 * enumeration, transport drivers) probed and ready for a device driver.
 *
 * Nothing here knows a device type: devices are any {@linkcode VirtioDevice}.
 *
 * @module
 */
import { DirectDmaSpace } from "./dma/direct_dma_space.ts";
import type { DmaSpace } from "./dma/dma_space.ts";
import type { DmaApi } from "./guest/dma/dma_api.ts";
import { DmaDirect } from "./guest/dma/dma_direct.ts";
import { PageAllocator, SlabAllocator } from "./guest/page_allocator.ts";
import {
  enumeratePciBus,
  type GuestPciBus,
  type GuestPciDevice,
} from "./guest/pci/pci_enumeration.ts";
import { probeVirtioPciModern } from "./guest/pci/virtio_pci_modern.ts";
import { probeVirtioMmio } from "./guest/virtio_mmio_driver.ts";
import {
  type GuestIrqHost,
  type MsiMessage,
  VirtioDriverError,
  type VirtioGuestDevice,
} from "./guest/virtio/virtio_guest_device.ts";
import { GuestMemory } from "./memory/guest_memory.ts";
import { PciHostBridge } from "./pci/host_bridge.ts";
import { PciFunction } from "./pci/pci_function.ts";
import type { VirtioDevice } from "./virtio/device.ts";
import type { RingFeatureOptions } from "../transports/core/virtio_core.ts";
import { VirtioMmio } from "../transports/mmio/virtio_mmio.ts";
import { VirtioPci } from "../transports/pci/virtio_pci.ts";

/** Which transport carries a device. */
export type MachineTransport = "pci" | "mmio";

/** One device of a machine, with its transport settings. */
export interface MachineDeviceSpec {
  /** The device model. */
  device: VirtioDevice;
  /** Its transport; the machine's default when absent. */
  transport?: MachineTransport;
  /** Which ring and transport features the device side offers (packed, event idx, ...). */
  ring?: RingFeatureOptions;
  /** virtio-pci: MSI-X table size (default: queues + 1, at least 2). */
  msixVectors?: number;
  /** virtio-pci: notify_off_multiplier (default 4). */
  notifyOffMultiplier?: number;
  /** Feature bits the guest refuses for this device (e.g. RING_PACKED for split rings). */
  guestFilterFeatures?: bigint;
  /** A name for diagnostics. */
  name?: string;
}

/**
 * Where an IOMMU will plug in (not built yet): per device, the translated
 * DMA space the device uses once ACCESS_PLATFORM is negotiated, and the
 * guest's DMA API for it (dma-iommu).
 */
export interface MachineIommuHook {
  /** The device's IOMMU endpoint space; the device then offers ACCESS_PLATFORM. */
  deviceDma?(index: number, device: VirtioDevice): DmaSpace | undefined;
  /** The guest DMA API for the device; dma-direct when absent. */
  guestDma?(index: number, device: VirtioDevice): DmaApi | undefined;
}

/** How {@linkcode createMachine} builds a machine. */
export interface MachineOptions {
  /** Bytes of RAM at guest physical 0 (default 16 MiB, at most 3 GiB). */
  memorySize?: number;
  /**
   * Use this RAM (one region at guest physical 0) instead of allocating it,
   * e.g. when devices were built over it first; `memorySize` is then ignored.
   */
  memory?: GuestMemory;
  /** Back RAM with a SharedArrayBuffer. */
  sharedMemory?: boolean;
  /**
   * Bytes at the start of RAM the guest page allocator leaves alone, for
   * tests to place data by hand (default: 1 MiB, or a quarter of RAM when smaller).
   */
  reservedMemory?: number;
  /** The default transport (default `"pci"`). */
  transport?: MachineTransport;
  /** The devices, in slot / window order. */
  devices?: readonly (VirtioDevice | MachineDeviceSpec)[];
  /**
   * Extra PCI functions attached after the virtio-pci ones (e.g. hand-built
   * broken functions); the guest tries its virtio-pci driver on each.
   */
  pciFunctions?: readonly PciFunction[];
  /** Whether the platform offers MSI (default true; false is Linux's `pci=nomsi`). */
  msi?: boolean;
  /** Run the guest's transport probes (default true). */
  probe?: boolean;
  /** Feature bits the guest refuses for every device. */
  guestFilterFeatures?: bigint;
  /** The future IOMMU's hook point. */
  iommu?: MachineIommuHook;
}

/** One device (or raw PCI function) of a machine, both sides. */
export interface MachineEntry {
  /** Position in the machine. */
  readonly index: number;
  /** The transport kind. */
  readonly kind: MachineTransport;
  /** The device model; null for a raw PCI function. */
  readonly device: VirtioDevice | null;
  /** The virtio-pci function, when on PCI. */
  readonly pci: VirtioPci | null;
  /** The virtio-mmio transport, when on MMIO. */
  readonly mmio: VirtioMmio | null;
  /** The PCI function on the bus (virtio-pci's or the raw one), when on PCI. */
  readonly pciFunction: PciFunction | null;
  /** PCI slot, or -1. */
  readonly slot: number;
  /** virtio-mmio window base, or -1. */
  readonly mmioBase: number;
  /** The interrupt line (INTx or MMIO). */
  readonly irqLine: number;
  /** What the guest's enumeration found at the slot, when on PCI. */
  pciDevice: GuestPciDevice | null;
  /** The guest driver, when the probe succeeded. */
  guest: VirtioGuestDevice | null;
  /** Why the probe failed, when it did. */
  probeError: VirtioDriverError | null;
}

/** MSI address of CPU 0's local APIC on x86. */
export const MSI_ADDRESS = 0xfee0_0000;
/** Base of the virtio-mmio windows (one 4 KiB window per device). */
export const MMIO_BASE = 0xd000_0000;
/** The PCI memory window BARs are placed in. */
export const PCI_MEM_WINDOW: { readonly base: number; readonly size: number } = Object.freeze({
  base: 0xe000_0000,
  size: 0x1000_0000,
});
/** The PCI I/O window. */
export const PCI_IO_WINDOW: { readonly base: number; readonly size: number } = Object.freeze({
  base: 0xc000,
  size: 0x4000,
});
/** First of the four PCI INTx lines (`PIRQA..D`). */
export const PCI_INTX_LINE_BASE = 16;
/** Line of the first virtio-mmio device. */
export const MMIO_LINE_BASE = 32;
const MMIO_WINDOW = 0x1000;
const FIRST_MSI_VECTOR = 0x20;
const LAST_MSI_VECTOR = 0xef;
/** Handler runs of one line before it is declared stuck. */
const MAX_LINE_RUNS = 32;

/**
 * The INTx line of `pin` (1..4) of a function in `slot`: the usual PCI
 * swizzle onto four lines from {@linkcode PCI_INTX_LINE_BASE}.
 */
export function pciIntxLine(slot: number, pin: number): number {
  return PCI_INTX_LINE_BASE + ((slot + pin - 1) & 3);
}

/** Counters of the interrupt controller. */
export interface MachineInterruptStats {
  /** MSI messages delivered to a handler. */
  msi: number;
  /** MSI messages nobody had allocated. */
  unhandledMsi: number;
  /** Handler runs for asserted lines. */
  lineRuns: number;
  /** Lines left asserted after every handler said "not mine". */
  unhandledLine: number;
  /** Lines that stayed asserted through many handler runs. */
  stuckLines: number;
}

type PendingIrq = { line: number } | { address: number; data: number };

/**
 * The machine's interrupt controller and the guest kernel's irq layer in one:
 * level-triggered lines shared by several sources, an MSI vector allocator,
 * and the handler registry ({@linkcode GuestIrqHost}).
 *
 * Delivery is synchronous but never nested inside a device: while the guest
 * is inside a bus access (between {@linkcode MachineInterrupts.enter} and
 * {@linkcode MachineInterrupts.exit}) interrupts wait, and are delivered when
 * the outermost access returns, as a CPU takes interrupts between instructions.
 */
export class MachineInterrupts implements GuestIrqHost {
  /** Counters. */
  readonly stats: MachineInterruptStats = {
    msi: 0,
    unhandledMsi: 0,
    lineRuns: 0,
    unhandledLine: 0,
    stuckLines: 0,
  };
  readonly #handlers = new Map<number, (() => boolean)[]>();
  readonly #sources = new Map<number, Set<unknown>>();
  readonly #msi = new Map<
    number,
    { address: number; handler: (a: number, d: number) => boolean }
  >();
  readonly #freeVectors: number[] = [];
  readonly #pending: PendingIrq[] = [];
  #depth = 0;
  #delivering = false;

  /** Creates a controller with MSI vectors 0x20..0xEF free. */
  constructor() {
    for (let v = LAST_MSI_VECTOR; v >= FIRST_MSI_VECTOR; v--) this.#freeVectors.push(v);
  }

  /** See {@linkcode GuestIrqHost.requestIrq}. A line already asserted is delivered at once. */
  requestIrq(line: number, handler: () => boolean): void {
    const list = this.#handlers.get(line) ?? [];
    if (!list.includes(handler)) list.push(handler);
    this.#handlers.set(line, list);
    if (this.lineLevel(line)) this.#post({ line });
  }

  /** See {@linkcode GuestIrqHost.freeIrq}. */
  freeIrq(line: number, handler: () => boolean): void {
    const list = this.#handlers.get(line);
    if (list !== undefined) this.#handlers.set(line, list.filter((h) => h !== handler));
  }

  /** See {@linkcode GuestIrqHost.allocMsi}: vectors from 0x20..0xEF at {@linkcode MSI_ADDRESS}. */
  allocMsi(
    count: number,
    handler: (address: number, data: number) => boolean,
  ): MsiMessage[] | null {
    if (!Number.isInteger(count) || count < 1 || count > this.#freeVectors.length) return null;
    const out: MsiMessage[] = [];
    for (let i = 0; i < count; i++) {
      const data = this.#freeVectors.pop()!;
      this.#msi.set(data, { address: MSI_ADDRESS, handler });
      out.push({ address: MSI_ADDRESS, data });
    }
    return out;
  }

  /** See {@linkcode GuestIrqHost.freeMsi}. */
  freeMsi(messages: readonly MsiMessage[]): void {
    for (const m of messages) {
      if (this.#msi.delete(m.data)) this.#freeVectors.push(m.data);
    }
  }

  /** The level of `line`: asserted while any source holds it. */
  lineLevel(line: number): boolean {
    return (this.#sources.get(line)?.size ?? 0) > 0;
  }

  /** A source drives `line` to `level`; rising lines are delivered to their handlers. */
  setLine(line: number, source: unknown, level: boolean): void {
    let set = this.#sources.get(line);
    if (set === undefined) {
      set = new Set();
      this.#sources.set(line, set);
    }
    const before = set.size > 0;
    if (level) set.add(source);
    else set.delete(source);
    if (!before && set.size > 0) this.#post({ line });
  }

  /** A device wrote an MSI message. */
  raiseMsi(address: number, data: number): void {
    this.#post({ address, data });
  }

  /** The guest starts a bus access: interrupts wait until the matching `exit`. */
  enter(): void {
    this.#depth++;
  }

  /** The guest finished a bus access; the outermost one delivers waiting interrupts. */
  exit(): void {
    if (--this.#depth === 0) this.#flush();
  }

  #post(event: PendingIrq): void {
    this.#pending.push(event);
    if (this.#depth === 0) this.#flush();
  }

  #flush(): void {
    if (this.#delivering) return;
    this.#delivering = true;
    try {
      while (this.#pending.length > 0) {
        const e = this.#pending.shift()!;
        if ("line" in e) this.#deliverLine(e.line);
        else this.#deliverMsi(e.address, e.data);
      }
    } finally {
      this.#delivering = false;
    }
  }

  #deliverMsi(address: number, data: number): void {
    const entry = this.#msi.get(data);
    if (entry === undefined || entry.address !== address || !entry.handler(address, data)) {
      this.stats.unhandledMsi++;
      return;
    }
    this.stats.msi++;
  }

  #deliverLine(line: number): void {
    for (let run = 0; run < MAX_LINE_RUNS; run++) {
      if (!this.lineLevel(line)) return;
      const handlers = this.#handlers.get(line);
      if (handlers === undefined || handlers.length === 0) return; // masked until requested
      this.stats.lineRuns++;
      let handled = false;
      for (const h of [...handlers]) if (h()) handled = true;
      if (!handled && this.lineLevel(line)) {
        this.stats.unhandledLine++;
        return;
      }
    }
    if (this.lineLevel(line)) this.stats.stuckLines++;
  }
}

/**
 * The machine's system bus as the guest sees it: virtio-mmio windows, then
 * the PCI host bridge (BARs, ECAM, I/O ports, config accesses). Every access
 * brackets interrupt delivery ({@linkcode MachineInterrupts.enter}/`exit`).
 */
export class MachineBus implements GuestPciBus {
  /** The PCI host bridge behind the bus. */
  readonly bridge: PciHostBridge;
  /** The interrupt controller. */
  readonly irq: MachineInterrupts;
  readonly #windows: { base: number; end: number; mmio: VirtioMmio }[] = [];

  /** Creates the bus over `bridge`. */
  constructor(bridge: PciHostBridge, irq: MachineInterrupts) {
    this.bridge = bridge;
    this.irq = irq;
  }

  /** The root bus number. */
  get busNumber(): number {
    return this.bridge.busNumber;
  }

  /** Maps a virtio-mmio transport's window at `base`. */
  mapMmio(base: number, mmio: VirtioMmio): void {
    this.#windows.push({ base, end: base + Math.max(mmio.size, MMIO_WINDOW), mmio });
  }

  #window(address: number): { base: number; end: number; mmio: VirtioMmio } | undefined {
    for (const w of this.#windows) if (address >= w.base && address < w.end) return w;
    return undefined;
  }

  /** A guest memory-mapped read. */
  memRead(address: number, size: number): number {
    this.irq.enter();
    try {
      const w = this.#window(address);
      if (w === undefined) return this.bridge.memRead(address, size);
      return address - w.base < w.mmio.size ? w.mmio.read(address - w.base, size) : 0;
    } finally {
      this.irq.exit();
    }
  }

  /** A guest memory-mapped write. */
  memWrite(address: number, size: number, value: number): void {
    this.irq.enter();
    try {
      const w = this.#window(address);
      if (w === undefined) this.bridge.memWrite(address, size, value);
      else if (address - w.base < w.mmio.size) w.mmio.write(address - w.base, size, value);
    } finally {
      this.irq.exit();
    }
  }

  /** A guest I/O port read. */
  ioRead(port: number, size: number): number {
    this.irq.enter();
    try {
      return this.bridge.ioRead(port, size);
    } finally {
      this.irq.exit();
    }
  }

  /** A guest I/O port write. */
  ioWrite(port: number, size: number, value: number): void {
    this.irq.enter();
    try {
      this.bridge.ioWrite(port, size, value);
    } finally {
      this.irq.exit();
    }
  }

  /** A guest config read. */
  configRead(bus: number, device: number, func: number, register: number, size: number): number {
    this.irq.enter();
    try {
      return this.bridge.configRead(bus, device, func, register, size);
    } finally {
      this.irq.exit();
    }
  }

  /** A guest config write. */
  configWrite(
    bus: number,
    device: number,
    func: number,
    register: number,
    size: number,
    value: number,
  ): void {
    this.irq.enter();
    try {
      this.bridge.configWrite(bus, device, func, register, size, value);
    } finally {
      this.irq.exit();
    }
  }
}

/** A machine built by {@linkcode createMachine}. */
export interface Machine {
  /** Guest RAM. */
  readonly memory: GuestMemory;
  /** The guest's system bus. */
  readonly bus: MachineBus;
  /** The PCI host bridge. */
  readonly bridge: PciHostBridge;
  /** The interrupt controller. */
  readonly irq: MachineInterrupts;
  /** The guest page allocator (RAM above the reserved part). */
  readonly pages: PageAllocator;
  /** The guest kmalloc heap. */
  readonly heap: SlabAllocator;
  /** The guest's PCI functions, as enumeration found them. */
  readonly pciDevices: readonly GuestPciDevice[];
  /** Every device and raw PCI function, in the order given. */
  readonly entries: readonly MachineEntry[];
  /**
   * The guest driver of device `index`.
   *
   * @throws {VirtioDriverError} the probe error, when the probe failed
   * @throws {RangeError} when there is no such device or it was not probed
   */
  guest(index: number): VirtioGuestDevice;
}

/**
 * Builds a machine: RAM, the bus and bridge, interrupts, each device on its
 * transport (virtio-pci functions in slots 1, 2, ...; virtio-mmio windows at
 * {@linkcode MMIO_BASE} + 4 KiB × n), then the guest: page allocator, PCI
 * enumeration (BARs placed, INTx lines routed) and a transport driver probed
 * for each device (reset and ACKNOWLEDGE done; the device driver negotiates).
 *
 * @throws {RangeError} on a bad size
 * @throws {TypeError} on malformed options
 *
 * @example
 * ```ts
 * import { GuestMemory, Iommu, VirtioIommu } from "@vireo/vireo";
 * import { createMachine } from "./machine.ts";
 * const memory = new GuestMemory([{ base: 0, size: 16 << 20 }]);
 * const m = createMachine({ memory, devices: [new VirtioIommu(new Iommu({ memory }))] });
 * const dev = m.guest(0); // the guest's virtio-pci driver, probed
 * dev.negotiate(0n);
 * console.log(dev.transport, dev.deviceId, m.pciDevices[0].slotName); // pci 23 00:01.0
 * ```
 */
export function createMachine(options: MachineOptions = {}): Machine {
  if (options === null || typeof options !== "object") {
    throw new TypeError("Cannot create a machine: options must be an object");
  }
  const given = options.memory;
  if (given !== undefined && (!(given instanceof GuestMemory) || given.regions[0].base !== 0)) {
    throw new TypeError(
      "Cannot create a machine: options.memory must be GuestMemory with RAM at 0",
    );
  }
  const memorySize = given?.regions[0].size ?? options.memorySize ?? 16 << 20;
  if (
    !Number.isInteger(memorySize) || memorySize < 0x10000 || memorySize > 0xc000_0000 ||
    memorySize % 4096 !== 0
  ) {
    throw new RangeError(
      `Cannot create a machine with ${memorySize} bytes of RAM: expected a multiple of 4096 in 64 KiB..3 GiB`,
    );
  }
  const defaultKind = options.transport ?? "pci";
  if (defaultKind !== "pci" && defaultKind !== "mmio") {
    throw new TypeError(
      `Cannot create a machine: transport ${String(defaultKind)} is not "pci" or "mmio"`,
    );
  }
  const reserved = options.reservedMemory ??
    Math.min(0x10_0000, Math.floor(memorySize / 4 / 4096) * 4096);
  if (
    !Number.isInteger(reserved) || reserved < 0 || reserved % 4096 !== 0 || reserved >= memorySize
  ) {
    throw new RangeError(
      `Cannot create a machine: reserved memory ${reserved} is not page aligned inside RAM`,
    );
  }
  const memory = given ?? new GuestMemory([{
    base: 0,
    size: memorySize,
    shared: options.sharedMemory === true,
  }]);
  const irq = new MachineInterrupts();
  const bridge: PciHostBridge = new PciHostBridge({
    host: {
      msi: (_fn, address, data) => irq.raiseMsi(address, data),
      intx: (fn, asserted) => {
        const slot = bridge.slotOf(fn);
        if (slot !== undefined) {
          irq.setLine(pciIntxLine(slot.device, fn.interruptPin), fn, asserted);
        }
      },
    },
  });
  const bus = new MachineBus(bridge, irq);
  const pages = new PageAllocator(memory, { base: reserved, size: memorySize - reserved });
  const heap = new SlabAllocator(pages);
  const directDma = new DirectDmaSpace(memory);

  const entries: MachineEntry[] = [];
  let nextSlot = 1;
  let nextMmio = 0;
  (options.devices ?? []).forEach((item, index) => {
    const spec: MachineDeviceSpec = isDeviceSpec(item) ? item : { device: item as VirtioDevice };
    const device = spec.device;
    const kind = spec.transport ?? defaultKind;
    const platformDma = options.iommu?.deviceDma?.(index, device);
    if (kind === "pci") {
      const slot = nextSlot++;
      if (slot > 31) throw new RangeError("Cannot create a machine: more than 31 PCI devices");
      const vp = new VirtioPci(device, {
        ...spec.ring,
        dma: directDma,
        platformDma,
        msixVectors: spec.msixVectors,
        notifyOffMultiplier: spec.notifyOffMultiplier,
        name: spec.name,
      });
      bridge.attach(vp.pci, slot);
      entries.push(entry(index, "pci", device, vp, null, vp.pci, slot, -1, pciIntxLine(slot, 1)));
    } else if (kind === "mmio") {
      const n = nextMmio++;
      const base = MMIO_BASE + n * MMIO_WINDOW;
      const line = MMIO_LINE_BASE + n;
      const mmio: VirtioMmio = new VirtioMmio(device, {
        ...spec.ring,
        dma: directDma,
        platformDma,
        setIrq: (level) => irq.setLine(line, mmio, level),
      });
      bus.mapMmio(base, mmio);
      entries.push(entry(index, "mmio", device, null, mmio, null, -1, base, line));
    } else {
      throw new TypeError(`Cannot create a machine: device ${index} has transport ${String(kind)}`);
    }
  });
  for (const fn of options.pciFunctions ?? []) {
    if (!(fn instanceof PciFunction)) {
      throw new TypeError("Cannot create a machine: pciFunctions must be PciFunction objects");
    }
    const slot = nextSlot++;
    bridge.attach(fn, slot);
    const line = fn.interruptPin === 0 ? 0 : pciIntxLine(slot, fn.interruptPin);
    entries.push(entry(entries.length, "pci", null, null, null, fn, slot, -1, line));
  }

  // ---- the guest ----
  const pciDevices = enumeratePciBus(bus, {
    memWindow: PCI_MEM_WINDOW,
    ioWindow: PCI_IO_WINDOW,
    routeIntx: pciIntxLine,
  });
  const guestIrq: GuestIrqHost = options.msi === false
    ? {
      requestIrq: (line, handler) => irq.requestIrq(line, handler),
      freeIrq: (line, handler) => irq.freeIrq(line, handler),
    }
    : irq;
  for (const e of entries) {
    if (e.kind === "pci") {
      e.pciDevice = pciDevices.find((d) => d.device === e.slot && d.function === 0) ?? null;
    }
    if (options.probe === false) continue;
    const spec = options.devices?.[e.index];
    const filter = (isDeviceSpec(spec) ? spec.guestFilterFeatures : undefined) ??
      options.guestFilterFeatures ?? 0n;
    const dma = (e.device !== null ? options.iommu?.guestDma?.(e.index, e.device) : undefined) ??
      new DmaDirect({ pages });
    const common = { pages, heap, dma, irq: guestIrq, filterFeatures: filter };
    try {
      if (e.kind === "pci") {
        if (e.pciDevice === null) continue;
        e.guest = probeVirtioPciModern({ ...common, pci: e.pciDevice });
      } else {
        e.guest = probeVirtioMmio({ ...common, bus, base: e.mmioBase, irqLine: e.irqLine });
      }
    } catch (err) {
      if (!(err instanceof VirtioDriverError)) throw err;
      e.probeError = err;
    }
  }

  return {
    memory,
    bus,
    bridge,
    irq,
    pages,
    heap,
    pciDevices,
    entries,
    guest(index: number): VirtioGuestDevice {
      const e = entries[index];
      if (e === undefined) throw new RangeError(`Cannot get guest device ${index}: no such device`);
      if (e.probeError !== null) throw e.probeError;
      if (e.guest === null) {
        throw new RangeError(`Cannot get guest device ${index}: it was not probed`);
      }
      return e.guest;
    },
  };
}

function isDeviceSpec(item: unknown): item is MachineDeviceSpec {
  return typeof item === "object" && item !== null &&
    typeof (item as { notify?: unknown }).notify !== "function" &&
    typeof (item as MachineDeviceSpec).device === "object";
}

function entry(
  index: number,
  kind: MachineTransport,
  device: VirtioDevice | null,
  pci: VirtioPci | null,
  mmio: VirtioMmio | null,
  pciFunction: PciFunction | null,
  slot: number,
  mmioBase: number,
  irqLine: number,
): MachineEntry {
  return {
    index,
    kind,
    device,
    pci,
    mmio,
    pciFunction,
    slot,
    mmioBase,
    irqLine,
    pciDevice: null,
    guest: null,
    probeError: null,
  };
}
