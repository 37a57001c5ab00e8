/**
 * Internal helpers shared by the split and packed queues: validating a
 * {@linkcode QueueConfig}, mapping a ring area to a cached `DataView`, and
 * reading indirect tables without allocating.
 *
 * @module
 */
import { DmaAccess } from "../dma/dma_access.ts";
import { type DmaSpace, DmaTranslation } from "../dma/dma_space.ts";
import { hex } from "../guest_fault.ts";
import type { QueueConfig } from "./device_queue.ts";
import { VIRTQUEUE_MAX_SIZE, VRING_DESC_SIZE } from "./ring_layout.ts";
import { VirtqueueError } from "./virtqueue_error.ts";

/** A zero-length view that stands for "not translated yet". */
export const EMPTY_VIEW: DataView = new DataView(new ArrayBuffer(0));

/** Throws `TypeError`/`RangeError` unless `config` describes a queue of the given layout. */
export function checkQueueConfig(config: QueueConfig, packed: boolean): void {
  if (typeof config !== "object" || config === null) {
    throw new TypeError("Cannot create a virtqueue: expected a QueueConfig object");
  }
  const { index, size } = config;
  if (!Number.isInteger(index) || index < 0 || index > 0xffff) {
    throw new RangeError(`Cannot create virtqueue ${index}: index is not an integer in 0..65535`);
  }
  if (!Number.isInteger(size) || size < 1 || size > VIRTQUEUE_MAX_SIZE) {
    throw new RangeError(`Cannot create virtqueue ${index}: size ${size} is not in 1..32768`);
  }
  if (!packed && (size & (size - 1)) !== 0) {
    throw new RangeError(
      `Cannot create virtqueue ${index}: size ${size} is not a power of two (split ring)`,
    );
  }
}

/**
 * Translates a whole ring area into a `DataView`.
 *
 * @throws {DmaFault} when some byte is not accessible for `access`
 * @throws {VirtqueueError} `ring-not-contiguous` when the area is not contiguous in host memory
 */
export function ringView(
  dma: DmaSpace,
  queue: number,
  what: string,
  address: number,
  length: number,
  access: DmaAccess,
): DataView {
  const v = dma.view(address, length, access);
  if (v === null) {
    throw new VirtqueueError(
      queue,
      "ring-not-contiguous",
      `${what} at ${hex(address)} (${length} bytes) is not contiguous in host memory`,
    );
  }
  return new DataView(v.buffer, v.byteOffset, v.byteLength);
}

/** True when `[address, address + length)` and `[start, start + size)` intersect. */
export function overlaps(address: number, length: number, start: number, size: number): boolean {
  return address < start + size && start < address + length;
}

/**
 * Reads the entries of an indirect descriptor table with no allocation: in
 * place when the table is contiguous in host memory (the `DataView` over the
 * backing region is cached), otherwise one entry at a time into a scratch buffer.
 */
export class IndirectTable {
  /** The view to read the current entry from, at the offset {@linkcode IndirectTable.entry} returned. */
  data: DataView = EMPTY_VIEW;
  readonly #dma: DmaSpace;
  readonly #t: DmaTranslation = new DmaTranslation();
  readonly #entry: Uint8Array = new Uint8Array(VRING_DESC_SIZE);
  readonly #entryView: DataView = new DataView(this.#entry.buffer);
  #regionBytes: Uint8Array | null = null;
  #regionView: DataView = EMPTY_VIEW;
  #address = 0;
  #base = 0;
  #contiguous = false;

  /** Creates a reader over `dma`. */
  constructor(dma: DmaSpace) {
    this.#dma = dma;
  }

  /**
   * Prepares to read the table of `length` bytes at `address`.
   *
   * @throws {DmaFault} when its first byte is not readable
   */
  map(address: number, length: number): void {
    const t = this.#t;
    this.#dma.translate(address, length, DmaAccess.Read, t);
    this.#address = address;
    if (t.length >= length) {
      if (t.bytes !== this.#regionBytes) {
        this.#regionBytes = t.bytes;
        this.#regionView = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
      }
      this.data = this.#regionView;
      this.#base = t.offset;
      this.#contiguous = true;
    } else {
      this.data = this.#entryView;
      this.#base = 0;
      this.#contiguous = false;
    }
  }

  /**
   * Returns the offset in {@linkcode IndirectTable.data} of entry `j`.
   *
   * @throws {DmaFault} when the entry is not readable
   */
  entry(j: number): number {
    if (this.#contiguous) return this.#base + j * VRING_DESC_SIZE;
    this.#dma.read(this.#address + j * VRING_DESC_SIZE, this.#entry);
    return 0;
  }

  /** Drops the cached region view. */
  release(): void {
    this.#regionBytes = null;
    this.#regionView = EMPTY_VIEW;
    this.data = EMPTY_VIEW;
    this.#t.bytes = new Uint8Array(0);
  }
}
