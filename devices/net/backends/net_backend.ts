import type { NetFrame } from "../net_frame.ts";

/**
 * The receive side of a virtio-net device as a backend sees it: where the
 * backend delivers frames for the guest.
 */
export interface NetPort {
  /**
   * Offers a frame to the guest. Returns true when the device consumed it:
   * delivered into receive buffers, or dropped and counted (filtered, too big,
   * link down, offload the guest did not accept). Returns false only when
   * `mayDefer` is true and the guest has posted no receive buffer: nothing is
   * counted, and the device calls {@linkcode NetBackend.rxReady} once buffers
   * arrive. With `mayDefer` false a frame that finds no buffer is dropped and
   * counted (`noRxAvailBuffer`).
   *
   * Received frames become visible to the guest at the next
   * {@linkcode NetPort.flush}.
   */
  receive(frame: NetFrame, mayDefer: boolean): boolean;
  /** Publishes the frames received since the last flush and interrupts the guest if it wants. */
  flush(): void;
}

/**
 * Where a virtio-net device's frames go: a peer device, a socket, a recorder.
 *
 * The device calls {@linkcode NetBackend.attach} once with its
 * {@linkcode NetPort}; then {@linkcode NetBackend.send} for each transmitted
 * frame, {@linkcode NetBackend.flush} after each batch, and
 * {@linkcode NetBackend.rxReady} whenever the guest posts receive buffers.
 * Backends must keep every queue they have bounded.
 */
export interface NetBackend {
  /** Connects the device's receive side. @throws {TypeError} when already attached */
  attach(port: NetPort): void;
  /**
   * Carries one transmitted frame. The frame is only valid during the call:
   * copy out what is kept. Returns false when the frame was dropped here
   * (no peer, closed, queue full); the device counts it.
   */
  send(frame: NetFrame): boolean;
  /** Ends a batch of {@linkcode NetBackend.send} calls. */
  flush(): void;
  /** The guest posted receive buffers: deliver frames held for it. */
  rxReady(): void;
  /** Stops the backend and releases what it holds (sockets, files). Idempotent. */
  close(): void;
}

/** A backend that drops every frame: what a device without a backend uses. */
export class NullBackend implements NetBackend {
  /** See {@linkcode NetBackend.attach}. */
  attach(_port: NetPort): void {}
  /** Drops the frame: returns false. */
  send(_frame: NetFrame): boolean {
    return false;
  }
  /** See {@linkcode NetBackend.flush}. */
  flush(): void {}
  /** See {@linkcode NetBackend.rxReady}. */
  rxReady(): void {}
  /** See {@linkcode NetBackend.close}. */
  close(): void {}
}
