import { MemoryFault } from "./memory_fault.ts";

/** Where a RAM region sits in guest physical address space and what backs it. */
export interface RamRegionOptions {
  /** Guest physical address of the region's first byte. */
  base: number;
  /** Size in bytes; defaults to the whole `buffer`. Required when `buffer` is omitted. */
  size?: number;
  /** Backing store; allocated (zero-filled) when omitted. May be a `SharedArrayBuffer`. */
  buffer?: ArrayBuffer | SharedArrayBuffer;
  /** Byte offset of the region inside `buffer`; 0 by default. */
  offset?: number;
  /** Allocate a `SharedArrayBuffer` when `buffer` is omitted. */
  shared?: boolean;
}

/** One contiguous RAM region of guest memory, backed by one buffer. */
export class MemoryRegion {
  /** First guest physical address. */
  readonly base: number;
  /** Size in bytes. */
  readonly size: number;
  /** One past the last guest physical address. */
  readonly end: number;
  /** The region's bytes: `bytes[0]` is guest address `base`. */
  readonly bytes: Uint8Array;
  /** A little-endian accessor over `bytes`. */
  readonly data: DataView;

  /** Wraps `bytes` as guest RAM at `base`. */
  constructor(base: number, bytes: Uint8Array) {
    this.base = base;
    this.size = bytes.byteLength;
    this.end = base + bytes.byteLength;
    this.bytes = bytes;
    this.data = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
}

const TWO_32 = 0x1_0000_0000;
/** The largest high word of a 64-bit value that stays below 2^53. */
const MAX_SAFE_HIGH = 0x1f_ffff;
/** Addresses and lengths are integers in [0, 2^53). */
const LIMIT = 2 ** 53;

/**
 * Guest physical memory: one or more RAM regions with holes between them.
 *
 * Accesses inside one region are served from a `DataView` or a zero-copy
 * `Uint8Array` view; `read` and `write` copy across adjacent regions; any byte
 * outside RAM raises {@linkcode MemoryFault}. All multi-byte values are
 * little-endian, as in every modern virtio structure.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "@vireo/vireo";
 * const mem = new GuestMemory([
 *   { base: 0, size: 0x10000 },
 *   { base: 0x100000, size: 0x10000, shared: true },
 * ]);
 * mem.write32(0x100000, 0xdeadbeef);
 * console.log(mem.read32(0x100000).toString(16)); // "deadbeef"
 * ```
 */
export class GuestMemory {
  /** The RAM regions in ascending address order. */
  readonly regions: readonly MemoryRegion[];
  /** Total bytes of RAM over all regions. */
  readonly ramSize: number;
  #last: MemoryRegion;
  /** Stages scalars that straddle two adjacent regions. */
  #scratch = new Uint8Array(8);
  #scratchData = new DataView(this.#scratch.buffer);

  /**
   * Builds guest memory from region descriptions.
   *
   * @param regions at least one region; regions may not overlap
   * @throws {TypeError} when an option has the wrong type
   * @throws {RangeError} when a base, size or offset is out of range or regions overlap
   */
  constructor(regions: readonly RamRegionOptions[]) {
    if (!Array.isArray(regions) || regions.length === 0) {
      throw new TypeError("Cannot create guest memory: at least one RAM region is required");
    }
    const built = regions.map(buildRegion).sort((a, b) => a.base - b.base);
    for (let i = 1; i < built.length; i++) {
      if (built[i].base < built[i - 1].end) {
        throw new RangeError(
          `Cannot create guest memory: region at 0x${
            built[i].base.toString(16)
          } overlaps the region at 0x${built[i - 1].base.toString(16)}`,
        );
      }
    }
    this.regions = built;
    this.ramSize = built.reduce((sum, r) => sum + r.size, 0);
    this.#last = built[0];
  }

  /**
   * Returns the region holding all of `[addr, addr + length)`, or `undefined`.
   *
   * @param addr guest physical address
   * @param length bytes; 0 is allowed and asks for the region holding `addr`
   */
  regionOf(addr: number, length: number): MemoryRegion | undefined {
    const last = this.#last;
    if (addr >= last.base && addr + length <= last.end && isIndex(addr) && isIndex(length)) {
      return last;
    }
    if (!(isIndex(addr) && isIndex(length))) return undefined;
    const regions = this.regions;
    let lo = 0;
    let hi = regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regions[mid];
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else {
        if (addr + length > r.end) return undefined;
        this.#last = r;
        return r;
      }
    }
    return undefined;
  }

  /**
   * A zero-copy view of `[addr, addr + length)`, which must lie inside one region.
   *
   * @throws {MemoryFault} when the range is not entirely inside one RAM region
   */
  view(addr: number, length: number): Uint8Array {
    const r = this.regionOf(addr, length);
    if (r === undefined) throw fault(addr, length);
    const off = addr - r.base;
    return r.bytes.subarray(off, off + length);
  }

  /** Reads the byte at `addr`. @throws {MemoryFault} */
  read8(addr: number): number {
    const r = this.#fast(addr, 1);
    return r !== undefined ? r.bytes[addr - r.base] : this.#load(addr, 1).getUint8(0);
  }

  /** Reads a little-endian 16-bit value. @throws {MemoryFault} */
  read16(addr: number): number {
    const r = this.#fast(addr, 2);
    return r !== undefined
      ? r.data.getUint16(addr - r.base, true)
      : this.#load(addr, 2).getUint16(0, true);
  }

  /** Reads a little-endian 32-bit value. @throws {MemoryFault} */
  read32(addr: number): number {
    const r = this.#fast(addr, 4);
    return r !== undefined
      ? r.data.getUint32(addr - r.base, true)
      : this.#load(addr, 4).getUint32(0, true);
  }

  /**
   * Reads a little-endian 64-bit value as a `number`.
   *
   * @throws {MemoryFault} with reason `"unrepresentable"` when the value is at or above 2^53
   */
  read64(addr: number): number {
    const r = this.#fast(addr, 8);
    const data = r !== undefined ? r.data : this.#load(addr, 8);
    const off = r !== undefined ? addr - r.base : 0;
    const high = data.getUint32(off + 4, true);
    if (high > MAX_SAFE_HIGH) throw new MemoryFault(addr, 8, "unrepresentable");
    return high * TWO_32 + data.getUint32(off, true);
  }

  /** Reads a little-endian 64-bit value exactly, as a `bigint`. @throws {MemoryFault} */
  readBigUint64(addr: number): bigint {
    const r = this.#fast(addr, 8);
    return r !== undefined
      ? r.data.getBigUint64(addr - r.base, true)
      : this.#load(addr, 8).getBigUint64(0, true);
  }

  /** Writes the low 8 bits of `value` at `addr`. @throws {MemoryFault} */
  write8(addr: number, value: number): void {
    const r = this.#fast(addr, 1);
    if (r === undefined) throw fault(addr, 1);
    r.bytes[addr - r.base] = value;
  }

  /** Writes the low 16 bits of `value`, little-endian. @throws {MemoryFault} */
  write16(addr: number, value: number): void {
    const r = this.#fast(addr, 2);
    if (r !== undefined) r.data.setUint16(addr - r.base, value, true);
    else this.#scratchData.setUint16(0, value, true), this.#store(addr, 2);
  }

  /** Writes the low 32 bits of `value`, little-endian. @throws {MemoryFault} */
  write32(addr: number, value: number): void {
    const r = this.#fast(addr, 4);
    if (r !== undefined) r.data.setUint32(addr - r.base, value, true);
    else this.#scratchData.setUint32(0, value, true), this.#store(addr, 4);
  }

  /**
   * Writes a non-negative integer below 2^53 as a little-endian 64-bit value.
   *
   * @throws {RangeError} when `value` is not an integer in [0, 2^53)
   * @throws {MemoryFault}
   */
  write64(addr: number, value: number): void {
    if (!isIndex(value)) {
      throw new RangeError(`Cannot write ${value} as a 64-bit value: not an integer in [0, 2^53)`);
    }
    const r = this.#fast(addr, 8);
    const data = r !== undefined ? r.data : this.#scratchData;
    const off = r !== undefined ? addr - r.base : 0;
    data.setUint32(off, value >>> 0, true);
    data.setUint32(off + 4, Math.floor(value / TWO_32), true);
    if (r === undefined) this.#store(addr, 8);
  }

  /** Writes a 64-bit `bigint` (taken modulo 2^64), little-endian. @throws {MemoryFault} */
  writeBigUint64(addr: number, value: bigint): void {
    const r = this.#fast(addr, 8);
    const v = BigInt.asUintN(64, value);
    if (r !== undefined) r.data.setBigUint64(addr - r.base, v, true);
    else this.#scratchData.setBigUint64(0, v, true), this.#store(addr, 8);
  }

  /**
   * Copies guest bytes at `addr` into `dest`; the range may span adjacent regions.
   * Nothing is copied when any byte is outside RAM.
   *
   * @throws {MemoryFault}
   */
  read(addr: number, dest: Uint8Array): void {
    const len = dest.byteLength;
    const r = this.regionOf(addr, len);
    if (r !== undefined) {
      const off = addr - r.base;
      dest.set(r.bytes.subarray(off, off + len));
      return;
    }
    this.#checkSpan(addr, len);
    this.#forEachPiece(addr, len, (region, off, pos, n) => {
      dest.set(region.bytes.subarray(off, off + n), pos);
    });
  }

  /**
   * Copies `src` into guest memory at `addr`; the range may span adjacent regions.
   * Nothing is written when any byte is outside RAM.
   *
   * @throws {MemoryFault}
   */
  write(addr: number, src: Uint8Array): void {
    const len = src.byteLength;
    const r = this.regionOf(addr, len);
    if (r !== undefined) {
      r.bytes.set(src, addr - r.base);
      return;
    }
    this.#checkSpan(addr, len);
    this.#forEachPiece(addr, len, (region, off, pos, n) => {
      region.bytes.set(src.subarray(pos, pos + n), off);
    });
  }

  /**
   * Sets `length` bytes at `addr` to `value`; the range may span adjacent regions.
   *
   * @throws {MemoryFault}
   */
  fill(addr: number, length: number, value = 0): void {
    this.#checkSpan(addr, length);
    this.#forEachPiece(addr, length, (region, off, _pos, n) => {
      region.bytes.fill(value, off, off + n);
    });
  }

  /** True when every byte of `[addr, addr + length)` is RAM (possibly over several regions). */
  isRam(addr: number, length: number): boolean {
    if (this.regionOf(addr, length) !== undefined) return true;
    if (!(isIndex(addr) && isIndex(length) && addr + length <= LIMIT)) return false;
    let pos = addr;
    const end = addr + length;
    while (pos < end) {
      const r = this.regionOf(pos, 1);
      if (r === undefined) return false;
      pos = r.end;
    }
    return true;
  }

  /** The region holding `[addr, addr + length)`, last-hit first; `undefined` otherwise. */
  #fast(addr: number, length: number): MemoryRegion | undefined {
    const last = this.#last;
    if (addr >= last.base && addr + length <= last.end && isIndex(addr)) return last;
    return this.regionOf(addr, length);
  }

  /** Slow path: a scalar straddling adjacent regions, copied into the scratch. */
  #load(addr: number, length: number): DataView {
    this.read(addr, this.#scratch.subarray(0, length));
    return this.#scratchData;
  }

  /** Slow path: writes the scratch's first `length` bytes across adjacent regions. */
  #store(addr: number, length: number): void {
    this.write(addr, this.#scratch.subarray(0, length));
  }

  #checkSpan(addr: number, length: number): void {
    if (!this.isRam(addr, length)) throw fault(addr, length);
  }

  #forEachPiece(
    addr: number,
    length: number,
    piece: (region: MemoryRegion, offset: number, position: number, count: number) => void,
  ): void {
    let pos = 0;
    while (pos < length) {
      const a = addr + pos;
      const r = this.regionOf(a, 1)!;
      const n = Math.min(length - pos, r.end - a);
      piece(r, a - r.base, pos, n);
      pos += n;
    }
  }
}

function isIndex(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

function fault(addr: number, length: number): MemoryFault {
  const valid = isIndex(addr) && isIndex(length) && addr + length <= LIMIT;
  return new MemoryFault(addr, length, valid ? "unmapped" : "invalid");
}

function buildRegion(opts: RamRegionOptions, index: number): MemoryRegion {
  if (typeof opts !== "object" || opts === null) {
    throw new TypeError(`Cannot create RAM region ${index}: expected an options object`);
  }
  const { base, buffer, offset = 0, shared = false } = opts;
  if (!isIndex(base)) {
    throw new RangeError(`Cannot create RAM region ${index}: base ${base} is not an integer >= 0`);
  }
  if (
    buffer !== undefined && !(buffer instanceof ArrayBuffer) &&
    !(typeof SharedArrayBuffer !== "undefined" && buffer instanceof SharedArrayBuffer)
  ) {
    throw new TypeError(
      `Cannot create RAM region ${index}: buffer must be an ArrayBuffer or SharedArrayBuffer`,
    );
  }
  if (!isIndex(offset)) {
    throw new RangeError(
      `Cannot create RAM region ${index}: offset ${offset} is not an integer >= 0`,
    );
  }
  const size = opts.size ?? (buffer === undefined ? undefined : buffer.byteLength - offset);
  if (size === undefined) {
    throw new TypeError(`Cannot create RAM region ${index}: give a size or a buffer`);
  }
  if (!isIndex(size) || size === 0) {
    throw new RangeError(`Cannot create RAM region ${index}: size ${size} is not an integer > 0`);
  }
  if (size > LIMIT - base) {
    throw new RangeError(`Cannot create RAM region ${index}: it ends above 2^53`);
  }
  let backing: ArrayBuffer | SharedArrayBuffer;
  if (buffer === undefined) {
    backing = shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size);
  } else {
    if (offset + size > buffer.byteLength) {
      throw new RangeError(
        `Cannot create RAM region ${index}: offset ${offset} + size ${size} exceeds the buffer's ${buffer.byteLength} bytes`,
      );
    }
    backing = buffer;
  }
  return new MemoryRegion(base, new Uint8Array(backing, offset, size));
}
