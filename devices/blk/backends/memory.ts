import { type BlockBackend, checkBlockRange } from "./block_backend.ts";

/** Options of a {@linkcode MemoryBackend}. */
export interface MemoryBackendOptions {
  /** Refuse writes (the device offers VIRTIO_BLK_F_RO). Default false. */
  readOnly?: boolean;
}

/**
 * A disk held in a `Uint8Array`: every operation completes synchronously, so
 * the device completes requests inside `notify` with no promise at all.
 * `flush` has nothing to do (the process is the only place the data lives).
 *
 * @example
 * ```ts
 * import { MemoryBackend } from "@vireo/vireo/blk";
 * const disk = new MemoryBackend(1 << 20);
 * disk.write(512, new Uint8Array([1, 2, 3]));
 * const out = new Uint8Array(3);
 * disk.read(512, out);
 * console.log(out); // Uint8Array(3) [ 1, 2, 3 ]
 * ```
 */
export class MemoryBackend implements BlockBackend {
  /** The disk contents (shared, not copied, when passed in). */
  readonly bytes: Uint8Array;
  /** Size in bytes. */
  readonly size: number;
  /** True when writes are refused. */
  readonly readOnly: boolean;

  /**
   * Creates a zero-filled disk of `size` bytes, or wraps existing bytes.
   *
   * @param sizeOrBytes a size in bytes, or the disk contents to use in place
   * @param options read-only flag
   * @throws {RangeError} when the size is not a non-negative integer
   * @throws {TypeError} when `sizeOrBytes` is neither a number nor a `Uint8Array`
   */
  constructor(sizeOrBytes: number | Uint8Array, options: MemoryBackendOptions = {}) {
    if (typeof sizeOrBytes === "number") {
      if (!Number.isSafeInteger(sizeOrBytes) || sizeOrBytes < 0) {
        throw new RangeError(`Cannot create a memory disk of ${sizeOrBytes} bytes`);
      }
      this.bytes = new Uint8Array(sizeOrBytes);
    } else if (sizeOrBytes instanceof Uint8Array) {
      this.bytes = sizeOrBytes;
    } else {
      throw new TypeError("Cannot create a memory disk: expected a size or a Uint8Array");
    }
    this.size = this.bytes.length;
    this.readOnly = options.readOnly ?? false;
  }

  /** Copies the bytes at `offset` into `dest`. @throws {RangeError} outside the disk */
  read(offset: number, dest: Uint8Array): void {
    const end = offset + dest.length;
    if (!(offset >= 0 && end <= this.size)) checkBlockRange("read", offset, dest.length, this.size);
    dest.set(this.bytes.subarray(offset, end));
  }

  /** Copies `src` to `offset`. @throws {RangeError} outside the disk, or on a read-only disk */
  write(offset: number, src: Uint8Array): void {
    if (!(offset >= 0 && offset + src.length <= this.size)) {
      checkBlockRange("write", offset, src.length, this.size);
    }
    if (this.readOnly) throw new RangeError("Cannot write a read-only memory disk");
    this.bytes.set(src, offset);
  }

  /** Nothing to make durable. */
  flush(): void {}

  /** Zeroes the range (discarded contents are unspecified; zero is one choice). */
  discard(offset: number, length: number): void {
    this.writeZeroes(offset, length);
  }

  /** Zeroes `length` bytes at `offset`. @throws {RangeError} outside the disk, or read-only */
  writeZeroes(offset: number, length: number, _unmap = false): void {
    checkBlockRange("zero", offset, length, this.size);
    if (this.readOnly) throw new RangeError("Cannot write a read-only memory disk");
    this.bytes.fill(0, offset, offset + length);
  }
}
