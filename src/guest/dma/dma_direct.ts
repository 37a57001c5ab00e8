import type { GuestMemory } from "../../memory/guest_memory.ts";
import type { PageAllocator } from "../page_allocator.ts";
import {
  checkDmaDirection,
  type CoherentAllocation,
  DMA_MAPPING_ERROR,
  DMA_SIZE_MAX,
  type DmaApi,
  type DmaDirection,
  Errno,
} from "./dma_api.ts";

/** Options of {@linkcode DmaDirect}. */
export interface DmaDirectOptions {
  /** Where coherent allocations come from. */
  pages: PageAllocator;
  /**
   * The device's streaming DMA mask: the highest address it can reach. A
   * mapping that ends above it fails (no swiotlb bouncing is modelled).
   * Defaults to 2^53 - 1 (a 64-bit mask, as far as a `number` reaches).
   */
  mask?: number;
  /** The coherent DMA mask; defaults to `mask`. */
  coherentMask?: number;
}

/**
 * dma-direct: the DMA API without an IOMMU, where a DMA address is the guest
 * physical address (`kernel/dma/direct.c`, for a coherent device and no
 * swiotlb).
 *
 * Streaming mappings are free and need no sync; a buffer the device cannot
 * reach under its mask fails with {@linkcode DMA_MAPPING_ERROR}. Coherent
 * memory comes zeroed from the page allocator.
 *
 * @example
 * ```ts
 * import { DmaDirect, DmaDirection, GuestMemory, PageAllocator } from "@vireo/vireo";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const dma = new DmaDirect({ pages: new PageAllocator(memory, { base: 0, size: 1 << 16 }) });
 * console.log(dma.mapPage(0x2345, 100, DmaDirection.TO_DEVICE)); // 9029 (0x2345)
 * const ring = dma.allocCoherent(4096)!;
 * console.log(ring.cpuAddr === ring.dmaAddr); // true
 * ```
 */
export class DmaDirect implements DmaApi {
  /** The guest memory behind the page allocator. */
  readonly memory: GuestMemory;
  /** Where coherent allocations come from. */
  readonly pages: PageAllocator;
  /** The streaming DMA mask. */
  readonly mask: number;
  /** The coherent DMA mask. */
  readonly coherentMask: number;

  /**
   * Creates dma-direct for one device.
   *
   * @throws {RangeError} when a mask is not a non-negative integer
   */
  constructor(options: DmaDirectOptions) {
    const mask = options.mask ?? Number.MAX_SAFE_INTEGER;
    const coherentMask = options.coherentMask ?? mask;
    for (const m of [mask, coherentMask]) {
      if (!Number.isSafeInteger(m) || m < 0) {
        throw new RangeError(`Cannot create dma-direct: mask ${m} is not an integer >= 0`);
      }
    }
    this.pages = options.pages;
    this.memory = options.pages.memory;
    this.mask = mask;
    this.coherentMask = coherentMask;
  }

  /** See {@linkcode DmaApi.mapPage}: the guest physical address, when the device reaches it. */
  mapPage(phys: number, size: number, dir: DmaDirection, _attrs = 0): number {
    checkDmaDirection(dir);
    // dma_capable(): the last byte must be under the mask.
    if (!(phys >= 0) || size < 0 || phys + (size > 0 ? size - 1 : 0) > this.mask) {
      return DMA_MAPPING_ERROR;
    }
    return phys;
  }

  /** See {@linkcode DmaApi.unmapPage}: nothing to undo. */
  unmapPage(_dmaAddr: number, _size: number, dir: DmaDirection, _attrs = 0): void {
    checkDmaDirection(dir);
  }

  /** See {@linkcode DmaApi.syncSingleForCpu}: a coherent device needs no sync. */
  syncSingleForCpu(_dmaAddr: number, _size: number, _dir: DmaDirection): void {}

  /** See {@linkcode DmaApi.syncSingleForDevice}: a coherent device needs no sync. */
  syncSingleForDevice(_dmaAddr: number, _size: number, _dir: DmaDirection): void {}

  /** See {@linkcode DmaApi.allocCoherent}: zeroed pages, same address on both sides. */
  allocCoherent(size: number): CoherentAllocation | null {
    const phys = this.pages.allocPagesExact(size, { zero: true });
    if (phys === null) return null;
    if (phys + size - 1 > this.coherentMask) {
      this.pages.freePagesExact(phys, size);
      return null;
    }
    return { cpuAddr: phys, dmaAddr: phys };
  }

  /** See {@linkcode DmaApi.freeCoherent}. */
  freeCoherent(size: number, cpuAddr: number, _dmaAddr: number): void {
    this.pages.freePagesExact(cpuAddr, size);
  }

  /** See {@linkcode DmaApi.mappingError}. */
  mappingError(dmaAddr: number): number {
    return dmaAddr === DMA_MAPPING_ERROR ? -Errno.ENOMEM : 0;
  }

  /** See {@linkcode DmaApi.needSync}: never, for a coherent device without bouncing. */
  needSync(_dmaAddr: number): boolean {
    return false;
  }

  /** See {@linkcode DmaApi.maxMappingSize}: unlimited. */
  maxMappingSize(): number {
    return DMA_SIZE_MAX;
  }
}
