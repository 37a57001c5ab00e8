/**
 * A hand-written driver for virtio-blk device tests: split rings placed in
 * guest memory the way a driver would, requests built byte by byte, and a
 * recording host. It knows nothing of the device's implementation.
 */
import { DirectDmaSpace } from "../../../../src/dma/direct_dma_space.ts";
import type { DmaSpace } from "../../../../src/dma/dma_space.ts";
import { GuestMemory } from "../../../../src/memory/guest_memory.ts";
import { SplitQueue } from "../../../../src/queue/split_queue.ts";
import type { DeviceQueue } from "../../../../src/queue/device_queue.ts";
import type { VirtioDeviceHost } from "../../../../src/virtio/device.ts";
import { VirtioFeature } from "../../../../src/virtio/features.ts";
import { VirtioBlk } from "../../../../devices/blk/device.ts";
import type { VirtioBlkOptions } from "../../../../devices/blk/config.ts";
import { MemoryBackend } from "../../../../devices/blk/backends/memory.ts";

/** Request types and statuses restated so the tests do not trust the implementation. */
export const IN = 0;
export const OUT = 1;
export const FLUSH = 4;
export const GET_ID = 8;
export const DISCARD = 11;
export const WRITE_ZEROES = 13;
export const OK = 0;
export const IOERR = 1;
export const UNSUPP = 2;

/** A buffer of a chain. */
export interface Seg {
  addr: number;
  len: number;
  write?: boolean;
}

/** What a recording host saw. */
export class RecordingHost implements VirtioDeviceHost {
  interrupts: number[] = [];
  failures: string[] = [];
  configChanges = 0;
  interrupt(queue: number): void {
    this.interrupts.push(queue);
  }
  configChanged(): void {
    this.configChanges++;
  }
  fail(reason: string): void {
    this.failures.push(reason);
  }
}

/** One driver-side split ring with a free list of descriptors. */
export class Ring {
  readonly mem: GuestMemory;
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  availIdx = 0;
  lastUsed = 0;
  readonly free: number[];
  readonly chains = new Map<number, number[]>();

  constructor(mem: GuestMemory, size: number, base: number) {
    this.mem = mem;
    this.size = size;
    this.desc = base;
    this.avail = base + 16 * size;
    this.used = (this.avail + 6 + 2 * size + 63) & ~63;
    this.free = Array.from({ length: size }, (_, i) => i);
  }

  /** Bytes the ring occupies from `base`. */
  static footprint(size: number): number {
    return 16 * size + 6 + 2 * size + 64 + 6 + 8 * size + 64;
  }

  /** Writes a chain and makes it available (no kick); returns the head. */
  add(segs: readonly Seg[]): number {
    if (segs.length > this.free.length) this.#collected.push(...this.#reap());
    if (segs.length > this.free.length) throw new Error("ring full");
    const ids = segs.map(() => this.free.shift()!);
    segs.forEach((s, k) => {
      const last = k === segs.length - 1;
      const o = this.desc + 16 * ids[k];
      this.mem.write64(o, s.addr);
      this.mem.write32(o + 8, s.len);
      this.mem.write16(o + 12, (s.write ? 2 : 0) | (last ? 0 : 1));
      this.mem.write16(o + 14, last ? 0 : ids[k + 1]);
    });
    this.chains.set(ids[0], ids);
    this.mem.write16(this.avail + 4 + 2 * (this.availIdx % this.size), ids[0]);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.mem.write16(this.avail + 2, this.availIdx);
    return ids[0];
  }

  /** Used elements published since the last call; their descriptors are freed. */
  takeUsed(): { id: number; len: number }[] {
    const out = this.#collected.splice(0);
    out.push(...this.#reap());
    return out;
  }

  #collected: { id: number; len: number }[] = [];

  #reap(): { id: number; len: number }[] {
    const out = [];
    const idx = this.mem.read16(this.used + 2);
    while (this.lastUsed !== idx) {
      const o = this.used + 4 + 8 * (this.lastUsed % this.size);
      const id = this.mem.read32(o);
      out.push({ id, len: this.mem.read32(o + 4) });
      const ids = this.chains.get(id);
      if (ids === undefined) throw new Error(`used id ${id} is not an outstanding head`);
      this.chains.delete(id);
      this.free.push(...ids);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  /** The device's `used.flags` (bit 0: do not kick). */
  usedFlags(): number {
    return this.mem.read16(this.used);
  }

  /** Sets `avail.flags` (bit 0: no interrupts). */
  setAvailFlags(v: number): void {
    this.mem.write16(this.avail, v);
  }
}

/** A request the harness built: where its pieces live. */
export interface Req {
  queue: number;
  head: number;
  header: number;
  data: number;
  dataLen: number;
  status: number;
}

/** Options of {@linkcode BlkHarness}. */
export interface HarnessOptions extends Partial<VirtioBlkOptions> {
  /** Disk size when no backend is given (default 1 MiB). */
  diskSize?: number;
  /** Ring size (default 64). */
  ringSize?: number;
  /** Feature word to negotiate; default: everything offered plus VERSION_1. */
  features?: bigint;
  /** Clear these device bits from the negotiated set. */
  withoutFeatures?: number[];
  /** Guest memory size (default 16 MiB). */
  memSize?: number;
  /** DMA space to give the device (default: direct over guest memory). */
  dma?: (mem: GuestMemory) => DmaSpace;
  /** Do not activate (tests that drive negotiation themselves). */
  noActivate?: boolean;
}

/** Guest memory, a device bound to a recording host, and one ring per queue. */
export class BlkHarness {
  readonly mem: GuestMemory;
  readonly dma: DmaSpace;
  readonly host: RecordingHost = new RecordingHost();
  readonly device: VirtioBlk;
  readonly backend: VirtioBlkOptions["backend"];
  readonly rings: Ring[] = [];
  readonly queues: DeviceQueue[] = [];
  readonly features: bigint;
  #next: number;

  constructor(options: HarnessOptions = {}) {
    const memSize = options.memSize ?? 16 << 20;
    this.mem = new GuestMemory([{ base: 0, size: memSize }]);
    this.dma = options.dma?.(this.mem) ?? new DirectDmaSpace(this.mem);
    this.backend = options.backend ?? new MemoryBackend(options.diskSize ?? 1 << 20);
    this.device = new VirtioBlk({ ...options, backend: this.backend });
    this.device.bind(this.host);
    let f = options.features ??
      (this.device.deviceFeatures | (1n << BigInt(VirtioFeature.VERSION_1)));
    for (const b of options.withoutFeatures ?? []) f &= ~(1n << BigInt(b));
    this.features = f;
    const ringSize = options.ringSize ?? 64;
    let base = 0x1000;
    for (let q = 0; q < this.device.numQueues; q++) {
      const ring = new Ring(this.mem, ringSize, base);
      this.rings.push(ring);
      this.queues.push(
        new SplitQueue({
          index: q,
          size: ringSize,
          descAddr: ring.desc,
          driverAddr: ring.avail,
          deviceAddr: ring.used,
          eventIdx: false,
          indirect: false,
          inOrder: false,
        }, this.dma),
      );
      base += (Ring.footprint(ringSize) + 0xfff) & ~0xfff;
    }
    this.#next = base + 0x10000;
    if (!options.noActivate) this.activate();
  }

  /** FEATURES_OK then DRIVER_OK, as a transport would. */
  activate(): void {
    const why = this.device.validateFeatures(this.features);
    if (why !== null) throw new Error(why);
    this.device.activate({ features: this.features, queues: this.queues, dma: this.dma });
  }

  /** A fresh guest buffer (bump allocation, 16-byte aligned). */
  alloc(len: number, align = 16): number {
    const a = (this.#next + align - 1) & ~(align - 1);
    this.#next = a + Math.max(len, 1);
    if (this.#next > this.mem.ramSize) throw new Error("harness out of guest memory");
    return a;
  }

  /** Writes a 16-byte request header; returns its address. */
  header(type: number, sector: number, reserved = 0): number {
    const h = this.alloc(16);
    this.mem.write32(h, type);
    this.mem.write32(h + 4, reserved);
    this.mem.write64(h + 8, sector);
    return h;
  }

  /** A 1-byte status buffer preset to 0xff (so "not written" is visible). */
  statusByte(): number {
    const s = this.alloc(1);
    this.mem.write8(s, 0xff);
    return s;
  }

  /** Makes `segs` available on queue `q` and kicks unless `kick` is false. */
  submitRaw(segs: Seg[], q = 0, kick = true): number {
    const head = this.rings[q].add(segs);
    if (kick) this.device.notify(q);
    return head;
  }

  /** IN of `len` bytes at `sector`, in one data buffer (or `split` pieces). */
  read(
    sector: number,
    len: number,
    opts: { q?: number; kick?: boolean; split?: number } = {},
  ): Req {
    const header = this.header(IN, sector);
    const data = this.alloc(len);
    this.mem.view(data, len).fill(0xee);
    const status = this.statusByte();
    const segs: Seg[] = [{ addr: header, len: 16 }];
    const pieces = opts.split ?? 1;
    const piece = Math.ceil(len / pieces);
    for (let off = 0; off < len; off += piece) {
      segs.push({ addr: data + off, len: Math.min(piece, len - off), write: true });
    }
    segs.push({ addr: status, len: 1, write: true });
    const q = opts.q ?? 0;
    const head = this.submitRaw(segs, q, opts.kick ?? true);
    return { queue: q, head, header, data, dataLen: len, status };
  }

  /** OUT of `bytes` at `sector`. */
  write(
    sector: number,
    bytes: Uint8Array,
    opts: { q?: number; kick?: boolean; split?: number } = {},
  ): Req {
    const header = this.header(OUT, sector);
    const data = this.alloc(bytes.length);
    this.mem.write(data, bytes);
    const status = this.statusByte();
    const segs: Seg[] = [{ addr: header, len: 16 }];
    const pieces = opts.split ?? 1;
    const piece = Math.ceil(bytes.length / pieces);
    for (let off = 0; off < bytes.length; off += piece) {
      segs.push({ addr: data + off, len: Math.min(piece, bytes.length - off) });
    }
    segs.push({ addr: status, len: 1, write: true });
    const q = opts.q ?? 0;
    const head = this.submitRaw(segs, q, opts.kick ?? true);
    return { queue: q, head, header, data, dataLen: bytes.length, status };
  }

  /** A request with no data (FLUSH and friends). */
  command(type: number, sector = 0, opts: { q?: number; kick?: boolean } = {}): Req {
    const header = this.header(type, sector);
    const status = this.statusByte();
    const q = opts.q ?? 0;
    const head = this.submitRaw(
      [{ addr: header, len: 16 }, { addr: status, len: 1, write: true }],
      q,
      opts.kick ?? true,
    );
    return { queue: q, head, header, data: 0, dataLen: 0, status };
  }

  /** FLUSH. */
  flush(opts: { q?: number; kick?: boolean } = {}): Req {
    return this.command(FLUSH, 0, opts);
  }

  /** GET_ID with a `len`-byte buffer (20 by default). */
  getId(len = 20, q = 0): Req {
    const header = this.header(GET_ID, 0);
    const data = this.alloc(len);
    this.mem.view(data, len).fill(0xee);
    const status = this.statusByte();
    const head = this.submitRaw([
      { addr: header, len: 16 },
      { addr: data, len, write: true },
      { addr: status, len: 1, write: true },
    ], q);
    return { queue: q, head, header, data, dataLen: len, status };
  }

  /** DISCARD or WRITE_ZEROES with the given segments. */
  ranges(
    type: number,
    segs: readonly { sector: number; sectors: number; flags?: number }[],
    opts: { q?: number; kick?: boolean } = {},
  ): Req {
    const header = this.header(type, 0);
    const data = this.alloc(16 * segs.length);
    segs.forEach((s, i) => {
      this.mem.write64(data + 16 * i, s.sector);
      this.mem.write32(data + 16 * i + 8, s.sectors);
      this.mem.write32(data + 16 * i + 12, s.flags ?? 0);
    });
    const status = this.statusByte();
    const q = opts.q ?? 0;
    const head = this.submitRaw(
      [
        { addr: header, len: 16 },
        ...(segs.length > 0 ? [{ addr: data, len: 16 * segs.length }] : []),
        { addr: status, len: 1, write: true },
      ],
      q,
      opts.kick ?? true,
    );
    return { queue: q, head, header, data, dataLen: 16 * segs.length, status };
  }

  /** The status byte of `req` (0xff while not written). */
  status(req: Req): number {
    return this.mem.read8(req.status);
  }

  /** The data bytes of `req`. */
  data(req: Req): Uint8Array {
    return this.mem.view(req.data, req.dataLen).slice();
  }

  /** Used elements of queue `q` since the last call. */
  used(q = 0): { id: number; len: number }[] {
    return this.rings[q].takeUsed();
  }
}

/** `n` bytes of a recognisable pattern seeded by `seed`. */
export function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return out;
}
