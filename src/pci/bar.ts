/**
 * Base address registers: kinds, sizes, the register encoding that makes the
 * sizing protocol work, and the decode rules.
 *
 * @module
 */

/** What a BAR maps: 32-bit memory, 64-bit memory (two BAR slots), or I/O ports. */
export type PciBarKind = "mem32" | "mem64" | "io";

/** How a function declares one BAR ({@linkcode PciFunction.defineBar}). */
export interface PciBarOptions {
  /** Address space and width. */
  kind: PciBarKind;
  /**
   * Size in bytes: a power of two, at least 16 for memory (4 for I/O), at most
   * 2 GiB for `mem32`, 2^52 for `mem64` and 64 KiB for `io`.
   */
  size: number;
  /** Sets the prefetchable bit (memory BARs only). */
  prefetchable?: boolean;
}

/** The state of one implemented BAR, as the embedder sees it. */
export interface PciBar {
  /** BAR index 0..5 (a 64-bit BAR also uses `index + 1`). */
  readonly index: number;
  /** Address space and width. */
  readonly kind: PciBarKind;
  /** Size in bytes (a power of two). */
  readonly size: number;
  /** The prefetchable bit. */
  readonly prefetchable: boolean;
  /**
   * The base address the guest programmed (the address bits of the register,
   * or of both registers for `mem64`). Not exact above 2^53; such a BAR never decodes.
   */
  readonly address: number;
  /**
   * Whether the function decodes `[address, address + size)` now: the command
   * register enables the BAR's space (MEM or IO), the address is not 0, and
   * the window neither wraps nor leaves the addressable range (below 4 GiB for
   * `mem32` and `io`, below 2^53 for `mem64`), as in QEMU's `pci_bar_address`.
   */
  readonly decoding: boolean;
}

/**
 * Serves the accesses to one region of a BAR (registered with
 * {@linkcode PciFunction.mapRegion}). Offsets are relative to the region's
 * start; the access lies wholly inside the region. Handlers must not throw on
 * any guest value.
 */
export interface PciRegionHandler {
  /** Returns the value of a 1-, 2- or 4-byte read at `offset`. */
  read(offset: number, size: number): number;
  /** Performs a 1-, 2- or 4-byte write of `value` (its low `size` bytes) at `offset`. */
  write(offset: number, size: number, value: number): void;
  /** An 8-byte read; when absent, two 4-byte reads (low dword first) are made. */
  read64?(offset: number): bigint;
  /** An 8-byte write; when absent, two 4-byte writes (low dword first) are made. */
  write64?(offset: number, value: bigint): void;
}

/** A mapped part of a BAR. @internal */
export interface BarRegion {
  readonly start: number;
  readonly end: number;
  readonly handler: PciRegionHandler;
}

const TWO_32 = 0x1_0000_0000;
const TWO_53 = 2 ** 53;

/** The mutable state behind a {@linkcode PciBar}; owned by its function. @internal */
export class BarState implements PciBar {
  readonly index: number;
  readonly kind: PciBarKind;
  readonly size: number;
  readonly prefetchable: boolean;
  address = 0;
  decoding = false;
  /** Read-only type bits of the (low) register. */
  readonly typeBits: number;
  /** Guest-writable bits of the (low) register. */
  readonly lowMask: number;
  /** Guest-writable bits of the high register (`mem64` only). */
  readonly highMask: number;
  /** Regions sorted by start. */
  regions: BarRegion[] = [];
  /** The region of the last access (a one-entry cache). */
  last: BarRegion | null = null;

  constructor(index: number, options: PciBarOptions) {
    this.index = index;
    this.kind = options.kind;
    this.size = options.size;
    this.prefetchable = options.prefetchable === true;
    const size = options.size;
    if (options.kind === "io") {
      this.typeBits = 0x1;
      this.lowMask = (~(size - 1) & 0xffff_fffc) >>> 0;
      this.highMask = 0;
    } else {
      this.typeBits = (options.kind === "mem64" ? 0x4 : 0) | (this.prefetchable ? 0x8 : 0);
      this.lowMask = size >= TWO_32 ? 0 : (~(size - 1) & 0xffff_fff0) >>> 0;
      this.highMask = options.kind !== "mem64"
        ? 0
        : size > TWO_32
        ? (~(size / TWO_32 - 1)) >>> 0
        : 0xffff_ffff;
    }
  }

  /** Whether the BAR lives in I/O space. */
  get isIo(): boolean {
    return this.kind === "io";
  }

  /** The exclusive end of the addresses this BAR may decode. */
  get limit(): number {
    return this.kind === "mem64" ? TWO_53 : TWO_32 - 1;
  }

  /** Finds the region holding `[offset, offset + size)`, or null. */
  find(offset: number, size: number): BarRegion | null {
    const last = this.last;
    if (last !== null && offset >= last.start && offset + size <= last.end) return last;
    const regions = this.regions;
    let lo = 0;
    let hi = regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regions[mid];
      if (offset < r.start) hi = mid - 1;
      else if (offset < r.end) {
        if (offset + size > r.end) return null;
        this.last = r;
        return r;
      } else lo = mid + 1; // also taken by NaN, so NaN finds nothing
    }
    return null;
  }
}

/**
 * Checks BAR options and returns the message of what is wrong, or null.
 * @internal
 */
export function barOptionsProblem(index: number, options: PciBarOptions): string | null {
  if (options === null || typeof options !== "object") return "options must be an object";
  const { kind, size } = options;
  if (kind !== "mem32" && kind !== "mem64" && kind !== "io") {
    return `kind ${JSON.stringify(kind)} is not "mem32", "mem64" or "io"`;
  }
  if (kind === "mem64" && index > 4) return "a 64-bit BAR needs the next slot too";
  if (typeof size !== "number" || !Number.isInteger(size) || size <= 0) {
    return `size ${size} is not a positive integer`;
  }
  if (2 ** Math.round(Math.log2(size)) !== size) return `size ${size} is not a power of two`;
  const [min, max] = kind === "io"
    ? [4, 0x1_0000]
    : kind === "mem32"
    ? [16, 2 ** 31]
    : [16, 2 ** 52];
  if (size < min || size > max) return `size ${size} is outside ${min}..${max} for a ${kind} BAR`;
  if (kind === "io" && options.prefetchable === true) return "an I/O BAR cannot be prefetchable";
  return null;
}
