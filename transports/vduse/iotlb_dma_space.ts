/**
 * The daemon's view of one VDUSE address space: a {@linkcode DmaSpace} that
 * translates IOVAs through IOTLB regions fetched on demand with
 * `VDUSE_IOTLB_GET_FD` (API v0, AS 0) or `VDUSE_IOTLB_GET_FD2` (API v1) and
 * `mmap`, as libvduse and DPDK do. Regions are dropped on UPDATE_IOTLB and on
 * reset; ring translations cached by queues are invalidated with them.
 *
 * @module
 */
import { DmaAccess } from "../../src/dma/dma_access.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "../../src/dma/dma_space.ts";
import { PROT_READ, PROT_WRITE, type VduseBackend } from "./backend.ts";
import {
  decodeIotlbEntry,
  decodeIotlbEntryV2,
  encodeIotlbEntry,
  encodeIotlbEntryV2,
  u64ToAddress,
  VduseIoctl,
} from "./uapi.ts";

/** One mapped IOTLB region. */
export interface MappedRegion {
  /** First IOVA. */
  readonly start: number;
  /** Last IOVA (inclusive). */
  readonly last: number;
  /** `VDUSE_ACCESS_*` bits. */
  readonly perm: number;
  /** The mmap'd bytes: `bytes[0]` is IOVA `start`. */
  readonly bytes: Uint8Array;
}

/** How a {@linkcode VduseIotlbDmaSpace} reaches its address space. */
export interface VduseIotlbDmaSpaceOptions {
  /** The system calls. */
  backend: VduseBackend;
  /** The device fd. */
  fd: number;
  /** Address space id. */
  asid: number;
  /** Use `VDUSE_IOTLB_GET_FD2` (API v1); otherwise `GET_FD` (AS 0 only). */
  v2: boolean;
}

/** Counters of one space. */
export interface VduseIotlbStats {
  /** Regions fetched with GET_FD / GET_FD2 and mapped. */
  fetches: number;
  /** Lookups that found no region (the DMA then faulted). */
  misses: number;
  /** Regions dropped (UPDATE_IOTLB, reset). */
  dropped: number;
}

/**
 * IOVA → bytes through the IOTLB regions of one address space.
 *
 * @example
 * ```ts ignore
 * const dma = new VduseIotlbDmaSpace({ backend, fd, asid: 0, v2: false });
 * dma.read32(descIova);
 * ```
 */
export class VduseIotlbDmaSpace extends TranslatingDmaSpace {
  /** Address space id. */
  readonly asid: number;
  /** Counters. */
  readonly stats: VduseIotlbStats = { fetches: 0, misses: 0, dropped: 0 };
  readonly #options: VduseIotlbDmaSpaceOptions;
  #regions: MappedRegion[] = [];
  #hit: MappedRegion | null = null;

  /** Creates an empty space (nothing mapped until the first access). */
  constructor(options: VduseIotlbDmaSpaceOptions) {
    super();
    this.#options = options;
    this.asid = options.asid;
  }

  /** The regions mapped now, ascending. */
  get regions(): readonly MappedRegion[] {
    return this.#regions;
  }

  /** See {@linkcode DmaSpace.translate}: a cached region, else GET_FD + mmap. */
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    let r = this.#hit;
    if (r === null || address < r.start || address > r.last) {
      if (!(Number.isSafeInteger(address) && address >= 0 && Number.isSafeInteger(length))) {
        throw new DmaFault(address, length, access, "invalid");
      }
      r = this.#find(address) ?? this.#fetch(address);
      if (r === null) {
        this.stats.misses++;
        throw new DmaFault(address, length, access, "unmapped");
      }
      this.#hit = r;
    }
    if ((r.perm & access) !== access) throw new DmaFault(address, length, access, "permission");
    out.bytes = r.bytes;
    out.offset = address - r.start;
    out.length = Math.min(length, r.last - address + 1);
  }

  /**
   * Drops (munmaps) every region overlapping `[start, last]` and tells the
   * queues' caches. Called for UPDATE_IOTLB.
   */
  dropRange(start: number, last: number): void {
    const keep: MappedRegion[] = [];
    for (const r of this.#regions) {
      if (r.start <= last && r.last >= start) {
        this.#options.backend.munmap(r.bytes);
        this.stats.dropped++;
      } else {
        keep.push(r);
      }
    }
    this.#regions = keep;
    this.#hit = null;
    this.invalidate(start, Math.min(last, Number.MAX_SAFE_INTEGER - 1) - start + 1);
  }

  /** Drops every region (reset, stop). */
  clear(): void {
    this.dropRange(0, Number.MAX_SAFE_INTEGER - 1);
  }

  #find(address: number): MappedRegion | null {
    for (const r of this.#regions) if (address >= r.start && address <= r.last) return r;
    return null;
  }

  /** GET_FD(2) for the region holding `address`, mmap it, close the fd. */
  #fetch(address: number): MappedRegion | null {
    const { backend, fd, asid, v2 } = this.#options;
    const a = BigInt(address);
    const arg = v2
      ? encodeIotlbEntryV2({ offset: 0n, start: a, last: a, perm: 0, asid })
      : encodeIotlbEntry({ offset: 0n, start: a, last: a, perm: 0 });
    const file = backend.ioctl(fd, v2 ? VduseIoctl.IOTLB_GET_FD2 : VduseIoctl.IOTLB_GET_FD, arg);
    if (file < 0) return null;
    const e = v2 ? decodeIotlbEntryV2(arg) : decodeIotlbEntry(arg);
    const start = u64ToAddress(e.start);
    const last = u64ToAddress(e.last);
    const offset = u64ToAddress(e.offset);
    let region: MappedRegion | null = null;
    if (!Number.isNaN(start + last + offset) && last >= start && address <= last) {
      const prot = (e.perm & 1 ? PROT_READ : 0) | (e.perm & 2 ? PROT_WRITE : 0);
      const bytes = backend.mmap(file, offset, last - start + 1, prot);
      if (typeof bytes !== "number") {
        region = { start, last, perm: e.perm & DmaAccess.ReadWrite, bytes };
        this.#regions.push(region);
        this.#regions.sort((x, y) => x.start - y.start);
        this.stats.fetches++;
      }
    }
    backend.close(file);
    return region;
  }
}
