/**
 * The emulated VDUSE kernel side: the module (`/dev/vduse/control`, device
 * nodes, sysfs knobs, `vdpa dev add`), devices with their message channel,
 * IOVA domains with bounce pages and coherent allocations, IOTLBs, the
 * `virtio_map_ops` handed to the guest, and a process fd table implementing
 * the daemon's {@linkcode VduseBackend}.
 *
 * @module
 */
export {
  VDUSE_API_VERSION_NOT_ASKED,
  VDUSE_DEV_MAX_AS,
  VDUSE_DEV_MAX_GROUPS,
  VDUSE_MSG_DEFAULT_TIMEOUT,
  VduseControlFile,
  VduseKernel,
  type VduseKernelOptions,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_NET_F_CTRL_VQ,
} from "./vduse_kernel.ts";
export {
  type VdpaMapEntry,
  VduseAddressSpace,
  VduseDev,
  type VduseDevParams,
  VduseVirtqueue,
  VduseVqGroup,
} from "./vduse_dev.ts";
export {
  BOUNCE_MAP_SHIFT,
  BOUNCE_MAP_SIZE,
  VDUSE_BOUNCE_SIZE,
  VDUSE_IOVA_SIZE,
  VDUSE_MAX_BOUNCE_SIZE,
  VDUSE_MIN_BOUNCE_SIZE,
  VDUSE_PAGE_SIZE,
  type VduseDomainStats,
  VduseIovaDomain,
  type VduseIovaDomainOptions,
} from "./iova_domain.ts";
export { GuestMemoryFile, type IotlbEntry, type VduseFile, VduseIotlb } from "./iotlb.ts";
export { VduseMapOps } from "./map_ops.ts";
export {
  POLLERR,
  POLLIN,
  POLLOUT,
  VduseMessage,
  VduseMsgChannel,
  type VduseMsgChannelOptions,
} from "./msg_channel.ts";
export type { VduseEventfd, VduseProcess } from "./process.ts";
export { globalTimers, ManualTimers, type VduseTimers } from "./timers.ts";
export { EmulatedVduseBackend } from "./emulated_backend.ts";
