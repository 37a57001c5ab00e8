import { GuestFault } from "../guest_fault.ts";

/** What is wrong with a ring the driver wrote. */
export type VirtqueueErrorKind =
  | "descriptor-loop"
  | "chain-too-long"
  | "nested-indirect"
  | "indirect-not-negotiated"
  | "indirect-with-next"
  | "bad-indirect-length"
  | "readable-after-writable"
  | "bad-head"
  | "bad-next"
  | "avail-index-jump"
  | "bad-buffer-id"
  | "ring-not-contiguous"
  | "bad-address";

/**
 * A malformed virtqueue: the driver broke a rule of the ring layout. The
 * transport turns it into DEVICE_NEEDS_RESET.
 */
export class VirtqueueError extends GuestFault {
  /** Which rule was broken. */
  readonly kind: VirtqueueErrorKind;
  /** The queue index. */
  readonly queue: number;

  /** Creates an error for queue `queue`. */
  constructor(queue: number, kind: VirtqueueErrorKind, detail: string) {
    super(`Virtqueue ${queue}: ${detail} (${kind})`);
    this.kind = kind;
    this.queue = queue;
  }
}
