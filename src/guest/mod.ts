/**
 * The guest-driver model (a model of Linux): the page and kmalloc allocators,
 * the DMA API (dma-direct), the virtio map ops seam and the driver virtqueues
 * (`virtio_ring.c`, split and packed).
 *
 * The guest model never calls device code: it writes guest memory, rings
 * doorbells through callbacks and reacts to interrupts.
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */
export {
  PageAllocator,
  type PageAllocatorOptions,
  type PageAllocOptions,
  SlabAllocator,
} from "./page_allocator.ts";
export {
  checkDmaDirection,
  type CoherentAllocation,
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_MAPPING_ERROR,
  DMA_SIZE_MAX,
  type DmaApi,
  DmaDirection,
  Errno,
} from "./dma/dma_api.ts";
export { DmaDirect, type DmaDirectOptions } from "./dma/dma_direct.ts";
export {
  type VirtioMap,
  type VirtioMapOps,
  type VirtqueueMapPath,
  VirtqueueMapper,
  type VirtqueueMapperOptions,
} from "./virtio/map_ops.ts";
export {
  createVirtqueue,
  type SgEntry,
  type UsedBuffer,
  type Virtqueue,
  type VirtqueueLayout,
  type VirtqueueOptions,
} from "./virtio/virtqueue.ts";
export { SplitVirtqueue } from "./virtio/split_ring.ts";
export { PackedVirtqueue } from "./virtio/packed_ring.ts";
export * from "./virtio/virtio_guest_device.ts";
export * from "./virtio_mmio_driver.ts";
export * from "./pci/pci_enumeration.ts";
export {
  findVirtioCapability,
  probeVirtioPciModern,
  VIRTIO_PCI_ISR_CONFIG,
  VIRTIO_PCI_ISR_INTR,
  VirtioPciCap,
  VirtioPciCommon,
  type VirtioPciIrqMode,
  VirtioPciModernDriver,
  type VirtioPciModernOptions,
} from "./pci/virtio_pci_modern.ts";
export * from "./dma/iova_allocator.ts";
export * from "./dma/dma_iommu.ts";
export * from "./dma/iova_api.ts";
export * from "./iommu/virtio_iommu_driver.ts";
export { DeferredDmaApi } from "./dma/deferred_dma.ts";
