/**
 * The IOTLB of one VDUSE address space (`struct vhost_iotlb` as VDUSE fills
 * it): IOVA ranges, each with a permission, the "file" userspace maps to see
 * its bytes and the offset into that file.
 *
 * @module
 */
import type { GuestMemory } from "../../../src/memory/guest_memory.ts";

/**
 * What `VDUSE_IOTLB_GET_FD` hands userspace: a file whose `mmap` shows the
 * bytes of IOTLB regions. The domain file of an address space (bounce pages
 * and coherent allocations, offset == IOVA) and the VM memory file of
 * vhost-vdpa mappings implement it.
 */
export interface VduseFile {
  /** A name for diagnostics (`"[vduse-domain]"`). */
  readonly name: string;
  /**
   * Maps `length` bytes at file offset `offset`: a zero-copy view, or `null`
   * where the kernel would raise SIGBUS or where the range is not one
   * contiguous backing (an emulation limit: a real mmap stitches pages).
   */
  mmap(offset: number, length: number): Uint8Array | null;
}

/** One IOTLB region (`struct vhost_iotlb_map`). */
export interface IotlbEntry {
  /** First IOVA. */
  readonly start: number;
  /** Last IOVA (inclusive). */
  readonly last: number;
  /** `VDUSE_ACCESS_*` / `VHOST_MAP_*` bits. */
  readonly perm: number;
  /** Guest physical address of the bytes, when they are guest memory; -1 otherwise. */
  readonly addr: number;
  /** The file userspace maps. */
  readonly file: VduseFile;
  /** Offset of `start` within `file`. */
  readonly offset: number;
}

/**
 * An interval list of {@linkcode IotlbEntry} sorted by start; lookups return
 * the first entry overlapping a range, as `vhost_iotlb_itree_first` does.
 */
export class VduseIotlb {
  #entries: IotlbEntry[] = [];

  /** The entries in ascending start order (read only). */
  get entries(): readonly IotlbEntry[] {
    return this.#entries;
  }

  /** Adds an entry (`vhost_iotlb_add_range_ctx`). */
  add(entry: IotlbEntry): void {
    const list = this.#entries;
    let i = list.length;
    while (i > 0 && list[i - 1].start > entry.start) i--;
    list.splice(i, 0, entry);
  }

  /** Removes every entry overlapping `[start, last]` (`vhost_iotlb_del_range`). */
  deleteRange(start: number, last: number): IotlbEntry[] {
    const removed: IotlbEntry[] = [];
    this.#entries = this.#entries.filter((e) => {
      const hit = e.start <= last && e.last >= start;
      if (hit) removed.push(e);
      return !hit;
    });
    return removed;
  }

  /** Removes one entry object; false when it is not there. */
  remove(entry: IotlbEntry): boolean {
    const i = this.#entries.indexOf(entry);
    if (i < 0) return false;
    this.#entries.splice(i, 1);
    return true;
  }

  /** The lowest-starting entry overlapping `[start, last]`, or `undefined`. */
  first(start: number, last: number): IotlbEntry | undefined {
    for (const e of this.#entries) {
      if (e.start > last) return undefined;
      if (e.last >= start) return e;
    }
    return undefined;
  }

  /** Removes everything (`vhost_iotlb_reset`). */
  clear(): void {
    this.#entries = [];
  }
}

/**
 * The file behind vhost-vdpa mappings: guest memory, with the file offset
 * being the guest physical address.
 */
export class GuestMemoryFile implements VduseFile {
  /** Diagnostics name. */
  readonly name = "[guest-memory]";
  /** The guest memory shown. */
  readonly memory: GuestMemory;

  /** Creates the file over `memory`. */
  constructor(memory: GuestMemory) {
    this.memory = memory;
  }

  /** A view of guest memory at physical address `offset`, or null outside one RAM region. */
  mmap(offset: number, length: number): Uint8Array | null {
    const r = this.memory.regionOf(offset, length);
    if (r === undefined) return null;
    return r.bytes.subarray(offset - r.base, offset - r.base + length);
  }
}
