/**
 * The clock the emulated VDUSE kernel uses for message timeouts, injectable
 * so tests run a 30-second timeout in no time.
 *
 * @module
 */

/** A `setTimeout` / `clearTimeout` pair (the global one by default). */
export interface VduseTimers {
  /** Calls `callback` once after `ms` milliseconds; returns a handle. */
  setTimeout(callback: () => void, ms: number): unknown;
  /** Cancels a pending callback. */
  clearTimeout(handle: unknown): void;
}

/** The host's timers (`globalThis.setTimeout`), available in Deno, browsers and Node. */
export const globalTimers: VduseTimers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as number),
};

/**
 * A manual clock: callbacks run only when {@linkcode ManualTimers.advance}
 * moves time past their deadline.
 *
 * @example
 * ```ts
 * import { ManualTimers } from "@vireo/vireo/transports/vduse";
 * const timers = new ManualTimers();
 * let fired = false;
 * timers.setTimeout(() => fired = true, 30_000);
 * timers.advance(29_999);
 * console.log(fired); // false
 * timers.advance(1);
 * console.log(fired); // true
 * ```
 */
export class ManualTimers implements VduseTimers {
  /** Milliseconds since creation. */
  now = 0;
  #next = 1;
  readonly #pending = new Map<number, { at: number; callback: () => void }>();

  /** Schedules `callback` at `now + ms`. */
  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.#next++;
    this.#pending.set(id, { at: this.now + Math.max(0, ms), callback });
    return id;
  }

  /** Cancels a pending callback. */
  clearTimeout(handle: unknown): void {
    this.#pending.delete(handle as number);
  }

  /** Callbacks not yet run. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Moves time forward by `ms`, running due callbacks in deadline order. */
  advance(ms: number): void {
    const until = this.now + ms;
    for (;;) {
      let best: number | undefined;
      for (const [id, t] of this.#pending) {
        if (t.at <= until && (best === undefined || t.at < this.#pending.get(best)!.at)) best = id;
      }
      if (best === undefined) break;
      const t = this.#pending.get(best)!;
      this.#pending.delete(best);
      this.now = t.at;
      t.callback();
    }
    this.now = until;
  }
}
