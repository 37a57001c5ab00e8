/**
 * The IOVA domain of one VDUSE address space (`drivers/vdpa/vdpa_user/iova_domain.c`):
 *
 * - `[0, bounceSize)`: streaming mappings, bounced through 4 KiB slots. A
 *   mapping copies the driver's buffer into its slots (TO_DEVICE,
 *   BIDIRECTIONAL) and copies back on unmap or sync (FROM_DEVICE,
 *   BIDIRECTIONAL), unless `DMA_ATTR_SKIP_CPU_SYNC`. One IOTLB region covers
 *   the whole window once the first mapping created it; reset removes it.
 * - `[bounceSize, 0x47FF_FFFF]`: coherent allocations, the driver's own pages
 *   shared with userspace, one IOTLB region each (file offset == IOVA).
 *
 * Userspace sees both through the domain file ({@linkcode VduseFile}).
 *
 * @module
 */
import type { GuestMemory } from "../../../src/memory/guest_memory.ts";
import type { PageAllocator } from "../../../src/guest/page_allocator.ts";
import {
  checkDmaDirection,
  type CoherentAllocation,
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_MAPPING_ERROR,
  DmaDirection,
} from "../../../src/guest/dma/dma_api.ts";
import { LinuxErrno } from "../errno.ts";
import { VduseAccess } from "../uapi.ts";
import { IovaAllocator } from "../../../src/guest/dma/iova_allocator.ts";
import { type IotlbEntry, type VduseFile, VduseIotlb } from "./iotlb.ts";

/** `BOUNCE_MAP_SHIFT`: bounce slots are 4 KiB whatever the page size. */
export const BOUNCE_MAP_SHIFT = 12;
/** `BOUNCE_MAP_SIZE`. */
export const BOUNCE_MAP_SIZE = 4096;
/** `VDUSE_IOVA_SIZE`: the domain's IOVA space (1 GiB + 128 MiB); the limit is one less. */
export const VDUSE_IOVA_SIZE = 0x4800_0000;
/** `VDUSE_BOUNCE_SIZE`: the default bounce size, 64 MiB. */
export const VDUSE_BOUNCE_SIZE = 64 << 20;
/** Smallest bounce size the sysfs attribute accepts (1 MiB). */
export const VDUSE_MIN_BOUNCE_SIZE = 1 << 20;
/** Largest bounce size the sysfs attribute accepts (1 GiB). */
export const VDUSE_MAX_BOUNCE_SIZE = 1 << 30;
/** The guest page size the domain uses for coherent allocations. */
export const VDUSE_PAGE_SIZE = 4096;

const NO_PHYS = -1;
/** Copies up to this many bytes are done byte by byte (cheaper than a subarray + set). */
const SMALL_COPY = 64;

/** Counters of one domain, for tests and diagnostics. */
export interface VduseDomainStats {
  /** Streaming mappings made. */
  maps: number;
  /** Streaming mappings ended (unmapped). */
  unmaps: number;
  /** Streaming mappings that failed (DMA_MAPPING_ERROR). */
  mapFailures: number;
  /** Bytes copied driver → bounce. */
  bytesToBounce: number;
  /** Bytes copied bounce → driver. */
  bytesFromBounce: number;
  /** Kernel WARNs: a sync or unmap of a slot that is not mapped, a free of an unknown IOVA. */
  warnings: number;
  /** Coherent allocations live now. */
  coherentLive: number;
}

/** How to create a {@linkcode VduseIovaDomain}. */
export interface VduseIovaDomainOptions {
  /** The guest's memory (the kernel's memory: originals of bounced buffers, coherent pages). */
  memory: GuestMemory;
  /** The guest's page allocator, for coherent allocations. */
  pages: PageAllocator;
  /** Bounce window size in bytes (rounded up to a page). */
  bounceSize: number;
}

/**
 * One address space's IOVA domain: bounce window, coherent range, IOTLB and
 * the domain file userspace maps.
 */
export class VduseIovaDomain implements VduseFile {
  /** Diagnostics name of the domain file. */
  readonly name = "[vduse-domain]";
  /** Size of the bounce window. */
  readonly bounceSize: number;
  /** Last usable IOVA. */
  readonly iovaLimit: number = VDUSE_IOVA_SIZE - 1;
  /** The address space's IOTLB. */
  readonly iotlb: VduseIotlb = new VduseIotlb();
  /** Counters. */
  readonly stats: VduseDomainStats = {
    maps: 0,
    unmaps: 0,
    mapFailures: 0,
    bytesToBounce: 0,
    bytesFromBounce: 0,
    warnings: 0,
    coherentLive: 0,
  };
  readonly #memory: GuestMemory;
  readonly #pages: PageAllocator;
  #stream!: IovaAllocator;
  #consistent!: IovaAllocator;
  readonly #streamLimitPfn: number;
  /** Per slot: guest physical address of the original bytes, or NO_PHYS. */
  readonly #origPhys: Float64Array;
  /** Per slot: 1 once a bounce page exists. */
  readonly #hasPage: Uint8Array;
  /** Kernel bounce pages, created with the bounce map. */
  #kernelBounce: Uint8Array | null = null;
  /** User bounce pages (IOTLB_REG_UMEM), replacing the kernel ones. */
  #userBounce: Uint8Array | null = null;
  #bounceEntry: IotlbEntry | null = null;
  #coherent = new Map<number, { size: number; phys: number; entry: IotlbEntry }>();

  /**
   * Creates a domain (`vduse_domain_create`).
   *
   * @throws {RangeError} when the bounce size leaves no room for coherent IOVAs
   */
  constructor(options: VduseIovaDomainOptions) {
    const bounceSize = Math.ceil(options.bounceSize / VDUSE_PAGE_SIZE) * VDUSE_PAGE_SIZE;
    if (!(bounceSize > 0 && bounceSize < this.iovaLimit)) {
      throw new RangeError(
        `Cannot create a VDUSE domain: bounce size ${bounceSize} is not below the IOVA limit`,
      );
    }
    this.bounceSize = bounceSize;
    this.#memory = options.memory;
    this.#pages = options.pages;
    this.#initIova();
    this.#streamLimitPfn = (bounceSize - 1) >> BOUNCE_MAP_SHIFT;
    const slots = bounceSize >> BOUNCE_MAP_SHIFT;
    this.#origPhys = new Float64Array(slots).fill(NO_PHYS);
    this.#hasPage = new Uint8Array(slots);
  }

  /** True once the bounce window is in the IOTLB (after the first mapping, until reset). */
  get bounceMapped(): boolean {
    return this.#bounceEntry !== null;
  }

  /** True once bounce pages exist (the first mapping made them; reset keeps them). */
  get hasBouncePages(): boolean {
    return this.#kernelBounce !== null;
  }

  /** True while user pages serve as bounce pages. */
  get userBounceRegistered(): boolean {
    return this.#userBounce !== null;
  }

  /** The bytes behind the bounce window now (user pages when registered). */
  get #bounce(): Uint8Array {
    return this.#userBounce ?? this.#kernelBounce!;
  }

  /**
   * Maps `size` bytes at guest physical `phys` for streaming DMA; returns the
   * IOVA (4 KiB aligned, data at its start) or `DMA_MAPPING_ERROR` when the
   * bounce window is full, `size` exceeds it, or the buffer is not RAM.
   * Models `vduse_domain_map_page`.
   *
   * @throws {RangeError} for a size that is not a positive integer or an invalid direction
   */
  mapPage(phys: number, size: number, dir: DmaDirection, attrs: number): number {
    checkDmaDirection(dir);
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`Cannot map ${size} bytes for VDUSE: expected an integer >= 1`);
    }
    if (size > this.bounceSize || !this.#memory.isRam(phys, size)) {
      this.stats.mapFailures++;
      return DMA_MAPPING_ERROR;
    }
    const pages = Math.ceil(size / BOUNCE_MAP_SIZE);
    const pfn = this.#stream.allocIovaFast(pages, this.#streamLimitPfn, true);
    if (pfn === 0) {
      this.stats.mapFailures++;
      return DMA_MAPPING_ERROR;
    }
    this.#initBounceMap();
    const iova = pfn * BOUNCE_MAP_SIZE;
    for (let k = 0; k < pages; k++) {
      this.#hasPage[pfn + k] = 1;
      this.#origPhys[pfn + k] = phys + k * BOUNCE_MAP_SIZE;
    }
    if (
      (attrs & DMA_ATTR_SKIP_CPU_SYNC) === 0 &&
      (dir === DmaDirection.TO_DEVICE || dir === DmaDirection.BIDIRECTIONAL)
    ) {
      this.#bounceCopy(iova, size, true);
    }
    this.stats.maps++;
    return iova;
  }

  /**
   * Ends a streaming mapping: copies back (FROM_DEVICE, BIDIRECTIONAL, unless
   * SKIP_CPU_SYNC), clears the slots and frees the IOVA. Models
   * `vduse_domain_unmap_page`.
   */
  unmapPage(iova: number, size: number, dir: DmaDirection, attrs: number): void {
    checkDmaDirection(dir);
    // Unmapping a slot that holds no mapping is a WARN that changes nothing
    // (the kernel would free the IOVA twice).
    if (!this.#isStreaming(iova, size) || this.#origPhys[iova >> BOUNCE_MAP_SHIFT] === NO_PHYS) {
      this.stats.warnings++;
      return;
    }
    if (
      (attrs & DMA_ATTR_SKIP_CPU_SYNC) === 0 &&
      (dir === DmaDirection.FROM_DEVICE || dir === DmaDirection.BIDIRECTIONAL)
    ) {
      this.#bounceCopy(iova, size, false);
    }
    const pfn = iova >> BOUNCE_MAP_SHIFT;
    const pages = Math.ceil(((iova & (BOUNCE_MAP_SIZE - 1)) + size) / BOUNCE_MAP_SIZE);
    for (let k = 0; k < pages; k++) this.#origPhys[pfn + k] = NO_PHYS;
    this.#stream.freeIovaFast(pfn, pages);
    this.stats.unmaps++;
  }

  /** Copies driver → bounce for TO_DEVICE / BIDIRECTIONAL (`vduse_domain_sync_single_for_device`). */
  syncSingleForDevice(iova: number, size: number, dir: DmaDirection): void {
    if (!this.#isStreaming(iova, size)) return;
    if (dir === DmaDirection.TO_DEVICE || dir === DmaDirection.BIDIRECTIONAL) {
      this.#bounceCopy(iova, size, true);
    }
  }

  /** Copies bounce → driver for FROM_DEVICE / BIDIRECTIONAL (`vduse_domain_sync_single_for_cpu`). */
  syncSingleForCpu(iova: number, size: number, dir: DmaDirection): void {
    if (!this.#isStreaming(iova, size)) return;
    if (dir === DmaDirection.FROM_DEVICE || dir === DmaDirection.BIDIRECTIONAL) {
      this.#bounceCopy(iova, size, false);
    }
  }

  /** True when `iova` is in the bounce window (`vduse_domain_need_sync`). */
  needSync(iova: number): boolean {
    return iova >= 0 && iova < this.bounceSize;
  }

  /**
   * Allocates zeroed guest pages shared with userspace and gives them a
   * coherent IOVA and an IOTLB region; `null` when pages or IOVAs run out.
   * Models `vduse_dev_alloc_coherent` + `vduse_domain_alloc_coherent`.
   *
   * @throws {RangeError} when `size` is not a positive integer
   */
  allocCoherent(size: number): CoherentAllocation | null {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(`Cannot allocate ${size} coherent bytes: expected an integer >= 1`);
    }
    const pageCount = Math.ceil(size / VDUSE_PAGE_SIZE);
    const pfn = this.#consistent.allocIovaFast(
      pageCount,
      Math.floor(this.iovaLimit / VDUSE_PAGE_SIZE),
      true,
    );
    if (pfn === 0) return null;
    const phys = this.#pages.allocPagesExact(size, { zero: true });
    if (phys === null) {
      this.#consistent.freeIovaFast(pfn, pageCount);
      return null;
    }
    const iova = pfn * VDUSE_PAGE_SIZE;
    const entry: IotlbEntry = {
      start: iova,
      last: iova + size - 1,
      perm: VduseAccess.RW,
      addr: phys,
      file: this,
      offset: iova,
    };
    this.iotlb.add(entry);
    this.#coherent.set(iova, { size, phys, entry });
    this.stats.coherentLive++;
    return { cpuAddr: phys, dmaAddr: iova };
  }

  /**
   * Frees a coherent allocation: IOTLB region, IOVA and pages. An unknown
   * IOVA is a kernel WARN and changes nothing. Models `vduse_domain_free_coherent`.
   */
  freeCoherent(size: number, cpuAddr: number, iova: number): void {
    const c = this.#coherent.get(iova);
    if (c === undefined || c.phys !== cpuAddr || c.size !== size) {
      this.stats.warnings++;
      return;
    }
    this.#coherent.delete(iova);
    this.iotlb.remove(c.entry);
    this.#consistent.freeIovaFast(iova / VDUSE_PAGE_SIZE, Math.ceil(size / VDUSE_PAGE_SIZE));
    this.#pages.freePagesExact(cpuAddr, size);
    this.stats.coherentLive--;
  }

  /**
   * Device reset: the bounce window leaves the IOTLB (userspace must look it
   * up again); bounce pages, their data, outstanding streaming IOVAs and
   * coherent regions stay. Models `vduse_domain_reset_bounce_map`.
   */
  resetBounceMap(): void {
    if (this.#bounceEntry === null) return;
    this.iotlb.remove(this.#bounceEntry);
    this.#bounceEntry = null;
  }

  /**
   * Makes `bytes` (pinned user pages) the bounce pages, copying slots in use
   * into them. Returns 0 or a negative errno: -EINVAL when the bounce window
   * does not exist yet or the size differs, -EEXIST when already registered.
   * Models `vduse_domain_add_user_bounce_pages`.
   */
  registerUserBounce(bytes: Uint8Array): number {
    if (this.#kernelBounce === null || bytes.byteLength !== this.bounceSize) {
      return -LinuxErrno.EINVAL;
    }
    if (this.#userBounce !== null) return -LinuxErrno.EEXIST;
    this.#copySlotsInUse(this.#kernelBounce, bytes);
    this.#userBounce = bytes;
    return 0;
  }

  /**
   * Stops using user bounce pages, copying slots in use back. Returns 0 or
   * -ENOENT when none are registered. Models `vduse_domain_remove_user_bounce_pages`.
   */
  deregisterUserBounce(): number {
    if (this.#userBounce === null) return -LinuxErrno.ENOENT;
    this.#copySlotsInUse(this.#userBounce, this.#kernelBounce!);
    this.#userBounce = null;
    return 0;
  }

  /**
   * The domain file's mmap: bounce window bytes (offset < bounceSize, kernel
   * pages only: with user pages registered the kernel raises SIGBUS) or a
   * coherent allocation's guest pages (offset == IOVA).
   */
  mmap(offset: number, length: number): Uint8Array | null {
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && length > 0)) return null;
    if (offset < this.bounceSize) {
      if (offset + length > this.bounceSize || this.#kernelBounce === null) return null;
      if (this.#userBounce !== null) return null;
      return this.#kernelBounce.subarray(offset, offset + length);
    }
    const e = this.iotlb.first(offset, offset + length - 1);
    if (e === undefined || e.file !== this || e.addr < 0) return null;
    if (offset < e.start || offset + length - 1 > e.last) return null;
    const phys = e.addr + (offset - e.start);
    const r = this.#memory.regionOf(phys, length);
    if (r === undefined) return null;
    return r.bytes.subarray(phys - r.base, phys - r.base + length);
  }

  /** True when a bounce page backs the slot holding `iova` (a fault there would not SIGBUS). */
  slotHasPage(iova: number): boolean {
    return this.#hasPage[iova >> BOUNCE_MAP_SHIFT] === 1;
  }

  /** Drops everything (`vduse_domain_destroy`): IOTLB, IOVAs, bounce pages; coherent pages are freed. */
  destroy(): void {
    for (const [iova, c] of this.#coherent) this.freeCoherent(c.size, c.phys, iova);
    this.resetBounceMap();
    this.iotlb.clear();
    this.#initIova();
    this.#kernelBounce = null;
    this.#userBounce = null;
    this.#origPhys.fill(NO_PHYS);
    this.#hasPage.fill(0);
  }

  /** The kernel's two iova_domains (iova.c): streaming IOVAs in the bounce window, coherent ones above it. */
  #initIova(): void {
    this.#stream = new IovaAllocator({ granule: BOUNCE_MAP_SIZE, startPfn: 1 });
    this.#consistent = new IovaAllocator({
      granule: VDUSE_PAGE_SIZE,
      startPfn: this.bounceSize / VDUSE_PAGE_SIZE,
    });
  }

  #initBounceMap(): void {
    if (this.#bounceEntry !== null) return;
    if (this.#kernelBounce === null) this.#kernelBounce = new Uint8Array(this.bounceSize);
    this.#bounceEntry = {
      start: 0,
      last: this.bounceSize - 1,
      perm: VduseAccess.RW,
      addr: -1,
      file: this,
      offset: 0,
    };
    this.iotlb.add(this.#bounceEntry);
  }

  #isStreaming(iova: number, size: number): boolean {
    return Number.isSafeInteger(iova) && iova >= 0 && iova < this.bounceSize &&
      Number.isSafeInteger(size) && size > 0 && this.#kernelBounce !== null;
  }

  /**
   * `vduse_domain_bounce`: slot by slot, stopping (WARN) at a slot that is not
   * mapped. Consecutive slots of one mapping are contiguous on both sides, so
   * they are copied as one run.
   */
  #bounceCopy(iova: number, size: number, toBounce: boolean): void {
    const bounce = this.#bounce;
    const memory = this.#memory;
    const origPhys = this.#origPhys;
    const hasPage = this.#hasPage;
    const end = Math.min(iova + size, this.bounceSize);
    while (iova < end) {
      let slot = iova >> BOUNCE_MAP_SHIFT;
      const orig = origPhys[slot];
      if (hasPage[slot] === 0 || orig === NO_PHYS) {
        this.stats.warnings++;
        return;
      }
      const offset = iova & (BOUNCE_MAP_SIZE - 1);
      let runEnd = (slot + 1) << BOUNCE_MAP_SHIFT;
      while (
        runEnd < end && hasPage[slot + 1] === 1 &&
        origPhys[slot + 1] === origPhys[slot] + BOUNCE_MAP_SIZE
      ) {
        slot++;
        runEnd += BOUNCE_MAP_SIZE;
      }
      const sz = Math.min(runEnd, end) - iova;
      const phys = orig + offset;
      const r = memory.regionOf(phys, sz);
      if (r !== undefined) {
        const at = phys - r.base;
        const ram = r.bytes;
        if (sz <= SMALL_COPY) {
          // Indirect tables and headers: a loop beats making a subarray.
          if (toBounce) { for (let k = 0; k < sz; k++) bounce[iova + k] = ram[at + k]; }
          else for (let k = 0; k < sz; k++) ram[at + k] = bounce[iova + k];
        } else if (toBounce) bounce.set(ram.subarray(at, at + sz), iova);
        else ram.set(bounce.subarray(iova, iova + sz), at);
      } else if (toBounce) {
        memory.read(phys, bounce.subarray(iova, iova + sz));
      } else {
        memory.write(phys, bounce.subarray(iova, iova + sz));
      }
      if (toBounce) this.stats.bytesToBounce += sz;
      else this.stats.bytesFromBounce += sz;
      iova += sz;
    }
  }

  #copySlotsInUse(from: Uint8Array, to: Uint8Array): void {
    for (let slot = 0; slot < this.#origPhys.length; slot++) {
      if (this.#origPhys[slot] === NO_PHYS) continue;
      const at = slot << BOUNCE_MAP_SHIFT;
      to.set(from.subarray(at, at + BOUNCE_MAP_SIZE), at);
    }
  }
}
