/**
 * The storage behind a virtio-blk device.
 *
 * @module
 */

/**
 * The result of a backend operation: `undefined` when it completed
 * synchronously, or a promise that settles when it completes. A synchronous
 * failure is thrown; an asynchronous one rejects.
 *
 * Returning `undefined` lets a fast backend (memory) complete a request within
 * the same `notify` call, with no promise and no microtask; slow backends
 * (files, network) return promises and the device completes the request later.
 */
export type BlockResult = void | Promise<void>;

/**
 * Byte-addressed storage for {@linkcode VirtioBlk}. Every method may complete
 * synchronously (return `undefined`) or asynchronously (return a promise).
 *
 * The device only issues in-range requests: `offset + length <= size`,
 * offsets and lengths multiples of 512. Any thrown error or rejected promise
 * completes the guest request with VIRTIO_BLK_S_IOERR.
 *
 * Buffers passed to `read` and `write` are views into guest memory: a backend
 * must finish with them before it completes and must not keep them.
 *
 * Durability contract: `flush` completes only once every write that completed
 * before `flush` was called survives a crash of the process (and, for files, of
 * the machine: fsync / fdatasync).
 */
export interface BlockBackend {
  /** Size in bytes; the device's capacity is `floor(size / 512)` sectors. */
  readonly size: number;
  /** True when writes are refused: the device offers VIRTIO_BLK_F_RO. */
  readonly readOnly: boolean;
  /** Fills `dest` with the bytes at `offset`. */
  read(offset: number, dest: Uint8Array): BlockResult;
  /** Stores `src` at `offset`. */
  write(offset: number, src: Uint8Array): BlockResult;
  /** Makes every completed write durable. */
  flush(): BlockResult;
  /** Hints that `length` bytes at `offset` are unused; their contents become unspecified. */
  discard(offset: number, length: number): BlockResult;
  /** Sets `length` bytes at `offset` to zero; `unmap` allows deallocating them. */
  writeZeroes(offset: number, length: number, unmap: boolean): BlockResult;
}

/** The operations of a {@linkcode BlockBackend}, as names (for fault injection and tracing). */
export type BlockOperation = "read" | "write" | "flush" | "discard" | "writeZeroes";

/**
 * Throws `RangeError` unless `[offset, offset + length)` lies inside a backend
 * of `size` bytes. Backends use it to reject host API misuse.
 *
 * @param what the operation, for the message
 * @param offset first byte
 * @param length bytes
 * @param size the backend's size
 * @throws {RangeError} when the range is not inside the backend
 *
 * @example
 * ```ts
 * import { checkBlockRange } from "@vireo/vireo/blk";
 * checkBlockRange("read", 0, 512, 4096); // fine
 * ```
 */
export function checkBlockRange(what: string, offset: number, length: number, size: number): void {
  if (
    !(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 &&
      offset + length <= size)
  ) {
    throw new RangeError(
      `Cannot ${what} ${length} bytes at offset ${offset}: outside the ${size}-byte backend`,
    );
  }
}
