/**
 * A raw disk image in a file, through Deno's file API (Deno only).
 *
 * @module
 */
import { type BlockBackend, checkBlockRange } from "./block_backend.ts";

/** Options of {@linkcode FileBackend.open}. */
export interface FileBackendOptions {
  /** Open the image read-only (the device offers VIRTIO_BLK_F_RO). Default false. */
  readOnly?: boolean;
  /** Create the file when missing (needs `size`). Default false. */
  create?: boolean;
  /**
   * The disk size in bytes. When given, the file is extended (sparse) or
   * truncated to it; by default the size is the file's current length.
   */
  size?: number;
  /**
   * How `flush` makes writes durable: `"data"` (fdatasync, the default) or
   * `"full"` (fsync, metadata too).
   */
  sync?: "data" | "full";
}

const ZERO_CHUNK = 1 << 20;

/**
 * A raw image file as a block device. Every operation is asynchronous and runs
 * in submission order (Deno's file API has no positional I/O, so each one is a
 * seek followed by reads or writes, and operations may not interleave).
 *
 * `flush` is `fdatasync` (or `fsync` with `sync: "full"`) after every earlier
 * operation finished: once it resolves, every write that completed before it
 * was called is on stable storage. `discard` is a no-op (Deno cannot punch
 * holes); `writeZeroes` writes zeros.
 *
 * @example
 * ```ts ignore
 * import { FileBackend } from "@vireo/vireo/blk/file-deno";
 * const disk = await FileBackend.open("disk.img", { create: true, size: 1 << 20 });
 * await disk.write(0, new Uint8Array(512).fill(7));
 * await disk.flush();
 * disk.close();
 * ```
 */
export class FileBackend implements BlockBackend {
  /** The image path. */
  readonly path: string | URL;
  /** Size in bytes. */
  readonly size: number;
  /** True when opened read-only. */
  readonly readOnly: boolean;
  readonly #file: Deno.FsFile;
  readonly #fullSync: boolean;
  #tail: Promise<void> = Promise.resolve();
  #closed = false;
  #zeros: Uint8Array | null = null;

  private constructor(
    path: string | URL,
    file: Deno.FsFile,
    size: number,
    readOnly: boolean,
    fullSync: boolean,
  ) {
    this.path = path;
    this.#file = file;
    this.size = size;
    this.readOnly = readOnly;
    this.#fullSync = fullSync;
  }

  /**
   * Opens (or creates) an image file.
   *
   * @param path the image
   * @param options read-only, create, size, sync mode
   * @returns the backend
   * @throws {TypeError} on malformed options
   * @throws {RangeError} when `size` is not a byte count
   * @throws {Deno.errors.NotFound} when the file is missing and `create` is not set
   */
  static async open(path: string | URL, options: FileBackendOptions = {}): Promise<FileBackend> {
    if (typeof path !== "string" && !(path instanceof URL)) {
      throw new TypeError("Cannot open a disk image: path must be a string or URL");
    }
    const { readOnly = false, create = false, size, sync = "data" } = options;
    if (sync !== "data" && sync !== "full") {
      throw new TypeError(`Cannot open a disk image: sync must be "data" or "full", not "${sync}"`);
    }
    if (size !== undefined && !(Number.isSafeInteger(size) && size >= 0)) {
      throw new RangeError(`Cannot open a disk image: size ${size} is not a byte count`);
    }
    if (readOnly && (create || size !== undefined)) {
      throw new TypeError("Cannot open a disk image read-only with create or size");
    }
    if (create && size === undefined) {
      throw new TypeError("Cannot create a disk image without a size");
    }
    const file = await Deno.open(path, { read: true, write: !readOnly, create });
    try {
      let bytes: number;
      if (size !== undefined) {
        await file.truncate(size);
        bytes = size;
      } else {
        bytes = (await file.stat()).size;
      }
      return new FileBackend(path, file, bytes, readOnly, sync === "full");
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** See {@linkcode BlockBackend.read}: bytes past the end of a short file read as zero. */
  read(offset: number, dest: Uint8Array): Promise<void> {
    checkBlockRange("read", offset, dest.length, this.size);
    return this.#enqueue(async () => {
      const file = this.#file;
      await file.seek(offset, Deno.SeekMode.Start);
      let pos = 0;
      while (pos < dest.length) {
        const n = await file.read(pos === 0 ? dest : dest.subarray(pos));
        if (n === null) {
          dest.fill(0, pos);
          break;
        }
        pos += n;
      }
    });
  }

  /** See {@linkcode BlockBackend.write}. */
  write(offset: number, src: Uint8Array): Promise<void> {
    checkBlockRange("write", offset, src.length, this.size);
    if (this.readOnly) return Promise.reject(new RangeError("Cannot write a read-only disk image"));
    return this.#enqueue(() => this.#writeAll(offset, src));
  }

  /** See {@linkcode BlockBackend.flush}: fdatasync (or fsync) after every earlier operation. */
  flush(): Promise<void> {
    return this.#enqueue(() => (this.#fullSync ? this.#file.sync() : this.#file.syncData()));
  }

  /** See {@linkcode BlockBackend.discard}: a no-op (the range keeps its contents). */
  discard(offset: number, length: number): Promise<void> {
    checkBlockRange("discard", offset, length, this.size);
    return this.#enqueue(() => Promise.resolve());
  }

  /** See {@linkcode BlockBackend.writeZeroes}: writes zeros in 1 MiB chunks. */
  writeZeroes(offset: number, length: number, _unmap: boolean): Promise<void> {
    checkBlockRange("zero", offset, length, this.size);
    if (this.readOnly) return Promise.reject(new RangeError("Cannot write a read-only disk image"));
    return this.#enqueue(async () => {
      const zeros = this.#zeros ??= new Uint8Array(ZERO_CHUNK);
      for (let done = 0; done < length; done += ZERO_CHUNK) {
        const n = Math.min(ZERO_CHUNK, length - done);
        await this.#writeAll(offset + done, n === ZERO_CHUNK ? zeros : zeros.subarray(0, n));
      }
    });
  }

  /** Closes the file after every queued operation; later operations reject. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#tail;
    this.#file.close();
  }

  async #writeAll(offset: number, data: Uint8Array): Promise<void> {
    const file = this.#file;
    await file.seek(offset, Deno.SeekMode.Start);
    let pos = 0;
    while (pos < data.length) pos += await file.write(pos === 0 ? data : data.subarray(pos));
  }

  /** Runs `op` after every operation queued before it. */
  #enqueue(op: () => Promise<void>): Promise<void> {
    if (this.#closed) {
      return Promise.reject(new Error(`Cannot use disk image ${this.path}: it is closed`));
    }
    const p = this.#tail.then(op);
    this.#tail = p.then(ignore, ignore);
    return p;
  }
}

function ignore(): void {}
