import { hex } from "../guest_fault.ts";
import {
  barOptionsProblem,
  BarState,
  type PciBar,
  type PciBarOptions,
  type PciRegionHandler,
} from "./bar.ts";
import { type PciConfigHook, PciConfigSpace } from "./config_space.ts";
import { PciDiagnostics } from "./diagnostics.ts";
import { MSIX_ENTRY_SIZE, MsixCapability, type MsixOptions, msixPbaSize } from "./msix.ts";
import {
  PCI_COMMAND_WRITABLE_BITS,
  PCI_STATUS_ERROR_BITS,
  PciCommand,
  PciConfigOffset,
  PciStatus,
} from "./registers.ts";

/** The identity and layout of a PCI function. */
export interface PciFunctionOptions {
  /** Vendor ID (16 bits). */
  vendorId: number;
  /** Device ID (16 bits). */
  deviceId: number;
  /** Revision ID (8 bits); 0 by default. */
  revisionId?: number;
  /** Class code (24 bits: base class << 16 | subclass << 8 | prog-if); 0 by default. */
  classCode?: number;
  /** Subsystem vendor ID (16 bits); 0 by default. */
  subsystemVendorId?: number;
  /** Subsystem ID (16 bits); 0 by default. */
  subsystemId?: number;
  /** Interrupt pin: 0 = none, 1..4 = INTA#..INTD#; 1 by default. */
  interruptPin?: number;
  /** Config space size: 256 (conventional PCI, default) or 4096 (PCI Express). */
  configSize?: number;
  /** A name for diagnostics and error messages; `"vvvv:dddd"` by default. */
  name?: string;
}

/**
 * What the embedder (an emulator's PCI bus, or {@linkcode PciHostBridge})
 * gives a function: where its interrupts go and who hears about BAR moves.
 * Every method is optional.
 */
export interface PciFunctionHost {
  /**
   * An MSI/MSI-X message: the function writes the 32-bit `data` at guest
   * physical `address` (for x86, 0xFEExxxxx reaches a local APIC). Only sent
   * while bus mastering is enabled.
   */
  msi?(source: PciFunction, address: number, data: number): void;
  /**
   * The level of the function's INTx pin ({@linkcode PciFunction.interruptPin})
   * changed. Several functions may share a line: the platform ORs their levels.
   */
  intx?(source: PciFunction, asserted: boolean): void;
  /**
   * The window BAR `bar.index` decodes changed: it was decoding at `previous`
   * (or nothing, when null) and now decodes at `bar.address` when
   * `bar.decoding`, else nothing. Remap MMIO or port handlers here.
   */
  barChanged?(source: PciFunction, bar: PciBar, previous: number | null): void;
}

/** Called after the guest changed the command register. */
export type PciCommandListener = (command: number, previous: number) => void;

/** A function's state as plain data ({@linkcode PciFunction.saveState}). */
export interface PciFunctionState {
  /** Every config-space byte. */
  config: number[];
  /** Whether the device holds INTx asserted (Status bit 3). */
  intx: boolean;
  /** MSI-X table and PBA bytes, when the function has MSI-X. */
  msix?: { table: number[]; pba: number[] };
}

const TWO_32 = 0x1_0000_0000;
const TWO_53 = 2 ** 53;
const MASK32 = 0xffff_ffffn;

/**
 * A PCI function: type-0 config space, up to six BARs with per-region
 * handlers, an optional MSI-X capability, and INTx.
 *
 * Guest-facing methods ({@linkcode PciFunction.configRead},
 * {@linkcode PciFunction.configWrite}, {@linkcode PciFunction.barRead},
 * {@linkcode PciFunction.barWrite} and the 64-bit variants) never throw: a bad
 * access reads all-ones (or 0 inside a BAR hole), writes nothing and is counted
 * in {@linkcode PciFunction.diagnostics}. Host-facing setup methods throw
 * `TypeError`/`RangeError` on misuse.
 *
 * Embedding: an emulator with its own PCI bus forwards config accesses of its
 * slot to `configRead`/`configWrite`, and accesses inside a decoding BAR to
 * `barRead`/`barWrite` (offset within the BAR); it {@linkcode PciFunction.bind}s
 * a {@linkcode PciFunctionHost} to receive MSI messages, INTx levels and BAR
 * moves.
 *
 * @example
 * ```ts
 * import { PciCommand, PciFunction } from "@vireo/vireo";
 * const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041, classCode: 0x020000 });
 * fn.defineBar(0, { kind: "mem32", size: 0x1000 });
 * const regs = new Uint32Array(1024);
 * fn.mapRegion(0, 0, 0x1000, {
 *   read: (offset) => regs[offset >> 2],
 *   write: (offset, _size, value) => { regs[offset >> 2] = value; },
 * });
 * fn.bind({ barChanged: (_fn, bar) => console.log(bar.index, bar.decoding, bar.address.toString(16)) });
 * fn.configWrite(0x10, 4, 0xffffffff);
 * console.log(fn.configRead(0x10, 4).toString(16)); // "fffff000": 4 KiB
 * fn.configWrite(0x10, 4, 0xfebf0000);
 * fn.configWrite(0x04, 2, PciCommand.MEMORY); // logs 0 true "febf0000"
 * fn.barWrite(0, 8, 4, 7);
 * console.log(regs[2]); // 7
 * ```
 */
export class PciFunction {
  /** Name used in diagnostics and errors. */
  readonly name: string;
  /** The config space; hosts may define more registers and capabilities in it. */
  readonly config: PciConfigSpace;
  /** Counters of ignored guest accesses and dropped interrupts. */
  readonly diagnostics: PciDiagnostics = new PciDiagnostics();
  /** Interrupt pin: 0 = none, 1..4 = INTA#..INTD#. */
  readonly interruptPin: number;
  readonly #bars: (BarState | undefined)[] = [
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
  ];
  /** For each BAR slot, the BAR that owns it (a 64-bit BAR owns two slots). */
  readonly #slotOwner: (BarState | undefined)[] = [
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
    undefined,
  ];
  #host: PciFunctionHost | null = null;
  #msix: MsixCapability | null = null;
  #command = 0;
  #intxLevel = false;
  #intxOut = false;
  #listeners: PciCommandListener[] = [];

  /**
   * Creates a function with a type-0 header and no BARs or capabilities.
   *
   * @throws {TypeError} when `options` is not an object
   * @throws {RangeError} when an ID does not fit its field, the pin is not 0..4,
   *   or the config size is not 256 or 4096
   */
  constructor(options: PciFunctionOptions) {
    if (options === null || typeof options !== "object") {
      throw new TypeError("Cannot create a PCI function: options must be an object");
    }
    const field = (name: keyof PciFunctionOptions, bits: number, fallback: number): number => {
      const value = options[name] ?? fallback;
      if (
        typeof value !== "number" || !Number.isInteger(value) || value < 0 || value >= 2 ** bits
      ) {
        throw new RangeError(
          `Cannot create a PCI function: ${name} ${value} does not fit in ${bits} bits`,
        );
      }
      return value;
    };
    const vendorId = field("vendorId", 16, -1);
    const deviceId = field("deviceId", 16, -1);
    const pin = field("interruptPin", 8, 1);
    if (pin > 4) {
      throw new RangeError(`Cannot create a PCI function: interruptPin ${pin} is outside 0..4`);
    }
    this.name = options.name ??
      `${vendorId.toString(16).padStart(4, "0")}:${deviceId.toString(16).padStart(4, "0")}`;
    this.interruptPin = pin;
    const config = new PciConfigSpace(options.configSize ?? 256);
    this.config = config;
    const O = PciConfigOffset;
    config.define16(O.VENDOR_ID, vendorId);
    config.define16(O.DEVICE_ID, deviceId);
    config.define16(O.COMMAND, 0, PCI_COMMAND_WRITABLE_BITS);
    config.define16(O.STATUS, 0, 0, PCI_STATUS_ERROR_BITS);
    config.define8(O.REVISION_ID, field("revisionId", 8, 0));
    const classCode = field("classCode", 24, 0);
    config.define16(O.CLASS_CODE, classCode & 0xffff);
    config.define8(O.CLASS_CODE + 2, classCode >>> 16);
    config.define8(O.CACHE_LINE_SIZE, 0, 0xff);
    config.define16(O.SUBSYSTEM_VENDOR_ID, field("subsystemVendorId", 16, 0));
    config.define16(O.SUBSYSTEM_ID, field("subsystemId", 16, 0));
    config.define8(O.INTERRUPT_LINE, 0, 0xff);
    config.define8(O.INTERRUPT_PIN, pin);
    config.hook(O.COMMAND, 2, { afterWrite: () => this.#commandWritten() });
    config.hook(O.BAR_0, 24, {
      afterWrite: (offset, length) => {
        const first = offset >>> 2;
        const last = (offset + length - 1) >>> 2;
        for (let slot = first; slot <= last; slot++) {
          const bar = this.#slotOwner[slot];
          if (bar !== undefined) this.#refreshBar(bar);
        }
      },
    });
  }

  // ---- identity and state -------------------------------------------------

  /** Vendor ID. */
  get vendorId(): number {
    return this.config.get16(PciConfigOffset.VENDOR_ID);
  }

  /** Device ID. */
  get deviceId(): number {
    return this.config.get16(PciConfigOffset.DEVICE_ID);
  }

  /** The command register ({@linkcode PciCommand} bits). */
  get command(): number {
    return this.#command;
  }

  /** Command bit 0: I/O BARs decode. */
  get ioEnabled(): boolean {
    return (this.#command & PciCommand.IO) !== 0;
  }

  /** Command bit 1: memory BARs decode. */
  get memoryEnabled(): boolean {
    return (this.#command & PciCommand.MEMORY) !== 0;
  }

  /**
   * Command bit 2: the function may master the bus. A device must not DMA
   * while it is clear; MSI messages are dropped while it is clear.
   */
  get busMaster(): boolean {
    return (this.#command & PciCommand.MASTER) !== 0;
  }

  /** Command bit 10: INTx emulation disabled. */
  get intxDisabled(): boolean {
    return (this.#command & PciCommand.INTX_DISABLE) !== 0;
  }

  /** The device's INTx request (Status bit 3), whether or not the pin is driven. */
  get intxLevel(): boolean {
    return this.#intxLevel;
  }

  /**
   * Whether the INTx pin is asserted now: the device requests it, the function
   * has a pin, INTx Disable is clear and MSI-X is not enabled.
   */
  get intxAsserted(): boolean {
    return this.#intxOut;
  }

  /** The MSI-X capability, or null. */
  get msix(): MsixCapability | null {
    return this.#msix;
  }

  /** The bound host, or null. */
  get host(): PciFunctionHost | null {
    return this.#host;
  }

  /** BAR `index` (0..5), or undefined when it is not implemented (or is a 64-bit BAR's high half). */
  bar(index: number): PciBar | undefined {
    return this.#bars[index];
  }

  /** The implemented BARs, in index order. */
  get bars(): PciBar[] {
    return this.#bars.filter((b): b is BarState => b !== undefined);
  }

  // ---- host setup ----------------------------------------------------------

  /**
   * Connects the function to its embedder (replacing any previous host), or
   * disconnects it with null. The host learns the current BAR state from
   * {@linkcode PciFunction.bars}; later changes arrive through it.
   */
  bind(host: PciFunctionHost | null): void {
    if (host !== null && typeof host !== "object") {
      throw new TypeError(`Cannot bind PCI function ${this.name}: the host must be an object`);
    }
    this.#host = host;
  }

  /**
   * Implements BAR `index`: its register gets the type bits and reads back
   * `~(size - 1)` after the guest writes all-ones. A 64-bit BAR also takes
   * slot `index + 1`.
   *
   * @returns the BAR's live state
   * @throws {RangeError} when the index is not 0..5, the slot is taken, or the size is wrong
   * @throws {TypeError} when `options` is malformed
   */
  defineBar(index: number, options: PciBarOptions): PciBar {
    const what = `Cannot define BAR ${index}`;
    if (!Number.isInteger(index) || index < 0 || index > 5) {
      throw new RangeError(`${what}: the index is outside 0..5`);
    }
    if (options === null || typeof options !== "object") {
      throw new TypeError(`${what}: options must be an object`);
    }
    if (options.kind !== "mem32" && options.kind !== "mem64" && options.kind !== "io") {
      throw new TypeError(`${what}: kind ${String(options.kind)} is not "mem32", "mem64" or "io"`);
    }
    const problem = barOptionsProblem(index, options);
    if (problem !== null) throw new RangeError(`${what}: ${problem}`);
    const slots = options.kind === "mem64" ? [index, index + 1] : [index];
    for (const slot of slots) {
      const owner = this.#slotOwner[slot];
      if (owner !== undefined) {
        throw new RangeError(`${what}: slot ${slot} is taken by BAR ${owner.index}`);
      }
    }
    const bar = new BarState(index, options);
    const reg = PciConfigOffset.BAR_0 + 4 * index;
    this.config.define32(reg, bar.typeBits, bar.lowMask);
    if (bar.kind === "mem64") this.config.define32(reg + 4, 0, bar.highMask);
    this.#bars[index] = bar;
    for (const slot of slots) this.#slotOwner[slot] = bar;
    this.#refreshBar(bar);
    return bar;
  }

  /**
   * Routes accesses to `[offset, offset + length)` of BAR `index` to
   * `handler`, which sees offsets relative to `offset`. Accesses inside the
   * BAR that no region claims read 0 and are counted.
   *
   * @throws {RangeError} when the BAR is not implemented or the region leaves it or overlaps another
   * @throws {TypeError} when `handler` lacks `read` or `write`
   */
  mapRegion(index: number, offset: number, length: number, handler: PciRegionHandler): void {
    const problem = this.#regionProblem(index, offset, length);
    if (problem !== null) throw new RangeError(problem);
    if (
      handler === null || typeof handler !== "object" || typeof handler.read !== "function" ||
      typeof handler.write !== "function"
    ) {
      throw new TypeError(
        `Cannot map region ${hex(offset)}+${
          hex(length)
        } in BAR ${index}: the handler needs read and write methods`,
      );
    }
    const bar = this.#bars[index] as BarState;
    const regions = [...bar.regions, { start: offset, end: offset + length, handler }];
    regions.sort((a, b) => a.start - b.start);
    bar.regions = regions;
    bar.last = null;
  }

  /**
   * Adds a capability to config space (see {@linkcode PciConfigSpace.addCapability})
   * and, when given, hooks its bytes.
   *
   * @returns the capability's offset
   * @throws {RangeError} when it does not fit
   */
  addCapability(id: number, length: number, hook?: PciConfigHook): number {
    const offset = this.config.addCapability(id, length);
    if (hook !== undefined) this.config.hook(offset, length, hook);
    return offset;
  }

  /**
   * Adds the MSI-X capability and maps its table and PBA into memory BARs
   * (which must be defined first). While MSI-X is enabled the INTx pin stays
   * deasserted.
   *
   * @throws {TypeError} when the function already has MSI-X
   * @throws {RangeError} when a BAR is missing or is not a memory BAR, the table or PBA
   *   does not fit in its BAR or overlaps a region, or the vector count is not 1..2048
   */
  addMsix(options: MsixOptions): MsixCapability {
    if (this.#msix !== null) {
      throw new TypeError(`Cannot add MSI-X to ${this.name}: it already has an MSI-X capability`);
    }
    if (options === null || typeof options !== "object") {
      throw new TypeError("Cannot add MSI-X: options must be an object");
    }
    const vectors = options.vectors;
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > 2048) {
      throw new RangeError(`Cannot add MSI-X: ${vectors} vectors is outside 1..2048`);
    }
    const tableBar = options.tableBar;
    const tableOffset = options.tableOffset ?? 0;
    const tableLength = vectors * MSIX_ENTRY_SIZE;
    const pbaBar = options.pbaBar ?? tableBar;
    const pbaOffset = options.pbaOffset ?? (pbaBar === tableBar ? tableOffset + tableLength : 0);
    const pbaLength = msixPbaSize(vectors);
    for (const [name, index] of [["table", tableBar], ["PBA", pbaBar]] as const) {
      const bar = this.#bars[index];
      if (bar === undefined || bar.kind === "io") {
        throw new RangeError(`Cannot add MSI-X: ${name} BAR ${index} is not a memory BAR`);
      }
    }
    const problem = this.#regionProblem(tableBar, tableOffset, tableLength) ??
      this.#regionProblem(pbaBar, pbaOffset, pbaLength);
    if (problem !== null) throw new RangeError(`Cannot add MSI-X: ${problem}`);
    if (
      tableBar === pbaBar && tableOffset < pbaOffset + pbaLength &&
      pbaOffset < tableOffset + tableLength
    ) {
      throw new RangeError(
        `Cannot add MSI-X: the PBA at ${hex(pbaOffset)} overlaps the table at ${hex(tableOffset)}`,
      );
    }
    const msix = new MsixCapability(
      this.config,
      { vectors, tableBar, tableOffset, pbaBar, pbaOffset },
      {
        deliver: (address, data) => this.#sendMsi(address, data),
        controlChanged: () => this.#updateIntx(),
        invalid: (message) => this.diagnostics.record("invalidBarAccess", message),
      },
    );
    this.mapRegion(tableBar, tableOffset, tableLength, msix.tableHandler);
    this.mapRegion(pbaBar, pbaOffset, pbaLength, msix.pbaHandler);
    this.#msix = msix;
    return msix;
  }

  /**
   * Calls `listener` after every guest write that changes the command register
   * (e.g. a device stops DMA when Bus Master is cleared).
   *
   * @returns a function that removes the listener
   */
  addCommandListener(listener: PciCommandListener): () => void {
    this.#listeners.push(listener);
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== listener);
    };
  }

  // ---- device side -----------------------------------------------------------

  /**
   * Sets the device's INTx request. Status bit 3 follows it; the pin is
   * driven only while INTx Disable is clear and MSI-X is off, and the host
   * hears of every change of the pin.
   */
  setIntx(level: boolean): void {
    level = level === true;
    if (level === this.#intxLevel) return;
    this.#intxLevel = level;
    const status = this.config.get16(PciConfigOffset.STATUS);
    this.config.set16(
      PciConfigOffset.STATUS,
      level ? status | PciStatus.INTERRUPT : status & ~PciStatus.INTERRUPT,
    );
    this.#updateIntx();
  }

  /**
   * Sets write-1-to-clear error bits of the status register (e.g.
   * `PciStatus.REC_MASTER_ABORT` after a failed DMA); other bits are ignored.
   */
  setStatusBits(bits: number): void {
    const status = this.config.get16(PciConfigOffset.STATUS);
    this.config.set16(PciConfigOffset.STATUS, status | (bits & PCI_STATUS_ERROR_BITS));
  }

  /**
   * Function reset (RST# or FLR): config space back to its defined values
   * (command 0, BARs 0, MSI-X disabled with every entry masked), INTx
   * deasserted. The host hears of the BARs that stop decoding and of the pin.
   */
  reset(): void {
    const previous = this.#command;
    this.config.reset();
    this.#command = this.config.get16(PciConfigOffset.COMMAND);
    this.#intxLevel = false;
    for (const bar of this.#bars) if (bar !== undefined) this.#refreshBar(bar);
    this.#updateIntx();
    if (previous !== this.#command) this.#notifyCommand(previous);
  }

  /** The function's state as plain data. */
  saveState(): PciFunctionState {
    const state: PciFunctionState = {
      config: Array.from(this.config.snapshot()),
      intx: this.#intxLevel,
    };
    if (this.#msix !== null) state.msix = this.#msix.saveState();
    return state;
  }

  /**
   * Restores what {@linkcode PciFunction.saveState} produced (from a function
   * built the same way). The host hears of BAR and INTx changes.
   *
   * @throws {TypeError} on a malformed state
   */
  restoreState(state: PciFunctionState): void {
    const bad = (why: string): TypeError =>
      new TypeError(`Cannot restore PCI function ${this.name}: ${why}`);
    if (state === null || typeof state !== "object") throw bad("the state must be an object");
    const config = state.config;
    if (
      !Array.isArray(config) || config.length !== this.config.size ||
      !config.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)
    ) {
      throw bad(`config must be ${this.config.size} bytes`);
    }
    if (typeof state.intx !== "boolean") throw bad("intx must be a boolean");
    if ((this.#msix !== null) !== (state.msix !== undefined)) {
      throw bad(this.#msix !== null ? "the MSI-X state is missing" : "the function has no MSI-X");
    }
    this.config.restore(config);
    if (this.#msix !== null) this.#msix.restoreState(state.msix!);
    const previous = this.#command;
    this.#command = this.config.get16(PciConfigOffset.COMMAND);
    this.#intxLevel = state.intx;
    for (const bar of this.#bars) if (bar !== undefined) this.#refreshBar(bar);
    this.#updateIntx();
    if (previous !== this.#command) this.#notifyCommand(previous);
  }

  // ---- guest side (the embedding API) ---------------------------------------

  /**
   * A config read of `size` (1, 2 or 4) bytes at `offset`, as the bus
   * delivers it. Never throws: a bad access (other size, crossing a dword,
   * outside config space) returns all-ones and is counted.
   */
  configRead(offset: number, size: number): number {
    if (!this.config.isValidAccess(offset, size)) {
      this.diagnostics.record(
        "invalidConfigAccess",
        `${this.name}: config read of ${size} bytes at ${hex(offset)} ignored`,
      );
      return allOnes(size);
    }
    return this.config.read(offset, size);
  }

  /**
   * A config write of the low `size` (1, 2 or 4) bytes of `value` at
   * `offset`. Read-only bits are kept, write-1-to-clear bits clear. Never
   * throws: a bad access is ignored and counted.
   */
  configWrite(offset: number, size: number, value: number): void {
    if (!this.config.isValidAccess(offset, size)) {
      this.diagnostics.record(
        "invalidConfigAccess",
        `${this.name}: config write of ${size} bytes at ${hex(offset)} ignored`,
      );
      return;
    }
    this.config.write(offset, size, value);
  }

  /**
   * A read of `size` (1, 2 or 4) bytes at `offset` inside BAR `index`. The
   * caller decides that the BAR decodes the address (see
   * {@linkcode PciBar.decoding}); this only dispatches to the region handler.
   * Never throws: a bad access reads all-ones, a hole between regions reads 0,
   * and both are counted.
   */
  barRead(index: number, offset: number, size: number): number {
    const bar = this.#bars[index];
    if (
      bar === undefined || (size !== 1 && size !== 2 && size !== 4) || !(offset >= 0) ||
      offset + size > bar.size || !Number.isInteger(offset)
    ) {
      this.#badBar("read", index, offset, size);
      return allOnes(size);
    }
    const r = bar.find(offset, size);
    if (r === null) {
      this.#unclaimed("read", index, offset, size);
      return 0;
    }
    const v = r.handler.read(offset - r.start, size);
    return size === 4 ? v >>> 0 : v & (size === 1 ? 0xff : 0xffff);
  }

  /**
   * A write of the low `size` (1, 2 or 4) bytes of `value` at `offset` inside
   * BAR `index`; see {@linkcode PciFunction.barRead}. Never throws.
   */
  barWrite(index: number, offset: number, size: number, value: number): void {
    const bar = this.#bars[index];
    if (
      bar === undefined || (size !== 1 && size !== 2 && size !== 4) || !(offset >= 0) ||
      offset + size > bar.size || !Number.isInteger(offset)
    ) {
      this.#badBar("write", index, offset, size);
      return;
    }
    const r = bar.find(offset, size);
    if (r === null) {
      this.#unclaimed("write", index, offset, size);
      return;
    }
    r.handler.write(
      offset - r.start,
      size,
      size === 4 ? value >>> 0 : value & (size === 1 ? 0xff : 0xffff),
    );
  }

  /**
   * An 8-byte read at `offset` inside BAR `index`: the region's `read64` when
   * it has one, else two 4-byte reads (low dword first). Never throws.
   */
  barRead64(index: number, offset: number): bigint {
    const bar = this.#bars[index];
    if (bar === undefined || !(offset >= 0) || offset + 8 > bar.size || !Number.isInteger(offset)) {
      this.#badBar("read", index, offset, 8);
      return 0xffff_ffff_ffff_ffffn;
    }
    const r = bar.find(offset, 8);
    if (r !== null && r.handler.read64 !== undefined) {
      return BigInt.asUintN(64, r.handler.read64(offset - r.start));
    }
    const low = this.barRead(index, offset, 4);
    const high = this.barRead(index, offset + 4, 4);
    return (BigInt(high) << 32n) | BigInt(low);
  }

  /**
   * An 8-byte write at `offset` inside BAR `index`: the region's `write64`
   * when it has one, else two 4-byte writes (low dword first). Never throws.
   */
  barWrite64(index: number, offset: number, value: bigint): void {
    const bar = this.#bars[index];
    if (
      bar === undefined || !(offset >= 0) || offset + 8 > bar.size || !Number.isInteger(offset) ||
      typeof value !== "bigint"
    ) {
      this.#badBar("write", index, offset, 8);
      return;
    }
    const v = BigInt.asUintN(64, value);
    const r = bar.find(offset, 8);
    if (r !== null && r.handler.write64 !== undefined) {
      r.handler.write64(offset - r.start, v);
      return;
    }
    this.barWrite(index, offset, 4, Number(v & MASK32));
    this.barWrite(index, offset + 4, 4, Number(v >> 32n));
  }

  // ---- internals -------------------------------------------------------------

  #regionProblem(index: number, offset: number, length: number): string | null {
    const what = `Cannot map region ${hex(offset)}+${hex(length)} in BAR ${index}`;
    const bar = this.#bars[index];
    if (!Number.isInteger(index) || bar === undefined) return `${what}: the BAR is not defined`;
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 1) {
      return `${what}: offset and length must be integers, length at least 1`;
    }
    if (offset + length > bar.size) {
      return `${what}: it ends beyond the BAR's ${hex(bar.size)} bytes`;
    }
    for (const r of bar.regions) {
      if (offset < r.end && r.start < offset + length) {
        return `${what}: it overlaps the region at ${hex(r.start)}`;
      }
    }
    return null;
  }

  #commandWritten(): void {
    const command = this.config.get16(PciConfigOffset.COMMAND);
    const previous = this.#command;
    if (command === previous) return;
    this.#command = command;
    if (((command ^ previous) & (PciCommand.IO | PciCommand.MEMORY)) !== 0) {
      for (const bar of this.#bars) if (bar !== undefined) this.#refreshBar(bar);
    }
    if (((command ^ previous) & PciCommand.INTX_DISABLE) !== 0) this.#updateIntx();
    this.#notifyCommand(previous);
  }

  #notifyCommand(previous: number): void {
    for (const listener of this.#listeners) listener(this.#command, previous);
  }

  /** Re-reads a BAR's registers and the command register; tells the host when the window changed. */
  #refreshBar(bar: BarState): void {
    const reg = PciConfigOffset.BAR_0 + 4 * bar.index;
    const config = this.config;
    let address = (config.get32(reg) & (bar.kind === "io" ? ~0x3 : ~0xf)) >>> 0;
    if (bar.kind === "mem64") address += config.get32(reg + 4) * TWO_32;
    const enabled = (this.#command & (bar.kind === "io" ? PciCommand.IO : PciCommand.MEMORY)) !== 0;
    const decoding = enabled && address !== 0 && address + bar.size <= bar.limit;
    const wasDecoding = bar.decoding;
    const previous = bar.address;
    bar.address = address;
    bar.decoding = decoding;
    if (decoding !== wasDecoding || (decoding && address !== previous)) {
      this.#host?.barChanged?.(this, bar, wasDecoding ? previous : null);
    }
  }

  #updateIntx(): void {
    const out = this.#intxLevel && this.interruptPin !== 0 &&
      (this.#command & PciCommand.INTX_DISABLE) === 0 &&
      !(this.#msix !== null && this.#msix.enabled);
    if (out === this.#intxOut) return;
    this.#intxOut = out;
    this.#host?.intx?.(this, out);
  }

  #sendMsi(address: number, data: number): void {
    let why: string | null = null;
    if ((this.#command & PciCommand.MASTER) === 0) why = "bus mastering is disabled";
    else if (address >= TWO_53) why = "the address is at or above 2^53";
    else if (this.#host === null || this.#host.msi === undefined) why = "no host receives MSIs";
    if (why !== null) {
      this.diagnostics.record(
        "droppedInterrupt",
        `${this.name}: MSI message ${hex(data)} to ${hex(address)} dropped: ${why}`,
      );
      return;
    }
    this.#host!.msi!(this, address, data);
  }

  #badBar(what: string, index: number, offset: number, size: number): void {
    const bar = this.#bars[index];
    this.diagnostics.record(
      "invalidBarAccess",
      `${this.name}: BAR ${index} ${what} of ${size} bytes at ${hex(offset)} ignored: ${
        bar === undefined ? "the BAR is not implemented" : `the BAR has ${hex(bar.size)} bytes`
      }`,
    );
  }

  #unclaimed(what: string, index: number, offset: number, size: number): void {
    this.diagnostics.record(
      "unclaimedAccess",
      `${this.name}: BAR ${index} ${what} of ${size} bytes at ${hex(offset)} hits no region`,
    );
  }
}

/** All-ones for an access of `size` bytes (what a master abort reads). */
export function allOnes(size: number): number {
  return size === 1 ? 0xff : size === 2 ? 0xffff : 0xffff_ffff;
}
