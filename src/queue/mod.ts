/**
 * Device-side virtqueues: the {@linkcode DeviceQueue} interface and its split
 * and packed implementations, descriptor chains with reader/writer cursors,
 * the ring layout constants, the event index rule, and {@linkcode VirtqueueError}.
 *
 * @module
 */
export type { DeviceQueue, QueueConfig } from "./device_queue.ts";
export { ChainCursor, ChainReader, ChainWriter, DescriptorChain } from "./descriptor_chain.ts";
export { VirtqueueError, type VirtqueueErrorKind } from "./virtqueue_error.ts";
export { SplitQueue } from "./split_queue.ts";
export { PackedQueue } from "./packed_queue.ts";
export { createDeviceQueue } from "./create_device_queue.ts";
export { packedNeedEvent, vringNeedEvent } from "./event_idx.ts";
export * from "./ring_layout.ts";
