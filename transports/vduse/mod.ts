/**
 * VDUSE (vDPA Device in Userspace): the byte-exact uAPI, an emulated kernel
 * side (control and device files, messages, IOVA domains with bounce pages,
 * IOTLBs, address spaces and virtqueue groups, the `virtio_map_ops` the
 * guest's virtio core uses) and a userspace daemon that serves any vireo
 * `VirtioDevice` over that uAPI through a {@linkcode VduseBackend}.
 *
 * The guest half (`virtio_vdpa`) lives in `src/guest/vdpa`.
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */
export * from "./uapi.ts";
export { errnoName, LinuxErrno } from "./errno.ts";
export { PROT_READ, PROT_WRITE, type VduseBackend } from "./backend.ts";
export {
  type MappedRegion,
  VduseIotlbDmaSpace,
  type VduseIotlbDmaSpaceOptions,
  type VduseIotlbStats,
} from "./iotlb_dma_space.ts";
export {
  VDUSE_BLK_FILTERED_FEATURES,
  VDUSE_NET_CTRL_FEATURES,
  VduseDaemon,
  type VduseDaemonOptions,
  type VduseDaemonStats,
} from "./daemon.ts";
export * from "./kernel/mod.ts";
