import type { GuestMemory } from "../memory/guest_memory.ts";
import { IommuDmaSpace } from "./iommu_dma_space.ts";
import { IommuDomain } from "./iommu_domain.ts";
import { IommuMapFlag, IommuStatus } from "./iommu_status.ts";

/** A reserved IOVA region reported by PROBE (RESV_MEM property). */
export interface ReservedRegion {
  /** First IOVA of the region. */
  start: number;
  /** Last IOVA of the region (inclusive). */
  end: number;
  /** 0 = reserved (never map), 1 = MSI doorbell. */
  subtype: 0 | 1;
}

/** A translation fault, as the virtio-iommu event queue reports it. */
export interface IommuFault {
  /** {@linkcode IommuFaultReason}: DOMAIN (not attached) or MAPPING (no or wrong mapping). */
  reason: number;
  /** The endpoint (PCI requester id) that faulted. */
  endpoint: number;
  /** The faulting IOVA. */
  address: number;
  /** READ (1) and/or WRITE (2): the access that faulted. */
  access: number;
}

/** Options of the translation engine. */
export interface IommuOptions {
  /** Guest memory that mappings point into. */
  memory: GuestMemory;
  /** The translation granule in bytes, a power of two (default 4096). */
  granule?: number;
  /** The IOVA window accepted by MAP, inclusive (default [0, 2^53 - 1]). */
  inputRange?: readonly [number, number];
  /** Valid domain ids, inclusive (default [0, 0xffffffff]). */
  domainRange?: readonly [number, number];
  /** Unattached endpoints bypass translation (default false: they fault). */
  bypass?: boolean;
  /** Regions PROBE reports and MAP refuses (default: the x86 MSI window as an MSI doorbell). */
  reservedRegions?: readonly ReservedRegion[];
  /** Called for every translation fault (the virtio-iommu device queues an event). */
  onFault?: (fault: IommuFault) => void;
}

/** The most domains the guest may create: a bound on host memory. */
export const MAX_DOMAINS = 1 << 16;

/** The x86 MSI doorbell window, reserved by default. */
export const X86_MSI_REGION: ReservedRegion = { start: 0xfee0_0000, end: 0xfeef_ffff, subtype: 1 };

/**
 * The IOMMU translation engine: domains of mappings, endpoints attached to
 * them, and one {@linkcode IommuDmaSpace} per endpoint for devices to use.
 *
 * Its programming interface is the virtio-iommu device (devices/iommu); the
 * methods return virtio-iommu status codes so the device passes them through.
 *
 * @example
 * ```ts
 * import { GuestMemory, Iommu, IommuMapFlag, DmaAccess } from "@vireo/vireo";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const iommu = new Iommu({ memory });
 * const space = iommu.addEndpoint(0x08);
 * iommu.attach(0x08, 1);
 * iommu.map(1, 0x10000, 0x10fff, 0x2000, IommuMapFlag.READ);
 * memory.write32(0x2004, 42);
 * console.log(space.read32(0x10004)); // 42
 * ```
 */
export class Iommu {
  /** Guest memory that mappings point into. */
  readonly memory: GuestMemory;
  /** The translation granule in bytes. */
  readonly granule: number;
  /** The accepted IOVA window, inclusive. */
  readonly inputRange: readonly [number, number];
  /** Valid domain ids, inclusive. */
  readonly domainRange: readonly [number, number];
  /** Reserved regions (PROBE reports them; MAP refuses to overlap them). */
  readonly reservedRegions: readonly ReservedRegion[];
  /** Unattached endpoints bypass translation (the config `bypass` byte). */
  bypass: boolean;
  /** Fault listener. */
  onFault: ((fault: IommuFault) => void) | undefined;
  /** Faults reported so far. */
  faults = 0;
  readonly #domains = new Map<number, IommuDomain>();
  readonly #endpoints = new Map<number, IommuDmaSpace>();

  /**
   * Creates the engine.
   * @throws {RangeError} when the granule is not a power of two of at least 1 KiB, or a range is inverted
   */
  constructor(options: IommuOptions) {
    const granule = options.granule ?? 4096;
    if (!Number.isInteger(granule) || granule < 1024 || (granule & (granule - 1)) !== 0) {
      throw new RangeError(
        `Cannot create an IOMMU: granule ${granule} is not a power of two >= 1024`,
      );
    }
    const input = options.inputRange ?? [0, 2 ** 53 - 1];
    const domains = options.domainRange ?? [0, 0xffff_ffff];
    if (!(input[0] <= input[1]) || !(domains[0] <= domains[1])) {
      throw new RangeError("Cannot create an IOMMU: an input or domain range is inverted");
    }
    this.memory = options.memory;
    this.granule = granule;
    this.inputRange = input;
    this.domainRange = domains;
    this.bypass = options.bypass ?? false;
    this.reservedRegions = options.reservedRegions ?? [X86_MSI_REGION];
    this.onFault = options.onFault;
  }

  /**
   * Registers endpoint `id` (a PCI requester id: bus << 8 | devfn) and returns
   * the DMA space its device must use.
   *
   * @throws {RangeError} when the id is not a 32-bit value or is already registered
   */
  addEndpoint(id: number): IommuDmaSpace {
    if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff) {
      throw new RangeError(`Cannot add IOMMU endpoint ${id}: not a 32-bit id`);
    }
    if (this.#endpoints.has(id)) {
      throw new RangeError(`Cannot add IOMMU endpoint ${id}: it is already registered`);
    }
    const space = new IommuDmaSpace(this, id);
    this.#endpoints.set(id, space);
    return space;
  }

  /** The DMA space of endpoint `id`, if registered. */
  endpoint(id: number): IommuDmaSpace | undefined {
    return this.#endpoints.get(id);
  }

  /** The domain with id `id`, if it exists. */
  domain(id: number): IommuDomain | undefined {
    return this.#domains.get(id);
  }

  /** How many domains exist. */
  get domainCount(): number {
    return this.#domains.size;
  }

  /**
   * ATTACH: puts `endpoint` into domain `domainId`, creating the domain when absent
   * and detaching the endpoint from its previous domain.
   */
  attach(endpoint: number, domainId: number, bypassDomain = false): IommuStatus {
    const space = this.#endpoints.get(endpoint);
    if (space === undefined) return IommuStatus.NOENT;
    if (domainId < this.domainRange[0] || domainId > this.domainRange[1]) return IommuStatus.RANGE;
    let domain = this.#domains.get(domainId);
    if (domain === undefined) {
      if (this.#domains.size >= MAX_DOMAINS) return IommuStatus.NOMEM;
      domain = new IommuDomain(domainId, bypassDomain);
      this.#domains.set(domainId, domain);
    } else if (domain.bypass !== bypassDomain) {
      return IommuStatus.INVAL;
    }
    const old = space.domain;
    if (old === domain) return IommuStatus.OK;
    if (old !== null) this.#leave(space, old);
    domain.endpoints.add(endpoint);
    space.attachTo(domain);
    return IommuStatus.OK;
  }

  /** DETACH: takes `endpoint` out of `domainId`; the last endpoint out deletes the domain. */
  detach(endpoint: number, domainId: number): IommuStatus {
    const space = this.#endpoints.get(endpoint);
    const domain = this.#domains.get(domainId);
    if (space === undefined || domain === undefined) return IommuStatus.NOENT;
    if (space.domain !== domain) return IommuStatus.INVAL;
    this.#leave(space, domain);
    return IommuStatus.OK;
  }

  /** MAP: `[virtStart, virtEnd] → physStart` with `flags` ({@linkcode IommuMapFlag}). */
  map(
    domainId: number,
    virtStart: number,
    virtEnd: number,
    physStart: number,
    flags: number,
  ): IommuStatus {
    const domain = this.#domains.get(domainId);
    if (domain === undefined) return IommuStatus.NOENT;
    if (domain.bypass) return IommuStatus.INVAL;
    const known = IommuMapFlag.READ | IommuMapFlag.WRITE | IommuMapFlag.MMIO;
    if ((flags & ~known) !== 0) return IommuStatus.INVAL;
    if (!this.#alignedRange(virtStart, virtEnd) || !this.#aligned(physStart)) {
      return IommuStatus.RANGE;
    }
    if (virtStart < this.inputRange[0] || virtEnd > this.inputRange[1]) return IommuStatus.RANGE;
    for (const r of this.reservedRegions) {
      if (virtStart <= r.end && r.start <= virtEnd) return IommuStatus.INVAL;
    }
    return domain.map(virtStart, virtEnd, physStart, flags);
  }

  /**
   * UNMAP: removes every mapping wholly inside `[virtStart, virtEnd]` (RANGE and
   * nothing removed when one would be split), and drops stale translations.
   */
  unmap(domainId: number, virtStart: number, virtEnd: number): IommuStatus {
    const domain = this.#domains.get(domainId);
    if (domain === undefined) return IommuStatus.NOENT;
    if (!this.#alignedRange(virtStart, virtEnd)) return IommuStatus.RANGE;
    const { status, removed } = domain.unmap(virtStart, virtEnd);
    if (removed > 0) {
      for (const id of domain.endpoints) {
        this.#endpoints.get(id)!.invalidateRange(virtStart, virtEnd - virtStart + 1);
      }
    }
    return status;
  }

  /** PROBE: the reserved regions of `endpoint`, or `null` when it is unknown. */
  probe(endpoint: number): readonly ReservedRegion[] | null {
    return this.#endpoints.has(endpoint) ? this.reservedRegions : null;
  }

  /** Records a fault and tells the listener (spaces call this before throwing `DmaFault`). */
  reportFault(endpoint: number, reason: number, address: number, access: number): void {
    this.faults++;
    this.onFault?.({ reason, endpoint, address, access });
  }

  /** Device reset of the virtio-iommu: every domain and attachment is gone. */
  reset(): void {
    for (const domain of [...this.#domains.values()]) {
      for (const id of [...domain.endpoints]) this.#leave(this.#endpoints.get(id)!, domain);
    }
    this.#domains.clear();
  }

  #leave(space: IommuDmaSpace, domain: IommuDomain): void {
    domain.endpoints.delete(space.endpointId);
    space.attachTo(null);
    if (domain.endpoints.size === 0) {
      domain.clear();
      this.#domains.delete(domain.id);
    }
  }

  #aligned(value: number): boolean {
    return Number.isSafeInteger(value) && value >= 0 && value % this.granule === 0;
  }

  #alignedRange(start: number, end: number): boolean {
    return this.#aligned(start) && Number.isSafeInteger(end) && end >= start &&
      (end + 1) % this.granule === 0;
  }
}
