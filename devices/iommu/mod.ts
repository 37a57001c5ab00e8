/**
 * The virtio-iommu device: the guest's programming interface to vireo's IOMMU
 * translation engine.
 *
 * @module
 */
export {
  FAULT_EVENT_SIZE,
  IommuRequest,
  MAX_PENDING_FAULTS,
  PROBE_SIZE,
  VirtioIommu,
  VirtioIommuFeature,
  type VirtioIommuStats,
} from "./virtio_iommu.ts";
