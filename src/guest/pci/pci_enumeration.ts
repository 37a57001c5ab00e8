/**
 * The guest's PCI core: bus enumeration, BAR sizing and assignment, device
 * enable, bus mastering, capability lookup, `pci_iomap` and MSI-X setup, as
 * Linux's `drivers/pci` does them, through config accesses and memory/I/O
 * accesses on the guest's bus only.
 *
 * @module
 */
import type { PciBarKind } from "../../pci/bar.ts";
import { PciCapabilityId, PciCommand, PciConfigOffset, PciStatus } from "../../pci/registers.ts";
import { Errno } from "../dma/dma_api.ts";
import type { GuestMmioBus, MsiMessage } from "../virtio/virtio_guest_device.ts";

/**
 * The guest's view of a PCI host bridge and the system bus behind it:
 * config accesses by bus/device/function, memory and I/O accesses.
 * `PciHostBridge` implements it; an emulator's own bus can too.
 */
export interface GuestPciBus extends GuestMmioBus {
  /** The root bus number (0 when absent). */
  readonly busNumber?: number;
  /** A config read of 1, 2 or 4 bytes; absent functions read all-ones. */
  configRead(bus: number, device: number, func: number, register: number, size: number): number;
  /** A config write of 1, 2 or 4 bytes. */
  configWrite(
    bus: number,
    device: number,
    func: number,
    register: number,
    size: number,
    value: number,
  ): void;
  /** An I/O port read of 1, 2 or 4 bytes. */
  ioRead(port: number, size: number): number;
  /** An I/O port write of 1, 2 or 4 bytes. */
  ioWrite(port: number, size: number, value: number): void;
}

/** A range of bus addresses BARs are placed in. */
export interface PciWindow {
  /** First address. */
  base: number;
  /** Bytes. */
  size: number;
}

/** How {@linkcode enumeratePciBus} places BARs (the firmware/kernel resource windows). */
export interface PciEnumerationOptions {
  /** The memory window; 0xE000_0000 + 256 MiB by default. */
  memWindow?: PciWindow;
  /** A window for 64-bit BARs (may lie above 4 GiB); the memory window by default. */
  mem64Window?: PciWindow | null;
  /** The I/O port window; ports 0xC000..0xFFFF by default. */
  ioWindow?: PciWindow;
  /**
   * The interrupt routing: the line of `device`'s INTx `pin` (1..4), which
   * enumeration writes to the Interrupt Line register as firmware does. The
   * register is left alone when absent.
   */
  routeIntx?: (device: number, pin: number) => number;
}

/** One BAR as the guest found it (Linux's `struct resource` of a BAR). */
export interface PciResource {
  /** BAR index (a 64-bit BAR also occupies `index + 1`). */
  readonly index: number;
  /** Memory (32- or 64-bit) or I/O. */
  readonly kind: PciBarKind;
  /** Bytes, from the sizing protocol. */
  readonly size: number;
  /** The prefetchable bit. */
  readonly prefetchable: boolean;
  /** Bus address the BAR decodes at (0 while unassigned). */
  start: number;
  /** Whether an address was given (`r->parent` in Linux). */
  assigned: boolean;
}

/** One entry of the capability list. */
export interface PciCapabilityEntry {
  /** Capability ID (0x09 vendor, 0x11 MSI-X, ...). */
  readonly id: number;
  /** Offset in config space. */
  readonly offset: number;
}

/**
 * A mapped BAR range (`pci_iomap_range`): register accesses at offsets from
 * `address`, through memory or I/O accesses on the bus.
 */
export interface PciIomem {
  /** Bus address of offset 0. */
  readonly address: number;
  /** Bytes mapped. */
  readonly length: number;
  /** True for an I/O BAR (port accesses). */
  readonly io: boolean;
  /** Models `ioread8`. */
  read8(offset: number): number;
  /** Models `ioread16`. */
  read16(offset: number): number;
  /** Models `ioread32`. */
  read32(offset: number): number;
  /** Models `iowrite8`. */
  write8(offset: number, value: number): void;
  /** Models `iowrite16`. */
  write16(offset: number, value: number): void;
  /** Models `iowrite32`. */
  write32(offset: number, value: number): void;
}

/** Offsets inside the MSI-X capability and table. */
const MSIX_FLAGS = 2;
const MSIX_TABLE = 4;
const MSIX_FLAGS_QSIZE = 0x07ff;
const MSIX_FLAGS_MASKALL = 0x4000;
const MSIX_FLAGS_ENABLE = 0x8000;
const MSIX_ENTRY_SIZE = 16;
const MSIX_ENTRY_CTRL_MASKBIT = 1;
/** `PCI_FIND_CAP_TTL`. */
const FIND_CAP_TTL = 48;
const TWO_32 = 0x1_0000_0000;

/**
 * One PCI function as the guest's PCI core knows it (`struct pci_dev`):
 * identity from config space, sized BARs, the capability list, and the
 * operations drivers call.
 */
export class GuestPciDevice {
  /** The bus it was found on. */
  readonly bus: GuestPciBus;
  /** Bus number. */
  readonly busNumber: number;
  /** Device (slot) number. */
  readonly device: number;
  /** Function number. */
  readonly function: number;
  /** Vendor ID. */
  readonly vendorId: number;
  /** Device ID. */
  readonly deviceId: number;
  /** Revision ID. */
  readonly revision: number;
  /** Class code (base << 16 | sub << 8 | prog-if). */
  readonly classCode: number;
  /** Header type (bit 7 = multi-function). */
  readonly headerType: number;
  /** Subsystem vendor ID. */
  readonly subsystemVendorId: number;
  /** Subsystem ID. */
  readonly subsystemId: number;
  /** Interrupt pin: 0 none, 1..4 INTA#..INTD#. */
  readonly interruptPin: number;
  /** BARs 0..5 (undefined for unimplemented ones and the high half of a 64-bit BAR). */
  readonly resources: (PciResource | undefined)[];
  /** MSI-X messages programmed by {@linkcode GuestPciDevice.enableMsix}, in vector order. */
  msixMessages: readonly MsiMessage[] = [];

  /**
   * Reads a function's identity, sizes its BARs and leaves them unassigned.
   * Use {@linkcode enumeratePciBus}, which also assigns addresses.
   */
  constructor(bus: GuestPciBus, busNumber: number, device: number, func: number) {
    this.bus = bus;
    this.busNumber = busNumber;
    this.device = device;
    this.function = func;
    const O = PciConfigOffset;
    this.vendorId = this.readConfig16(O.VENDOR_ID);
    this.deviceId = this.readConfig16(O.DEVICE_ID);
    this.revision = this.readConfig8(O.REVISION_ID);
    this.classCode = this.readConfig32(O.REVISION_ID) >>> 8;
    this.headerType = this.readConfig8(O.HEADER_TYPE);
    this.subsystemVendorId = this.readConfig16(O.SUBSYSTEM_VENDOR_ID);
    this.subsystemId = this.readConfig16(O.SUBSYSTEM_ID);
    this.interruptPin = this.readConfig8(O.INTERRUPT_PIN);
    this.resources = (this.headerType & 0x7f) === 0 ? this.#readBases() : new Array(6);
  }

  /** `bb:dd.f`, as Linux names a function. */
  get slotName(): string {
    const h = (n: number, w: number): string => n.toString(16).padStart(w, "0");
    return `${h(this.busNumber, 2)}:${h(this.device, 2)}.${this.function}`;
  }

  /**
   * The interrupt line (`pci_dev->irq`): the Interrupt Line register when
   * the function has a pin, else 0 (no INTx).
   */
  get irq(): number {
    return this.interruptPin === 0 ? 0 : this.readConfig8(PciConfigOffset.INTERRUPT_LINE);
  }

  /** The capability list, in list order. */
  get capabilities(): PciCapabilityEntry[] {
    const out: PciCapabilityEntry[] = [];
    if ((this.readConfig16(PciConfigOffset.STATUS) & PciStatus.CAP_LIST) === 0) return out;
    let pos = this.readConfig8(PciConfigOffset.CAPABILITY_LIST);
    for (let ttl = FIND_CAP_TTL; ttl > 0 && pos >= 0x40; ttl--) {
      pos &= ~3;
      const ent = this.readConfig16(pos);
      const id = ent & 0xff;
      if (id === 0xff) break;
      out.push({ id, offset: pos });
      pos = ent >>> 8;
    }
    return out;
  }

  // ---- config access ------------------------------------------------------------

  /** Models `pci_read_config_byte`. */
  readConfig8(register: number): number {
    return this.bus.configRead(this.busNumber, this.device, this.function, register, 1) & 0xff;
  }

  /** Models `pci_read_config_word`. */
  readConfig16(register: number): number {
    return this.bus.configRead(this.busNumber, this.device, this.function, register, 2) & 0xffff;
  }

  /** Models `pci_read_config_dword`. */
  readConfig32(register: number): number {
    return this.bus.configRead(this.busNumber, this.device, this.function, register, 4) >>> 0;
  }

  /** Models `pci_write_config_byte`. */
  writeConfig8(register: number, value: number): void {
    this.bus.configWrite(this.busNumber, this.device, this.function, register, 1, value & 0xff);
  }

  /** Models `pci_write_config_word`. */
  writeConfig16(register: number, value: number): void {
    this.bus.configWrite(this.busNumber, this.device, this.function, register, 2, value & 0xffff);
  }

  /** Models `pci_write_config_dword`. */
  writeConfig32(register: number, value: number): void {
    this.bus.configWrite(this.busNumber, this.device, this.function, register, 4, value >>> 0);
  }

  // ---- capabilities -----------------------------------------------------------------

  /**
   * The offset of the first capability with ID `id`, or 0. Models
   * `pci_find_capability` (status bit 4 checked, at most 48 entries, low two
   * bits of each pointer masked, pointers below 0x40 end the walk).
   */
  findCapability(id: number): number {
    if ((this.readConfig16(PciConfigOffset.STATUS) & PciStatus.CAP_LIST) === 0) return 0;
    return this.#findNextCap(PciConfigOffset.CAPABILITY_LIST, id);
  }

  /** The next capability with ID `id` after the one at `pos`, or 0. Models `pci_find_next_capability`. */
  findNextCapability(pos: number, id: number): number {
    return this.#findNextCap(pos + 1, id);
  }

  /** Models `__pci_find_next_cap_ttl`. */
  #findNextCap(pointerAt: number, id: number): number {
    let pos = this.readConfig8(pointerAt);
    for (let ttl = FIND_CAP_TTL; ttl > 0; ttl--) {
      if (pos < 0x40) break;
      pos &= ~3;
      const ent = this.readConfig16(pos);
      const found = ent & 0xff;
      if (found === 0xff) break;
      if (found === id) return pos;
      pos = ent >>> 8;
    }
    return 0;
  }

  // ---- resources -----------------------------------------------------------------------

  /** Bus address of BAR `bar`, 0 when absent or unassigned. Models `pci_resource_start`. */
  resourceStart(bar: number): number {
    const r = this.resources[bar];
    return r !== undefined && r.assigned ? r.start : 0;
  }

  /** Size of BAR `bar`, 0 when absent. Models `pci_resource_len`. */
  resourceLen(bar: number): number {
    return this.resources[bar]?.size ?? 0;
  }

  /** The kind of BAR `bar`, or null when absent. Models `pci_resource_flags`. */
  resourceKind(bar: number): PciBarKind | null {
    return this.resources[bar]?.kind ?? null;
  }

  /**
   * Maps `[offset, offset + maxLength)` of BAR `bar` (the whole rest of the
   * BAR when `maxLength` is 0), or returns null when the BAR is absent,
   * unassigned or `offset` is outside it. Models `pci_iomap_range`.
   */
  iomap(bar: number, offset: number, maxLength = 0): PciIomem | null {
    const r = this.resources[bar];
    if (r === undefined || !r.assigned) return null;
    let length = r.size;
    if (!(offset >= 0) || length <= offset) return null;
    length -= offset;
    if (maxLength > 0 && length > maxLength) length = maxLength;
    const address = r.start + offset;
    const bus = this.bus;
    if (r.kind === "io") {
      return {
        address,
        length,
        io: true,
        read8: (o) => bus.ioRead(address + o, 1) & 0xff,
        read16: (o) => bus.ioRead(address + o, 2) & 0xffff,
        read32: (o) => bus.ioRead(address + o, 4) >>> 0,
        write8: (o, v) => bus.ioWrite(address + o, 1, v & 0xff),
        write16: (o, v) => bus.ioWrite(address + o, 2, v & 0xffff),
        write32: (o, v) => bus.ioWrite(address + o, 4, v >>> 0),
      };
    }
    return {
      address,
      length,
      io: false,
      read8: (o) => bus.memRead(address + o, 1) & 0xff,
      read16: (o) => bus.memRead(address + o, 2) & 0xffff,
      read32: (o) => bus.memRead(address + o, 4) >>> 0,
      write8: (o, v) => bus.memWrite(address + o, 1, v & 0xff),
      write16: (o, v) => bus.memWrite(address + o, 2, v & 0xffff),
      write32: (o, v) => bus.memWrite(address + o, 4, v >>> 0),
    };
  }

  /**
   * Writes `address` into BAR `bar` (both halves for a 64-bit BAR) and marks
   * it assigned. Models `pci_update_resource`.
   *
   * @throws {RangeError} when the BAR is absent or the address is not aligned to its size
   */
  assignResource(bar: number, address: number): void {
    const r = this.resources[bar];
    if (r === undefined) {
      throw new RangeError(`Cannot assign BAR ${bar} of ${this.slotName}: it is not implemented`);
    }
    if (!Number.isSafeInteger(address) || address < 0 || address % r.size !== 0) {
      throw new RangeError(
        `Cannot assign BAR ${bar} of ${this.slotName} at ${address}: not aligned to its size ${r.size}`,
      );
    }
    const reg = PciConfigOffset.BAR_0 + 4 * bar;
    this.writeConfig32(reg, address % TWO_32);
    if (r.kind === "mem64") this.writeConfig32(reg + 4, Math.floor(address / TWO_32));
    r.start = address;
    r.assigned = true;
  }

  // ---- enable, bus master ---------------------------------------------------------------

  /**
   * Turns on decoding of every assigned BAR's space (IO and/or MEM in the
   * command register). Models `pci_enable_device` (`pci_enable_resources`).
   *
   * @returns 0, or `-EINVAL` when a BAR has no address ("not claimed; can't enable device")
   */
  enable(): number {
    let cmd = this.readConfig16(PciConfigOffset.COMMAND);
    const old = cmd;
    for (const r of this.resources) {
      if (r === undefined) continue;
      if (!r.assigned) return -Errno.EINVAL;
      cmd |= r.kind === "io" ? PciCommand.IO : PciCommand.MEMORY;
    }
    if (cmd !== old) this.writeConfig16(PciConfigOffset.COMMAND, cmd);
    return 0;
  }

  /**
   * Stops bus mastering; decoding stays as it is, as in Linux. Models
   * `pci_disable_device` (`do_pci_disable_device`).
   */
  disable(): void {
    this.clearMaster();
  }

  /** Sets Bus Master: the function may DMA and send MSIs. Models `pci_set_master`. */
  setMaster(): void {
    const cmd = this.readConfig16(PciConfigOffset.COMMAND);
    if ((cmd & PciCommand.MASTER) === 0) {
      this.writeConfig16(PciConfigOffset.COMMAND, cmd | PciCommand.MASTER);
    }
  }

  /** Clears Bus Master. Models `pci_clear_master`. */
  clearMaster(): void {
    const cmd = this.readConfig16(PciConfigOffset.COMMAND);
    if ((cmd & PciCommand.MASTER) !== 0) {
      this.writeConfig16(PciConfigOffset.COMMAND, cmd & ~PciCommand.MASTER);
    }
  }

  /** Sets or clears INTx Disable. Models `pci_intx`. */
  intx(enable: boolean): void {
    const cmd = this.readConfig16(PciConfigOffset.COMMAND);
    const next = enable ? cmd & ~PciCommand.INTX_DISABLE : cmd | PciCommand.INTX_DISABLE;
    if (next !== cmd) this.writeConfig16(PciConfigOffset.COMMAND, next);
  }

  // ---- MSI-X ---------------------------------------------------------------------------------

  /** The MSI-X table size, or `-EINVAL` without an MSI-X capability. Models `pci_msix_vec_count`. */
  msixVectorCount(): number {
    const cap = this.findCapability(PciCapabilityId.MSIX);
    if (cap === 0) return -Errno.EINVAL;
    return (this.readConfig16(cap + MSIX_FLAGS) & MSIX_FLAGS_QSIZE) + 1;
  }

  /**
   * Enables MSI-X with one table entry per message (entry i gets
   * `messages[i]`): MSI-X Enable with the function masked, the entries
   * written and unmasked, INTx disabled, then the function unmasked. Models
   * the PCI half of `pci_alloc_irq_vectors(PCI_IRQ_MSIX)`
   * (`msix_capability_init`). The memory BAR holding the table must decode.
   *
   * @returns 0; `-EINVAL` without MSI-X or when already enabled; `-ENOSPC`
   *   when the table has fewer entries; `-ENOMEM` when the table BAR is not mapped
   */
  enableMsix(messages: readonly MsiMessage[]): number {
    const cap = this.findCapability(PciCapabilityId.MSIX);
    if (cap === 0 || messages.length === 0) return -Errno.EINVAL;
    const ctrl = this.readConfig16(cap + MSIX_FLAGS);
    if ((ctrl & MSIX_FLAGS_ENABLE) !== 0) return -Errno.EINVAL;
    if (messages.length > (ctrl & MSIX_FLAGS_QSIZE) + 1) return -Errno.ENOSPC;
    const tableReg = this.readConfig32(cap + MSIX_TABLE);
    const table = this.iomap(
      tableReg & 7,
      (tableReg & ~7) >>> 0,
      messages.length * MSIX_ENTRY_SIZE,
    );
    if (table === null || table.io || table.length < messages.length * MSIX_ENTRY_SIZE) {
      return -Errno.ENOMEM;
    }
    // Ensure MSI-X is disabled while it is set up: enable with all vectors masked.
    this.writeConfig16(cap + MSIX_FLAGS, ctrl | MSIX_FLAGS_MASKALL | MSIX_FLAGS_ENABLE);
    messages.forEach((m, i) => {
      const at = i * MSIX_ENTRY_SIZE;
      table.write32(at, m.address % TWO_32);
      table.write32(at + 4, Math.floor(m.address / TWO_32));
      table.write32(at + 8, m.data);
      table.write32(at + 12, table.read32(at + 12) & ~MSIX_ENTRY_CTRL_MASKBIT);
    });
    this.intx(false); // pci_intx_for_msi(dev, 0)
    this.writeConfig16(cap + MSIX_FLAGS, (ctrl | MSIX_FLAGS_ENABLE) & ~MSIX_FLAGS_MASKALL);
    this.msixMessages = [...messages];
    return 0;
  }

  /**
   * Masks the entries, clears MSI-X Enable and re-enables INTx. Models
   * `pci_free_irq_vectors` (`pci_msix_shutdown`).
   */
  disableMsix(): void {
    const cap = this.findCapability(PciCapabilityId.MSIX);
    if (cap === 0) return;
    const ctrl = this.readConfig16(cap + MSIX_FLAGS);
    if ((ctrl & MSIX_FLAGS_ENABLE) === 0) return;
    const tableReg = this.readConfig32(cap + MSIX_TABLE);
    const count = this.msixMessages.length;
    const table = this.iomap(tableReg & 7, (tableReg & ~7) >>> 0, count * MSIX_ENTRY_SIZE);
    if (table !== null && !table.io) {
      for (let i = 0; i < count; i++) {
        const at = i * MSIX_ENTRY_SIZE + 12;
        table.write32(at, table.read32(at) | MSIX_ENTRY_CTRL_MASKBIT);
      }
    }
    this.writeConfig16(cap + MSIX_FLAGS, ctrl & ~(MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL));
    this.intx(true); // pci_intx_for_msi(dev, 1)
    this.msixMessages = [];
  }

  /** True while MSI-X Enable is set. */
  get msixEnabled(): boolean {
    const cap = this.findCapability(PciCapabilityId.MSIX);
    return cap !== 0 && (this.readConfig16(cap + MSIX_FLAGS) & MSIX_FLAGS_ENABLE) !== 0;
  }

  // ---- sizing -------------------------------------------------------------------------------

  /** Sizes BARs 0..5 with decoding off. Models `pci_read_bases` / `__pci_read_base`. */
  #readBases(): (PciResource | undefined)[] {
    const out: (PciResource | undefined)[] = new Array(6).fill(undefined);
    const O = PciConfigOffset;
    const cmd = this.readConfig16(O.COMMAND);
    const decode = PciCommand.IO | PciCommand.MEMORY;
    if ((cmd & decode) !== 0) this.writeConfig16(O.COMMAND, cmd & ~decode);
    for (let i = 0; i < 6; i++) {
      const reg = O.BAR_0 + 4 * i;
      const saved = this.readConfig32(reg);
      this.writeConfig32(reg, 0xffff_ffff);
      const sz = this.readConfig32(reg);
      this.writeConfig32(reg, saved);
      if (sz === 0 || sz === 0xffff_ffff) continue;
      if ((sz & 1) !== 0) {
        const size = lowestBit((sz & 0xffff_fffc & 0xffff) >>> 0);
        if (size === 0) continue;
        const start = (saved & 0xffff_fffc) >>> 0;
        out[i] = { index: i, kind: "io", size, prefetchable: false, start, assigned: false };
        continue;
      }
      const prefetchable = (sz & 0x8) !== 0;
      if ((sz & 0x6) === 0x4 && i < 5) {
        const savedHigh = this.readConfig32(reg + 4);
        this.writeConfig32(reg + 4, 0xffff_ffff);
        const szHigh = this.readConfig32(reg + 4);
        this.writeConfig32(reg + 4, savedHigh);
        const mask = (BigInt(szHigh) << 32n) | BigInt((sz & 0xffff_fff0) >>> 0);
        const size = Number(mask & -mask);
        const start = savedHigh * TWO_32 + ((saved & 0xffff_fff0) >>> 0);
        if (size > 0) {
          out[i] = { index: i, kind: "mem64", size, prefetchable, start, assigned: false };
        }
        i++;
        continue;
      }
      const size = lowestBit((sz & 0xffff_fff0) >>> 0);
      if (size === 0) continue;
      const start = (saved & 0xffff_fff0) >>> 0;
      out[i] = { index: i, kind: "mem32", size, prefetchable, start, assigned: false };
    }
    if ((cmd & decode) !== 0) this.writeConfig16(O.COMMAND, cmd);
    return out;
  }
}

function lowestBit(v: number): number {
  return v === 0 ? 0 : (v & -v) >>> 0;
}

/**
 * Scans the root bus through config reads (devices 0..31, functions 1..7
 * only behind a multi-function function 0), sizes every BAR, places them in
 * the windows (largest first, each naturally aligned; a BAR that does not fit
 * stays unassigned) and writes the addresses, with decoding left as it was.
 * Models `pci_scan_root_bus` and `pci_assign_unassigned_bus_resources`.
 *
 * @returns the functions found, in device and function order
 * @throws {RangeError} when a window is malformed
 *
 * @example
 * ```ts
 * import { PciFunction, PciHostBridge } from "@vireo/vireo";
 * import { enumeratePciBus } from "./pci_enumeration.ts";
 * const bridge = new PciHostBridge();
 * const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041 });
 * fn.defineBar(1, { kind: "mem32", size: 0x1000 });
 * bridge.attach(fn, 2);
 * const [dev] = enumeratePciBus(bridge);
 * console.log(dev.slotName, dev.resourceStart(1).toString(16)); // 00:02.0 e0000000
 * ```
 */
export function enumeratePciBus(
  bus: GuestPciBus,
  options: PciEnumerationOptions = {},
): GuestPciDevice[] {
  const memWindow = checkWindow(
    "memory",
    options.memWindow ?? { base: 0xe000_0000, size: 0x1000_0000 },
  );
  const ioWindow = checkWindow("I/O", options.ioWindow ?? { base: 0xc000, size: 0x4000 });
  const mem64Window = options.mem64Window
    ? checkWindow("64-bit memory", options.mem64Window)
    : null;
  const busNumber = bus.busNumber ?? 0;
  const devices: GuestPciDevice[] = [];
  const valid = (v: number): boolean => v !== 0xffff && v !== 0;
  for (let d = 0; d < 32; d++) {
    if (!valid(bus.configRead(busNumber, d, 0, PciConfigOffset.VENDOR_ID, 2) & 0xffff)) continue;
    const multi = (bus.configRead(busNumber, d, 0, PciConfigOffset.HEADER_TYPE, 1) & 0x80) !== 0;
    for (let f = 0; f < (multi ? 8 : 1); f++) {
      if (!valid(bus.configRead(busNumber, d, f, PciConfigOffset.VENDOR_ID, 2) & 0xffff)) continue;
      const dev = new GuestPciDevice(bus, busNumber, d, f);
      if (options.routeIntx !== undefined && dev.interruptPin !== 0) {
        dev.writeConfig8(PciConfigOffset.INTERRUPT_LINE, options.routeIntx(d, dev.interruptPin));
      }
      devices.push(dev);
    }
  }

  const requests: [GuestPciDevice, PciResource][] = [];
  for (const dev of devices) {
    for (const r of dev.resources) if (r !== undefined) requests.push([dev, r]);
  }
  requests.sort((a, b) => b[1].size - a[1].size);
  const next = new Map<PciWindow, number>([[memWindow, memWindow.base], [ioWindow, ioWindow.base]]);
  if (mem64Window !== null) next.set(mem64Window, mem64Window.base);
  for (const [dev, r] of requests) {
    const window = r.kind === "io"
      ? ioWindow
      : r.kind === "mem64" && mem64Window !== null
      ? mem64Window
      : memWindow;
    const address = Math.ceil(next.get(window)! / r.size) * r.size;
    const end = address + r.size;
    if (end > window.base + window.size || (r.kind !== "mem64" && end > TWO_32)) continue;
    next.set(window, end);
    dev.assignResource(r.index, address);
  }
  return devices;
}

function checkWindow(name: string, w: PciWindow): PciWindow {
  if (
    w === null || typeof w !== "object" || !Number.isSafeInteger(w.base) || w.base < 0 ||
    !Number.isSafeInteger(w.size) || w.size < 0
  ) {
    throw new RangeError(`Cannot enumerate PCI: the ${name} window is not a {base, size} range`);
  }
  return w;
}
