import type { CoherentAllocation, DmaApi, DmaDirection } from "./dma_api.ts";

/**
 * A {@linkcode DmaApi} whose implementation is supplied later.
 *
 * A machine probes its transports before any IOMMU driver has run, yet a
 * device behind the IOMMU needs the IOMMU's DMA ops (Linux defers the
 * endpoint's probe for the same reason). Hand this to the device first and
 * set `target` once the virtio-iommu driver has set up the endpoint's domain.
 * Until then every call throws, because nothing may be mapped yet.
 */
export class DeferredDmaApi implements DmaApi {
  /** The DMA ops to forward to, once known. */
  target: DmaApi | null = null;

  #t(): DmaApi {
    if (this.target === null) {
      throw new Error("Cannot use the DMA API: the IOMMU driver has not set up this device yet");
    }
    return this.target;
  }
  /** See {@linkcode DmaApi.mapPage}. */
  mapPage(phys: number, size: number, dir: DmaDirection, attrs?: number): number {
    return this.#t().mapPage(phys, size, dir, attrs);
  }
  /** See {@linkcode DmaApi.unmapPage}. */
  unmapPage(addr: number, size: number, dir: DmaDirection, attrs?: number): void {
    this.#t().unmapPage(addr, size, dir, attrs);
  }
  /** See {@linkcode DmaApi.syncSingleForCpu}. */
  syncSingleForCpu(addr: number, size: number, dir: DmaDirection): void {
    this.#t().syncSingleForCpu(addr, size, dir);
  }
  /** See {@linkcode DmaApi.syncSingleForDevice}. */
  syncSingleForDevice(addr: number, size: number, dir: DmaDirection): void {
    this.#t().syncSingleForDevice(addr, size, dir);
  }
  /** See {@linkcode DmaApi.allocCoherent}. */
  allocCoherent(size: number): CoherentAllocation | null {
    return this.#t().allocCoherent(size);
  }
  /** See {@linkcode DmaApi.freeCoherent}. */
  freeCoherent(size: number, cpuAddr: number, dmaAddr: number): void {
    this.#t().freeCoherent(size, cpuAddr, dmaAddr);
  }
  /** See {@linkcode DmaApi.mappingError}. */
  mappingError(addr: number): number {
    return this.#t().mappingError(addr);
  }
  /** See {@linkcode DmaApi.needSync}. */
  needSync(addr: number): boolean {
    return this.#t().needSync(addr);
  }
  /** See {@linkcode DmaApi.maxMappingSize}. */
  maxMappingSize(): number {
    return this.#t().maxMappingSize();
  }
}
