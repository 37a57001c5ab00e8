import { BufferFrame, type NetFrame } from "../net_frame.ts";
import type { NetPort } from "./net_backend.ts";

/**
 * A bounded FIFO of frames held for a device whose guest has posted no
 * receive buffer: frames are copied in (with their offload metadata) and
 * offered again when the device calls `rxReady`. When full, new frames are
 * dropped and counted in {@linkcode FrameBacklog.drops}.
 *
 * Slot buffers are allocated on first use and grow to the largest frame
 * they held, so a backlog of `capacity` frames holds at most
 * `capacity × 64 KiB`.
 */
export class FrameBacklog {
  /** Most frames held. */
  readonly capacity: number;
  /** Frames dropped because the backlog was full. */
  drops = 0;
  readonly #slots: Uint8Array[] = [];
  readonly #frames: BufferFrame[] = [];
  #head = 0;
  #count = 0;

  /**
   * Creates an empty backlog.
   *
   * @throws {RangeError} when `capacity` is not an integer in 0..65536
   */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 0 || capacity > 65536) {
      throw new RangeError(
        `Cannot create a frame backlog: capacity ${capacity} is not in 0..65536`,
      );
    }
    this.capacity = capacity;
  }

  /** Frames held. */
  get length(): number {
    return this.#count;
  }

  /** Copies `frame` in; returns false (counting a drop) when full. */
  push(frame: NetFrame): boolean {
    if (this.#count === this.capacity) {
      this.drops++;
      return false;
    }
    const i = (this.#head + this.#count) % this.capacity;
    if (this.#frames[i] === undefined) {
      this.#frames[i] = new BufferFrame();
      this.#slots[i] = new Uint8Array(0);
    }
    if (this.#slots[i].length < frame.length) this.#slots[i] = new Uint8Array(frame.length);
    const bytes = this.#slots[i].subarray(0, frame.length);
    frame.rewind();
    frame.read(bytes);
    const held = this.#frames[i].set(bytes);
    held.header.copyFrom(frame.header);
    this.#count++;
    return true;
  }

  /**
   * Offers the held frames to `port` in order until it defers one; returns
   * how many it consumed. Calls `port.flush()` when any were consumed.
   */
  drain(port: NetPort): number {
    let n = 0;
    while (this.#count > 0) {
      const frame = this.#frames[this.#head];
      frame.rewind();
      if (!port.receive(frame, true)) break;
      this.#head = (this.#head + 1) % this.capacity;
      this.#count--;
      n++;
    }
    if (n > 0) port.flush();
    return n;
  }

  /** Drops every held frame (not counted). */
  clear(): void {
    this.#head = 0;
    this.#count = 0;
  }
}
