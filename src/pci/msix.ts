import type { PciRegionHandler } from "./bar.ts";
import type { PciConfigSpace } from "./config_space.ts";
import { PciCapabilityId } from "./registers.ts";

/** Where a function's MSI-X table and PBA live ({@linkcode PciFunction.addMsix}). */
export interface MsixOptions {
  /** Number of table entries (vectors), 1..2048. */
  vectors: number;
  /** Index of the memory BAR holding the table. */
  tableBar: number;
  /** Offset of the table in its BAR, 8-byte aligned; 0 by default. */
  tableOffset?: number;
  /** Index of the memory BAR holding the PBA; `tableBar` by default. */
  pbaBar?: number;
  /**
   * Offset of the PBA in its BAR, 8-byte aligned. By default it follows the
   * table when both share a BAR, else 0.
   */
  pbaOffset?: number;
}

/** What an {@linkcode MsixCapability} needs from its function. */
export interface MsixSink {
  /** Performs the MSI-X message: a 32-bit write of `data` at `address` (inexact above 2^53). */
  deliver(address: number, data: number): void;
  /** MSI-X Enable or Function Mask changed (the function re-evaluates INTx). */
  controlChanged(): void;
  /** A guest access the capability ignored, for the function's diagnostics. */
  invalid(message: string): void;
}

/** Message Control bits (at +2 of the capability). */
export const MsixControl = {
  /** Table size minus one, read-only (bits 10:0). */
  TABLE_SIZE: 0x07ff,
  /** Function Mask: masks every vector (read-write). */
  MASKALL: 0x4000,
  /** MSI-X Enable (read-write). */
  ENABLE: 0x8000,
} as const;

/** Bytes per table entry: address low, address high, data, vector control. */
export const MSIX_ENTRY_SIZE = 16;
/** Length of the MSI-X capability in config space. */
export const MSIX_CAPABILITY_LENGTH = 12;

const TWO_32 = 0x1_0000_0000;

/** The PBA's size in bytes for `vectors` entries (64-bit words, one bit each). */
export function msixPbaSize(vectors: number): number {
  return Math.ceil(vectors / 64) * 8;
}

/**
 * An MSI-X capability with its table and pending-bit array (PBA).
 *
 * Created by {@linkcode PciFunction.addMsix}, which maps
 * {@linkcode MsixCapability.tableHandler} and
 * {@linkcode MsixCapability.pbaHandler} into the chosen BARs. A device signals
 * vector `v` with {@linkcode MsixCapability.notify}: when MSI-X is disabled it
 * returns false and the device falls back to INTx; when the function or the
 * entry is masked the vector's pending bit is set; otherwise the message
 * (address, data) is delivered. Clearing a mask (or setting Enable) delivers
 * the pending vectors it unmasks.
 *
 * @example
 * ```ts
 * import { PciCommand, PciFunction } from "@vireo/vireo";
 * const seen: string[] = [];
 * const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041 });
 * fn.defineBar(1, { kind: "mem32", size: 0x1000 });
 * const msix = fn.addMsix({ vectors: 2, tableBar: 1, pbaOffset: 0x800 });
 * fn.bind({ msi: (_fn, address, data) => seen.push(`${address.toString(16)}:${data}`) });
 * fn.configWrite(0x04, 2, PciCommand.MEMORY | PciCommand.MASTER);
 * fn.configWrite(msix.offset + 2, 2, 0x8000); // MSI-X Enable
 * fn.barWrite(1, 0x10, 4, 0xfee00000); // entry 1: address
 * fn.barWrite(1, 0x18, 4, 42); //          data
 * fn.barWrite(1, 0x1c, 4, 0); //           unmask
 * msix.notify(1);
 * console.log(seen); // ["fee00000:42"]
 * ```
 */
export class MsixCapability {
  /** Number of table entries. */
  readonly vectors: number;
  /** Offset of the capability in config space. */
  readonly offset: number;
  /** BAR holding the table. */
  readonly tableBar: number;
  /** Offset of the table in its BAR. */
  readonly tableOffset: number;
  /** BAR holding the PBA. */
  readonly pbaBar: number;
  /** Offset of the PBA in its BAR. */
  readonly pbaOffset: number;
  /** Serves the table (`vectors × 16` bytes); mapped by the function. */
  readonly tableHandler: PciRegionHandler;
  /** Serves the PBA (read-only); mapped by the function. */
  readonly pbaHandler: PciRegionHandler;
  readonly #config: PciConfigSpace;
  readonly #sink: MsixSink;
  readonly #table: Uint8Array;
  readonly #tableView: DataView;
  readonly #pba: Uint8Array;
  #enabled = false;
  #masked = false;

  /**
   * Adds the capability to `config` and builds an all-masked table. Use
   * {@linkcode PciFunction.addMsix} instead, which also maps the table and PBA.
   *
   * @throws {RangeError} when `vectors` or an offset is out of range or misaligned
   */
  constructor(config: PciConfigSpace, options: Required<MsixOptions>, sink: MsixSink) {
    const { vectors, tableBar, tableOffset, pbaBar, pbaOffset } = options;
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > 2048) {
      throw new RangeError(`Cannot add MSI-X: ${vectors} vectors is outside 1..2048`);
    }
    for (const [name, bar, off] of [["table", tableBar, tableOffset], ["PBA", pbaBar, pbaOffset]]) {
      if (!Number.isInteger(bar) || (bar as number) < 0 || (bar as number) > 5) {
        throw new RangeError(`Cannot add MSI-X: ${name} BAR ${bar} is outside 0..5`);
      }
      if (
        !Number.isInteger(off) || (off as number) < 0 || (off as number) % 8 !== 0 ||
        (off as number) >= TWO_32
      ) {
        throw new RangeError(
          `Cannot add MSI-X: ${name} offset ${off} is not an 8-byte aligned 32-bit offset`,
        );
      }
    }
    this.vectors = vectors;
    this.tableBar = tableBar;
    this.tableOffset = tableOffset;
    this.pbaBar = pbaBar;
    this.pbaOffset = pbaOffset;
    this.#config = config;
    this.#sink = sink;
    this.#table = new Uint8Array(vectors * MSIX_ENTRY_SIZE);
    this.#tableView = new DataView(this.#table.buffer);
    this.#pba = new Uint8Array(msixPbaSize(vectors));
    this.#resetTable();

    const cap = config.addCapability(PciCapabilityId.MSIX, MSIX_CAPABILITY_LENGTH);
    this.offset = cap;
    config.define16(cap + 2, vectors - 1, MsixControl.ENABLE | MsixControl.MASKALL);
    config.define32(cap + 4, (tableOffset | tableBar) >>> 0);
    config.define32(cap + 8, (pbaOffset | pbaBar) >>> 0);
    config.hook(cap + 2, 2, {
      afterWrite: () => this.#controlWritten(),
      reset: () => {
        this.#resetTable();
        this.#enabled = false;
        this.#masked = false;
      },
    });

    this.tableHandler = {
      read: (offset, size) => this.#readTable(offset, size),
      write: (offset, size, value) => this.#writeTable(offset, size, value),
    };
    this.pbaHandler = {
      read: (offset, size) => this.#readPba(offset, size),
      write: (offset, size) => {
        sink.invalid(`MSI-X PBA write of ${size} bytes at 0x${offset.toString(16)} ignored`);
      },
    };
  }

  /** MSI-X Enable (Message Control bit 15). */
  get enabled(): boolean {
    return this.#enabled;
  }

  /** Function Mask (Message Control bit 14). */
  get functionMasked(): boolean {
    return this.#masked;
  }

  /** The Mask bit of entry `vector`'s vector control. @throws {RangeError} for a bad vector */
  isMasked(vector: number): boolean {
    this.#checkVector(vector, "read");
    return (this.#table[vector * MSIX_ENTRY_SIZE + 12] & 1) !== 0;
  }

  /** Vector `vector`'s pending bit. @throws {RangeError} for a bad vector */
  isPending(vector: number): boolean {
    this.#checkVector(vector, "read");
    return (this.#pba[vector >>> 3] & (1 << (vector & 7))) !== 0;
  }

  /** Entry `vector`'s message address (inexact above 2^53). @throws {RangeError} */
  messageAddress(vector: number): number {
    this.#checkVector(vector, "read");
    const v = this.#tableView;
    const at = vector * MSIX_ENTRY_SIZE;
    return v.getUint32(at + 4, true) * TWO_32 + v.getUint32(at, true);
  }

  /** Entry `vector`'s message data. @throws {RangeError} */
  messageData(vector: number): number {
    this.#checkVector(vector, "read");
    return this.#tableView.getUint32(vector * MSIX_ENTRY_SIZE + 8, true);
  }

  /**
   * Signals vector `vector`.
   *
   * @returns false when MSI-X is disabled (the caller uses INTx instead);
   *   true when the message was delivered or left pending behind a mask
   * @throws {RangeError} when `vector` is not a table index (host misuse)
   */
  notify(vector: number): boolean {
    this.#checkVector(vector, "signal");
    if (!this.#enabled) return false;
    if (this.#masked || (this.#table[vector * MSIX_ENTRY_SIZE + 12] & 1) !== 0) {
      this.#pba[vector >>> 3] |= 1 << (vector & 7);
      return true;
    }
    this.#deliver(vector);
    return true;
  }

  /** The table and PBA as plain data (Message Control lives in config space). */
  saveState(): { table: number[]; pba: number[] } {
    return { table: Array.from(this.#table), pba: Array.from(this.#pba) };
  }

  /**
   * Restores what {@linkcode MsixCapability.saveState} produced and re-reads
   * Message Control from config space (restore that first). Nothing is delivered.
   *
   * @throws {TypeError} on a malformed state
   */
  restoreState(state: { table: ArrayLike<number>; pba: ArrayLike<number> }): void {
    if (
      state === null || typeof state !== "object" || !isByteArray(state.table) ||
      !isByteArray(state.pba) || state.table.length !== this.#table.length ||
      state.pba.length !== this.#pba.length
    ) {
      throw new TypeError(
        `Cannot restore MSI-X state: expected a ${this.#table.length}-byte table and a ${this.#pba.length}-byte PBA`,
      );
    }
    this.#table.set(state.table);
    this.#pba.set(state.pba);
    const ctl = this.#config.get16(this.offset + 2);
    this.#enabled = (ctl & MsixControl.ENABLE) !== 0;
    this.#masked = (ctl & MsixControl.MASKALL) !== 0;
  }

  #checkVector(vector: number, what: string): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new RangeError(
        `Cannot ${what} MSI-X vector ${vector}: the table has ${this.vectors} entries`,
      );
    }
  }

  #resetTable(): void {
    this.#table.fill(0);
    for (let v = 0; v < this.vectors; v++) this.#table[v * MSIX_ENTRY_SIZE + 12] = 1;
    this.#pba.fill(0);
  }

  #deliver(vector: number): void {
    this.#pba[vector >>> 3] &= ~(1 << (vector & 7));
    const v = this.#tableView;
    const at = vector * MSIX_ENTRY_SIZE;
    this.#sink.deliver(
      v.getUint32(at + 4, true) * TWO_32 + v.getUint32(at, true),
      v.getUint32(at + 8, true),
    );
  }

  /** Delivers every pending vector that is no longer masked. */
  #deliverPending(): void {
    if (!this.#enabled || this.#masked) return;
    const pba = this.#pba;
    for (let i = 0; i < pba.length; i++) {
      if (pba[i] === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const vector = i * 8 + bit;
        if (
          (pba[i] & (1 << bit)) !== 0 && (this.#table[vector * MSIX_ENTRY_SIZE + 12] & 1) === 0
        ) {
          this.#deliver(vector);
        }
      }
    }
  }

  #controlWritten(): void {
    const ctl = this.#config.get16(this.offset + 2);
    const enabled = (ctl & MsixControl.ENABLE) !== 0;
    const masked = (ctl & MsixControl.MASKALL) !== 0;
    if (enabled === this.#enabled && masked === this.#masked) return;
    this.#enabled = enabled;
    this.#masked = masked;
    this.#sink.controlChanged();
    this.#deliverPending();
  }

  #readTable(offset: number, size: number): number {
    if (offset % size !== 0) {
      this.#sink.invalid(`Unaligned MSI-X table read of ${size} bytes at 0x${offset.toString(16)}`);
      return 0;
    }
    return readLe(this.#table, offset, size);
  }

  #writeTable(offset: number, size: number, value: number): void {
    if (offset % size !== 0) {
      this.#sink.invalid(
        `Unaligned MSI-X table write of ${size} bytes at 0x${offset.toString(16)} ignored`,
      );
      return;
    }
    const table = this.#table;
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const b = (value >>> (8 * i)) & 0xff;
      const field = at & (MSIX_ENTRY_SIZE - 1);
      if (field < 12) table[at] = b;
      else if (field === 12) table[at] = b & 1; // vector control: only Mask is writable
    }
    const vector = offset >>> 4;
    if (
      this.#enabled && !this.#masked && (table[vector * MSIX_ENTRY_SIZE + 12] & 1) === 0 &&
      (this.#pba[vector >>> 3] & (1 << (vector & 7))) !== 0
    ) {
      this.#deliver(vector);
    }
  }

  #readPba(offset: number, size: number): number {
    if (offset % size !== 0) {
      this.#sink.invalid(`Unaligned MSI-X PBA read of ${size} bytes at 0x${offset.toString(16)}`);
      return 0;
    }
    return readLe(this.#pba, offset, size);
  }
}

function readLe(bytes: Uint8Array, offset: number, size: number): number {
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + bytes[offset + i];
  return v;
}

function isByteArray(a: unknown): a is ArrayLike<number> {
  if (a === null || typeof a !== "object" || typeof (a as ArrayLike<number>).length !== "number") {
    return false;
  }
  const arr = a as ArrayLike<number>;
  for (let i = 0; i < arr.length; i++) {
    const b = arr[i];
    if (!Number.isInteger(b) || b < 0 || b > 255) return false;
  }
  return true;
}
