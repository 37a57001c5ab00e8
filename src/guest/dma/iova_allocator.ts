/**
 * The guest's IOVA allocator: a model of Linux's `drivers/iommu/iova.c` as
 * iommu-dma uses it.
 *
 * Ranges are kept in granule units (page frame numbers, "pfns"), allocated
 * top-down from a limit, size-aligned, never at pfn 0, around reserved holes,
 * with per-size LIFO caches (the "rcache" magazines) for ranges of 1 to 32
 * granules. All of it is bounded.
 *
 * @module
 */

/** Size classes of the range caches: 1, 2, 4, 8, 16 and 32 granules (`IOVA_RANGE_CACHE_MAX_SIZE`). */
export const IOVA_RANGE_CACHE_MAX_SIZE = 6;
/** PFNs one cache magazine holds (`IOVA_MAG_SIZE`). */
export const IOVA_MAG_SIZE = 127;
/** Full magazines each size class keeps in its depot (`MAX_GLOBAL_MAGS` of the original design). */
export const IOVA_DEPOT_MAX = 32;
/** Default bound on the ranges one allocator holds (reserved ones included). */
export const IOVA_MAX_RANGES: number = 1 << 20;
/** The anchor pfn at the top of the space (`IOVA_ANCHOR`): no range reaches it. */
export const IOVA_ANCHOR: number = Number.MAX_SAFE_INTEGER;

/** One allocated (or reserved) range, in granules, inclusive (`struct iova`). */
export interface IovaRange {
  /** First pfn. */
  pfnLo: number;
  /** Last pfn (inclusive). */
  pfnHi: number;
}

/** How to build an {@linkcode IovaAllocator}. */
export interface IovaAllocatorOptions {
  /** The IOVA granule in bytes: a power of two (the IOMMU's smallest page size). */
  granule: number;
  /**
   * The lowest pfn handed out; at least 1, since IOVA page 0 is never
   * allocated (iommu-dma passes `max(1, aperture_start >> shift)`). Default 1.
   */
  startPfn?: number;
  /** Bound on ranges held (allocated, reserved or cached); default {@linkcode IOVA_MAX_RANGES}. */
  maxRanges?: number;
  /** PFNs per cache magazine; default {@linkcode IOVA_MAG_SIZE}. */
  magazineSize?: number;
  /** Full magazines per size class depot; default {@linkcode IOVA_DEPOT_MAX}. */
  depotMax?: number;
}

/** Counters of one allocator. */
export interface IovaAllocatorStats {
  /** `allocIovaFast` calls served from a range cache. */
  cacheHits: number;
  /** `allocIovaFast` calls that searched the tree. */
  treeAllocs: number;
  /** `freeIovaFast` calls that put the range in a cache. */
  cacheFrees: number;
  /** Allocations that failed (0 returned). */
  failures: number;
  /** Times every cache was drained back to the tree to retry an allocation. */
  cacheFlushes: number;
}

/** A magazine of cached pfns of one size class (`struct iova_magazine`). */
class Magazine {
  readonly pfns: number[] = [];
}

/** The per-size-class cache: a loaded and a previous magazine, and a depot (`struct iova_rcache`). */
class RangeCache {
  loaded: Magazine = new Magazine();
  prev: Magazine = new Magazine();
  readonly depot: Magazine[] = [];
}

/**
 * An IOVA allocator (`struct iova_domain`) in granule units.
 *
 * The tree of ranges is a sorted array with an anchor range at the top, searched
 * the way `__alloc_and_insert_iova_range` walks the red-black tree: from a
 * cached position downwards (one cache for allocations below 4 GiB, one above),
 * retrying once from the limit. A failed allocation below 4 GiB is remembered
 * (`max32_alloc_size`) until something below 4 GiB is freed.
 *
 * `allocIovaFast` / `freeIovaFast` add the range caches for sizes up to 32
 * granules: frees go to the size class's magazine first, and allocations take
 * the most recently freed range that fits under the limit (LIFO), as Linux's
 * per-CPU caches do for one CPU.
 *
 * @example
 * ```ts
 * import { IovaAllocator } from "@vireo/vireo";
 * const iovad = new IovaAllocator({ granule: 4096 });
 * const limit = 0xffff_ffff / 4096; // pfn limit of a 32-bit mask: 0xfffff
 * const a = iovad.allocIovaFast(1, Math.floor(limit), true);
 * console.log(a.toString(16)); // "fffff": top-down, just under 4 GiB
 * console.log(iovad.allocIovaFast(3, Math.floor(limit), true).toString(16)); // "ffff8": 4 granules, 4-aligned
 * iovad.freeIovaFast(a, 1);
 * console.log(iovad.allocIovaFast(1, Math.floor(limit), true) === a); // true: LIFO reuse
 * ```
 */
export class IovaAllocator {
  /** The granule in bytes. */
  readonly granule: number;
  /** log2 of the granule (`iova_shift`). */
  readonly shift: number;
  /** The lowest pfn handed out (never 0). */
  readonly startPfn: number;
  /** The first pfn at or above 4 GiB (`dma_32bit_pfn`). */
  readonly dma32BitPfn: number;
  /** Bound on ranges held. */
  readonly maxRanges: number;
  /** Counters. */
  readonly stats: IovaAllocatorStats = {
    cacheHits: 0,
    treeAllocs: 0,
    cacheFrees: 0,
    failures: 0,
    cacheFlushes: 0,
  };
  /** Range starts, ascending; the last is the anchor. */
  readonly #lo: number[] = [IOVA_ANCHOR];
  /** Range ends (inclusive), parallel to `#lo`. */
  readonly #hi: number[] = [IOVA_ANCHOR];
  /** pfnLo of the cached node for allocations above 4 GiB (`cached_node`). */
  #cachedNode = IOVA_ANCHOR;
  /** pfnLo of the cached node for allocations below 4 GiB (`cached32_node`). */
  #cached32Node = IOVA_ANCHOR;
  /** Size of the last failed allocation below 4 GiB (`max32_alloc_size`). */
  #max32AllocSize: number;
  readonly #caches: RangeCache[] = [];
  readonly #magazineSize: number;
  readonly #depotMax: number;
  #cached = 0;

  /**
   * Creates an empty allocator. Models `init_iova_domain`.
   *
   * @throws {RangeError} when the granule is not a power of two or a bound is not a positive integer
   */
  constructor(options: IovaAllocatorOptions) {
    const { granule } = options;
    if (!isPowerOfTwo(granule)) {
      throw new RangeError(
        `Cannot create an IOVA allocator: granule ${granule} is not a power of two`,
      );
    }
    const startPfn = options.startPfn ?? 1;
    if (!Number.isSafeInteger(startPfn) || startPfn < 1) {
      throw new RangeError(`Cannot create an IOVA allocator: start pfn ${startPfn} is not >= 1`);
    }
    const maxRanges = options.maxRanges ?? IOVA_MAX_RANGES;
    const magazineSize = options.magazineSize ?? IOVA_MAG_SIZE;
    const depotMax = options.depotMax ?? IOVA_DEPOT_MAX;
    for (const [name, v] of [["maxRanges", maxRanges], ["magazineSize", magazineSize]] as const) {
      if (!Number.isSafeInteger(v) || v < 1) {
        throw new RangeError(`Cannot create an IOVA allocator: ${name} ${v} is not >= 1`);
      }
    }
    if (!Number.isSafeInteger(depotMax) || depotMax < 0) {
      throw new RangeError(`Cannot create an IOVA allocator: depotMax ${depotMax} is not >= 0`);
    }
    this.granule = granule;
    this.shift = Math.log2(granule);
    this.startPfn = startPfn;
    this.dma32BitPfn = Math.floor(2 ** 32 / granule);
    this.maxRanges = maxRanges;
    this.#max32AllocSize = this.dma32BitPfn;
    this.#magazineSize = magazineSize;
    this.#depotMax = depotMax;
    for (let i = 0; i < IOVA_RANGE_CACHE_MAX_SIZE; i++) this.#caches.push(new RangeCache());
  }

  /** The offset of `addr` inside its granule (`iova_offset`). */
  iovaOffset(addr: number): number {
    return addr % this.granule;
  }

  /** `size` rounded up to whole granules (`iova_align`). */
  iovaAlign(size: number): number {
    return Math.ceil(size / this.granule) * this.granule;
  }

  /** The pfn of `addr` (`iova_pfn`). */
  iovaPfn(addr: number): number {
    return Math.floor(addr / this.granule);
  }

  /** Ranges in the tree (allocated, reserved and cached), without the anchor. */
  get rangeCount(): number {
    return this.#lo.length - 1;
  }

  /** Ranges held in the caches, ready for reuse. */
  get cachedCount(): number {
    return this.#cached;
  }

  /** A copy of the tree's ranges, ascending, without the anchor (for tests and diagnostics). */
  ranges(): IovaRange[] {
    const out: IovaRange[] = [];
    for (let i = 0; i < this.#lo.length - 1; i++) {
      out.push({ pfnLo: this.#lo[i], pfnHi: this.#hi[i] });
    }
    return out;
  }

  /**
   * The cached pfns of the size class holding `size` granules, most recent
   * last (loaded magazine, then previous, then depot). Empty for sizes above 32.
   */
  cachedPfns(size: number): number[] {
    const order = orderBase2(size);
    if (order >= IOVA_RANGE_CACHE_MAX_SIZE) return [];
    const rc = this.#caches[order];
    const out: number[] = [];
    for (const mag of rc.depot) out.push(...mag.pfns);
    out.push(...rc.prev.pfns, ...rc.loaded.pfns);
    return out;
  }

  /**
   * Allocates `size` granules ending at or below `limitPfn`, as high as
   * possible; size-aligned (to the next power of two) when `sizeAligned`.
   * Returns the range or `null`. Models `alloc_iova`.
   *
   * @throws {RangeError} when `size` or `limitPfn` is not an integer >= 1
   */
  allocIova(size: number, limitPfn: number, sizeAligned: boolean): IovaRange | null {
    checkCount("size", size);
    checkCount("limitPfn", limitPfn);
    const lo = this.#allocRange(size, limitPfn + 1, sizeAligned);
    return lo < 0 ? null : { pfnLo: lo, pfnHi: lo + size - 1 };
  }

  /**
   * The range containing `pfn`, or `null`. Models `find_iova`.
   */
  findIova(pfn: number): IovaRange | null {
    const i = this.#indexContaining(pfn);
    return i < 0 ? null : { pfnLo: this.#lo[i], pfnHi: this.#hi[i] };
  }

  /**
   * Returns the range containing `pfn` to the tree; false when there is none.
   * Models `free_iova`.
   */
  freeIova(pfn: number): boolean {
    const i = this.#indexContaining(pfn);
    if (i < 0) return false;
    this.#remove(i);
    return true;
  }

  /**
   * Marks `[pfnLo, pfnHi]` as never to be allocated (a reserved region: the
   * MSI doorbell, a host-bridge window). Parts already allocated or reserved
   * stay as they are. Returns false when the range is invalid or the bound on
   * ranges is reached. Models `reserve_iova`.
   */
  reserveIova(pfnLo: number, pfnHi: number): boolean {
    if (!Number.isSafeInteger(pfnLo) || !Number.isSafeInteger(pfnHi) || pfnLo < 0) return false;
    if (pfnHi < pfnLo || pfnHi >= IOVA_ANCHOR) return false;
    // Insert every gap of [pfnLo, pfnHi] not covered by an existing range.
    let from = pfnLo;
    let i = this.#firstEndingAtOrAfter(from);
    while (from <= pfnHi) {
      const nextLo = this.#lo[i];
      if (nextLo > from) {
        const to = Math.min(pfnHi, nextLo - 1);
        if (this.rangeCount >= this.maxRanges) return false;
        this.#insertAt(i, from, to);
        i++;
        from = to + 1;
      } else {
        from = Math.max(from, this.#hi[i] + 1);
        i++;
      }
    }
    return true;
  }

  /**
   * Allocates `size` granules at or below `limitPfn`: from the range cache
   * when one fits (sizes up to 32 granules), else from the tree; when that
   * fails and `flushRcache` is set, drains every cache back to the tree and
   * tries once more. Sizes below 32 granules are rounded up to a power of two
   * first. Returns the first pfn, or 0 on failure. Models `alloc_iova_fast`.
   *
   * @throws {RangeError} when `size` or `limitPfn` is not an integer >= 1
   */
  allocIovaFast(size: number, limitPfn: number, flushRcache: boolean): number {
    checkCount("size", size);
    checkCount("limitPfn", limitPfn);
    if (size < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)) size = roundupPowOfTwo(size);
    const cached = this.#rcacheGet(size, limitPfn + 1);
    if (cached > 0) {
      this.stats.cacheHits++;
      return cached;
    }
    for (;;) {
      const lo = this.#allocRange(size, limitPfn + 1, true);
      if (lo >= 0) {
        this.stats.treeAllocs++;
        return lo;
      }
      if (!flushRcache) break;
      flushRcache = false;
      this.flushRcaches();
    }
    this.stats.failures++;
    return 0;
  }

  /**
   * Frees the `size`-granule range at `pfn`: into its size class's cache when
   * there is room, else back to the tree. Models `free_iova_fast`.
   */
  freeIovaFast(pfn: number, size: number): void {
    if (this.#rcacheInsert(pfn, size)) {
      this.stats.cacheFrees++;
      return;
    }
    this.freeIova(pfn);
  }

  /**
   * Returns every cached range to the tree. Models `free_cpu_cached_iovas`
   * plus `free_global_cached_iovas`.
   */
  flushRcaches(): void {
    this.stats.cacheFlushes++;
    for (const rc of this.#caches) {
      this.#freeMagazine(rc.loaded);
      this.#freeMagazine(rc.prev);
      for (const mag of rc.depot) this.#freeMagazine(mag);
      rc.depot.length = 0;
    }
  }

  // ---- the tree ----------------------------------------------------------

  /**
   * `__alloc_and_insert_iova_range`: returns the new range's first pfn or -1.
   * `limitPfn` is exclusive here, as in the kernel.
   */
  #allocRange(size: number, limitPfn: number, sizeAligned: boolean): number {
    if (this.rangeCount >= this.maxRanges) return -1;
    const align = sizeAligned ? roundupPowOfTwo(size) : 1;
    if (limitPfn <= this.dma32BitPfn && size >= this.#max32AllocSize) return -1;
    const lo = this.#lo;
    const hi = this.#hi;
    let idx = this.#indexOfLo(limitPfn <= this.dma32BitPfn ? this.#cached32Node : this.#cachedNode);
    let highPfn = limitPfn;
    let lowPfn = this.startPfn;
    const retryPfn = hi[idx];
    let newPfn: number;
    let prev: number;
    for (;;) {
      // Walk down from `idx` until the candidate fits above the range below it.
      do {
        highPfn = Math.min(highPfn, lo[idx]);
        newPfn = alignDown(highPfn - size, align);
        prev = idx;
        idx--;
      } while (idx >= 0 && newPfn <= hi[idx] && newPfn >= lowPfn);
      if (highPfn < size || newPfn < lowPfn) {
        if (lowPfn === this.startPfn && retryPfn < limitPfn) {
          highPfn = limitPfn;
          lowPfn = retryPfn + 1;
          idx = this.#findLimit(limitPfn);
          continue;
        }
        this.#max32AllocSize = size;
        return -1;
      }
      break;
    }
    this.#insertAt(prev, newPfn, newPfn + size - 1);
    if (newPfn + size - 1 < this.dma32BitPfn) this.#cached32Node = newPfn;
    else this.#cachedNode = newPfn;
    return newPfn;
  }

  /** `iova_find_limit`: the lowest range at or above the limit (the anchor for 64-bit limits). */
  #findLimit(limitPfn: number): number {
    if (limitPfn > this.dma32BitPfn) return this.#lo.length - 1;
    return this.#firstEndingAtOrAfter(limitPfn);
  }

  /** Removes range `i`, updating the cached nodes (`remove_iova`). */
  #remove(i: number): void {
    const lo = this.#lo[i];
    const hi = this.#hi[i];
    const next = this.#lo[i + 1];
    // __cached_rbnode_delete_update
    const c32 = this.#cached32Node;
    if (lo === c32 || (hi < this.dma32BitPfn && lo >= c32)) this.#cached32Node = next;
    if (lo < this.dma32BitPfn) this.#max32AllocSize = this.dma32BitPfn;
    if (lo >= this.#cachedNode) this.#cachedNode = next;
    this.#lo.splice(i, 1);
    this.#hi.splice(i, 1);
  }

  #insertAt(i: number, lo: number, hi: number): void {
    this.#lo.splice(i, 0, lo);
    this.#hi.splice(i, 0, hi);
  }

  /** Index of the range starting at `pfnLo` (a cached node); the anchor when it is gone. */
  #indexOfLo(pfnLo: number): number {
    const i = this.#firstEndingAtOrAfter(pfnLo);
    return this.#lo[i] === pfnLo ? i : this.#lo.length - 1;
  }

  /** Index of the range containing `pfn`, or -1 (never the anchor). */
  #indexContaining(pfn: number): number {
    if (!Number.isSafeInteger(pfn) || pfn < 0) return -1;
    const i = this.#firstEndingAtOrAfter(pfn);
    if (i >= this.#lo.length - 1 || this.#lo[i] > pfn) return -1;
    return i;
  }

  /** Index of the first range whose end is at or above `pfn` (the anchor at worst). */
  #firstEndingAtOrAfter(pfn: number): number {
    const hi = this.#hi;
    let a = 0;
    let b = hi.length - 1;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (hi[mid] < pfn) a = mid + 1;
      else b = mid;
    }
    return a;
  }

  // ---- the range caches --------------------------------------------------

  /** `iova_rcache_get`: a cached pfn whose range ends below `limitPfn` (exclusive), or 0. */
  #rcacheGet(size: number, limitPfn: number): number {
    const order = orderBase2(size);
    if (order >= IOVA_RANGE_CACHE_MAX_SIZE) return 0;
    const rc = this.#caches[order];
    if (rc.loaded.pfns.length === 0) {
      if (rc.prev.pfns.length > 0) {
        const t = rc.loaded;
        rc.loaded = rc.prev;
        rc.prev = t;
      } else if (rc.depot.length > 0) {
        rc.loaded = rc.depot.pop()!;
      } else {
        return 0;
      }
    }
    // iova_magazine_pop: the most recent pfn that fits, swapped out of place.
    const pfns = rc.loaded.pfns;
    const max = limitPfn - size;
    let i = pfns.length - 1;
    while (pfns[i] > max) {
      if (i === 0) return 0;
      i--;
    }
    const pfn = pfns[i];
    pfns[i] = pfns[pfns.length - 1];
    pfns.pop();
    this.#cached--;
    return pfn;
  }

  /** `iova_rcache_insert`: false when the size is not cached (the caller frees to the tree). */
  #rcacheInsert(pfn: number, size: number): boolean {
    if (!Number.isSafeInteger(size) || size < 1) return false;
    const order = orderBase2(size);
    if (order >= IOVA_RANGE_CACHE_MAX_SIZE) return false;
    const rc = this.#caches[order];
    const full = this.#magazineSize;
    if (rc.loaded.pfns.length >= full) {
      if (rc.prev.pfns.length < full) {
        const t = rc.loaded;
        rc.loaded = rc.prev;
        rc.prev = t;
      } else {
        if (rc.depot.length < this.#depotMax) rc.depot.push(rc.loaded);
        else this.#freeMagazine(rc.loaded);
        rc.loaded = new Magazine();
      }
    }
    rc.loaded.pfns.push(pfn);
    this.#cached++;
    return true;
  }

  /** `iova_magazine_free_pfns`: every pfn of `mag` back to the tree. */
  #freeMagazine(mag: Magazine): void {
    for (const pfn of mag.pfns) this.freeIova(pfn);
    this.#cached -= mag.pfns.length;
    mag.pfns.length = 0;
  }
}

/** The smallest power of two >= `n` (`roundup_pow_of_two`), for n >= 1. */
export function roundupPowOfTwo(n: number): number {
  return n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n));
}

/** ceil(log2(n)) (`order_base_2`), for n >= 1. */
export function orderBase2(n: number): number {
  return n <= 1 ? 0 : Math.ceil(Math.log2(n));
}

function alignDown(x: number, align: number): number {
  if (x < 0) return -1;
  return x - (x % align);
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && Number.isInteger(Math.log2(n));
}

function checkCount(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new RangeError(`Cannot allocate IOVA: ${name} ${v} is not an integer >= 1`);
  }
}
