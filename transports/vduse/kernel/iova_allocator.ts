/**
 * A model of Linux's IOVA allocator (`drivers/iommu/iova.c`) as VDUSE's
 * domain uses it through `alloc_iova_fast` / `free_iova_fast`: ranges of
 * granules, allocated top-down below a limit, size-aligned to the next power
 * of two, small sizes rounded up to a power of two and recycled LIFO from a
 * per-size cache that is flushed once before giving up.
 *
 * @module
 */

/** Sizes below this many granules are rounded up and cached (`1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`). */
const CACHE_MAX_SIZE = 32;
/** Cached ranges kept per size (one per-CPU magazine pair of the kernel, roughly). */
const CACHE_DEPTH = 256;

function roundUpPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * An `iova_domain`: hands out page-frame numbers (pfns) in
 * `[startPfn, limitPfn]` in units of `granule` bytes. Returns 0 for failure, as
 * the kernel does (pfn 0 is never handed out when `startPfn` ≥ 1).
 *
 * @example
 * ```ts ignore
 * const a = new IovaAllocator(4096, 1, 0x4000);
 * console.log(a.allocFast(1, 0x3fff).toString(16)); // "3fff": top-down
 * ```
 */
export class IovaAllocator {
  /** Bytes per pfn. */
  readonly granule: number;
  /** Lowest pfn handed out. */
  readonly startPfn: number;
  /** Allocated ranges (including cached ones), ascending: [lo0, hi0, lo1, hi1, ...]. */
  #ranges: number[] = [];
  /** Freed ranges kept for reuse, per rounded size (`iova_rcache`). */
  readonly #cache = new Map<number, number[]>();
  /** Per pfn below `endPfn`: 1 while the range starting there sits in `#cache`. */
  readonly #cached: Uint8Array;

  /**
   * Creates an allocator (`init_iova_domain`).
   *
   * @param granule bytes per pfn (a power of two)
   * @param startPfn first usable pfn
   * @param endPfn one past the last pfn any limit will allow
   */
  constructor(granule: number, startPfn: number, endPfn: number) {
    this.granule = granule;
    this.startPfn = startPfn;
    this.#cached = new Uint8Array(Math.max(0, endPfn));
  }

  /** Number of live ranges, cached ones included (for tests). */
  get rangeCount(): number {
    return this.#ranges.length / 2;
  }

  /**
   * Allocates `size` pfns at or below `limitPfn` and returns the first pfn, or 0.
   * Models `alloc_iova_fast(iovad, size, limit_pfn, true)`.
   */
  allocFast(size: number, limitPfn: number): number {
    if (size < CACHE_MAX_SIZE) size = roundUpPow2(size);
    const cached = this.#cache.get(size);
    if (cached !== undefined) {
      for (let i = cached.length - 1; i >= 0; i--) {
        if (cached[i] + size - 1 <= limitPfn) {
          const pfn = cached[i];
          if (i === cached.length - 1) cached.pop();
          else cached.splice(i, 1);
          this.#cached[pfn] = 0;
          return pfn;
        }
      }
    }
    let pfn = this.#alloc(size, limitPfn);
    if (pfn === 0 && this.#flushCache()) pfn = this.#alloc(size, limitPfn);
    return pfn;
  }

  /**
   * Frees a range from {@linkcode IovaAllocator.allocFast}: small sizes go to
   * the cache, others back to the tree. Models `free_iova_fast`.
   *
   * @param pfn the first pfn
   * @param size the size passed to `allocFast` (rounded as it was)
   * @returns false when no live range starts at `pfn` (a double free)
   */
  freeFast(pfn: number, size: number): boolean {
    const at = this.#find(pfn);
    if (at < 0 || this.#cached[pfn] === 1) return false;
    const rounded = size < CACHE_MAX_SIZE ? roundUpPow2(size) : size;
    if (rounded < CACHE_MAX_SIZE && this.#ranges[at + 1] - pfn + 1 === rounded) {
      let list = this.#cache.get(rounded);
      if (list === undefined) this.#cache.set(rounded, list = []);
      if (list.length < CACHE_DEPTH) {
        list.push(pfn);
        this.#cached[pfn] = 1;
        return true;
      }
    }
    this.#ranges.splice(at, 2);
    return true;
  }

  /** True when `pfn` lies inside an allocated (not cached) range. */
  contains(pfn: number): boolean {
    const r = this.#ranges;
    let lo = 0;
    let hi = r.length / 2 - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (pfn < r[mid * 2]) hi = mid - 1;
      else if (pfn > r[mid * 2 + 1]) lo = mid + 1;
      else return this.#cached[r[mid * 2]] !== 1;
    }
    return false;
  }

  /** Drops every range and the cache (`put_iova_domain`). */
  clear(): void {
    this.#ranges = [];
    this.#cache.clear();
    this.#cached.fill(0);
  }

  /** Index in #ranges of the range starting at `pfn`, or -1. */
  #find(pfn: number): number {
    const r = this.#ranges;
    let lo = 0;
    let hi = r.length / 2 - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = r[mid * 2];
      if (v === pfn) return mid * 2;
      if (v < pfn) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** Returns every cached range to the tree; true when something was freed. */
  #flushCache(): boolean {
    let any = false;
    for (const list of this.#cache.values()) {
      for (const pfn of list) {
        const at = this.#find(pfn);
        if (at >= 0) this.#ranges.splice(at, 2);
        any = true;
      }
    }
    this.#cache.clear();
    this.#cached.fill(0);
    return any;
  }

  /** Top-down, size-aligned search (`__alloc_and_insert_iova_range`). */
  #alloc(size: number, limitPfn: number): number {
    const r = this.#ranges;
    const align = roundUpPow2(size);
    const n = r.length / 2;
    // Walk the gaps from the top: gap i lies between range i - 1 and range i.
    for (let i = n; i >= 0; i--) {
      const floor = i === 0 ? this.startPfn : r[(i - 1) * 2 + 1] + 1;
      const top = Math.min(limitPfn + 1, i === n ? Infinity : r[i * 2]);
      if (top - floor < size) continue;
      const candidate = Math.floor((top - size) / align) * align;
      if (candidate >= floor) {
        r.splice(i * 2, 0, candidate, candidate + size - 1);
        return candidate;
      }
    }
    return 0;
  }
}
