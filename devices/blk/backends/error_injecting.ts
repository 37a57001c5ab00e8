import type { BlockBackend, BlockOperation, BlockResult } from "./block_backend.ts";

/** One fault to inject: which operations, where, how many times, and how. */
export interface BlockFault {
  /** Operations it applies to; all of them when omitted. */
  ops?: readonly BlockOperation[];
  /**
   * Only operations overlapping `[offset, offset + length)` fail (flush has no
   * range and always matches). Every offset when omitted.
   */
  offset?: number;
  /** Length of the range (with `offset`); 1 byte when omitted. */
  length?: number;
  /** How many matching operations fail before the fault is used up (at least 1). Default: unlimited. */
  count?: number;
  /** The error to raise. Default: an `Error` naming the operation. */
  error?: unknown;
  /** Fail with a rejected promise instead of a synchronous throw. Default false. */
  async?: boolean;
}

/**
 * A {@linkcode BlockBackend} wrapper that fails chosen operations, for testing
 * how a device reports backend errors. Operations that do not match a fault go
 * to the wrapped backend unchanged (synchronous stays synchronous).
 *
 * @example
 * ```ts
 * import { ErrorInjectingBackend, MemoryBackend } from "@vireo/vireo/blk";
 * const disk = new ErrorInjectingBackend(new MemoryBackend(4096));
 * disk.inject({ ops: ["write"], offset: 1024, length: 512, count: 1 });
 * try {
 *   disk.write(1024, new Uint8Array(512));
 * } catch (e) {
 *   console.log((e as Error).message); // "Injected write fault at offset 1024"
 * }
 * disk.write(1024, new Uint8Array(512)); // the fault is used up
 * ```
 */
export class ErrorInjectingBackend implements BlockBackend {
  /** The wrapped backend. */
  readonly inner: BlockBackend;
  /** Faults still armed, in the order they were injected (the first match applies). */
  readonly faults: BlockFault[] = [];
  /** How many operations failed because of an injected fault. */
  injected = 0;

  /** Wraps `inner`. @throws {TypeError} when `inner` is not a backend */
  constructor(inner: BlockBackend) {
    if (typeof inner?.read !== "function" || typeof inner.write !== "function") {
      throw new TypeError("Cannot wrap a block backend: expected a BlockBackend");
    }
    this.inner = inner;
  }

  /** The wrapped backend's size. */
  get size(): number {
    return this.inner.size;
  }

  /** The wrapped backend's read-only flag. */
  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /**
   * Arms a fault.
   *
   * @throws {RangeError} when `offset` or `length` is not a non-negative integer, or `count` not a positive one
   */
  inject(fault: BlockFault): void {
    for (const key of ["offset", "length"] as const) {
      const v = fault[key];
      if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0)) {
        throw new RangeError(
          `Cannot inject a block fault: ${key} ${v} is not a non-negative integer`,
        );
      }
    }
    const count = fault.count;
    if (count !== undefined && !(Number.isSafeInteger(count) && count >= 1) && count !== Infinity) {
      throw new RangeError(`Cannot inject a block fault: count ${count} is not a positive integer`);
    }
    this.faults.push({ ...fault });
  }

  /** Disarms every fault. */
  clearFaults(): void {
    this.faults.length = 0;
  }

  /** See {@linkcode BlockBackend.read}. */
  read(offset: number, dest: Uint8Array): BlockResult {
    return this.#check("read", offset, dest.length) ?? this.inner.read(offset, dest);
  }

  /** See {@linkcode BlockBackend.write}. */
  write(offset: number, src: Uint8Array): BlockResult {
    return this.#check("write", offset, src.length) ?? this.inner.write(offset, src);
  }

  /** See {@linkcode BlockBackend.flush}. */
  flush(): BlockResult {
    return this.#check("flush", -1, 0) ?? this.inner.flush();
  }

  /** See {@linkcode BlockBackend.discard}. */
  discard(offset: number, length: number): BlockResult {
    return this.#check("discard", offset, length) ?? this.inner.discard(offset, length);
  }

  /** See {@linkcode BlockBackend.writeZeroes}. */
  writeZeroes(offset: number, length: number, unmap: boolean): BlockResult {
    return this.#check("writeZeroes", offset, length) ??
      this.inner.writeZeroes(offset, length, unmap);
  }

  /** Throws (or returns a rejected promise) when a fault matches; else returns undefined. */
  #check(op: BlockOperation, offset: number, length: number): Promise<void> | undefined {
    if (this.faults.length === 0) return undefined;
    const i = this.faults.findIndex((f) => matches(f, op, offset, length));
    if (i < 0) return undefined;
    const fault = this.faults[i];
    if (fault.count !== undefined && --fault.count <= 0) this.faults.splice(i, 1);
    this.injected++;
    const error = fault.error ??
      new Error(`Injected ${op} fault${offset >= 0 ? ` at offset ${offset}` : ""}`);
    if (fault.async) return Promise.reject(error);
    throw error;
  }
}

function matches(f: BlockFault, op: BlockOperation, offset: number, length: number): boolean {
  if (f.ops !== undefined && !f.ops.includes(op)) return false;
  if (f.offset === undefined || offset < 0) return true;
  const end = f.offset + (f.length ?? 1);
  return offset < end && offset + Math.max(length, 1) > f.offset;
}
