/**
 * Tiny driver-side ring writers for the device queue tests: they put bytes in
 * guest memory exactly where a driver would, with no knowledge of the device
 * implementation.
 */
import type { DmaAccess } from "../../src/dma/dma_access.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "../../src/dma/dma_space.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import type { QueueConfig } from "../../src/queue/device_queue.ts";

/** One buffer of a chain as the driver describes it. */
export interface Seg {
  addr: number;
  len: number;
  write?: boolean;
}

/** Ring layout flags (restated here so the tests do not trust the implementation). */
export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;
export const F_AVAIL = 0x80;
export const F_USED = 0x8000;

/** Writes a 64-bit value that may be at or above 2^53 (hostile addresses). */
export function writeRaw64(mem: GuestMemory, addr: number, low: number, high: number): void {
  mem.write32(addr, low >>> 0);
  mem.write32(addr + 4, high >>> 0);
}

/** Writes split-layout indirect table entries at `addr`. */
export function writeSplitTable(
  mem: GuestMemory,
  addr: number,
  entries: readonly { addr: number; len: number; flags: number; next?: number }[],
): void {
  entries.forEach((e, i) => {
    const o = addr + 16 * i;
    mem.write64(o, e.addr);
    mem.write32(o + 8, e.len);
    mem.write16(o + 12, e.flags);
    mem.write16(o + 14, e.next ?? 0);
  });
}

/** Writes packed-layout indirect table entries at `addr`. */
export function writePackedTable(
  mem: GuestMemory,
  addr: number,
  entries: readonly { addr: number; len: number; flags: number }[],
): void {
  entries.forEach((e, i) => {
    const o = addr + 16 * i;
    mem.write64(o, e.addr);
    mem.write32(o + 8, e.len);
    mem.write16(o + 12, 0);
    mem.write16(o + 14, e.flags);
  });
}

/** A split ring driver: descriptor table, available ring and used ring. */
export class SplitDriver {
  readonly mem: GuestMemory;
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  availIdx = 0;
  lastUsed = 0;
  #nextFree = 0;

  constructor(
    mem: GuestMemory,
    size: number,
    desc = 0x1000,
    avail = desc + 16 * size,
    used = alignUp(avail + 6 + 2 * size, 64),
  ) {
    this.mem = mem;
    this.size = size;
    this.desc = desc;
    this.avail = avail;
    this.used = used;
  }

  config(over: Partial<QueueConfig> = {}): QueueConfig {
    return {
      index: 0,
      size: this.size,
      descAddr: this.desc,
      driverAddr: this.avail,
      deviceAddr: this.used,
      eventIdx: false,
      indirect: false,
      inOrder: false,
      ...over,
    };
  }

  setDesc(i: number, addr: number, len: number, flags: number, next = 0): void {
    const o = this.desc + 16 * i;
    this.mem.write64(o, addr);
    this.mem.write32(o + 8, len);
    this.mem.write16(o + 12, flags);
    this.mem.write16(o + 14, next);
  }

  /** Writes a chain into free descriptors (taken round-robin); returns the head. */
  writeChain(segs: readonly Seg[]): number {
    const ids = segs.map(() => {
      const i = this.#nextFree;
      this.#nextFree = (i + 1) % this.size;
      return i;
    });
    segs.forEach((s, k) => {
      const last = k === segs.length - 1;
      this.setDesc(
        ids[k],
        s.addr,
        s.len,
        (s.write ? F_WRITE : 0) | (last ? 0 : F_NEXT),
        last ? 0 : ids[k + 1],
      );
    });
    return ids[0];
  }

  /** Puts `head` in the next avail ring entry and publishes the avail index. */
  publish(...heads: number[]): void {
    for (const h of heads) {
      this.mem.write16(this.avail + 4 + 2 * (this.availIdx % this.size), h);
      this.availIdx = (this.availIdx + 1) & 0xffff;
    }
    this.mem.write16(this.avail + 2, this.availIdx);
  }

  /** Writes a chain and makes it available; returns the head. */
  add(segs: readonly Seg[]): number {
    const head = this.writeChain(segs);
    this.publish(head);
    return head;
  }

  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.mem.write16(this.avail + 2, this.availIdx);
  }

  setAvailFlags(v: number): void {
    this.mem.write16(this.avail, v);
  }

  setUsedEvent(v: number): void {
    this.mem.write16(this.avail + 4 + 2 * this.size, v);
  }

  usedIdx(): number {
    return this.mem.read16(this.used + 2);
  }

  usedFlags(): number {
    return this.mem.read16(this.used);
  }

  availEvent(): number {
    return this.mem.read16(this.used + 4 + 8 * this.size);
  }

  usedElem(i: number): { id: number; len: number } {
    const o = this.used + 4 + 8 * (i % this.size);
    return { id: this.mem.read32(o), len: this.mem.read32(o + 4) };
  }

  /** Collects every used element published since the last call. */
  getUsed(): { id: number; len: number }[] {
    const out = [];
    const idx = this.usedIdx();
    while (this.lastUsed !== idx) {
      out.push(this.usedElem(this.lastUsed));
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
}

/** A packed ring driver: descriptor ring plus the two event suppression areas. */
export class PackedDriver {
  readonly mem: GuestMemory;
  readonly size: number;
  readonly desc: number;
  readonly driverEvent: number;
  readonly deviceEvent: number;
  nextAvail = 0;
  availWrap = 1;
  nextUsed = 0;
  usedWrap = 1;
  /** Ring slots of each buffer id made available. */
  readonly slotsOf: Map<number, number> = new Map();

  constructor(
    mem: GuestMemory,
    size: number,
    desc = 0x1000,
    driverEvent = desc + 16 * size,
    deviceEvent = driverEvent + 4,
  ) {
    this.mem = mem;
    this.size = size;
    this.desc = desc;
    this.driverEvent = driverEvent;
    this.deviceEvent = deviceEvent;
  }

  config(over: Partial<QueueConfig> = {}): QueueConfig {
    return {
      index: 0,
      size: this.size,
      descAddr: this.desc,
      driverAddr: this.driverEvent,
      deviceAddr: this.deviceEvent,
      eventIdx: false,
      indirect: false,
      inOrder: false,
      ...over,
    };
  }

  /** Flags that make a descriptor available for the driver's current wrap. */
  availBits(wrap = this.availWrap): number {
    return wrap ? F_AVAIL : F_USED;
  }

  setDesc(slot: number, addr: number, len: number, id: number, flags: number): void {
    const o = this.desc + 16 * slot;
    this.mem.write64(o, addr);
    this.mem.write32(o + 8, len);
    this.mem.write16(o + 12, id);
    this.mem.write16(o + 14, flags);
  }

  /**
   * Makes a chain available with buffer id `id`, writing the head's flags last.
   * `extraFlags` are OR-ed into every descriptor (for hostile tests).
   */
  add(segs: readonly Seg[], id: number, extraFlags = 0): void {
    const head = this.nextAvail;
    const headWrap = this.availWrap;
    let headFlags = 0;
    segs.forEach((s, k) => {
      const last = k === segs.length - 1;
      const flags = (s.write ? F_WRITE : 0) | (last ? 0 : F_NEXT) | this.availBits() |
        extraFlags;
      if (k === 0) {
        headFlags = flags;
        this.setDesc(this.nextAvail, s.addr, s.len, id, 0);
        // Not yet available: flags written last.
        this.mem.write16(this.desc + 16 * head + 14, headWrap ? F_USED : F_AVAIL);
      } else {
        this.setDesc(this.nextAvail, s.addr, s.len, id, flags);
      }
      this.#advance();
    });
    this.mem.write16(this.desc + 16 * head + 14, headFlags);
    this.slotsOf.set(id, segs.length);
  }

  /** Makes one indirect descriptor available pointing at a table of `len` bytes. */
  addIndirect(tableAddr: number, len: number, id: number, extraFlags = 0): void {
    this.setDesc(this.nextAvail, tableAddr, len, id, F_INDIRECT | this.availBits() | extraFlags);
    this.#advance();
    this.slotsOf.set(id, 1);
  }

  #advance(): void {
    if (++this.nextAvail === this.size) {
      this.nextAvail = 0;
      this.availWrap ^= 1;
    }
  }

  setDriverEvent(flags: number, offWrap = 0): void {
    this.mem.write16(this.driverEvent, offWrap);
    this.mem.write16(this.driverEvent + 2, flags);
  }

  deviceEventFlags(): number {
    return this.mem.read16(this.deviceEvent + 2);
  }

  deviceEventOffWrap(): number {
    return this.mem.read16(this.deviceEvent);
  }

  /** Reads the used descriptor at the driver's used position, or null when there is none. */
  getUsed(): { id: number; len: number; flags: number } | null {
    const o = this.desc + 16 * this.nextUsed;
    const flags = this.mem.read16(o + 14);
    const avail = (flags & F_AVAIL) !== 0 ? 1 : 0;
    const used = (flags & F_USED) !== 0 ? 1 : 0;
    if (avail !== used || used !== this.usedWrap) return null;
    const id = this.mem.read16(o + 12);
    const len = this.mem.read32(o + 8);
    const slots = this.slotsOf.get(id) ?? 1;
    this.nextUsed += slots;
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap ^= 1;
    }
    return { id, len, flags };
  }

  /** Collects every used descriptor visible now. */
  getAllUsed(): { id: number; len: number; flags: number }[] {
    const out = [];
    for (let u = this.getUsed(); u !== null; u = this.getUsed()) out.push(u);
    return out;
  }
}

export function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

/** 64 KiB of guest RAM at address 0, enough for every ring in these tests. */
export function smallMemory(size = 0x10000): GuestMemory {
  return new GuestMemory([{ base: 0, size }]);
}

/**
 * A DMA space that maps device address a to guest address a + shift below
 * 0x4000 (the shift changes on remap, which fires the invalidation listeners).
 */
export class ShiftingDmaSpace extends TranslatingDmaSpace {
  readonly memory: GuestMemory;
  shift = 0;
  listenerCount = 0;

  constructor(memory: GuestMemory) {
    super();
    this.memory = memory;
  }

  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    const a = address < 0x4000 ? address + this.shift : address;
    const r = this.memory.regionOf(a, length > 0 ? 1 : 0);
    if (r === undefined) throw new DmaFault(address, length, access, "unmapped");
    out.bytes = r.bytes;
    out.offset = a - r.base;
    out.length = Math.min(length, r.end - a);
  }

  remap(shift: number): void {
    this.shift = shift;
    this.invalidate(0, 0x4000);
  }

  override addInvalidationListener(listener: (a: number, l: number) => void): () => void {
    this.listenerCount++;
    const off = super.addInvalidationListener(listener);
    return () => {
      this.listenerCount--;
      off();
    };
  }
}
