/**
 * Device-side virtqueues: the {@linkcode DeviceQueue} interface, descriptor
 * chains with reader/writer cursors, and {@linkcode VirtqueueError}.
 *
 * @module
 */
export type { DeviceQueue, QueueConfig } from "./device_queue.ts";
export { ChainReader, ChainWriter, DescriptorChain } from "./descriptor_chain.ts";
export { VirtqueueError, type VirtqueueErrorKind } from "./virtqueue_error.ts";
