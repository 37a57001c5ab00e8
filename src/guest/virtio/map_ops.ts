/**
 * The mapping seam of the guest's virtio core: `struct virtio_map_ops` (the
 * per-transport mapping operations VDUSE provides) and the one dispatch every
 * virtqueue mapping goes through, as in `drivers/virtio/virtio_ring.c`:
 *
 * - without VIRTIO_F_ACCESS_PLATFORM (`!vring_use_map_api`): no mapping at
 *   all, the device sees guest physical addresses;
 * - with it and transport map ops (`vdev->map` set): the ops, with the
 *   queue's map token;
 * - with it and no map ops: the parent device's DMA API.
 *
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import {
  type CoherentAllocation,
  DMA_SIZE_MAX,
  type DmaApi,
  type DmaDirection,
} from "../dma/dma_api.ts";
import { PageAllocator, SlabAllocator } from "../page_allocator.ts";

/**
 * The opaque per-queue map token (`union virtio_map`): the transport gives one
 * to each virtqueue and gets it back as the first argument of every op. VDUSE
 * uses its virtqueue group; on the DMA API path it is the DMA device.
 */
export type VirtioMap = unknown;

/**
 * A transport's mapping operations, mirroring the kernel's
 * `struct virtio_map_ops` (`include/linux/virtio_config.h`). A transport that
 * provides them must implement all nine. Failures are reported by value as the
 * kernel does: `DMA_MAPPING_ERROR` from `mapPage`, `null` from `alloc`.
 *
 * Addresses the guest passes in are guest physical addresses (the kernel's page
 * plus offset, or kernel virtual address); handles it gets back are device
 * addresses (for VDUSE, IOVAs in the device's domain).
 */
export interface VirtioMapOps {
  /** Maps a buffer for streaming DMA; returns its device address or `DMA_MAPPING_ERROR` (`map_page`). */
  mapPage(
    map: VirtioMap,
    phys: number,
    size: number,
    dir: DmaDirection,
    attrs: number,
  ): number;
  /** Ends a streaming mapping (`unmap_page`). */
  unmapPage(
    map: VirtioMap,
    mapHandle: number,
    size: number,
    dir: DmaDirection,
    attrs: number,
  ): void;
  /** Gives a mapped range back to the CPU (`sync_single_for_cpu`); the handle includes any offset. */
  syncSingleForCpu(map: VirtioMap, mapHandle: number, size: number, dir: DmaDirection): void;
  /** Gives a mapped range to the device (`sync_single_for_device`); the handle includes any offset. */
  syncSingleForDevice(map: VirtioMap, mapHandle: number, size: number, dir: DmaDirection): void;
  /**
   * Allocates zeroed memory shared by CPU and device; returns both addresses or
   * `null` (`alloc`, which returns the CPU address and stores the handle).
   */
  alloc(map: VirtioMap, size: number): CoherentAllocation | null;
  /** Frees memory from `alloc` (`free`; the virtio core passes attrs 0). */
  free(map: VirtioMap, size: number, cpuAddr: number, mapHandle: number, attrs: number): void;
  /** True when the mapping at `mapHandle` needs syncs (`need_sync`). */
  needSync(map: VirtioMap, mapHandle: number): boolean;
  /** `-ENOMEM` when `mapHandle` is `DMA_MAPPING_ERROR`, else 0 (`mapping_error`). */
  mappingError(map: VirtioMap, mapHandle: number): number;
  /** The largest size one `mapPage` accepts (`max_mapping_size`). */
  maxMappingSize(map: VirtioMap): number;
}

/** What a {@linkcode VirtqueueMapper} dispatches to. */
export interface VirtqueueMapperOptions {
  /**
   * The guest's page allocator: the guest memory it manages holds rings on the
   * no-mapping path and every kmalloc'd object (indirect tables).
   */
  pages: PageAllocator;
  /**
   * The guest's kmalloc heap for indirect descriptor tables; one over `pages`
   * is created when omitted. Share one between queues to share slab pages.
   */
  heap?: SlabAllocator;
  /** VIRTIO_F_ACCESS_PLATFORM was negotiated (`vring_use_map_api`). */
  accessPlatform: boolean;
  /** The transport's map ops (`vdev->map`); when set they replace the DMA API. */
  mapOps?: VirtioMapOps | null;
  /** This queue's map token (`vq->map`), passed to every op. */
  map?: VirtioMap;
  /** The parent device's DMA API, used with ACCESS_PLATFORM when there are no map ops. */
  dma?: DmaApi | null;
}

/** Which of the three mapping paths a {@linkcode VirtqueueMapper} takes. */
export type VirtqueueMapPath = "none" | "dma-api" | "map-ops";

/**
 * The single mapping seam a driver virtqueue uses for its rings, its indirect
 * tables and every buffer: the kernel's `virtqueue_map_*` helpers and
 * `vring_alloc_queue` / `vring_free_queue`, dispatching on `vring_use_map_api`
 * and `vdev->map`.
 *
 * Drivers that map their own buffers (premapped buffers, as virtio-net does for
 * receive pages) call the same methods, so their mappings go the same way.
 *
 * @example
 * ```ts
 * import { DmaDirection, GuestMemory, PageAllocator, VirtqueueMapper } from "@vireo/vireo";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const pages = new PageAllocator(memory, { base: 0, size: 1 << 16 });
 * const mapper = new VirtqueueMapper({ pages, accessPlatform: false });
 * console.log(mapper.path); // "none"
 * console.log(mapper.mapPage(0x1234, 64, DmaDirection.TO_DEVICE)); // 4660: guest physical
 * ```
 */
export class VirtqueueMapper {
  /** The guest memory rings and tables live in. */
  readonly memory: GuestMemory;
  /** The guest page allocator. */
  readonly pages: PageAllocator;
  /** The guest kmalloc heap. */
  readonly heap: SlabAllocator;
  /** True when mappings go through map ops or the DMA API (`use_map_api`). */
  readonly useMapApi: boolean;
  /** Which path mappings take. */
  readonly path: VirtqueueMapPath;
  /** The transport's map ops, or `null`. */
  readonly mapOps: VirtioMapOps | null;
  /** The queue's map token. */
  readonly map: VirtioMap;
  /** The DMA API used on the "dma-api" path, or `null`. */
  readonly dma: DmaApi | null;

  /**
   * Chooses the mapping path once, as `vring_create_virtqueue` does.
   *
   * @throws {TypeError} when ACCESS_PLATFORM is negotiated but neither map ops nor a DMA API is given
   */
  constructor(options: VirtqueueMapperOptions) {
    if (!(options.pages instanceof PageAllocator)) {
      throw new TypeError("Cannot create a virtqueue mapper: pages must be a PageAllocator");
    }
    this.pages = options.pages;
    this.memory = options.pages.memory;
    this.heap = options.heap ?? new SlabAllocator(options.pages);
    this.useMapApi = options.accessPlatform === true;
    this.mapOps = options.mapOps ?? null;
    this.map = options.map;
    this.dma = options.dma ?? null;
    if (!this.useMapApi) {
      this.path = "none";
    } else if (this.mapOps !== null) {
      this.path = "map-ops";
    } else if (this.dma !== null) {
      this.path = "dma-api";
    } else {
      throw new TypeError(
        "Cannot create a virtqueue mapper: ACCESS_PLATFORM needs map ops or a DMA API",
      );
    }
  }

  /**
   * Maps a buffer the device will access and returns its device address, or
   * `DMA_MAPPING_ERROR`. Without the map API the guest physical address is
   * returned unchanged. Models `virtqueue_map_single_attrs` /
   * `virtqueue_map_page_attrs`.
   */
  mapPage(phys: number, size: number, dir: DmaDirection, attrs = 0): number {
    if (!this.useMapApi) return phys;
    const ops = this.mapOps;
    if (ops !== null) return ops.mapPage(this.map, phys, size, dir, attrs);
    return this.dma!.mapPage(phys, size, dir, attrs);
  }

  /**
   * Ends a mapping from {@linkcode VirtqueueMapper.mapPage}. Models
   * `virtqueue_unmap_single_attrs` / `virtqueue_unmap_page_attrs`.
   */
  unmapPage(addr: number, size: number, dir: DmaDirection, attrs = 0): void {
    if (!this.useMapApi) return;
    const ops = this.mapOps;
    if (ops !== null) ops.unmapPage(this.map, addr, size, dir, attrs);
    else this.dma!.unmapPage(addr, size, dir, attrs);
  }

  /**
   * Returns a negative errno when `addr` is a failed mapping, else 0. Models
   * `virtqueue_map_mapping_error` (`vring_mapping_error`).
   */
  mappingError(addr: number): number {
    if (!this.useMapApi) return 0;
    const ops = this.mapOps;
    if (ops !== null) return ops.mappingError(this.map, addr);
    return this.dma!.mappingError(addr);
  }

  /** True when the mapping at `addr` needs syncs. Models `virtqueue_map_need_sync`. */
  needSync(addr: number): boolean {
    if (!this.useMapApi) return false;
    const ops = this.mapOps;
    if (ops !== null) return ops.needSync(this.map, addr);
    return this.dma!.needSync(addr);
  }

  /**
   * Hands `size` bytes at `offset` into the mapping at `addr` back to the CPU.
   * Models `virtqueue_map_sync_single_range_for_cpu` (map ops get `addr + offset`).
   */
  syncSingleRangeForCpu(addr: number, offset: number, size: number, dir: DmaDirection): void {
    if (!this.useMapApi) return;
    const ops = this.mapOps;
    if (ops !== null) ops.syncSingleForCpu(this.map, addr + offset, size, dir);
    else this.dma!.syncSingleForCpu(addr + offset, size, dir);
  }

  /**
   * Hands `size` bytes at `offset` into the mapping at `addr` to the device.
   * Models `virtqueue_map_sync_single_range_for_device`.
   */
  syncSingleRangeForDevice(addr: number, offset: number, size: number, dir: DmaDirection): void {
    if (!this.useMapApi) return;
    const ops = this.mapOps;
    if (ops !== null) ops.syncSingleForDevice(this.map, addr + offset, size, dir);
    else this.dma!.syncSingleForDevice(addr + offset, size, dir);
  }

  /**
   * Allocates zeroed ring memory, or returns `null`. Models `vring_alloc_queue`:
   * map ops' `alloc`, `dma_alloc_coherent`, or (without the map API) whole
   * pages whose guest physical address is also the device address. The bytes
   * are zeroed here too, whatever the allocator promised.
   */
  allocCoherent(size: number): CoherentAllocation | null {
    let ring: CoherentAllocation | null;
    if (!this.useMapApi) {
      const phys = this.pages.allocPagesExact(size, { zero: true });
      ring = phys === null ? null : { cpuAddr: phys, dmaAddr: phys };
    } else if (this.mapOps !== null) {
      ring = this.mapOps.alloc(this.map, size);
    } else {
      ring = this.dma!.allocCoherent(size);
    }
    if (ring !== null) this.memory.fill(ring.cpuAddr, size, 0);
    return ring;
  }

  /** Frees ring memory from {@linkcode VirtqueueMapper.allocCoherent}. Models `vring_free_queue`. */
  freeCoherent(size: number, ring: CoherentAllocation): void {
    if (!this.useMapApi) this.pages.freePagesExact(ring.cpuAddr, size);
    else if (this.mapOps !== null) this.mapOps.free(this.map, size, ring.cpuAddr, ring.dmaAddr, 0);
    else this.dma!.freeCoherent(size, ring.cpuAddr, ring.dmaAddr);
  }

  /**
   * The largest buffer one mapping may cover. Models `virtio_max_dma_size`:
   * unlimited without the map API, else the ops' or DMA API's limit.
   */
  maxMappingSize(): number {
    if (!this.useMapApi) return DMA_SIZE_MAX;
    if (this.mapOps !== null) return this.mapOps.maxMappingSize(this.map);
    return this.dma!.maxMappingSize();
  }
}
