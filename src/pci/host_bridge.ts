import { hex } from "../guest_fault.ts";
import type { PciBarKind } from "./bar.ts";
import { PciDiagnostics } from "./diagnostics.ts";
import { allOnes, PciFunction, type PciFunctionHost } from "./pci_function.ts";
import { PciCommand, PciConfigOffset } from "./registers.ts";

/** How a {@linkcode PciHostBridge} is set up. */
export interface PciHostBridgeOptions {
  /**
   * Receives the MSI messages, INTx levels and BAR moves of every attached
   * function (the platform: interrupt controller, memory map).
   */
  host?: PciFunctionHost;
  /** The number of the bus behind the bridge (0..255); 0 by default. */
  busNumber?: number;
  /**
   * Guest physical base of a 256 MiB ECAM window that
   * {@linkcode PciHostBridge.memRead} and {@linkcode PciHostBridge.memWrite}
   * serve as config accesses (1 MiB aligned); none by default.
   */
  ecamBase?: number;
  /**
   * Whether {@linkcode PciHostBridge.ioRead} and {@linkcode PciHostBridge.ioWrite}
   * serve configuration mechanism #1 at ports 0xCF8 (32-bit address) and
   * 0xCFC..0xCFF (data); true by default.
   */
  legacyConfigPorts?: boolean;
}

/** Where a function sits on the bus. */
export interface PciSlot {
  /** Device number 0..31. */
  readonly device: number;
  /** Function number 0..7. */
  readonly function: number;
  /** The function. */
  readonly pciFunction: PciFunction;
}

/** One BAR placed by {@linkcode assignBars}. */
export interface PciBarAssignment {
  /** Device number. */
  readonly device: number;
  /** Function number. */
  readonly function: number;
  /** BAR index. */
  readonly bar: number;
  /** Kind found by sizing. */
  readonly kind: PciBarKind;
  /** Size found by sizing. */
  readonly size: number;
  /** The address written to the BAR. */
  readonly address: number;
}

/** A decoded BAR window on the bus. */
interface Window {
  readonly base: number;
  readonly end: number;
  readonly fn: PciFunction;
  readonly bar: number;
}

const ECAM_SIZE = 0x1000_0000;
const CONFIG_ADDRESS_PORT = 0xcf8;
const CONFIG_DATA_PORT = 0xcfc;
const CF8_ENABLE = 0x8000_0000;
const TWO_32 = 0x1_0000_0000;

/**
 * The offset of a config register in an ECAM window:
 * `bus << 20 | device << 15 | function << 12 | register`.
 *
 * @throws {RangeError} when a number is out of its field's range
 */
export function ecamOffset(bus: number, device: number, fn: number, register: number): number {
  checkBdf("compute an ECAM offset", bus, device, fn, register, 0xfff);
  return bus * 0x10_0000 + (device << 15) + (fn << 12) + register;
}

/**
 * The value a driver writes to port 0xCF8 to reach a config dword with
 * mechanism #1: `0x80000000 | bus << 16 | device << 11 | function << 8 | register & 0xFC`.
 *
 * @throws {RangeError} when a number is out of its field's range
 */
export function cf8Address(bus: number, device: number, fn: number, register: number): number {
  checkBdf("compute a 0xCF8 address", bus, device, fn, register, 0xff);
  return (CF8_ENABLE | (bus << 16) | (device << 11) | (fn << 8) | (register & 0xfc)) >>> 0;
}

function checkBdf(
  what: string,
  bus: number,
  device: number,
  fn: number,
  register: number,
  maxRegister: number,
): void {
  const ok = (v: number, max: number): boolean => Number.isInteger(v) && v >= 0 && v <= max;
  if (!ok(bus, 0xff) || !ok(device, 31) || !ok(fn, 7) || !ok(register, maxRegister)) {
    throw new RangeError(
      `Cannot ${what} for ${bus}:${device}.${fn} register ${register}: bus 0..255, device 0..31, function 0..7, register 0..${
        hex(maxRegister)
      }`,
    );
  }
}

/**
 * A PCI host bridge and the bus behind it: config access by bus/device/function
 * (directly, through an ECAM window, or through ports 0xCF8/0xCFC), and
 * dispatch of memory and I/O accesses to whichever function's BAR decodes the
 * address.
 *
 * Absent functions read all-ones (vendor ID 0xFFFF); accesses that no BAR
 * decodes read all-ones and are counted. Dispatch keeps the decoded BAR
 * windows in a sorted array, rebuilt only when a BAR moves or a command
 * register changes decoding, and checks the last window hit first: no
 * allocation per access.
 *
 * @example
 * ```ts
 * import { assignBars, PciFunction, PciHostBridge } from "@vireo/vireo";
 * const bridge = new PciHostBridge({ ecamBase: 0xb000_0000 });
 * const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1042 });
 * fn.defineBar(0, { kind: "mem32", size: 0x100 });
 * let last = 0;
 * fn.mapRegion(0, 0, 0x100, { read: () => last, write: (_o, _s, v) => { last = v; } });
 * bridge.attach(fn, 3);
 * console.log(bridge.memRead(0xb001_8000, 4).toString(16)); // "10421af4": 00:03.0 via ECAM
 * const [bar] = assignBars(bridge, 0xfe00_0000, 0xc000);
 * bridge.memWrite(bar.address + 4, 4, 99);
 * console.log(last); // 99
 * ```
 */
export class PciHostBridge {
  /** The number of the bus behind the bridge. */
  readonly busNumber: number;
  /** Base of the ECAM window served by memory accesses, or null. */
  readonly ecamBase: number | null;
  /** Counters for accesses no function claimed and interrupts nobody received. */
  readonly diagnostics: PciDiagnostics = new PciDiagnostics();
  readonly #legacyPorts: boolean;
  readonly #host: PciFunctionHost | null;
  /** Functions by `device * 8 + function`. */
  readonly #slots: (PciFunction | undefined)[] = new Array(256).fill(undefined);
  readonly #slotOf = new Map<PciFunction, number>();
  readonly #fnHost: PciFunctionHost;
  #mem: Window[] = [];
  #io: Window[] = [];
  #lastMem: Window | null = null;
  #lastIo: Window | null = null;
  #cf8 = 0;

  /**
   * Creates an empty bus.
   *
   * @throws {RangeError} when the bus number or ECAM base is out of range
   * @throws {TypeError} when `options` or the host is not an object
   */
  constructor(options: PciHostBridgeOptions = {}) {
    if (options === null || typeof options !== "object") {
      throw new TypeError("Cannot create a PCI host bridge: options must be an object");
    }
    const bus = options.busNumber ?? 0;
    if (!Number.isInteger(bus) || bus < 0 || bus > 255) {
      throw new RangeError(`Cannot create a PCI host bridge: bus number ${bus} is outside 0..255`);
    }
    const ecam = options.ecamBase ?? null;
    if (
      ecam !== null &&
      (!Number.isInteger(ecam) || ecam < 0 || ecam % 0x10_0000 !== 0 || ecam + ECAM_SIZE > 2 ** 53)
    ) {
      throw new RangeError(
        `Cannot create a PCI host bridge: ECAM base ${ecam} is not a 1 MiB aligned address`,
      );
    }
    const host = options.host ?? null;
    if (host !== null && typeof host !== "object") {
      throw new TypeError("Cannot create a PCI host bridge: the host must be an object");
    }
    this.busNumber = bus;
    this.ecamBase = ecam;
    this.#legacyPorts = options.legacyConfigPorts ?? true;
    this.#host = host;
    this.#fnHost = {
      msi: (fn, address, data) => {
        const h = this.#host;
        if (h !== null && h.msi !== undefined) h.msi(fn, address, data);
        else {
          this.diagnostics.record(
            "droppedInterrupt",
            `MSI message ${hex(data)} to ${
              hex(address)
            } from ${fn.name} dropped: no host receives MSIs`,
          );
        }
      },
      intx: (fn, asserted) => {
        const h = this.#host;
        if (h !== null && h.intx !== undefined) h.intx(fn, asserted);
      },
      barChanged: (fn, bar, previous) => {
        this.#rebuild();
        const h = this.#host;
        if (h !== null && h.barChanged !== undefined) h.barChanged(fn, bar, previous);
      },
    };
  }

  /**
   * Puts `fn` at `device`.`function` and binds it to the bridge. When a
   * device gets more than one function, function 0's header type gets the
   * multi-function bit.
   *
   * @throws {TypeError} when `fn` is not a PciFunction or is already bound to a host
   * @throws {RangeError} when the numbers are out of range or the slot is taken
   */
  attach(fn: PciFunction, device: number, func: number = 0): void {
    if (!(fn instanceof PciFunction)) {
      throw new TypeError("Cannot attach to the PCI bus: expected a PciFunction");
    }
    const where = `${this.busNumber}:${device}.${func}`;
    if (!Number.isInteger(device) || device < 0 || device > 31) {
      throw new RangeError(`Cannot attach ${fn.name} at ${where}: device is outside 0..31`);
    }
    if (!Number.isInteger(func) || func < 0 || func > 7) {
      throw new RangeError(`Cannot attach ${fn.name} at ${where}: function is outside 0..7`);
    }
    if (fn.host !== null) {
      throw new TypeError(`Cannot attach ${fn.name} at ${where}: it is already bound to a host`);
    }
    const slot = device * 8 + func;
    const other = this.#slots[slot];
    if (other !== undefined) {
      throw new RangeError(`Cannot attach ${fn.name} at ${where}: ${other.name} is there`);
    }
    this.#slots[slot] = fn;
    this.#slotOf.set(fn, slot);
    fn.bind(this.#fnHost);
    this.#updateMultiFunction(device);
    this.#rebuild();
  }

  /** Removes `fn` from the bus and unbinds it. Returns false when it was not attached. */
  detach(fn: PciFunction): boolean {
    const slot = this.#slotOf.get(fn);
    if (slot === undefined) return false;
    this.#slots[slot] = undefined;
    this.#slotOf.delete(fn);
    fn.bind(null);
    this.#updateMultiFunction(slot >>> 3);
    this.#rebuild();
    return true;
  }

  /** The function at `device`.`func`, or undefined. */
  functionAt(device: number, func: number = 0): PciFunction | undefined {
    if (!Number.isInteger(device) || device < 0 || device > 31) return undefined;
    if (!Number.isInteger(func) || func < 0 || func > 7) return undefined;
    return this.#slots[device * 8 + func];
  }

  /** Where `fn` sits, or undefined (e.g. to route its INTx pin by slot). */
  slotOf(fn: PciFunction): PciSlot | undefined {
    const slot = this.#slotOf.get(fn);
    return slot === undefined
      ? undefined
      : { device: slot >>> 3, function: slot & 7, pciFunction: fn };
  }

  /** Every attached function, in device and function order. */
  get slots(): PciSlot[] {
    const out: PciSlot[] = [];
    this.#slots.forEach((fn, slot) => {
      if (fn !== undefined) out.push({ device: slot >>> 3, function: slot & 7, pciFunction: fn });
    });
    return out;
  }

  /** The latched 0xCF8 value (configuration mechanism #1). */
  get configAddress(): number {
    return this.#cf8;
  }

  /**
   * A config read of `size` bytes at `register` of `bus`:`device`.`func`.
   * Other buses and absent functions read all-ones. Never throws.
   */
  configRead(bus: number, device: number, func: number, register: number, size: number): number {
    const fn = bus === this.busNumber ? this.functionAt(device, func) : undefined;
    return fn === undefined ? allOnes(size) : fn.configRead(register, size);
  }

  /** A config write; ignored for other buses and absent functions. Never throws. */
  configWrite(
    bus: number,
    device: number,
    func: number,
    register: number,
    size: number,
    value: number,
  ): void {
    const fn = bus === this.busNumber ? this.functionAt(device, func) : undefined;
    if (fn !== undefined) fn.configWrite(register, size, value);
  }

  /**
   * A config read at `offset` inside an ECAM window (see {@linkcode ecamOffset}).
   * Never throws: an offset outside the 256 MiB window reads all-ones and is counted.
   */
  ecamRead(offset: number, size: number): number {
    if (!isEcamOffset(offset)) {
      this.#invalid(`ECAM read of ${size} bytes at ${hex(offset)} ignored`);
      return allOnes(size);
    }
    return this.configRead(
      offset >>> 20,
      (offset >>> 15) & 0x1f,
      (offset >>> 12) & 7,
      offset & 0xfff,
      size,
    );
  }

  /** A config write at `offset` inside an ECAM window. Never throws. */
  ecamWrite(offset: number, size: number, value: number): void {
    if (!isEcamOffset(offset)) {
      this.#invalid(`ECAM write of ${size} bytes at ${hex(offset)} ignored`);
      return;
    }
    this.configWrite(
      offset >>> 20,
      (offset >>> 15) & 0x1f,
      (offset >>> 12) & 7,
      offset & 0xfff,
      size,
      value,
    );
  }

  /**
   * A memory read of `size` (1, 2 or 4) bytes at guest physical `address`:
   * the ECAM window when configured, else the memory BAR decoding it. Never
   * throws: unclaimed addresses read all-ones and are counted.
   */
  memRead(address: number, size: number): number {
    const ecam = this.ecamBase;
    if (ecam !== null && address >= ecam && address < ecam + ECAM_SIZE) {
      return this.ecamRead(address - ecam, size);
    }
    const w = this.#findMem(address);
    if (w === null) {
      this.#unclaimed("memory read", address, size);
      return allOnes(size);
    }
    return w.fn.barRead(w.bar, address - w.base, size);
  }

  /** A memory write of the low `size` bytes of `value`; see {@linkcode PciHostBridge.memRead}. */
  memWrite(address: number, size: number, value: number): void {
    const ecam = this.ecamBase;
    if (ecam !== null && address >= ecam && address < ecam + ECAM_SIZE) {
      this.ecamWrite(address - ecam, size, value);
      return;
    }
    const w = this.#findMem(address);
    if (w === null) {
      this.#unclaimed("memory write", address, size);
      return;
    }
    w.fn.barWrite(w.bar, address - w.base, size, value);
  }

  /** An 8-byte memory read (see {@linkcode PciFunction.barRead64}). Never throws. */
  memRead64(address: number): bigint {
    const w = this.#findMem(address);
    if (w === null || this.#inEcam(address)) {
      this.#unclaimed("memory read", address, 8);
      return 0xffff_ffff_ffff_ffffn;
    }
    return w.fn.barRead64(w.bar, address - w.base);
  }

  /** An 8-byte memory write (see {@linkcode PciFunction.barWrite64}). Never throws. */
  memWrite64(address: number, value: bigint): void {
    const w = this.#findMem(address);
    if (w === null || this.#inEcam(address)) {
      this.#unclaimed("memory write", address, 8);
      return;
    }
    w.fn.barWrite64(w.bar, address - w.base, value);
  }

  /**
   * An I/O port read of `size` (1, 2 or 4) bytes: ports 0xCF8 (32-bit) and
   * 0xCFC..0xCFF when legacy config ports are on, else the I/O BAR decoding
   * the port. Never throws: unclaimed ports read all-ones and are counted.
   */
  ioRead(port: number, size: number): number {
    if (this.#legacyPorts) {
      if (port === CONFIG_ADDRESS_PORT && size === 4) return this.#cf8;
      if (port >= CONFIG_DATA_PORT && port <= CONFIG_DATA_PORT + 3) {
        const a = this.#cf8;
        if ((a & CF8_ENABLE) === 0) return allOnes(size);
        return this.configRead(
          (a >>> 16) & 0xff,
          (a >>> 11) & 0x1f,
          (a >>> 8) & 7,
          (a & 0xfc) | (port & 3),
          size,
        );
      }
    }
    const w = this.#findIo(port);
    if (w === null) {
      this.#unclaimed("I/O read", port, size);
      return allOnes(size);
    }
    return w.fn.barRead(w.bar, port - w.base, size);
  }

  /** An I/O port write; see {@linkcode PciHostBridge.ioRead}. Never throws. */
  ioWrite(port: number, size: number, value: number): void {
    if (this.#legacyPorts) {
      if (port === CONFIG_ADDRESS_PORT && size === 4) {
        this.#cf8 = (value & 0x80ff_fffc) >>> 0;
        return;
      }
      if (port >= CONFIG_DATA_PORT && port <= CONFIG_DATA_PORT + 3) {
        const a = this.#cf8;
        if ((a & CF8_ENABLE) === 0) return;
        this.configWrite(
          (a >>> 16) & 0xff,
          (a >>> 11) & 0x1f,
          (a >>> 8) & 7,
          (a & 0xfc) | (port & 3),
          size,
          value,
        );
        return;
      }
    }
    const w = this.#findIo(port);
    if (w === null) {
      this.#unclaimed("I/O write", port, size);
      return;
    }
    w.fn.barWrite(w.bar, port - w.base, size, value);
  }

  #inEcam(address: number): boolean {
    const ecam = this.ecamBase;
    return ecam !== null && address >= ecam && address < ecam + ECAM_SIZE;
  }

  #findMem(address: number): Window | null {
    const last = this.#lastMem;
    if (last !== null && address >= last.base && address < last.end) return last;
    const w = find(this.#mem, address);
    if (w !== null) this.#lastMem = w;
    return w;
  }

  #findIo(port: number): Window | null {
    const last = this.#lastIo;
    if (last !== null && port >= last.base && port < last.end) return last;
    const w = find(this.#io, port);
    if (w !== null) this.#lastIo = w;
    return w;
  }

  /** Rebuilds the sorted window lists from every decoding BAR (cold path). */
  #rebuild(): void {
    const mem: Window[] = [];
    const io: Window[] = [];
    for (const fn of this.#slots) {
      if (fn === undefined) continue;
      for (const bar of fn.bars) {
        if (!bar.decoding) continue;
        const w = { base: bar.address, end: bar.address + bar.size, fn, bar: bar.index };
        (bar.kind === "io" ? io : mem).push(w);
      }
    }
    this.#mem = disjoint(mem);
    this.#io = disjoint(io);
    this.#lastMem = null;
    this.#lastIo = null;
  }

  #updateMultiFunction(device: number): void {
    const fn0 = this.#slots[device * 8];
    if (fn0 === undefined) return;
    let count = 0;
    for (let f = 0; f < 8; f++) if (this.#slots[device * 8 + f] !== undefined) count++;
    const at = PciConfigOffset.HEADER_TYPE;
    const header = fn0.config.get8(at);
    fn0.config.define8(at, count > 1 ? header | 0x80 : header & 0x7f);
  }

  #invalid(message: string): void {
    this.diagnostics.record("invalidConfigAccess", message);
  }

  #unclaimed(what: string, address: number, size: number): void {
    this.diagnostics.record(
      "unclaimedAccess",
      `${what} of ${size} bytes at ${hex(address)}: no BAR decodes it`,
    );
  }
}

function isEcamOffset(offset: number): boolean {
  return Number.isInteger(offset) && offset >= 0 && offset < ECAM_SIZE;
}

/** Sorts windows by base; a window overlapping an earlier one is shadowed (dropped). */
function disjoint(windows: Window[]): Window[] {
  windows.sort((a, b) => a.base - b.base);
  const out: Window[] = [];
  for (const w of windows) {
    if (out.length === 0 || w.base >= out[out.length - 1].end) out.push(w);
  }
  return out;
}

function find(windows: Window[], address: number): Window | null {
  let lo = 0;
  let hi = windows.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const w = windows[mid];
    if (address < w.base) hi = mid - 1;
    else if (address < w.end) return w;
    else lo = mid + 1; // also taken by NaN, so NaN finds nothing
  }
  return null;
}

/**
 * Firmware-like BAR assignment for tests and examples: enumerates the bus
 * through config reads (vendor ID, header type), sizes every BAR with the
 * all-ones protocol, places memory BARs from `memWindowBase` and I/O BARs
 * from `ioBase` (largest first, each naturally aligned), writes the addresses,
 * and enables MEM and/or IO decoding in each function's command register (not
 * Bus Master: drivers set that). Uses only config accesses, like a BIOS.
 *
 * @returns the placements, in device, function and BAR order
 * @throws {RangeError} when a base is not a non-negative integer, a 32-bit BAR
 *   would end above 4 GiB, or an I/O BAR above port 0xFFFF
 */
export function assignBars(
  bus: PciHostBridge,
  memWindowBase: number,
  ioBase: number,
): PciBarAssignment[] {
  for (const [name, v] of [["memory window base", memWindowBase], ["I/O base", ioBase]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(`Cannot assign BARs: ${name} ${v} is not a non-negative integer`);
    }
  }
  const b = bus.busNumber;
  const read = (d: number, f: number, reg: number, size = 4): number =>
    bus.configRead(b, d, f, reg, size);
  const write = (d: number, f: number, reg: number, value: number, size = 4): void =>
    bus.configWrite(b, d, f, reg, size, value);

  interface Request {
    device: number;
    function: number;
    bar: number;
    kind: PciBarKind;
    size: number;
  }
  const requests: Request[] = [];
  const functions: [number, number][] = [];
  for (let d = 0; d < 32; d++) {
    if (read(d, 0, PciConfigOffset.VENDOR_ID, 2) === 0xffff) continue;
    const multi = (read(d, 0, PciConfigOffset.HEADER_TYPE, 1) & 0x80) !== 0;
    for (let f = 0; f < (multi ? 8 : 1); f++) {
      if (read(d, f, PciConfigOffset.VENDOR_ID, 2) === 0xffff) continue;
      functions.push([d, f]);
      const command = read(d, f, PciConfigOffset.COMMAND, 2);
      write(d, f, PciConfigOffset.COMMAND, command & ~(PciCommand.IO | PciCommand.MEMORY), 2);
      for (let i = 0; i < 6; i++) {
        const reg = PciConfigOffset.BAR_0 + 4 * i;
        const saved = read(d, f, reg);
        write(d, f, reg, 0xffff_ffff);
        const probe = read(d, f, reg);
        write(d, f, reg, saved);
        if (probe === 0) continue;
        if ((probe & 1) !== 0) {
          const size = ((~(probe & 0xffff_fffc) >>> 0) & 0xffff) + 1;
          requests.push({ device: d, function: f, bar: i, kind: "io", size });
          continue;
        }
        if ((probe & 0x6) === 0x4 && i < 5) {
          const savedHigh = read(d, f, reg + 4);
          write(d, f, reg + 4, 0xffff_ffff);
          const high = read(d, f, reg + 4);
          write(d, f, reg + 4, savedHigh);
          const size = (~high >>> 0) * TWO_32 + (~(probe & 0xffff_fff0) >>> 0) + 1;
          requests.push({ device: d, function: f, bar: i, kind: "mem64", size });
          i++;
        } else {
          const size = (~(probe & 0xffff_fff0) >>> 0) + 1;
          requests.push({ device: d, function: f, bar: i, kind: "mem32", size });
        }
      }
    }
  }

  const placed: PciBarAssignment[] = [];
  let mem = memWindowBase;
  let io = ioBase;
  for (const r of [...requests].sort((x, y) => y.size - x.size)) {
    const what = `Cannot assign BAR ${r.bar} of ${b}:${r.device}.${r.function}`;
    let address: number;
    if (r.kind === "io") {
      address = Math.ceil(io / r.size) * r.size;
      io = address + r.size;
      if (io > 0x1_0000) throw new RangeError(`${what}: ports end above 0xffff`);
    } else {
      address = Math.ceil(mem / r.size) * r.size;
      mem = address + r.size;
      if (r.kind === "mem32" && mem >= TWO_32) {
        throw new RangeError(`${what}: a 32-bit BAR must end below 4 GiB`);
      }
    }
    const reg = PciConfigOffset.BAR_0 + 4 * r.bar;
    write(r.device, r.function, reg, address % TWO_32);
    if (r.kind === "mem64") write(r.device, r.function, reg + 4, Math.floor(address / TWO_32));
    placed.push({ ...r, address });
  }

  for (const [d, f] of functions) {
    const kinds = requests.filter((r) => r.device === d && r.function === f).map((r) => r.kind);
    let enable = 0;
    if (kinds.includes("io")) enable |= PciCommand.IO;
    if (kinds.some((k) => k !== "io")) enable |= PciCommand.MEMORY;
    write(d, f, PciConfigOffset.COMMAND, read(d, f, PciConfigOffset.COMMAND, 2) | enable, 2);
  }
  return placed.sort((x, y) => x.device - y.device || x.function - y.function || x.bar - y.bar);
}
