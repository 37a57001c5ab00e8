import type { NetFrame } from "../net_frame.ts";
import { FrameBacklog } from "./frame_backlog.ts";
import type { NetBackend, NetPort } from "./net_backend.ts";

/** Options of {@linkcode createPair}. */
export interface PairOptions {
  /**
   * Frames each end holds for its device while that device's guest has no
   * receive buffer (copied, bounded; default 0: such a frame is dropped at
   * the receiving device and counted in its `noRxAvailBuffer`, like a NIC
   * with an empty ring).
   */
  backlog?: number;
}

/** Counters of one end of a pair. */
export interface PairStats {
  /** Frames this end carried to the peer. */
  sent: number;
  /** Frames this end refused: no peer device attached, or closed. */
  dropped: number;
}

/**
 * One end of a virtual cable between two virtio-net devices in the same
 * process ({@linkcode createPair}). A frame a device sends is copied once,
 * straight from its transmit chain into the peer's receive buffers.
 */
export class PairBackend implements NetBackend {
  /** Counters of this end. */
  readonly stats: PairStats = { sent: 0, dropped: 0 };
  /** Frames held for this end's device (empty unless `backlog` was set). */
  readonly backlog: FrameBacklog;
  #port: NetPort | null = null;
  #peer: PairBackend | null = null;
  #closed = false;

  /** Creates an unconnected end; use {@linkcode createPair}. */
  constructor(options: PairOptions = {}) {
    this.backlog = new FrameBacklog(options.backlog ?? 0);
  }

  /** The other end. */
  get peer(): PairBackend | null {
    return this.#peer;
  }

  /** Connects two ends (what {@linkcode createPair} does). @throws {TypeError} when either is connected */
  static connect(a: PairBackend, b: PairBackend): void {
    if (a.#peer !== null || b.#peer !== null || a === b) {
      throw new TypeError("Cannot connect pair ends: an end is already connected");
    }
    a.#peer = b;
    b.#peer = a;
  }

  /** See {@linkcode NetBackend.attach}. @throws {TypeError} when a device is already attached */
  attach(port: NetPort): void {
    if (this.#port !== null) {
      throw new TypeError("Cannot attach a device to a pair end: a device is already attached");
    }
    this.#port = port;
  }

  /** Carries `frame` into the peer device's receive buffers. */
  send(frame: NetFrame): boolean {
    const peer = this.#peer;
    if (this.#closed || peer === null || !peer.#deliver(frame)) {
      this.stats.dropped++;
      return false;
    }
    this.stats.sent++;
    return true;
  }

  /** Publishes what the peer device received in this batch. */
  flush(): void {
    const peer = this.#peer;
    if (peer !== null && peer.#port !== null) peer.#port.flush();
  }

  /** This end's device has receive buffers again: deliver the backlog. */
  rxReady(): void {
    if (this.#port !== null && this.backlog.length > 0) this.backlog.drain(this.#port);
  }

  /** Disconnects this end: frames sent either way are dropped from now on. */
  close(): void {
    this.#closed = true;
    this.backlog.clear();
    if (this.#peer !== null) this.#peer.#closed = true;
  }

  /** A frame from the peer for this end's device. */
  #deliver(frame: NetFrame): boolean {
    const port = this.#port;
    if (this.#closed || port === null) return false;
    const backlog = this.backlog;
    if (backlog.capacity === 0) return port.receive(frame, false);
    // Frames already held go first; the device drains them when it calls rxReady.
    if (backlog.length === 0 && port.receive(frame, true)) return true;
    return backlog.push(frame);
  }
}

/**
 * Creates the two ends of a virtual cable: give one to each device.
 *
 * @example
 * ```ts
 * import { createPair, VirtioNet } from "@vireo/vireo/net";
 * const [a, b] = createPair();
 * const left = new VirtioNet({ mac: "52:54:00:00:00:01", backend: a });
 * const right = new VirtioNet({ mac: "52:54:00:00:00:02", backend: b });
 * console.log(left.backend === a, right.backend === b); // true true
 * ```
 */
export function createPair(options: PairOptions = {}): [PairBackend, PairBackend] {
  const a = new PairBackend(options);
  const b = new PairBackend(options);
  PairBackend.connect(a, b);
  return [a, b];
}
