/**
 * The guest's virtio-blk driver: a model of Linux's `virtio_blk` with a small
 * block layer ({@linkcode VirtioBlkDriver}), the transport-driver contract it
 * needs ({@linkcode BlkGuestDevice}) and its request-mapping seam
 * ({@linkcode BlkRequestMapper}).
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @example
 * ```ts
 * import { virtqueueRequestMapper, VIRTIO_BLK_DRIVER_FEATURES } from "@vireo/vireo/guest/blk";
 * console.log(typeof virtqueueRequestMapper.mapRequest, VIRTIO_BLK_DRIVER_FEATURES > 0n); // "function" true
 * ```
 *
 * @module
 */
export {
  type BlkCompletion,
  type BlkDriverRequest,
  type BlkQueueLimits,
  VIRTIO_BLK_DRIVER_FEATURES,
  VirtioBlkDriver,
  type VirtioBlkDriverOptions,
} from "./virtio_blk_driver.ts";
export type { BlkGuestDevice, BlkQueueSpec } from "./blk_guest_device.ts";
export {
  type BlkRequestBuffers,
  type BlkRequestMapper,
  type BlkRequestMapping,
  DmaApiRequestMapper,
  virtqueueRequestMapper,
} from "./request_mapper.ts";
export {
  IovaRequestMapper,
  type IovaRequestMapperOptions,
  type IovaRequestMapperStats,
} from "./iova_request_mapper.ts";
export { BlockErrno, BlockError } from "./block_error.ts";
export { VIRTIO_BLK_CONFIG, VIRTIO_BLK_F, VIRTIO_BLK_S, VIRTIO_BLK_T } from "./virtio_blk_uapi.ts";
