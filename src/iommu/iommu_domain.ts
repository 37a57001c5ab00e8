import { IommuStatus } from "./iommu_status.ts";

/** The most mappings one domain may hold: a guest cannot make the host grow without bound. */
export const MAX_MAPPINGS_PER_DOMAIN = 1 << 20;

/**
 * One IOMMU domain: a set of non-overlapping mappings `[start, end] → phys` with
 * permissions, as created by virtio-iommu MAP requests. Mappings are kept
 * sorted in parallel arrays and found by binary search.
 */
export class IommuDomain {
  /** The domain id the guest chose. */
  readonly id: number;
  /** Endpoint ids attached to this domain. */
  readonly endpoints: Set<number> = new Set();
  /** True for a bypass (identity) domain, created by ATTACH with ATTACH_F_BYPASS. */
  readonly bypass: boolean;
  /** Mapping first IOVAs, ascending. */
  readonly starts: number[] = [];
  /** Mapping last IOVAs (inclusive). */
  readonly ends: number[] = [];
  /** Mapping target addresses. */
  readonly phys: number[] = [];
  /** Mapping flags ({@linkcode IommuMapFlag} bits). */
  readonly flags: number[] = [];

  /** Creates an empty domain. */
  constructor(id: number, bypass = false) {
    this.id = id;
    this.bypass = bypass;
  }

  /** Number of mappings. */
  get size(): number {
    return this.starts.length;
  }

  /** Index of the mapping containing `iova`, or -1. */
  find(iova: number): number {
    const starts = this.starts;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (iova < starts[mid]) hi = mid - 1;
      else if (iova > this.ends[mid]) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  /** Index of the first mapping whose end is at or above `iova`. */
  #firstEndingAtOrAfter(iova: number): number {
    const ends = this.ends;
    let lo = 0;
    let hi = ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ends[mid] < iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Adds a mapping (alignment and range are the caller's checks).
   * @returns OK, INVAL when it overlaps an existing mapping, NOMEM when the domain is full
   */
  map(start: number, end: number, phys: number, flags: number): IommuStatus {
    const i = this.#firstEndingAtOrAfter(start);
    if (i < this.starts.length && this.starts[i] <= end) return IommuStatus.INVAL;
    if (this.starts.length >= MAX_MAPPINGS_PER_DOMAIN) return IommuStatus.NOMEM;
    this.starts.splice(i, 0, start);
    this.ends.splice(i, 0, end);
    this.phys.splice(i, 0, phys);
    this.flags.splice(i, 0, flags);
    return IommuStatus.OK;
  }

  /**
   * Removes every mapping lying wholly inside `[start, end]`. If a mapping
   * would be split, nothing is removed and RANGE is returned.
   *
   * @returns the status, and in `removed` the covered span (for invalidation)
   */
  unmap(start: number, end: number): { status: IommuStatus; removed: number } {
    const first = this.#firstEndingAtOrAfter(start);
    let last = first;
    while (last < this.starts.length && this.starts[last] <= end) last++;
    if (first === last) return { status: IommuStatus.OK, removed: 0 };
    if (this.starts[first] < start || this.ends[last - 1] > end) {
      return { status: IommuStatus.RANGE, removed: 0 };
    }
    const count = last - first;
    this.starts.splice(first, count);
    this.ends.splice(first, count);
    this.phys.splice(first, count);
    this.flags.splice(first, count);
    return { status: IommuStatus.OK, removed: count };
  }

  /** Removes every mapping (the domain ceases to exist when its last endpoint detaches). */
  clear(): void {
    this.starts.length = 0;
    this.ends.length = 0;
    this.phys.length = 0;
    this.flags.length = 0;
  }
}
