import type { DmaSpace } from "../dma/dma_space.ts";
import type { DeviceQueue, QueueConfig } from "./device_queue.ts";
import { PackedQueue } from "./packed_queue.ts";
import { SplitQueue } from "./split_queue.ts";

/**
 * Creates the device side of a virtqueue in the negotiated layout: a
 * {@linkcode PackedQueue} when VIRTIO_F_RING_PACKED was negotiated, a
 * {@linkcode SplitQueue} otherwise. Cheap: guest memory is not touched until
 * the first pop, push, publish or notification change.
 *
 * @param config where the rings are and what was negotiated
 * @param dma the device's view of memory
 * @param packed VIRTIO_F_RING_PACKED was negotiated
 * @returns the queue
 * @throws {RangeError} when `config.size` is not valid for the layout
 *
 * @example
 * ```ts
 * import { createDeviceQueue, DirectDmaSpace, GuestMemory } from "@vireo/vireo";
 * const dma = new DirectDmaSpace(new GuestMemory([{ base: 0, size: 0x10000 }]));
 * const q = createDeviceQueue({
 *   index: 0, size: 256, descAddr: 0x1000, driverAddr: 0x2000, deviceAddr: 0x3000,
 *   eventIdx: true, indirect: true, inOrder: false,
 * }, dma, false);
 * console.log(q.packed, q.size); // false 256
 * ```
 */
export function createDeviceQueue(
  config: QueueConfig,
  dma: DmaSpace,
  packed: boolean,
): DeviceQueue {
  return packed ? new PackedQueue(config, dma) : new SplitQueue(config, dma);
}
