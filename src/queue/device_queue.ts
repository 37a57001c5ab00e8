import type { DescriptorChain } from "./descriptor_chain.ts";

/**
 * Where a virtqueue's rings live and how it was negotiated: what a transport
 * learned from the driver's register writes and hands to the queue.
 */
export interface QueueConfig {
  /** Queue index within the device. */
  index: number;
  /** Ring size chosen by the driver (a power of two for split rings; 1..32768). */
  size: number;
  /** Device address of the descriptor table (split) or descriptor ring (packed). */
  descAddr: number;
  /** Device address of the available ring (split) or driver event suppression area (packed). */
  driverAddr: number;
  /** Device address of the used ring (split) or device event suppression area (packed). */
  deviceAddr: number;
  /** VIRTIO_RING_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC was negotiated. */
  indirect: boolean;
  /** VIRTIO_F_IN_ORDER was negotiated. */
  inOrder: boolean;
}

/**
 * The device side of one virtqueue, split or packed: the only queue interface a
 * device model uses, so models never care which layout was negotiated.
 *
 * Every method that reads guest memory throws {@linkcode VirtqueueError} (for a
 * malformed ring) or `DmaFault` (for an address it cannot reach), and nothing
 * else; the transport turns either into DEVICE_NEEDS_RESET.
 */
export interface DeviceQueue {
  /** Queue index within the device. */
  readonly index: number;
  /** Ring size. */
  readonly size: number;
  /** True for the packed layout. */
  readonly packed: boolean;
  /**
   * Takes the next available chain into `chain` (a reused object); returns
   * false when the driver has made nothing new available.
   */
  pop(chain: DescriptorChain): boolean;
  /**
   * Returns the chain identified by `token` (from {@linkcode DescriptorChain.token})
   * to the driver with `written` bytes written to its writable part. The entry
   * may stay invisible to the driver until {@linkcode DeviceQueue.publishUsed}.
   */
  push(token: number, written: number): void;
  /**
   * Makes every pushed entry visible to the driver and returns true when the
   * driver must be interrupted now (notification suppression and event idx applied).
   */
  publishUsed(): boolean;
  /**
   * Asks the driver to stop (`false`) or resume (`true`) notifying the device.
   * Resuming returns true when buffers became available meanwhile, so the
   * device must poll again instead of waiting for a kick.
   */
  setNotification(enabled: boolean): boolean;
  /** Chains popped but not yet pushed. */
  readonly inFlight: number;
  /**
   * Stops using the rings: drops the cached ring translations and unregisters
   * from the DMA space's invalidation listeners. Transports call it when the
   * queue is reset or the device is reset; any later use of the queue throws.
   */
  detach(): void;
}
