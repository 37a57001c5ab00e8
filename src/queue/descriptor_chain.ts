import { DmaAccess } from "../dma/dma_access.ts";
import { type DmaSpace, DmaTranslation } from "../dma/dma_space.ts";

/**
 * One descriptor chain as the device sees it: readable segments followed by
 * writable segments, each a device address and a length.
 *
 * A queue fills a reused chain object on every pop, so popping allocates
 * nothing; the data is translated lazily, when the device reads it through
 * {@linkcode DescriptorChain.reader} or fills it through
 * {@linkcode DescriptorChain.writer}. Devices must not assume where the
 * framing falls: a header may span descriptors.
 */
export class DescriptorChain {
  /** Opaque identity of the chain, passed back to `DeviceQueue.push`. */
  token = 0;
  /** Head descriptor index (split) or buffer id (packed). */
  head = 0;
  /** Ring slots the chain occupies (packed: descriptors in the ring; split: 1 with indirect). */
  ringSlots = 0;
  /** How many segments are readable (they come first). */
  readableCount = 0;
  /** How many segments there are in all. */
  segmentCount = 0;
  /** Sum of the readable segments' lengths. */
  readableLength = 0;
  /** Sum of the writable segments' lengths. */
  writableLength = 0;
  /** The DMA space the segment addresses belong to. */
  dma: DmaSpace;
  /** Segment device addresses. */
  readonly addrs: Float64Array;
  /** Segment lengths. */
  readonly lengths: Uint32Array;
  /** The most segments this chain can hold. */
  readonly capacity: number;
  /** A cursor over the readable part, reset by every pop. */
  readonly reader: ChainReader;
  /** A cursor over the writable part, reset by every pop. */
  readonly writer: ChainWriter;

  /**
   * Creates an empty chain holding up to `capacity` segments.
   *
   * @param dma the space its addresses are translated in (queues set it on pop)
   * @param capacity most segments; a queue rejects longer chains
   */
  constructor(dma: DmaSpace, capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 0x10000) {
      throw new RangeError(`Cannot create a descriptor chain of capacity ${capacity}`);
    }
    this.dma = dma;
    this.capacity = capacity;
    this.addrs = new Float64Array(capacity);
    this.lengths = new Uint32Array(capacity);
    this.reader = new ChainReader(this);
    this.writer = new ChainWriter(this);
  }

  /** Empties the chain before a queue fills it. */
  clear(dma: DmaSpace): void {
    this.dma = dma;
    this.token = 0;
    this.head = 0;
    this.ringSlots = 0;
    this.readableCount = 0;
    this.segmentCount = 0;
    this.readableLength = 0;
    this.writableLength = 0;
    this.reader.rewind();
    this.writer.rewind();
  }

  /**
   * Appends a segment (queues call this; readable ones must come first).
   * Returns false when the chain is full.
   */
  addSegment(addr: number, length: number, writable: boolean): boolean {
    const n = this.segmentCount;
    if (n === this.capacity) return false;
    this.addrs[n] = addr;
    this.lengths[n] = length;
    this.segmentCount = n + 1;
    if (writable) {
      this.writableLength += length;
    } else {
      this.readableCount = n + 1;
      this.readableLength += length;
    }
    return true;
  }

  /** Copies the chain's segments and identity from `other` (for keeping a chain in flight). */
  copyFrom(other: DescriptorChain): void {
    if (other.segmentCount > this.capacity) {
      throw new RangeError(
        `Cannot copy a chain of ${other.segmentCount} segments into one of capacity ${this.capacity}`,
      );
    }
    this.clear(other.dma);
    this.token = other.token;
    this.head = other.head;
    this.ringSlots = other.ringSlots;
    this.segmentCount = other.segmentCount;
    this.readableCount = other.readableCount;
    this.readableLength = other.readableLength;
    this.writableLength = other.writableLength;
    this.addrs.set(other.addrs.subarray(0, other.segmentCount));
    this.lengths.set(other.lengths.subarray(0, other.segmentCount));
  }
}

/**
 * Cursor logic shared by {@linkcode ChainReader} and {@linkcode ChainWriter}:
 * a position in a run of a chain's segments.
 */
export abstract class ChainCursor {
  /** The chain this cursor walks. */
  protected readonly chain: DescriptorChain;
  /** The reused translation of the current run (no allocation per access). */
  protected readonly t: DmaTranslation = new DmaTranslation();
  /** Current segment index. */
  protected seg = 0;
  /** Byte offset inside the current segment. */
  protected segOffset = 0;
  /** Bytes consumed so far in this part of the chain. */
  protected done = 0;

  /** Creates a cursor over `chain` (chains create their own reader and writer). */
  constructor(chain: DescriptorChain) {
    this.chain = chain;
  }

  /** Index of the first segment of this part of the chain. */
  protected abstract get first(): number;
  /** One past the last segment of this part of the chain. */
  protected abstract get end(): number;
  /** Total bytes in this part of the chain. */
  protected abstract get total(): number;

  /** Bytes left in this part of the chain. */
  get remaining(): number {
    return this.total - this.done;
  }

  /** Moves back to the start of this part of the chain. */
  rewind(): void {
    this.seg = this.first;
    this.segOffset = 0;
    this.done = 0;
  }

  /** Skips up to `n` bytes; returns how many were skipped. */
  skip(n: number): number {
    this.start();
    const want = Math.min(n, this.remaining);
    let left = want;
    const lengths = this.chain.lengths;
    while (left > 0) {
      const avail = lengths[this.seg] - this.segOffset;
      if (avail > left) {
        this.segOffset += left;
        break;
      }
      left -= avail;
      this.seg++;
      this.segOffset = 0;
    }
    this.done += want;
    return want;
  }

  /** Segments may be added after a rewind: never stand before this part's first segment. */
  protected start(): void {
    if (this.seg < this.first) {
      this.seg = this.first;
      this.segOffset = 0;
    }
  }

  /**
   * Translates the next contiguous run of at most `max` bytes into `this.t`
   * and advances past it; returns its length (0 at the end).
   */
  protected nextRun(max: number, access: DmaAccess): number {
    this.start();
    const chain = this.chain;
    const end = this.end;
    while (this.seg < end && chain.lengths[this.seg] === this.segOffset) {
      this.seg++;
      this.segOffset = 0;
    }
    if (this.seg >= end || max <= 0) return 0;
    const left = chain.lengths[this.seg] - this.segOffset;
    const want = left < max ? left : max;
    const t = this.t;
    chain.dma.translate(chain.addrs[this.seg] + this.segOffset, want, access, t);
    const n = t.length;
    this.segOffset += n;
    this.done += n;
    return n;
  }
}

/** Reads the readable part of a chain as one byte stream. */
export class ChainReader extends ChainCursor {
  readonly #scratch = new Uint8Array(8);
  readonly #scratchView = new DataView(this.#scratch.buffer);

  /** See {@linkcode ChainCursor}. */
  protected get first(): number {
    return 0;
  }
  /** See {@linkcode ChainCursor}. */
  protected get end(): number {
    return this.chain.readableCount;
  }
  /** See {@linkcode ChainCursor}. */
  protected get total(): number {
    return this.chain.readableLength;
  }

  /** Copies up to `dest.length` bytes into `dest`; returns how many were copied. @throws {DmaFault} */
  read(dest: Uint8Array): number {
    let pos = 0;
    const len = dest.length;
    const t = this.t;
    while (pos < len) {
      const n = this.nextRun(len - pos, DmaAccess.Read);
      if (n === 0) break;
      dest.set(t.bytes.subarray(t.offset, t.offset + n), pos);
      pos += n;
    }
    return pos;
  }

  /**
   * Copies up to `n` bytes of this chain's readable part into `writer`'s chain;
   * returns how many were copied. One copy, no staging buffer. @throws {DmaFault}
   */
  copyTo(writer: ChainWriter, n: number): number {
    let copied = 0;
    const t = this.t;
    while (copied < n) {
      const run = this.nextRun(Math.min(n - copied, writer.remaining), DmaAccess.Read);
      if (run === 0) break;
      writer.write(t.bytes.subarray(t.offset, t.offset + run));
      copied += run;
    }
    return copied;
  }

  /** Reads a byte, or returns -1 at the end. @throws {DmaFault} */
  readU8(): number {
    return this.read(this.#scratch.subarray(0, 1)) === 1 ? this.#scratch[0] : -1;
  }

  /** Reads a little-endian 16-bit value, or returns -1 when fewer than 2 bytes remain. */
  readU16(): number {
    if (this.remaining < 2) return -1;
    this.read(this.#scratch.subarray(0, 2));
    return this.#scratchView.getUint16(0, true);
  }

  /** Reads a little-endian 32-bit value, or returns -1 when fewer than 4 bytes remain. */
  readU32(): number {
    if (this.remaining < 4) return -1;
    this.read(this.#scratch.subarray(0, 4));
    return this.#scratchView.getUint32(0, true);
  }

  /**
   * Reads a little-endian 64-bit value as a `bigint`, or returns -1n when fewer
   * than 8 bytes remain.
   */
  readU64(): bigint {
    if (this.remaining < 8) return -1n;
    this.read(this.#scratch);
    return this.#scratchView.getBigUint64(0, true);
  }
}

/** Fills the writable part of a chain as one byte stream. */
export class ChainWriter extends ChainCursor {
  readonly #scratch = new Uint8Array(8);
  readonly #scratchView = new DataView(this.#scratch.buffer);

  /** See {@linkcode ChainCursor}. */
  protected get first(): number {
    return this.chain.readableCount;
  }
  /** See {@linkcode ChainCursor}. */
  protected get end(): number {
    return this.chain.segmentCount;
  }
  /** See {@linkcode ChainCursor}. */
  protected get total(): number {
    return this.chain.writableLength;
  }

  /** Bytes written so far (the used length to report). */
  get written(): number {
    return this.done;
  }

  /** Copies up to `src.length` bytes in; returns how many fit. @throws {DmaFault} */
  write(src: Uint8Array): number {
    let pos = 0;
    const len = src.length;
    const t = this.t;
    while (pos < len) {
      const n = this.nextRun(len - pos, DmaAccess.Write);
      if (n === 0) break;
      t.bytes.set(pos === 0 && n === len ? src : src.subarray(pos, pos + n), t.offset);
      pos += n;
    }
    return pos;
  }

  /** Writes `n` bytes of `value`; returns how many fit. @throws {DmaFault} */
  fill(n: number, value = 0): number {
    let pos = 0;
    const t = this.t;
    while (pos < n) {
      const run = this.nextRun(n - pos, DmaAccess.Write);
      if (run === 0) break;
      t.bytes.fill(value, t.offset, t.offset + run);
      pos += run;
    }
    return pos;
  }

  /** Writes a byte; returns false when the chain is full. */
  writeU8(value: number): boolean {
    this.#scratch[0] = value;
    return this.write(this.#scratch.subarray(0, 1)) === 1;
  }

  /** Writes a little-endian 16-bit value; returns false (writing nothing) when it does not fit. */
  writeU16(value: number): boolean {
    if (this.remaining < 2) return false;
    this.#scratchView.setUint16(0, value, true);
    return this.write(this.#scratch.subarray(0, 2)) === 2;
  }

  /** Writes a little-endian 32-bit value; returns false (writing nothing) when it does not fit. */
  writeU32(value: number): boolean {
    if (this.remaining < 4) return false;
    this.#scratchView.setUint32(0, value, true);
    return this.write(this.#scratch.subarray(0, 4)) === 4;
  }
}
