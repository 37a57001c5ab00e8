/**
 * Backends for device tests: one whose operations complete only when the test
 * says so (in any order), and one with a volatile write cache that a "crash"
 * throws away.
 */
import type {
  BlockBackend,
  BlockOperation,
} from "../../../../devices/blk/backends/block_backend.ts";
import { MemoryBackend } from "../../../../devices/blk/backends/memory.ts";

/** One operation held by a {@linkcode DeferredBackend}. */
export interface HeldOp {
  op: BlockOperation;
  offset: number;
  length: number;
  /** Performs the operation on the inner backend and resolves (or rejects with `error`). */
  complete(error?: unknown): void;
}

/** Every operation returns a promise that settles when the test completes it. */
export class DeferredBackend implements BlockBackend {
  readonly inner: MemoryBackend;
  readonly held: HeldOp[] = [];
  constructor(inner: MemoryBackend | number) {
    this.inner = typeof inner === "number" ? new MemoryBackend(inner) : inner;
  }
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  #hold(op: BlockOperation, offset: number, length: number, run: () => void): Promise<void> {
    return new Promise((resolve, reject) => {
      this.held.push({
        op,
        offset,
        length,
        complete: (error?: unknown) => {
          if (error !== undefined) return reject(error);
          try {
            run();
            resolve();
          } catch (e) {
            reject(e);
          }
        },
      });
    });
  }
  read(offset: number, dest: Uint8Array): Promise<void> {
    return this.#hold("read", offset, dest.length, () => this.inner.read(offset, dest));
  }
  write(offset: number, src: Uint8Array): Promise<void> {
    return this.#hold("write", offset, src.length, () => this.inner.write(offset, src));
  }
  flush(): Promise<void> {
    return this.#hold("flush", -1, 0, () => this.inner.flush());
  }
  discard(offset: number, length: number): Promise<void> {
    return this.#hold("discard", offset, length, () => this.inner.discard(offset, length));
  }
  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    return this.#hold(
      "writeZeroes",
      offset,
      length,
      () => this.inner.writeZeroes(offset, length, unmap),
    );
  }
  /** Completes every held operation, newest first (or oldest first), then lets promise callbacks run. */
  async completeAll(order: "reverse" | "fifo" = "reverse"): Promise<void> {
    const ops = this.held.splice(0);
    if (order === "reverse") ops.reverse();
    for (const op of ops) op.complete();
    await settle();
  }
  /** Completes the held operation at position `i`. */
  async completeAt(i: number, error?: unknown): Promise<void> {
    const [op] = this.held.splice(i, 1);
    op.complete(error);
    await settle();
  }
}

/**
 * A disk with a volatile write cache: writes land in `current`, `flush` copies
 * it to `durable`, `crash()` throws the cache away. Synchronous.
 */
export class VolatileBackend implements BlockBackend {
  readonly current: Uint8Array;
  readonly durable: Uint8Array;
  readonly readOnly = false;
  flushes = 0;
  constructor(size: number) {
    this.current = new Uint8Array(size);
    this.durable = new Uint8Array(size);
  }
  get size(): number {
    return this.current.length;
  }
  read(offset: number, dest: Uint8Array): void {
    dest.set(this.current.subarray(offset, offset + dest.length));
  }
  write(offset: number, src: Uint8Array): void {
    this.current.set(src, offset);
  }
  flush(): void {
    this.flushes++;
    this.durable.set(this.current);
  }
  discard(offset: number, length: number): void {
    this.current.fill(0, offset, offset + length);
  }
  writeZeroes(offset: number, length: number): void {
    this.current.fill(0, offset, offset + length);
  }
  /** Loses everything not flushed. */
  crash(): void {
    this.current.set(this.durable);
  }
}

/** Lets pending promise callbacks run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
  await new Promise((r) => setTimeout(r, 0));
}

/** A memory disk whose operations complete after a random short delay, in random order. */
export class RandomDelayBackend implements BlockBackend {
  readonly inner: MemoryBackend;
  #seed: number;
  constructor(size: number, seed = 1) {
    this.inner = new MemoryBackend(size);
    this.#seed = seed;
  }
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return false;
  }
  #later(run: () => void): Promise<void> {
    this.#seed = (this.#seed * 1103515245 + 12345) >>> 0;
    const delay = this.#seed % 3;
    return new Promise((resolve, reject) =>
      setTimeout(() => {
        try {
          run();
          resolve();
        } catch (e) {
          reject(e);
        }
      }, delay)
    );
  }
  read(offset: number, dest: Uint8Array): Promise<void> {
    return this.#later(() => this.inner.read(offset, dest));
  }
  write(offset: number, src: Uint8Array): Promise<void> {
    return this.#later(() => this.inner.write(offset, src));
  }
  flush(): Promise<void> {
    return this.#later(() => {});
  }
  discard(offset: number, length: number): Promise<void> {
    return this.#later(() => this.inner.discard(offset, length));
  }
  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    return this.#later(() => this.inner.writeZeroes(offset, length, unmap));
  }
}
