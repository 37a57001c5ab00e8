import { DmaAccess } from "./dma_access.ts";
import { DmaFault } from "./dma_fault.ts";

const EMPTY = new Uint8Array(0);

/**
 * The result of one {@linkcode DmaSpace.translate} call: `length` contiguous
 * bytes of the target start at `bytes[offset]`.
 *
 * Callers keep one instance and pass it to every call, so translation on the
 * hot path allocates nothing.
 */
export class DmaTranslation {
  /** Host bytes backing the translated run (typically a whole RAM region). */
  bytes: Uint8Array = EMPTY;
  /** Index in `bytes` of the first translated byte. */
  offset = 0;
  /** How many bytes from `offset` are contiguous and accessible. */
  length = 0;
}

/** Called when mappings in `[address, address + length)` are removed. */
export type DmaInvalidationListener = (address: number, length: number) => void;

/**
 * A device's view of memory: every DMA a device model or virtqueue performs goes
 * through one of these.
 *
 * Implementations: {@linkcode DirectDmaSpace} (identity over guest memory), the
 * IOMMU's per-endpoint space, and VDUSE's IOTLB space. All of them raise
 * {@linkcode DmaFault} and nothing else for a bad guest address.
 */
export interface DmaSpace {
  /**
   * Translates the longest contiguous prefix (at least one byte when `length > 0`)
   * of `[address, address + length)` into `out`.
   *
   * @throws {DmaFault} when the first byte is not accessible for `access`
   */
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void;
  /**
   * A zero-copy view of the whole range when it is contiguous in host memory,
   * otherwise `null` (use {@linkcode DmaSpace.read} / {@linkcode DmaSpace.write}).
   *
   * @throws {DmaFault} when any byte is not accessible for `access`
   */
  view(address: number, length: number, access: DmaAccess): Uint8Array | null;
  /** Copies `dest.length` bytes at `address` into `dest`. @throws {DmaFault} */
  read(address: number, dest: Uint8Array): void;
  /** Copies `src` to `address`. Nothing is written if any byte faults. @throws {DmaFault} */
  write(address: number, src: Uint8Array): void;
  /** Sets `length` bytes at `address` to `value`. @throws {DmaFault} */
  fill(address: number, length: number, value: number): void;
  /** Reads a byte. @throws {DmaFault} */
  read8(address: number): number;
  /** Reads a little-endian 16-bit value. @throws {DmaFault} */
  read16(address: number): number;
  /** Reads a little-endian 32-bit value. @throws {DmaFault} */
  read32(address: number): number;
  /** Reads a little-endian 64-bit value below 2^53. @throws {DmaFault} */
  read64(address: number): number;
  /** Writes a byte. @throws {DmaFault} */
  write8(address: number, value: number): void;
  /** Writes a little-endian 16-bit value. @throws {DmaFault} */
  write16(address: number, value: number): void;
  /** Writes a little-endian 32-bit value. @throws {DmaFault} */
  write32(address: number, value: number): void;
  /**
   * Registers a listener called whenever mappings are removed, so that cached
   * translations (ring areas) can be dropped. Returns a function that unregisters it.
   */
  addInvalidationListener(listener: DmaInvalidationListener): () => void;
}

/**
 * A {@linkcode DmaSpace} built on one primitive, `translate`: subclasses (IOMMU,
 * VDUSE) implement only that, and inherit views, copies and accessors that
 * handle ranges spanning several translations.
 */
export abstract class TranslatingDmaSpace implements DmaSpace {
  #listeners: DmaInvalidationListener[] = [];
  readonly #t = new DmaTranslation();
  readonly #scratch = new Uint8Array(8);

  /** See {@linkcode DmaSpace.translate}. */
  abstract translate(
    address: number,
    length: number,
    access: DmaAccess,
    out: DmaTranslation,
  ): void;

  /** See {@linkcode DmaSpace.view}. */
  view(address: number, length: number, access: DmaAccess): Uint8Array | null {
    const t = this.#t;
    this.translate(address, length, access, t);
    if (t.length >= length) return t.bytes.subarray(t.offset, t.offset + length);
    this.#check(address + t.length, length - t.length, access);
    return null;
  }

  /** See {@linkcode DmaSpace.read}. */
  read(address: number, dest: Uint8Array): void {
    const length = dest.byteLength;
    const t = this.#t;
    let pos = 0;
    while (pos < length) {
      this.translate(address + pos, length - pos, DmaAccess.Read, t);
      dest.set(t.bytes.subarray(t.offset, t.offset + t.length), pos);
      pos += t.length;
    }
  }

  /** See {@linkcode DmaSpace.write}. */
  write(address: number, src: Uint8Array): void {
    const length = src.byteLength;
    const t = this.#t;
    this.translate(address, length, DmaAccess.Write, t);
    if (t.length >= length) {
      t.bytes.set(src, t.offset);
      return;
    }
    this.#check(address, length, DmaAccess.Write);
    let pos = 0;
    while (pos < length) {
      this.translate(address + pos, length - pos, DmaAccess.Write, t);
      t.bytes.set(src.subarray(pos, pos + t.length), t.offset);
      pos += t.length;
    }
  }

  /** See {@linkcode DmaSpace.fill}. */
  fill(address: number, length: number, value: number): void {
    this.#check(address, length, DmaAccess.Write);
    const t = this.#t;
    let pos = 0;
    while (pos < length) {
      this.translate(address + pos, length - pos, DmaAccess.Write, t);
      t.bytes.fill(value, t.offset, t.offset + t.length);
      pos += t.length;
    }
  }

  /** See {@linkcode DmaSpace.read8}. */
  read8(address: number): number {
    const t = this.#t;
    this.translate(address, 1, DmaAccess.Read, t);
    return t.bytes[t.offset];
  }

  /** See {@linkcode DmaSpace.read16}. */
  read16(address: number): number {
    const b = this.#small(address, 2);
    const o = this.#t.offset;
    return b[o] | (b[o + 1] << 8);
  }

  /** See {@linkcode DmaSpace.read32}. */
  read32(address: number): number {
    const b = this.#small(address, 4);
    const o = this.#t.offset;
    return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
  }

  /** See {@linkcode DmaSpace.read64}. */
  read64(address: number): number {
    const low = this.read32(address);
    const high = this.read32(address + 4);
    if (high > 0x1f_ffff) throw new DmaFault(address, 8, DmaAccess.Read, "unrepresentable");
    return high * 0x1_0000_0000 + low;
  }

  /** See {@linkcode DmaSpace.write8}. */
  write8(address: number, value: number): void {
    const t = this.#t;
    this.translate(address, 1, DmaAccess.Write, t);
    t.bytes[t.offset] = value;
  }

  /** See {@linkcode DmaSpace.write16}. */
  write16(address: number, value: number): void {
    const s = this.#scratch;
    s[0] = value;
    s[1] = value >>> 8;
    this.write(address, s.subarray(0, 2));
  }

  /** See {@linkcode DmaSpace.write32}. */
  write32(address: number, value: number): void {
    const s = this.#scratch;
    s[0] = value;
    s[1] = value >>> 8;
    s[2] = value >>> 16;
    s[3] = value >>> 24;
    this.write(address, s.subarray(0, 4));
  }

  /** See {@linkcode DmaSpace.addInvalidationListener}. */
  addInvalidationListener(listener: DmaInvalidationListener): () => void {
    this.#listeners = [...this.#listeners, listener];
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== listener);
    };
  }

  /** Tells every listener that mappings in `[address, address + length)` are gone. */
  protected invalidate(address: number, length: number): void {
    for (const listener of this.#listeners) listener(address, length);
  }

  /** Translates `length` (≤ 8) bytes: a contiguous run is used in place, else copied to scratch. */
  #small(address: number, length: number): Uint8Array {
    const t = this.#t;
    this.translate(address, length, DmaAccess.Read, t);
    if (t.length >= length) return t.bytes;
    const s = this.#scratch;
    this.read(address, s.subarray(0, length));
    t.offset = 0;
    return s;
  }

  /** Throws unless every byte of the range is accessible. */
  #check(address: number, length: number, access: DmaAccess): void {
    const t = this.#t;
    let pos = 0;
    while (pos < length) {
      this.translate(address + pos, length - pos, access, t);
      pos += t.length;
    }
  }
}
