/**
 * The IOMMU translation engine: domains of mappings, endpoints attached to
 * them, a per-endpoint {@linkcode IommuDmaSpace} with a translation cache, and
 * fault reports. The virtio-iommu device is its programming interface.
 *
 * @module
 */
export {
  Iommu,
  type IommuFault,
  type IommuOptions,
  MAX_DOMAINS,
  type ReservedRegion,
  X86_MSI_REGION,
} from "./iommu.ts";
export { IommuDomain, MAX_MAPPINGS_PER_DOMAIN } from "./iommu_domain.ts";
export { IommuDmaSpace, type IommuSpaceStats } from "./iommu_dma_space.ts";
export { IommuFaultReason, IommuMapFlag, IommuStatus } from "./iommu_status.ts";
