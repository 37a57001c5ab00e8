/**
 * virtio-blk: the device model ({@linkcode VirtioBlk}), its wire constants,
 * counters, and the browser-safe backends (memory, fault injection). The file
 * backend is Deno-only and lives in `backends/file_deno.ts`.
 *
 * @example
 * ```ts
 * import { MemoryBackend, VirtioBlk } from "@vireo/vireo/blk";
 * const blk = new VirtioBlk({ backend: new MemoryBackend(64 << 20), numQueues: 2 });
 * console.log(blk.numQueues, blk.capacity); // 2 131072
 * ```
 *
 * @module
 */
export { VirtioBlk, type VirtioBlkState } from "./device.ts";
export {
  resolveBlkOptions,
  type ResolvedBlkOptions,
  setCapacity,
  type VirtioBlkDiscardOptions,
  type VirtioBlkGeometry,
  type VirtioBlkOptions,
  type VirtioBlkWriteZeroesOptions,
  writeBlkConfig,
} from "./config.ts";
export {
  VIRTIO_BLK_CONFIG_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_BLK_SEGMENT_SIZE,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  VirtioBlkConfigOffset,
  VirtioBlkFeature,
  VirtioBlkRequestType,
  VirtioBlkStatus,
} from "./constants.ts";
export { createVirtioBlkStats, type VirtioBlkStats } from "./metrics.ts";
export {
  type BlockBackend,
  type BlockOperation,
  type BlockResult,
  checkBlockRange,
} from "./backends/block_backend.ts";
export { MemoryBackend, type MemoryBackendOptions } from "./backends/memory.ts";
export { type BlockFault, ErrorInjectingBackend } from "./backends/error_injecting.ts";
