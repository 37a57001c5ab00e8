/**
 * dma-iommu: the guest's DMA API for a device behind an IOMMU, a model of
 * Linux's `drivers/iommu/dma-iommu.c` over the IOMMU core's map/unmap
 * (`drivers/iommu/iommu.c`).
 *
 * It owns the device's IOVA allocator, maps streaming and coherent buffers
 * through the IOMMU driver's paging domain (for vireo, the virtio-iommu
 * driver, which turns them into MAP and UNMAP requests), and calls the
 * driver's sync hooks exactly where the kernel does: `iotlb_sync_map` after a
 * map, `iotlb_sync` after a strict unmap, `flush_iotlb_all` when the lazy
 * flush queue is flushed. It also carries the IOVA-based API
 * (`dma_iova_try_alloc` and friends; see `iova_api.ts`).
 *
 * @module
 */
import type { PageAllocator } from "../page_allocator.ts";
import {
  checkDmaDirection,
  type CoherentAllocation,
  DMA_MAPPING_ERROR,
  DMA_SIZE_MAX,
  type DmaApi,
  DmaDirection,
  Errno,
} from "./dma_api.ts";
import { IOVA_RANGE_CACHE_MAX_SIZE, IovaAllocator, orderBase2 } from "./iova_allocator.ts";

/**
 * Linux errno values the IOMMU layers return beyond {@linkcode Errno}
 * (positive, returned negated).
 */
export const IommuErrno = {
  ...Errno,
  /** Operation not permitted. */
  EPERM: 1,
  /** Bad address. */
  EFAULT: 14,
  /** File exists (an overlapping mapping). */
  EEXIST: 17,
  /** No such device. */
  ENODEV: 19,
  /** Result out of range. */
  ERANGE: 34,
  /** Function not implemented. */
  ENOSYS: 38,
  /** Value too large for the type. */
  EOVERFLOW: 75,
  /** Operation not supported. */
  EOPNOTSUPP: 95,
  /** The device did not answer. */
  ETIMEDOUT: 110,
} as const;

/** `DMA_ATTR_PRIVILEGED`: the mapping is for privileged (supervisor) accesses only. */
export const DMA_ATTR_PRIVILEGED: number = 1 << 9;
/** `DMA_ATTR_MMIO`: the range is MMIO (peer-to-peer), not RAM; only the IOVA API accepts it. */
export const DMA_ATTR_MMIO: number = 1 << 10;

/** IOMMU protection bits of a mapping (`IOMMU_READ` ... `IOMMU_PRIV`). */
export const IommuProt = {
  /** The device may read. */
  READ: 1,
  /** The device may write. */
  WRITE: 2,
  /** Cache-coherent memory. */
  CACHE: 4,
  /** No instruction fetches. */
  NOEXEC: 8,
  /** MMIO (device memory) rather than RAM. */
  MMIO: 16,
  /** Privileged accesses only. */
  PRIV: 32,
} as const;

/** The aperture of a domain (`struct iommu_domain_geometry`). */
export interface IommuDomainGeometry {
  /** First IOVA the domain can map. */
  apertureStart: number;
  /** Last IOVA the domain can map (inclusive). */
  apertureEnd: number;
  /** DMA outside the aperture is impossible, so the allocator must stay inside it. */
  forceAperture: boolean;
}

/** The kind of an IOMMU domain: translated (`DMA`, `DMA_FQ`, `UNMANAGED`) or identity. */
export type IommuDomainType = "paging" | "identity";

/**
 * What an IOMMU core unmap gathered for the invalidation that follows
 * (`struct iommu_iotlb_gather`).
 */
export interface IotlbGather {
  /** First IOVA unmapped. */
  start: number;
  /** Last IOVA unmapped (inclusive). */
  end: number;
  /** The invalidation is deferred to the flush queue (lazy mode). */
  queued: boolean;
}

/**
 * The domain operations an IOMMU driver provides (`struct iommu_domain` with
 * its `iommu_domain_ops`): what the IOMMU core and dma-iommu call. vireo's
 * virtio-iommu driver implements it; a page-table IOMMU driver could too.
 */
export interface IommuPagingDomain {
  /** Paging or identity. */
  readonly type: IommuDomainType;
  /** Supported page sizes, ascending (`pgsize_bitmap`); the first is the IOVA granule. */
  readonly pageSizes: readonly number[];
  /** The aperture. */
  readonly geometry: IommuDomainGeometry;
  /** The driver can flush lazily (`IOMMU_CAP_DEFERRED_FLUSH`, `flush_iotlb_all`). */
  readonly deferredFlush: boolean;
  /**
   * Maps `pgcount` pages of `pgsize` bytes; returns the bytes mapped or a
   * negative errno (`map_pages`). May only queue the change until a sync.
   */
  mapPages(iova: number, paddr: number, pgsize: number, pgcount: number, prot: number): number;
  /** Unmaps; returns the bytes unmapped, 0 on failure (`unmap_pages`). */
  unmapPages(iova: number, pgsize: number, pgcount: number, gather: IotlbGather): number;
  /** Completes the invalidation of what was unmapped (`iotlb_sync`). */
  iotlbSync(gather: IotlbGather): void;
  /** Makes new mappings visible to the device (`iotlb_sync_map`); 0 or a negative errno. */
  iotlbSyncMap(iova: number, size: number): number;
  /** Invalidates everything (`flush_iotlb_all`), used by the lazy flush queue. */
  flushIotlbAll(): void;
  /** The physical address `iova` maps to, or `null` when unmapped (`iova_to_phys`). */
  iovaToPhys(iova: number): number | null;
}

// ---- the IOMMU core ------------------------------------------------------

/**
 * Chooses the page size and count for the next chunk of a map or unmap: the
 * largest supported size that fits the alignment of `iova | paddr` and the
 * remaining `size`, with the count stopping at the next larger page size's
 * boundary when that size could be used from there. Models `iommu_pgsize`.
 *
 * @returns `[pgsize, count]`, or `[0, 0]` when no page size fits
 */
export function iommuPgsize(
  pageSizes: readonly number[],
  iova: number,
  paddr: number,
  size: number,
): [number, number] {
  const align = Math.min(lowBit(iova), lowBit(paddr));
  let idx = -1;
  for (let i = 0; i < pageSizes.length; i++) {
    const ps = pageSizes[i];
    if (ps <= size && ps <= align) idx = i;
  }
  if (idx < 0) return [0, 0];
  const pgsize = pageSizes[idx];
  const next = pageSizes[idx + 1];
  if (next !== undefined && iova % next === paddr % next) {
    const offset = next - (or53(iova, paddr) % next);
    if (offset + next <= size) size = offset;
  }
  return [pgsize, Math.floor(size / pgsize)];
}

/**
 * Maps `[iova, iova + size)` to `paddr` without making it visible (no
 * `iotlb_sync_map`); unwinds on failure. Models `iommu_map_nosync`.
 *
 * @returns 0, `-EINVAL` for a domain that does not translate or a range not
 * aligned to the smallest page size, or the driver's error
 */
export function iommuMapNosync(
  domain: IommuPagingDomain,
  iova: number,
  paddr: number,
  size: number,
  prot: number,
): number {
  if (domain.pageSizes.length === 0) return -IommuErrno.ENODEV;
  if (domain.type !== "paging") return -IommuErrno.EINVAL;
  const min = domain.pageSizes[0];
  if (!isAligned(iova, min) || !isAligned(paddr, min) || !isAligned(size, min)) {
    return -IommuErrno.EINVAL;
  }
  if (iova + size - 1 >= 2 ** 53) return -IommuErrno.EINVAL;
  const origIova = iova;
  const origSize = size;
  let ret = 0;
  while (size > 0) {
    const [pgsize, count] = iommuPgsize(domain.pageSizes, iova, paddr, size);
    if (count === 0) {
      ret = -IommuErrno.EINVAL;
      break;
    }
    const mapped = domain.mapPages(iova, paddr, pgsize, count, prot);
    if (mapped <= 0) {
      ret = mapped < 0 ? mapped : -IommuErrno.EIO;
      break;
    }
    size -= mapped;
    iova += mapped;
    paddr += mapped;
  }
  if (ret !== 0 && origSize - size > 0) iommuUnmap(domain, origIova, origSize - size);
  return ret;
}

/**
 * Makes mappings of `[iova, iova + size)` visible to the device: the driver's
 * `iotlb_sync_map` (virtio-iommu: kick and wait). Models `iommu_sync_map`.
 */
export function iommuSyncMap(domain: IommuPagingDomain, iova: number, size: number): number {
  return domain.iotlbSyncMap(iova, size);
}

/**
 * Maps and syncs; when the sync fails the range is unmapped again. Models
 * `iommu_map`.
 */
export function iommuMap(
  domain: IommuPagingDomain,
  iova: number,
  paddr: number,
  size: number,
  prot: number,
): number {
  let ret = iommuMapNosync(domain, iova, paddr, size, prot);
  if (ret !== 0) return ret;
  ret = iommuSyncMap(domain, iova, size);
  if (ret !== 0) iommuUnmap(domain, iova, size);
  return ret;
}

/**
 * Unmaps `[iova, iova + size)` chunk by chunk, stopping at the first chunk the
 * driver cannot unmap (a hole, or a mapping it cannot split), and gathers it
 * for the invalidation. Returns the bytes unmapped (0 when misaligned).
 * Models `iommu_unmap_fast`.
 */
export function iommuUnmapFast(
  domain: IommuPagingDomain,
  iova: number,
  size: number,
  gather: IotlbGather,
): number {
  if (domain.pageSizes.length === 0 || domain.type !== "paging") return 0;
  const min = domain.pageSizes[0];
  if (!isAligned(iova, min) || !isAligned(size, min)) return 0;
  let unmapped = 0;
  while (unmapped < size) {
    const [pgsize, count] = iommuPgsize(domain.pageSizes, iova, iova, size - unmapped);
    if (count === 0) break;
    const n = domain.unmapPages(iova, pgsize, count, gather);
    if (n <= 0) break;
    if (gather.end < gather.start) {
      gather.start = iova;
      gather.end = iova + n - 1;
    } else {
      gather.start = Math.min(gather.start, iova);
      gather.end = Math.max(gather.end, iova + n - 1);
    }
    iova += n;
    unmapped += n;
  }
  return unmapped;
}

/** Runs the driver's `iotlb_sync` and resets the gather. Models `iommu_iotlb_sync`. */
export function iommuIotlbSync(domain: IommuPagingDomain, gather: IotlbGather): void {
  domain.iotlbSync(gather);
  resetGather(gather);
}

/** Unmaps and invalidates synchronously; returns the bytes unmapped. Models `iommu_unmap`. */
export function iommuUnmap(domain: IommuPagingDomain, iova: number, size: number): number {
  const gather = newGather(false);
  const n = iommuUnmapFast(domain, iova, size, gather);
  iommuIotlbSync(domain, gather);
  return n;
}

/**
 * The IOMMU protection for a mapping in direction `dir`. Models
 * `dma_info_to_prot`: TO_DEVICE → READ, FROM_DEVICE → WRITE, BIDIRECTIONAL →
 * both; CACHE for a coherent device; MMIO and PRIV from the attributes.
 */
export function dmaInfoToProt(dir: DmaDirection, coherent: boolean, attrs: number): number {
  let prot = coherent ? IommuProt.CACHE : 0;
  if (attrs & DMA_ATTR_PRIVILEGED) prot |= IommuProt.PRIV;
  if (attrs & DMA_ATTR_MMIO) prot |= IommuProt.MMIO;
  switch (dir) {
    case DmaDirection.BIDIRECTIONAL:
      return prot | IommuProt.READ | IommuProt.WRITE;
    case DmaDirection.TO_DEVICE:
      return prot | IommuProt.READ;
    case DmaDirection.FROM_DEVICE:
      return prot | IommuProt.WRITE;
    default:
      return 0;
  }
}

// ---- dma-iommu -------------------------------------------------------------

/** A range of IOVA never to allocate (inclusive bounds). */
export interface IovaReservedRegion {
  /** First IOVA. */
  start: number;
  /** Last IOVA (inclusive). */
  end: number;
}

/**
 * The device's view of an IOVA reservation from the IOVA-based API
 * (`struct dma_iova_state`). The caller owns it; `iovaTryAlloc` zeroes it first.
 */
export interface DmaIovaState {
  /** Device address of the reservation plus the sub-granule offset of the `phys` given to try_alloc. */
  addr: number;
  /** Requested size in bytes; 0 when no IOVA is in use (`__size`). */
  size: number;
}

/** How to set up dma-iommu for one device. */
export interface DmaIommuOptions {
  /** The device's default domain (a paging domain the device is attached to). */
  domain: IommuPagingDomain;
  /** Where coherent allocations come from. */
  pages: PageAllocator;
  /** Streaming DMA mask; default 2^53 - 1 (a 64-bit mask, as far as a `number` reaches). */
  mask?: number;
  /** Coherent DMA mask; default `mask`. */
  coherentMask?: number;
  /**
   * The device is a PCI device: IOVAs come from below 4 GiB until that space
   * runs out once (`pci_32bit_workaround`). Default true.
   */
  pci?: boolean;
  /** Skip the 32-bit-first policy (`iommu.forcedac=1`). Default false. */
  forceDac?: boolean;
  /**
   * Strict invalidation (default true): every unmap is synced before the IOVA
   * is freed. False asks for lazy mode (`DMA_FQ`): unmaps are queued and
   * IOVAs freed only after the flush queue is flushed; it falls back to strict
   * when the domain cannot flush lazily.
   */
  strict?: boolean;
  /** IOVA regions never allocated: reserved and MSI regions from PROBE, host-bridge windows. */
  reservedRegions?: readonly IovaReservedRegion[];
  /** Flush queue entries before a forced flush (`IOVA_DEFAULT_FQ_SIZE`); default 256. */
  fqSize?: number;
  /** Flush queue timeout in milliseconds (`IOVA_DEFAULT_FQ_TIMEOUT`); default 10. */
  fqTimeout?: number;
  /**
   * Schedules the flush-queue timer. Without it the queue is flushed only when
   * full or by {@linkcode DmaIommu.flushQueue}, which an embedding's timer may call.
   */
  setTimer?: (callback: () => void, ms: number) => void;
  /** A name for diagnostics (the kernel's `dev_name`). */
  name?: string;
}

/** Counters of one device's dma-iommu. */
export interface DmaIommuStats {
  /** Streaming and coherent mappings made. */
  maps: number;
  /** Streaming and coherent mappings ended. */
  unmaps: number;
  /** Mappings that failed (IOVA space exhausted or the domain refused). */
  mapErrors: number;
  /** Flush-queue flushes. */
  fqFlushes: number;
  /** IOVA ranges freed by flush-queue flushes. */
  fqFreed: number;
  /** IOVA reservations made by `iovaTryAlloc`. */
  iovaAllocs: number;
  /** Ranges linked by `iovaLink`. */
  iovaLinks: number;
}

/** Most entries kept in {@linkcode DmaIommu.warnings} and {@linkcode DmaIommu.log}. */
export const DMA_IOMMU_MAX_LOG = 64;

/**
 * dma-iommu for one device: a {@linkcode DmaApi} whose addresses are IOVAs
 * in the device's IOMMU domain.
 *
 * `mapPage` allocates IOVA (32-bit space first for PCI devices, top-down,
 * size-aligned), maps it with the direction's permission (TO_DEVICE → READ,
 * FROM_DEVICE → WRITE, BIDIRECTIONAL → both) and syncs the map, so with
 * virtio-iommu every streaming mapping costs one MAP request and one kick.
 * `unmapPage` unmaps and, in strict mode, syncs before freeing the IOVA; in
 * lazy mode the UNMAP stays queued and the IOVA waits in the flush queue.
 * Coherent memory is mapped bidirectionally. The device is cache-coherent and
 * nothing is bounced, so syncs are no-ops and `needSync` is false.
 *
 * Kernel WARNs (unmapping what is not mapped, a size mismatch, a link that
 * breaks the merge rules) are recorded in {@linkcode DmaIommu.warnings}.
 *
 * @example
 * ```ts ignore
 * const viommu = VirtioIommuDriver.probe(vdev); // vdev: the virtio-iommu's VirtioGuestDevice
 * const dma = viommu.setupDma(0x08); // PROBE + ATTACH endpoint 0x08: its dma-iommu
 * const iova = dma.mapPage(0x12345, 100, DmaDirection.TO_DEVICE); // 0xfffff345
 * dma.unmapPage(iova, 100, DmaDirection.TO_DEVICE);
 * ```
 */
export class DmaIommu implements DmaApi {
  /** The device's domain. */
  readonly domain: IommuPagingDomain;
  /** The IOVA allocator (`cookie->iovad`). */
  readonly iovad: IovaAllocator;
  /** Where coherent allocations come from. */
  readonly pages: PageAllocator;
  /** The IOVA granule in bytes. */
  readonly granule: number;
  /** Streaming DMA mask. */
  readonly mask: number;
  /** Coherent DMA mask. */
  readonly coherentMask: number;
  /** Strict invalidation (false: lazy, with a flush queue). */
  readonly strict: boolean;
  /** Name for diagnostics. */
  readonly name: string;
  /** Counters. */
  readonly stats: DmaIommuStats = {
    maps: 0,
    unmaps: 0,
    mapErrors: 0,
    fqFlushes: 0,
    fqFreed: 0,
    iovaAllocs: 0,
    iovaLinks: 0,
  };
  /** The kernel WARNs this device triggered (bounded; oldest dropped). */
  readonly warnings: string[] = [];
  /** Notices (`dev_notice`), e.g. the switch to 64-bit addresses (bounded). */
  readonly log: string[] = [];
  #pci32Bit: boolean;
  readonly #fqSize: number;
  readonly #fqTimeout: number;
  readonly #setTimer: ((callback: () => void, ms: number) => void) | undefined;
  /** Flush queue: pfn and granule count of each deferred IOVA free. */
  readonly #fqPfn: number[] = [];
  readonly #fqPages: number[] = [];
  #fqTimerOn = false;
  /** Live streaming and coherent mappings: device address → size (for the WARNs). */
  readonly #live = new Map<number, number>();

  /**
   * Sets up dma-iommu for a device attached to `options.domain`. Models
   * `iommu_dma_init_domain` and `iommu_setup_dma_ops`.
   *
   * @throws {TypeError} when the domain is not a paging domain
   * @throws {RangeError} when the granule is larger than the guest page size, or a mask is invalid
   */
  constructor(options: DmaIommuOptions) {
    const domain = options.domain;
    if (domain.type !== "paging" || domain.pageSizes.length === 0) {
      throw new TypeError("Cannot set up dma-iommu: the domain does not translate");
    }
    const granule = domain.pageSizes[0];
    if (granule > options.pages.pageSize) {
      throw new RangeError(
        `Cannot set up dma-iommu: granule ${granule} is larger than the page size ${options.pages.pageSize}`,
      );
    }
    const mask = options.mask ?? Number.MAX_SAFE_INTEGER;
    const coherentMask = options.coherentMask ?? mask;
    for (const m of [mask, coherentMask]) {
      if (!Number.isSafeInteger(m) || m < granule) {
        throw new RangeError(`Cannot set up dma-iommu: mask ${m} is not an integer >= ${granule}`);
      }
    }
    const g = domain.geometry;
    const startPfn = Math.max(1, g.forceAperture ? Math.floor(g.apertureStart / granule) : 0);
    this.domain = domain;
    this.pages = options.pages;
    this.granule = granule;
    this.mask = mask;
    this.coherentMask = coherentMask;
    this.name = options.name ?? "device";
    this.iovad = new IovaAllocator({ granule, startPfn });
    this.#pci32Bit = (options.pci ?? true) && !(options.forceDac ?? false);
    const wantLazy = options.strict === false;
    this.strict = !(wantLazy && domain.deferredFlush);
    if (wantLazy && this.strict) this.#note("lazy mode unsupported by the domain: using strict");
    this.#fqSize = options.fqSize ?? 256;
    this.#fqTimeout = options.fqTimeout ?? 10;
    this.#setTimer = options.setTimer;
    for (const r of options.reservedRegions ?? []) {
      if (r.end < r.start) continue;
      this.iovad.reserveIova(Math.floor(r.start / granule), Math.floor(r.end / granule));
    }
  }

  /** True while the 32-bit-first policy is still in force (`pci_32bit_workaround`). */
  get pci32BitWorkaround(): boolean {
    return this.#pci32Bit;
  }

  /** IOVA ranges waiting in the flush queue (lazy mode). */
  get flushQueueLength(): number {
    return this.#fqPfn.length;
  }

  // ---- streaming --------------------------------------------------------

  /**
   * See {@linkcode DmaApi.mapPage}: allocates IOVA, maps and syncs. Returns
   * the IOVA plus the buffer's offset in its granule, or
   * {@linkcode DMA_MAPPING_ERROR}. Models `iommu_dma_map_page`.
   *
   * @throws {RangeError} for an invalid direction or size
   */
  mapPage(phys: number, size: number, dir: DmaDirection, attrs = 0): number {
    checkDmaDirection(dir);
    checkSize(size);
    if (attrs & DMA_ATTR_MMIO) {
      this.#warn("mapPage with DMA_ATTR_MMIO: use the IOVA API or dma_map_resource");
      return this.#mapError();
    }
    if (!Number.isSafeInteger(phys) || phys < 0 || size === 0) {
      if (size === 0) this.#warn(`mapPage of 0 bytes at ${hex(phys)}`);
      return this.#mapError();
    }
    const addr = this.#map(phys, size, dmaInfoToProt(dir, true, attrs), this.mask);
    if (addr !== DMA_MAPPING_ERROR) this.#live.set(addr, size);
    return addr;
  }

  /**
   * See {@linkcode DmaApi.unmapPage}: unmaps and, in strict mode, syncs
   * before the IOVA is freed; in lazy mode the IOVA goes to the flush queue.
   * Unmapping what is not mapped is a WARN and does nothing. Models
   * `iommu_dma_unmap_page`.
   */
  unmapPage(dmaAddr: number, size: number, dir: DmaDirection, _attrs = 0): void {
    checkDmaDirection(dir);
    checkSize(size);
    if (this.domain.iovaToPhys(dmaAddr) === null) {
      this.#warn(`unmap of ${hex(dmaAddr)}: nothing is mapped there`);
      return;
    }
    const mapped = this.#live.get(dmaAddr);
    if (mapped !== undefined && mapped !== size) {
      this.#warn(`unmap of ${hex(dmaAddr)} with size ${size}: ${mapped} bytes were mapped`);
    }
    this.#live.delete(dmaAddr);
    this.#unmap(dmaAddr, size);
  }

  /** `dma_map_single`: {@linkcode DmaIommu.mapPage} for a kernel buffer's physical address. */
  mapSingle(phys: number, size: number, dir: DmaDirection, attrs = 0): number {
    return this.mapPage(phys, size, dir, attrs);
  }

  /** `dma_unmap_single`: {@linkcode DmaIommu.unmapPage}. */
  unmapSingle(dmaAddr: number, size: number, dir: DmaDirection, attrs = 0): void {
    this.unmapPage(dmaAddr, size, dir, attrs);
  }

  /** See {@linkcode DmaApi.syncSingleForCpu}: nothing to do for a coherent device without bouncing. */
  syncSingleForCpu(_dmaAddr: number, _size: number, dir: DmaDirection): void {
    checkDmaDirection(dir);
  }

  /** See {@linkcode DmaApi.syncSingleForDevice}: nothing to do for a coherent device without bouncing. */
  syncSingleForDevice(_dmaAddr: number, _size: number, dir: DmaDirection): void {
    checkDmaDirection(dir);
  }

  /** See {@linkcode DmaApi.mappingError}. */
  mappingError(dmaAddr: number): number {
    return dmaAddr === DMA_MAPPING_ERROR ? -Errno.ENOMEM : 0;
  }

  /** See {@linkcode DmaApi.needSync}: false (coherent, no swiotlb: `dma_skip_sync`). */
  needSync(_dmaAddr: number): boolean {
    return false;
  }

  /** True: mappings through an IOMMU must be unmapped. Models `dma_need_unmap`. */
  needUnmap(): boolean {
    return true;
  }

  /** See {@linkcode DmaApi.maxMappingSize}: unlimited (no swiotlb for trusted devices). */
  maxMappingSize(): number {
    return DMA_SIZE_MAX;
  }

  /**
   * The largest mapping that stays on the IOVA caches' fast path: 32
   * granules (128 KiB with 4 KiB granules). Models `dma_opt_mapping_size`.
   */
  optMappingSize(): number {
    return this.granule * (1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1));
  }

  /** The granule mask: buffers may be merged at granule boundaries. Models `dma_get_merge_boundary`. */
  getMergeBoundary(): number {
    return this.granule - 1;
  }

  // ---- coherent ----------------------------------------------------------

  /**
   * See {@linkcode DmaApi.allocCoherent}: zeroed pages mapped bidirectionally
   * under the coherent mask; `null` when pages or IOVA run out. Models
   * `iommu_dma_alloc` (the contiguous path).
   */
  allocCoherent(size: number): CoherentAllocation | null {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`Cannot allocate ${size} coherent bytes: expected an integer >= 1`);
    }
    const phys = this.pages.allocPagesExact(size, { zero: true });
    if (phys === null) return null;
    const prot = dmaInfoToProt(DmaDirection.BIDIRECTIONAL, true, 0);
    const dmaAddr = this.#map(phys, size, prot, this.coherentMask);
    if (dmaAddr === DMA_MAPPING_ERROR) {
      this.pages.freePagesExact(phys, size);
      return null;
    }
    this.#live.set(dmaAddr, size);
    return { cpuAddr: phys, dmaAddr };
  }

  /**
   * See {@linkcode DmaApi.freeCoherent}: unmaps (queued in lazy mode) and
   * frees the pages. Models `iommu_dma_free`.
   *
   * @throws {RangeError} when no allocation of that size is at `cpuAddr`
   */
  freeCoherent(size: number, cpuAddr: number, dmaAddr: number): void {
    const mapped = this.#live.get(dmaAddr);
    if (mapped !== undefined && mapped !== size) {
      this.#warn(`free of coherent ${hex(dmaAddr)} with size ${size}: ${mapped} were allocated`);
    }
    this.#live.delete(dmaAddr);
    this.#unmap(dmaAddr, size);
    this.pages.freePagesExact(cpuAddr, size);
  }

  // ---- lazy mode ---------------------------------------------------------

  /**
   * Flushes the IOTLB (`flush_iotlb_all`: virtio-iommu sends every queued
   * UNMAP) and releases every IOVA in the flush queue. What the flush-queue
   * timer does (`fq_flush_timeout`); a no-op in strict mode. Returns the IOVA
   * ranges released.
   */
  flushQueue(): number {
    if (this.strict) return 0;
    this.#fqTimerOn = false;
    this.stats.fqFlushes++;
    this.domain.flushIotlbAll();
    const n = this.#fqPfn.length;
    for (let i = 0; i < n; i++) this.iovad.freeIovaFast(this.#fqPfn[i], this.#fqPages[i]);
    this.#fqPfn.length = 0;
    this.#fqPages.length = 0;
    this.stats.fqFreed += n;
    return n;
  }

  // ---- the IOVA-based API (called through iova_api.ts) -------------------

  /**
   * Reserves IOVA for `size` bytes starting at `phys`'s offset in a granule.
   * Models `dma_iova_try_alloc` for a device using dma-iommu.
   */
  iovaTryAlloc(state: DmaIovaState, phys: number, size: number): boolean {
    state.addr = 0;
    state.size = 0;
    if (!Number.isSafeInteger(size) || size <= 0) {
      this.#warn(`dma_iova_try_alloc of ${size} bytes`);
      return false;
    }
    if (!Number.isSafeInteger(phys) || phys < 0) return false;
    const off = this.iovad.iovaOffset(phys);
    const addr = this.#allocIova(this.iovad.iovaAlign(size + off), this.mask);
    if (addr === 0) return false;
    state.addr = addr + off;
    state.size = size;
    this.stats.iovaAllocs++;
    return true;
  }

  /**
   * Maps `size` bytes at `phys` to `state.addr + offset` without syncing.
   * Models `dma_iova_link`; see `iovaLink` in `iova_api.ts` for the rules.
   */
  iovaLink(
    state: DmaIovaState,
    phys: number,
    offset: number,
    size: number,
    dir: DmaDirection,
    attrs = 0,
  ): number {
    checkDmaDirection(dir);
    if (state.size === 0) {
      this.#warn("dma_iova_link on a state without an IOVA reservation");
      return -Errno.EINVAL;
    }
    if (!Number.isSafeInteger(phys) || phys < 0) return -Errno.EINVAL;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(size) || size < 1) {
      this.#warn(`dma_iova_link of ${size} bytes at offset ${offset}`);
      return -Errno.EINVAL;
    }
    const pad = this.iovad.iovaOffset(phys);
    if (pad !== 0 && offset > 0) {
      this.#warn(
        `dma_iova_link at offset ${offset} of ${
          hex(phys)
        }: only the first link may start mid-granule`,
      );
      return -Errno.EIO;
    }
    if (offset + size > state.size) {
      this.#warn(
        `dma_iova_link of [${offset}, ${offset + size}) past the ${state.size}-byte reservation`,
      );
      return -Errno.EINVAL;
    }
    const iova = state.addr + offset - pad;
    const ret = iommuMapNosync(
      this.domain,
      iova,
      phys - pad,
      this.iovad.iovaAlign(size + pad),
      dmaInfoToProt(dir, true, attrs),
    );
    if (ret === -Errno.EINVAL && !isAligned(iova, this.granule)) {
      this.#warn(
        `dma_iova_link: IOVA ${hex(iova)} is unaligned (a previous link did not end on a granule)`,
      );
    }
    if (ret === 0) this.stats.iovaLinks++;
    return ret;
  }

  /** Syncs what was linked in `[offset, offset + size)`. Models `dma_iova_sync`. */
  iovaSync(state: DmaIovaState, offset: number, size: number): number {
    if (state.size === 0) {
      this.#warn("dma_iova_sync on a state without an IOVA reservation");
      return -Errno.EINVAL;
    }
    const addr = state.addr + offset;
    const pad = this.iovad.iovaOffset(addr);
    return iommuSyncMap(this.domain, addr - pad, this.iovad.iovaAlign(size + pad));
  }

  /** Unmaps `[offset, offset + size)`, always synchronously. Models `dma_iova_unlink`. */
  iovaUnlink(
    state: DmaIovaState,
    offset: number,
    size: number,
    dir: DmaDirection,
    _attrs = 0,
  ): void {
    checkDmaDirection(dir);
    if (state.size === 0) {
      this.#warn("dma_iova_unlink on a state without an IOVA reservation");
      return;
    }
    this.#iovaUnlink(state, offset, size, false);
  }

  /**
   * Unmaps `[0, mappedLen)` and frees the reservation (deferred in lazy mode);
   * with `mappedLen` 0 only frees. Models `dma_iova_destroy`.
   */
  iovaDestroy(state: DmaIovaState, mappedLen: number, dir: DmaDirection, _attrs = 0): void {
    checkDmaDirection(dir);
    if (state.size === 0) {
      this.#warn("dma_iova_destroy on a state without an IOVA reservation");
      return;
    }
    if (mappedLen === 0) {
      this.iovaFree(state);
      return;
    }
    const pad = this.iovad.iovaOffset(state.addr);
    const reserved = this.iovad.iovaAlign(state.size + pad) / this.granule;
    const freed = this.iovad.iovaAlign(mappedLen + pad) / this.granule;
    // A free into a different cache class than the allocation leaks or, worse, aliases IOVA.
    const freedClass = orderBase2(freed);
    if (freedClass < IOVA_RANGE_CACHE_MAX_SIZE && freedClass !== orderBase2(reserved)) {
      this.#warn(
        `dma_iova_destroy frees ${freed} granules of a ${reserved}-granule reservation at ${
          hex(state.addr)
        }`,
      );
    }
    this.#iovaUnlink(state, 0, mappedLen, true);
  }

  /** Returns the reservation to the allocator; everything must be unlinked. Models `dma_iova_free`. */
  iovaFree(state: DmaIovaState): void {
    if (state.size === 0) {
      this.#warn("dma_iova_free on a state without an IOVA reservation");
      return;
    }
    const pad = this.iovad.iovaOffset(state.addr);
    this.#freeIova(state.addr - pad, this.iovad.iovaAlign(state.size + pad), null);
  }

  // ---- internals -------------------------------------------------------------

  /** `__iommu_dma_map`. */
  #map(phys: number, size: number, prot: number, dmaMask: number): number {
    const off = this.iovad.iovaOffset(phys);
    const len = this.iovad.iovaAlign(size + off);
    const iova = this.#allocIova(len, dmaMask);
    if (iova === 0) return this.#mapError();
    const ret = iommuMap(this.domain, iova, phys - off, len, prot);
    if (ret !== 0) {
      this.#freeIova(iova, len, null);
      return this.#mapError();
    }
    this.stats.maps++;
    return iova + off;
  }

  /** `__iommu_dma_unmap`. */
  #unmap(dmaAddr: number, size: number): void {
    const off = this.iovad.iovaOffset(dmaAddr);
    const addr = dmaAddr - off;
    const len = this.iovad.iovaAlign(size + off);
    const gather = newGather(!this.strict);
    const unmapped = iommuUnmapFast(this.domain, addr, len, gather);
    if (unmapped !== len) {
      this.#warn(`unmap of ${hex(addr)}: ${unmapped} of ${len} bytes unmapped`);
    }
    if (!gather.queued) iommuIotlbSync(this.domain, gather);
    this.#freeIova(addr, len, gather);
    this.stats.unmaps++;
  }

  /** `__iommu_dma_iova_unlink`. */
  #iovaUnlink(state: DmaIovaState, offset: number, size: number, freeIova: boolean): void {
    const addr0 = state.addr + offset;
    const pad = this.iovad.iovaOffset(addr0);
    const addr = addr0 - pad;
    const len = this.iovad.iovaAlign(size + pad);
    const gather = newGather(freeIova && !this.strict);
    const unmapped = iommuUnmapFast(this.domain, addr, len, gather);
    if (unmapped !== len) {
      this.#warn(`dma_iova unlink of ${hex(addr)}: ${unmapped} of ${len} bytes unmapped`);
    }
    if (!gather.queued) iommuIotlbSync(this.domain, gather);
    if (freeIova) this.#freeIova(addr, len, gather);
  }

  /** `iommu_dma_alloc_iova`: an IOVA of `size` bytes (granule multiple) under `dmaLimit`, or 0. */
  #allocIova(size: number, dmaLimit: number): number {
    const iovad = this.iovad;
    const len = size / this.granule;
    const g = this.domain.geometry;
    if (g.forceAperture) dmaLimit = Math.min(dmaLimit, g.apertureEnd);
    if (dmaLimit > 0xffff_ffff && this.#pci32Bit) {
      const pfn = iovad.allocIovaFast(len, Math.floor(0xffff_ffff / this.granule), false);
      if (pfn !== 0) return pfn * this.granule;
      this.#pci32Bit = false;
      this.#note(`Using ${dmaLimit.toString(2).length}-bit DMA addresses`);
    }
    const limitPfn = Math.floor(dmaLimit / this.granule);
    if (limitPfn < 1) return 0;
    return iovad.allocIovaFast(len, limitPfn, true) * this.granule;
  }

  /** `iommu_dma_free_iova`: to the flush queue when the gather was queued, else to the allocator. */
  #freeIova(iova: number, size: number, gather: IotlbGather | null): void {
    const pfn = this.iovad.iovaPfn(iova);
    const count = size / this.granule;
    if (gather !== null && gather.queued) this.#queueIova(pfn, count);
    else this.iovad.freeIovaFast(pfn, count);
  }

  /** `queue_iova`: defers the free until the next flush; a full queue flushes now. */
  #queueIova(pfn: number, count: number): void {
    if (this.#fqPfn.length >= this.#fqSize) this.flushQueue();
    this.#fqPfn.push(pfn);
    this.#fqPages.push(count);
    if (!this.#fqTimerOn && this.#setTimer !== undefined) {
      this.#fqTimerOn = true;
      this.#setTimer(() => {
        if (this.#fqTimerOn) this.flushQueue();
      }, this.#fqTimeout);
    }
  }

  #mapError(): number {
    this.stats.mapErrors++;
    return DMA_MAPPING_ERROR;
  }

  #warn(message: string): void {
    pushBounded(this.warnings, `${this.name}: ${message}`);
  }

  #note(message: string): void {
    pushBounded(this.log, `${this.name}: ${message}`);
  }
}

/** A fresh gather (`iommu_iotlb_gather_init`), queued for lazy unmaps. */
function newGather(queued: boolean): IotlbGather {
  return { start: Number.MAX_SAFE_INTEGER, end: 0, queued };
}

function resetGather(gather: IotlbGather): void {
  gather.start = Number.MAX_SAFE_INTEGER;
  gather.end = 0;
}

function pushBounded(list: string[], message: string): void {
  if (list.length >= DMA_IOMMU_MAX_LOG) list.shift();
  list.push(message);
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`Cannot map ${size} bytes for DMA: expected an integer >= 0`);
  }
}

function isAligned(v: number, align: number): boolean {
  return v % align === 0;
}

/** The lowest set bit of `v` as a value (Infinity for 0), for integers below 2^53. */
function lowBit(v: number): number {
  if (v === 0) return Infinity;
  const low = v % 0x1_0000_0000;
  if (low !== 0) return (low & -low) >>> 0;
  const high = Math.floor(v / 0x1_0000_0000) >>> 0;
  return ((high & -high) >>> 0) * 0x1_0000_0000;
}

/** `a | b` for non-negative integers below 2^53. */
function or53(a: number, b: number): number {
  const hi = (Math.floor(a / 0x1_0000_0000) | Math.floor(b / 0x1_0000_0000)) >>> 0;
  const lo = ((a >>> 0) | (b >>> 0)) >>> 0;
  return hi * 0x1_0000_0000 + lo;
}

function hex(v: number): string {
  return Number.isSafeInteger(v) && v >= 0 ? `0x${v.toString(16)}` : String(v);
}
