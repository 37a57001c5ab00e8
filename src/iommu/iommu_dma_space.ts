import type { DmaAccess } from "../dma/dma_access.ts";
import { DmaFault } from "../dma/dma_fault.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "../dma/dma_space.ts";
import type { Iommu } from "./iommu.ts";
import type { IommuDomain } from "./iommu_domain.ts";
import { IommuFaultReason } from "./iommu_status.ts";

/** Entries in the per-endpoint translation cache (direct-mapped by IOVA page). */
const CACHE_ENTRIES = 64;

/** Counters of one endpoint's translations. */
export interface IommuSpaceStats {
  /** Translations served from the cache. */
  hits: number;
  /** Translations that searched the domain. */
  misses: number;
  /** Translations that faulted. */
  faults: number;
  /** Cache entries dropped because an UNMAP or DETACH made them stale. */
  invalidations: number;
}

/**
 * One endpoint's view of memory through the IOMMU: the `DmaSpace` a device
 * behind the IOMMU uses. Translations are cached per IOVA page (each entry
 * holds a whole mapping) and dropped exactly when an UNMAP or DETACH covers
 * them; ring caches above hear of it through invalidation listeners.
 */
export class IommuDmaSpace extends TranslatingDmaSpace {
  /** The endpoint (PCI requester id) this space translates for. */
  readonly endpointId: number;
  /** Translation counters (hit rate = hits / (hits + misses)). */
  readonly stats: IommuSpaceStats = { hits: 0, misses: 0, faults: 0, invalidations: 0 };
  readonly #iommu: Iommu;
  #domain: IommuDomain | null = null;
  readonly #start = new Float64Array(CACHE_ENTRIES).fill(-1);
  readonly #end = new Float64Array(CACHE_ENTRIES).fill(-2);
  readonly #phys = new Float64Array(CACHE_ENTRIES);
  readonly #perm = new Uint8Array(CACHE_ENTRIES);

  /** Created by {@linkcode Iommu.addEndpoint}. */
  constructor(iommu: Iommu, endpointId: number) {
    super();
    this.#iommu = iommu;
    this.endpointId = endpointId;
  }

  /** The domain the endpoint is attached to, or `null`. */
  get domain(): IommuDomain | null {
    return this.#domain;
  }

  /** Called by the engine on ATTACH and DETACH; every cached translation is dropped. */
  attachTo(domain: IommuDomain | null): void {
    this.#domain = domain;
    this.invalidateRange(0, 2 ** 53);
  }

  /** Drops cached translations overlapping `[address, address + length)` and tells listeners. */
  invalidateRange(address: number, length: number): void {
    const last = address + length - 1;
    const start = this.#start;
    const end = this.#end;
    for (let i = 0; i < CACHE_ENTRIES; i++) {
      if (start[i] <= last && end[i] >= address) {
        start[i] = -1;
        end[i] = -2;
        this.stats.invalidations++;
      }
    }
    this.invalidate(address, length);
  }

  /** See {@linkcode DmaSpace.translate}. */
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    const domain = this.#domain;
    if (domain === null || domain.bypass) {
      if (domain === null && !this.#iommu.bypass) {
        this.#fault(address, length, access, IommuFaultReason.DOMAIN, "unmapped");
      }
      this.#target(address, address, Infinity, length, access, out);
      return;
    }
    const slot = ((address / 4096) >>> 0) & (CACHE_ENTRIES - 1);
    const start = this.#start;
    if (!(start[slot] <= address && address <= this.#end[slot])) {
      const i = domain.find(address);
      if (i < 0 || !(length >= 0)) {
        this.#fault(address, length, access, IommuFaultReason.MAPPING, "unmapped");
      }
      this.stats.misses++;
      start[slot] = domain.starts[i];
      this.#end[slot] = domain.ends[i];
      this.#phys[slot] = domain.phys[i];
      this.#perm[slot] = domain.flags[i] & 3;
    } else {
      this.stats.hits++;
    }
    if ((this.#perm[slot] & access) !== access) {
      this.#fault(address, length, access, IommuFaultReason.MAPPING, "permission");
    }
    const phys = this.#phys[slot] + (address - start[slot]);
    this.#target(address, phys, this.#end[slot] - address + 1, length, access, out);
  }

  /** Resolves a physical address in guest RAM; `mapped` bounds the run by the mapping. */
  #target(
    address: number,
    phys: number,
    mapped: number,
    length: number,
    access: DmaAccess,
    out: DmaTranslation,
  ): void {
    const region = this.#iommu.memory.regionOf(phys, length > 0 ? 1 : 0);
    if (region === undefined || !Number.isSafeInteger(length) || length < 0) {
      this.#fault(address, length, access, IommuFaultReason.MAPPING, "unmapped");
    }
    out.bytes = region.bytes;
    out.offset = phys - region.base;
    const inRegion = region.end - phys;
    let n = length < mapped ? length : mapped;
    if (inRegion < n) n = inRegion;
    out.length = n;
  }

  #fault(
    address: number,
    length: number,
    access: DmaAccess,
    reason: number,
    kind: "unmapped" | "permission",
  ): never {
    this.stats.faults++;
    const valid = Number.isSafeInteger(address) && address >= 0 && Number.isSafeInteger(length) &&
      length >= 0;
    this.#iommu.reportFault(this.endpointId, reason, address, access);
    throw new DmaFault(address, length, access, valid ? kind : "invalid");
  }
}
