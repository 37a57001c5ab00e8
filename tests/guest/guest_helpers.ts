/**
 * Shared fixtures for the guest-model tests: a small guest, a recording mock
 * of `virtio_map_ops`, and a minimal "device" that writes used entries by hand.
 */
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { PageAllocator } from "../../src/guest/page_allocator.ts";
import {
  type CoherentAllocation,
  DMA_MAPPING_ERROR,
  type DmaDirection,
  Errno,
} from "../../src/guest/dma/dma_api.ts";
import type { VirtioMap, VirtioMapOps } from "../../src/guest/virtio/map_ops.ts";

/** Guest RAM 0..1 MiB; pages from 0x40000..0x100000 (buffers live below 0x40000). */
export function makeGuest(size = 1 << 20): { memory: GuestMemory; pages: PageAllocator } {
  const memory = new GuestMemory([{ base: 0, size }]);
  const pages = new PageAllocator(memory, { base: 0x40000, size: size - 0x40000 });
  return { memory, pages };
}

/** Device addresses handed out by {@linkcode MockMapOps} sit this far above guest physical. */
export const IOVA_OFFSET = 0x1_0000_0000;

/** One recorded map-ops call. */
export interface MapCall {
  op: string;
  map: VirtioMap;
  addr: number;
  size: number;
  dir?: number;
  attrs?: number;
}

/**
 * A `VirtioMapOps` that maps by adding {@linkcode IOVA_OFFSET}, records every
 * call, tracks live mappings and can be told to fail the n-th map.
 */
export class MockMapOps implements VirtioMapOps {
  readonly calls: MapCall[] = [];
  /** Live streaming mappings: device address -> [phys, size, dir]. */
  readonly live = new Map<number, [number, number, number]>();
  /** Live coherent allocations: device address -> size. */
  readonly coherent = new Map<number, number>();
  /** Problems seen (unmaps that do not match a mapping). */
  readonly errors: string[] = [];
  /** Map calls left before one fails; -1 never fails. */
  failIn = -1;
  /** Fail coherent allocations. */
  failAlloc = false;
  #maps = 0;

  constructor(readonly pages: PageAllocator, readonly limit = 1 << 16) {}

  mapPage(map: VirtioMap, phys: number, size: number, dir: DmaDirection, attrs: number): number {
    this.calls.push({ op: "map", map, addr: phys, size, dir, attrs });
    this.#maps++;
    if (this.failIn === 0) {
      this.failIn = -1;
      return DMA_MAPPING_ERROR;
    }
    if (this.failIn > 0) this.failIn--;
    const addr = phys + IOVA_OFFSET;
    if (this.live.has(addr)) this.errors.push(`double map of 0x${addr.toString(16)}`);
    this.live.set(addr, [phys, size, dir]);
    return addr;
  }
  unmapPage(map: VirtioMap, handle: number, size: number, dir: DmaDirection, attrs: number): void {
    this.calls.push({ op: "unmap", map, addr: handle, size, dir, attrs });
    const m = this.live.get(handle);
    if (m === undefined) this.errors.push(`unmap of unmapped 0x${handle.toString(16)}`);
    else if (m[1] !== size || m[2] !== dir) {
      this.errors.push(
        `unmap of 0x${handle.toString(16)} with size ${size} dir ${dir}, mapped ${m[1]} ${m[2]}`,
      );
    }
    this.live.delete(handle);
  }
  syncSingleForCpu(map: VirtioMap, handle: number, size: number, dir: DmaDirection): void {
    this.calls.push({ op: "syncForCpu", map, addr: handle, size, dir });
  }
  syncSingleForDevice(map: VirtioMap, handle: number, size: number, dir: DmaDirection): void {
    this.calls.push({ op: "syncForDevice", map, addr: handle, size, dir });
  }
  alloc(map: VirtioMap, size: number): CoherentAllocation | null {
    this.calls.push({ op: "alloc", map, addr: 0, size });
    if (this.failAlloc) return null;
    const cpu = this.pages.allocPagesExact(size, { zero: true });
    if (cpu === null) return null;
    this.coherent.set(cpu + IOVA_OFFSET, size);
    return { cpuAddr: cpu, dmaAddr: cpu + IOVA_OFFSET };
  }
  free(map: VirtioMap, size: number, cpuAddr: number, handle: number, attrs: number): void {
    this.calls.push({ op: "free", map, addr: handle, size, attrs });
    if (this.coherent.get(handle) !== size) {
      this.errors.push(`bad free of 0x${handle.toString(16)}`);
    }
    this.coherent.delete(handle);
    this.pages.freePagesExact(cpuAddr, size);
  }
  needSync(map: VirtioMap, handle: number): boolean {
    this.calls.push({ op: "needSync", map, addr: handle, size: 0 });
    return true;
  }
  mappingError(_map: VirtioMap, handle: number): number {
    return handle === DMA_MAPPING_ERROR ? -Errno.ENOMEM : 0;
  }
  maxMappingSize(map: VirtioMap): number {
    this.calls.push({ op: "maxMappingSize", map, addr: 0, size: 0 });
    return this.limit;
  }

  /** The calls of one kind. */
  of(op: string): MapCall[] {
    return this.calls.filter((c) => c.op === op);
  }
  /** Map calls made so far. */
  get mapCount(): number {
    return this.#maps;
  }
}

/** Reads a little-endian 64-bit value below 2^53. */
export function read64(memory: GuestMemory, addr: number): number {
  return memory.read32(addr) + memory.read32(addr + 4) * 0x1_0000_0000;
}

/** A split descriptor as four fields. */
export interface SplitDesc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

/** Reads split descriptor `i` of a table at guest physical `table`. */
export function splitDesc(memory: GuestMemory, table: number, i: number): SplitDesc {
  const o = table + 16 * i;
  return {
    addr: read64(memory, o),
    len: memory.read32(o + 8),
    flags: memory.read16(o + 12),
    next: memory.read16(o + 14),
  };
}

/** A packed descriptor as four fields. */
export interface PackedDesc {
  addr: number;
  len: number;
  id: number;
  flags: number;
}

/** Reads packed descriptor `i` of a ring (or table) at guest physical `ring`. */
export function packedDesc(memory: GuestMemory, ring: number, i: number): PackedDesc {
  const o = ring + 16 * i;
  return {
    addr: read64(memory, o),
    len: memory.read32(o + 8),
    id: memory.read16(o + 12),
    flags: memory.read16(o + 14),
  };
}

/**
 * Plays the device of a split ring by hand: reads the avail ring and writes
 * used entries at guest physical addresses (identity mapping assumed, or
 * `cpuOf` to turn device addresses into guest physical ones).
 */
export class SplitDevice {
  lastAvail = 0;
  usedIdx = 0;
  constructor(
    readonly memory: GuestMemory,
    readonly size: number,
    readonly desc: number,
    readonly avail: number,
    readonly used: number,
  ) {}

  /** Heads the driver made available since the last call. */
  popHeads(): number[] {
    const idx = this.memory.read16(this.avail + 2);
    const heads: number[] = [];
    while (this.lastAvail !== idx) {
      heads.push(this.memory.read16(this.avail + 4 + 2 * (this.lastAvail % this.size)));
      this.lastAvail = (this.lastAvail + 1) & 0xffff;
    }
    return heads;
  }

  /** Writes a used entry without publishing the index. */
  writeUsed(id: number, len: number): void {
    const e = this.used + 4 + 8 * (this.usedIdx % this.size);
    this.memory.write32(e, id);
    this.memory.write32(e + 4, len);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  /** Advances the used index without writing an entry (in-order batching). */
  skipUsed(n: number): void {
    this.usedIdx = (this.usedIdx + n) & 0xffff;
  }

  /** Publishes `used.idx`. */
  publish(): void {
    this.memory.write16(this.used + 2, this.usedIdx);
  }

  /** `used_event` (written by the driver). */
  get usedEvent(): number {
    return this.memory.read16(this.avail + 4 + 2 * this.size);
  }
  /** Sets `avail_event`. */
  set availEvent(value: number) {
    this.memory.write16(this.used + 4 + 8 * this.size, value);
  }
}

/** Plays the device of a packed ring by hand. */
export class PackedDevice {
  nextAvail = 0;
  availWrap = 1;
  nextUsed = 0;
  usedWrap = 1;
  constructor(
    readonly memory: GuestMemory,
    readonly size: number,
    readonly ring: number,
    readonly driverEvent: number,
    readonly deviceEvent: number,
  ) {}

  /** Pops the next available chain: [buffer id, slots, descriptors]; null when none. */
  pop(): { id: number; slots: number; descs: PackedDesc[] } | null {
    const descs: PackedDesc[] = [];
    let slot = this.nextAvail;
    let wrap = this.availWrap;
    for (;;) {
      const d = packedDesc(this.memory, this.ring, slot);
      const avail = (d.flags >> 7) & 1;
      const used = (d.flags >> 15) & 1;
      if (avail === used || avail !== wrap) {
        if (descs.length === 0) return null;
        throw new Error("chain ends in a descriptor that is not available");
      }
      descs.push(d);
      slot++;
      if (slot === this.size) {
        slot = 0;
        wrap ^= 1;
      }
      if ((d.flags & 1) === 0) break;
    }
    this.nextAvail = slot;
    this.availWrap = wrap;
    return { id: descs[descs.length - 1].id, slots: descs.length, descs };
  }

  /** Marks a buffer used at the next used slot, covering `slots` ring slots. */
  pushUsed(id: number, len: number, slots: number, written = len > 0): void {
    const o = this.ring + 16 * this.nextUsed;
    this.memory.write16(o + 12, id);
    this.memory.write32(o + 8, len);
    const w = this.usedWrap;
    this.memory.write16(o + 14, (w << 7) | (w << 15) | (written ? 2 : 0));
    this.nextUsed += slots;
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap ^= 1;
    }
  }

  /** Driver event suppression: [off_wrap, flags]. */
  get driverEventArea(): [number, number] {
    return [this.memory.read16(this.driverEvent), this.memory.read16(this.driverEvent + 2)];
  }
  /** Sets the device event suppression area. */
  setDeviceEvent(offWrap: number, flags: number): void {
    this.memory.write16(this.deviceEvent, offWrap);
    this.memory.write16(this.deviceEvent + 2, flags);
  }
}
