/**
 * The guest model's memory allocators: a bounded physical page allocator over
 * a range of guest RAM (Linux's `alloc_pages` / `alloc_pages_exact`), and a
 * small-object allocator on top of it (`kmalloc` / `kfree`).
 *
 * Like the kernel, they return failure by value (`null`, the kernel's NULL)
 * when memory runs out; only misuse (freeing what was not allocated, bad
 * arguments) throws.
 *
 * @module
 */
import type { GuestMemory } from "../memory/guest_memory.ts";

/** Where a {@linkcode PageAllocator} takes its pages from. */
export interface PageAllocatorOptions {
  /** Guest physical address of the first page; a multiple of `pageSize`. */
  base: number;
  /** Bytes to manage; a multiple of `pageSize`. The range must lie inside one RAM region. */
  size: number;
  /** Page size in bytes, a power of two from 256; 4096 by default. */
  pageSize?: number;
}

/** How to allocate pages. */
export interface PageAllocOptions {
  /**
   * Alignment of the returned guest physical address in bytes: a power of two;
   * the page size by default.
   */
  align?: number;
  /** Zero the pages (`__GFP_ZERO`). */
  zero?: boolean;
}

const FREE = 0;
const USED = 1;

/**
 * A bounded allocator of contiguous guest physical pages.
 *
 * It hands out page runs from `[base, base + size)`, which lies inside one
 * RAM region, so every allocation can be viewed as one `Uint8Array`.
 * Exhaustion returns `null`; freeing something that was not allocated throws.
 *
 * @example
 * ```ts
 * import { GuestMemory, PageAllocator } from "@vireo/vireo";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const pages = new PageAllocator(memory, { base: 0x10000, size: 0x10000 });
 * const a = pages.allocPages(2, { align: 0x2000, zero: true });
 * console.log(a); // 65536 (0x10000)
 * pages.freePages(a!);
 * console.log(pages.allocPages(100)); // null: only 16 pages exist
 * ```
 */
export class PageAllocator {
  /** The guest memory the pages belong to. */
  readonly memory: GuestMemory;
  /** Guest physical address of the first page. */
  readonly base: number;
  /** Bytes managed. */
  readonly size: number;
  /** Page size in bytes. */
  readonly pageSize: number;
  /** Number of pages managed. */
  readonly pageCount: number;
  readonly #state: Uint8Array;
  /** For the first page of each allocation, its length in pages; 0 elsewhere. */
  readonly #runLength: Uint32Array;
  #free: number;
  #hint = 0;

  /**
   * Creates an allocator over `[options.base, options.base + options.size)`.
   *
   * @param memory guest memory holding the range
   * @param options the range and page size
   * @throws {RangeError} when the range is misaligned, empty or not inside one RAM region
   */
  constructor(memory: GuestMemory, options: PageAllocatorOptions) {
    const pageSize = options.pageSize ?? 4096;
    if (!Number.isSafeInteger(pageSize) || pageSize < 256 || (pageSize & (pageSize - 1)) !== 0) {
      throw new RangeError(
        `Cannot create a page allocator: page size ${pageSize} is not a power of two >= 256`,
      );
    }
    const { base, size } = options;
    if (!Number.isSafeInteger(base) || base < 0 || base % pageSize !== 0) {
      throw new RangeError(
        `Cannot create a page allocator: base ${base} is not a multiple of the page size ${pageSize}`,
      );
    }
    if (!Number.isSafeInteger(size) || size <= 0 || size % pageSize !== 0) {
      throw new RangeError(
        `Cannot create a page allocator: size ${size} is not a positive multiple of the page size ${pageSize}`,
      );
    }
    if (memory.regionOf(base, size) === undefined) {
      throw new RangeError(
        `Cannot create a page allocator: 0x${base.toString(16)}..0x${
          (base + size).toString(16)
        } is not inside one RAM region`,
      );
    }
    this.memory = memory;
    this.base = base;
    this.size = size;
    this.pageSize = pageSize;
    this.pageCount = size / pageSize;
    this.#state = new Uint8Array(this.pageCount);
    this.#runLength = new Uint32Array(this.pageCount);
    this.#free = this.pageCount;
  }

  /** Pages not allocated now (`nr_free_pages`). */
  get freeCount(): number {
    return this.#free;
  }

  /** True when `addr` lies inside the managed range. */
  contains(addr: number): boolean {
    return addr >= this.base && addr < this.base + this.size;
  }

  /**
   * Allocates `count` contiguous pages and returns the guest physical address
   * of the first, or `null` when no aligned free run is long enough.
   * Models `alloc_pages`, without the power-of-two order.
   *
   * @param count pages wanted, at least 1
   * @param options alignment and zeroing
   * @throws {RangeError} when `count` or `options.align` is invalid
   */
  allocPages(count: number, options?: PageAllocOptions): number | null {
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new RangeError(`Cannot allocate ${count} pages: expected an integer >= 1`);
    }
    const align = options?.align ?? this.pageSize;
    if (!isPowerOfTwo(align)) {
      throw new RangeError(`Cannot allocate pages aligned to ${align}: not a power of two`);
    }
    if (count > this.#free) return null;
    const start = this.#find(count, Math.max(align, this.pageSize) / this.pageSize);
    if (start < 0) return null;
    this.#state.fill(USED, start, start + count);
    this.#runLength[start] = count;
    this.#free -= count;
    this.#hint = start + count < this.pageCount ? start + count : 0;
    const addr = this.base + start * this.pageSize;
    if (options?.zero) this.memory.fill(addr, count * this.pageSize, 0);
    return addr;
  }

  /**
   * Frees pages from {@linkcode PageAllocator.allocPages}. Models `__free_pages`.
   *
   * @param addr the address `allocPages` returned
   * @param count the page count allocated there; checked when given
   * @throws {RangeError} when `addr` is not the start of a live allocation or `count` differs
   */
  freePages(addr: number, count?: number): void {
    const index = (addr - this.base) / this.pageSize;
    if (!Number.isInteger(index) || index < 0 || index >= this.pageCount) {
      throw new RangeError(
        `Cannot free pages at ${describe(addr)}: not a page of this allocator`,
      );
    }
    const run = this.#runLength[index];
    if (run === 0) {
      throw new RangeError(
        `Cannot free pages at ${describe(addr)}: not the start of an allocation`,
      );
    }
    if (count !== undefined && count !== run) {
      throw new RangeError(
        `Cannot free ${count} pages at ${describe(addr)}: ${run} were allocated there`,
      );
    }
    this.#runLength[index] = 0;
    this.#state.fill(FREE, index, index + run);
    this.#free += run;
  }

  /**
   * Allocates enough whole pages for `size` bytes; returns the guest physical
   * address or `null`. Models `alloc_pages_exact`.
   *
   * @throws {RangeError} when `size` is not a positive integer
   */
  allocPagesExact(size: number, options?: PageAllocOptions): number | null {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`Cannot allocate ${size} bytes: expected an integer >= 1`);
    }
    return this.allocPages(Math.ceil(size / this.pageSize), options);
  }

  /**
   * Frees memory from {@linkcode PageAllocator.allocPagesExact} with the same
   * size. Models `free_pages_exact`.
   *
   * @throws {RangeError} when nothing of that size was allocated at `addr`
   */
  freePagesExact(addr: number, size: number): void {
    this.freePages(addr, Math.ceil(size / this.pageSize));
  }

  /** Length in pages of the live allocation starting at `addr`, or 0. */
  allocationPages(addr: number): number {
    const index = (addr - this.base) / this.pageSize;
    if (!Number.isInteger(index) || index < 0 || index >= this.pageCount) return 0;
    return this.#runLength[index];
  }

  /** Returns the first page index of a free run of `count` pages aligned to `alignPages`, or -1. */
  #find(count: number, alignPages: number): number {
    const state = this.#state;
    const total = this.pageCount;
    const baseIndex = this.base / this.pageSize;
    // Page index i is aligned when (baseIndex + i) is a multiple of alignPages.
    const firstAligned = (from: number): number => {
      const abs = baseIndex + from;
      const rem = abs % alignPages;
      return rem === 0 ? from : from + (alignPages - rem);
    };
    // Next fit: search from the hint, then once more from the start.
    for (let pass = 0; pass < 2; pass++) {
      let i = firstAligned(pass === 0 ? this.#hint : 0);
      while (i + count <= total) {
        let j = 0;
        while (j < count && state[i + j] === FREE) j++;
        if (j === count) return i;
        i = firstAligned(i + j + 1);
      }
      if (this.#hint === 0) break;
    }
    return -1;
  }
}

/** Smallest kmalloc object in bytes. */
const MIN_OBJECT = 32;
/** Marks the first page of a multi-page (large) kmalloc allocation. */
const LARGE = 255;

/**
 * A small-object allocator over a {@linkcode PageAllocator}: the guest model's
 * `kmalloc`, used for memory the kernel would kmalloc and a device must read
 * (indirect descriptor tables).
 *
 * Objects up to half a page come from power-of-two size classes (32 bytes and
 * up) carved out of whole pages; larger requests take whole pages. Slab pages
 * stay with their class once carved, so steady-state use allocates nothing.
 *
 * @example
 * ```ts
 * import { GuestMemory, PageAllocator, SlabAllocator } from "@vireo/vireo";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const heap = new SlabAllocator(new PageAllocator(memory, { base: 0, size: 1 << 16 }));
 * const a = heap.kmalloc(48)!; // a 64-byte object
 * heap.kfree(a);
 * console.log(heap.kmalloc(64) === a); // true: reused
 * ```
 */
export class SlabAllocator {
  /** Where slab pages and large objects come from. */
  readonly pages: PageAllocator;
  /** Per size class, the free objects (a stack, so reuse is LIFO like the kernel's). */
  readonly #free: number[][] = [];
  /** Per page of `pages`: 0 = not kmalloc memory, 1 + class for slab pages, LARGE for large ones. */
  readonly #pageClass: Uint8Array;
  /** Per slab page, one byte per object: 1 while allocated. */
  readonly #live: (Uint8Array | undefined)[];
  readonly #classes: number;

  /** Creates a kmalloc heap that takes pages from `pages`. */
  constructor(pages: PageAllocator) {
    this.pages = pages;
    let classes = 0;
    while ((MIN_OBJECT << classes) <= pages.pageSize / 2) classes++;
    this.#classes = classes;
    for (let c = 0; c < classes; c++) this.#free.push([]);
    this.#pageClass = new Uint8Array(pages.pageCount);
    this.#live = new Array(pages.pageCount).fill(undefined);
  }

  /**
   * Allocates `size` bytes (not zeroed) and returns their guest physical
   * address, or `null` when the page allocator is exhausted. Models `kmalloc`.
   *
   * @throws {RangeError} when `size` is not a positive integer
   */
  kmalloc(size: number): number | null {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`Cannot kmalloc ${size} bytes: expected an integer >= 1`);
    }
    const pages = this.pages;
    if (size > pages.pageSize / 2) {
      const addr = pages.allocPagesExact(size);
      if (addr === null) return null;
      this.#pageClass[(addr - pages.base) / pages.pageSize] = LARGE;
      return addr;
    }
    let c = 0;
    while ((MIN_OBJECT << c) < size) c++;
    const list = this.#free[c];
    if (list.length === 0 && !this.#grow(c)) return null;
    const addr = list.pop()!;
    const page = Math.floor((addr - pages.base) / pages.pageSize);
    const obj = (addr - pages.base - page * pages.pageSize) / (MIN_OBJECT << c);
    this.#live[page]![obj] = 1;
    return addr;
  }

  /** Like {@linkcode SlabAllocator.kmalloc}, and zeroes the bytes. Models `kzalloc`. */
  kzalloc(size: number): number | null {
    const addr = this.kmalloc(size);
    if (addr !== null) this.pages.memory.fill(addr, size, 0);
    return addr;
  }

  /**
   * Frees an object from {@linkcode SlabAllocator.kmalloc}. Models `kfree`.
   *
   * @throws {RangeError} when `addr` is not a live kmalloc object
   */
  kfree(addr: number): void {
    const pages = this.pages;
    const offset = addr - pages.base;
    const page = Math.floor(offset / pages.pageSize);
    if (!Number.isSafeInteger(addr) || page < 0 || page >= pages.pageCount) {
      throw new RangeError(`Cannot kfree ${describe(addr)}: not kmalloc memory`);
    }
    const cls = this.#pageClass[page];
    if (cls === LARGE && offset % pages.pageSize === 0) {
      this.#pageClass[page] = 0;
      pages.freePages(addr);
      return;
    }
    const size = MIN_OBJECT << (cls - 1);
    const inPage = offset - page * pages.pageSize;
    const live = this.#live[page];
    if (cls === 0 || cls === LARGE || live === undefined || inPage % size !== 0) {
      throw new RangeError(`Cannot kfree ${describe(addr)}: not kmalloc memory`);
    }
    const obj = inPage / size;
    if (live[obj] !== 1) {
      throw new RangeError(`Cannot kfree ${describe(addr)}: already freed`);
    }
    live[obj] = 0;
    this.#free[cls - 1].push(addr);
  }

  /** Carves a fresh page into objects of class `c`; false when no page is left. */
  #grow(c: number): boolean {
    const pages = this.pages;
    const addr = pages.allocPages(1);
    if (addr === null) return false;
    const page = (addr - pages.base) / pages.pageSize;
    const size = MIN_OBJECT << c;
    const count = pages.pageSize / size;
    this.#pageClass[page] = c + 1;
    this.#live[page] = new Uint8Array(count);
    const list = this.#free[c];
    // Push in reverse so the lowest address is handed out first.
    for (let i = count - 1; i >= 0; i--) list.push(addr + i * size);
    return true;
  }

  /** Number of size classes (for tests and diagnostics). */
  get classCount(): number {
    return this.#classes;
  }
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && Number.isInteger(Math.log2(n));
}

function describe(addr: number): string {
  return Number.isFinite(addr) ? `0x${addr.toString(16)}` : String(addr);
}
