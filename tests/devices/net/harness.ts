/**
 * A hand-written driver for the virtio-net device tests: split rings and
 * buffers placed in guest memory the way a driver would, with no knowledge of
 * the device implementation. The device is driven through its VirtioDevice
 * contract with a recording host.
 */
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import type { DmaSpace } from "../../../src/dma/dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import type { DeviceQueue } from "../../../src/queue/device_queue.ts";
import { SplitQueue } from "../../../src/queue/split_queue.ts";
import type { VirtioDeviceHost } from "../../../src/virtio/device.ts";
import { featureMask, VirtioFeature } from "../../../src/virtio/features.ts";
import { VirtioNet, type VirtioNetOptions } from "../../../devices/net/virtio_net.ts";
import { createPair, type PairOptions } from "../../../devices/net/backends/pair.ts";

export const HDR = 12;
const F_NEXT = 1;
const F_WRITE = 2;

/** One buffer segment as the driver describes it. */
export interface Seg {
  addr: number;
  len: number;
  write: boolean;
}

/** A driver-side split ring. */
export class Ring {
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  availIdx = 0;
  lastUsed = 0;
  readonly #mem: GuestMemory;
  readonly #free: number[] = [];
  readonly #chains = new Map<number, Seg[]>();

  constructor(mem: GuestMemory, base: number, size: number) {
    this.#mem = mem;
    this.size = size;
    this.desc = base;
    this.avail = base + 16 * size;
    this.used = Math.ceil((this.avail + 6 + 2 * size) / 64) * 64;
    for (let i = 0; i < size; i++) this.#free.push(i);
  }

  /** Bytes of guest memory the ring occupies. */
  static bytes(size: number): number {
    return Math.ceil((16 * size + 6 + 2 * size) / 64) * 64 + 6 + 8 * size + 64;
  }

  /** Puts a chain in the descriptor table and the avail ring; returns its head. */
  add(segs: Seg[]): number {
    if (segs.length > this.#free.length) throw new Error("ring full");
    const ids = segs.map(() => this.#free.shift()!);
    const mem = this.#mem;
    segs.forEach((s, i) => {
      const o = this.desc + 16 * ids[i];
      mem.write64(o, s.addr);
      mem.write32(o + 8, s.len);
      mem.write16(o + 12, (s.write ? F_WRITE : 0) | (i + 1 < segs.length ? F_NEXT : 0));
      mem.write16(o + 14, i + 1 < segs.length ? ids[i + 1] : 0);
    });
    const head = ids[0];
    this.#chains.set(head, segs);
    mem.write16(this.avail + 4 + 2 * (this.availIdx % this.size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    mem.write16(this.avail + 2, this.availIdx);
    return head;
  }

  /** Sets `avail.flags` (1 = no interrupts). */
  set availFlags(flags: number) {
    this.#mem.write16(this.avail, flags);
  }

  /** `used.flags` as the device wrote it. */
  get usedFlags(): number {
    return this.#mem.read16(this.used);
  }

  /** The used idx the device published. */
  get usedIdx(): number {
    return this.#mem.read16(this.used + 2);
  }

  /** Takes the used entries published since the last call, freeing their descriptors. */
  takeUsed(): { id: number; len: number; segs: Seg[] }[] {
    const out = [];
    const mem = this.#mem;
    const idx = this.usedIdx;
    while (this.lastUsed !== idx) {
      const o = this.used + 4 + 8 * (this.lastUsed % this.size);
      const id = mem.read32(o);
      const len = mem.read32(o + 4);
      const segs = this.#chains.get(id);
      if (segs === undefined) throw new Error(`used id ${id} is not a head in flight`);
      this.#chains.delete(id);
      let d = id;
      for (let i = 0; i < segs.length; i++) {
        this.#free.push(d);
        d = mem.read16(this.desc + 16 * d + 14);
      }
      out.push({ id, len, segs });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  /** Chains the device has not used yet. */
  get outstanding(): number {
    return this.#chains.size;
  }
}

/** What the device did to its host. */
export class RecordingHost implements VirtioDeviceHost {
  interrupts: number[] = [];
  configChanges = 0;
  failures: string[] = [];
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

/** A received frame as the driver sees it. */
export interface RxFrame {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  numBuffers: number;
  frame: Uint8Array;
  /** Used lengths of every buffer of the frame. */
  lens: number[];
}

/** Options of {@linkcode Harness}. */
export interface HarnessOptions {
  ringSize?: number;
  memory?: number;
  dma?: (mem: GuestMemory) => DmaSpace;
}

/** Guest memory, rings for every queue of a device, and helpers to use them. */
export class Harness {
  readonly mem: GuestMemory;
  readonly dma: DmaSpace;
  readonly device: VirtioNet;
  readonly host: RecordingHost = new RecordingHost();
  readonly rings: Ring[] = [];
  readonly queues: (DeviceQueue | null)[] = [];
  #next: number;
  readonly #ringSize: number;

  constructor(device: VirtioNet, options: HarnessOptions = {}) {
    this.device = device;
    this.#ringSize = options.ringSize ?? 64;
    this.mem = new GuestMemory([{ base: 0, size: options.memory ?? 0x400_0000 }]);
    this.dma = options.dma?.(this.mem) ?? new DirectDmaSpace(this.mem);
    let base = 0x1000;
    for (let i = 0; i < device.numQueues; i++) {
      this.rings.push(new Ring(this.mem, base, this.#ringSize));
      base += Ring.bytes(this.#ringSize) + 0x1000;
    }
    this.#next = Math.ceil(base / 0x1000) * 0x1000;
    device.bind(this.host);
  }

  /** Activates the device with the given device feature bits (VERSION_1 added); `queues` enabled. */
  activate(bits: number[], enabled?: number[], eventIdx = false): void {
    const features = featureMask(...bits, VirtioFeature.VERSION_1) |
      (eventIdx ? featureMask(VirtioFeature.EVENT_IDX) : 0n);
    const on = enabled ?? Array.from({ length: this.device.numQueues }, (_, i) => i);
    this.queues.length = 0;
    for (let i = 0; i < this.device.numQueues; i++) {
      this.queues.push(on.includes(i) ? this.makeQueue(i, eventIdx) : null);
    }
    this.device.activate({ features, queues: this.queues, dma: this.dma });
  }

  /** A device queue over ring `i`. */
  makeQueue(i: number, eventIdx = false): DeviceQueue {
    const r = this.rings[i];
    return new SplitQueue({
      index: i,
      size: r.size,
      descAddr: r.desc,
      driverAddr: r.avail,
      deviceAddr: r.used,
      eventIdx,
      indirect: false,
      inOrder: false,
    }, this.dma);
  }

  /** Allocates `n` bytes of guest memory (16-byte aligned). */
  alloc(n: number): number {
    const addr = this.#next;
    this.#next += Math.ceil(Math.max(n, 1) / 16) * 16;
    if (this.#next > this.mem.ramSize) throw new Error("harness out of memory");
    return addr;
  }

  /** Posts one receive chain per entry of `sizes` on queue `q` (no kick). */
  postRx(q: number, ...sizes: number[]): void {
    for (const len of sizes) this.rings[q].add([{ addr: this.alloc(len), len, write: true }]);
  }

  /** Posts one receive chain made of several writable segments. */
  postRxChain(q: number, lens: number[]): void {
    this.rings[q].add(lens.map((len) => ({ addr: this.alloc(len), len, write: true })));
  }

  /** Kicks queue `q`. */
  kick(q: number): void {
    this.device.notify(q);
  }

  /**
   * Puts a frame with its header on transmit queue `q` and kicks. `split`
   * gives the lengths of the readable segments (header + frame bytes); by
   * default one segment.
   */
  transmit(q: number, frame: Uint8Array, hdr: Partial<RxFrame> = {}, split?: number[]): void {
    this.queueTx(q, frame, hdr, split);
    this.kick(q);
  }

  /** Like {@linkcode Harness.transmit} without the kick. */
  queueTx(q: number, frame: Uint8Array, hdr: Partial<RxFrame> = {}, split?: number[]): void {
    const bytes = new Uint8Array(HDR + frame.length);
    encodeHeader(bytes, hdr);
    bytes.set(frame, HDR);
    const lens = split ?? [bytes.length];
    if (lens.reduce((a, b) => a + b, 0) !== bytes.length) throw new Error("bad split");
    const segs: Seg[] = [];
    let off = 0;
    for (const len of lens) {
      const addr = this.alloc(len);
      this.mem.write(addr, bytes.subarray(off, off + len));
      segs.push({ addr, len, write: false });
      off += len;
    }
    this.rings[q].add(segs);
  }

  /** Transmit chains completed on queue `q`. */
  txDone(q: number): number {
    return this.rings[q].takeUsed().length;
  }

  /** Frames received on queue `q` since the last call. */
  received(q: number): RxFrame[] {
    const used = this.rings[q].takeUsed();
    const out: RxFrame[] = [];
    for (let i = 0; i < used.length;) {
      const first = this.#read(used[i].segs, used[i].len);
      const v = new DataView(first.buffer);
      const numBuffers = v.getUint16(10, true);
      const parts = [first.subarray(HDR)];
      const lens = [used[i].len];
      for (let j = 1; j < Math.max(numBuffers, 1); j++) {
        const u = used[i + j];
        if (u === undefined) throw new Error(`frame announces ${numBuffers} buffers`);
        parts.push(this.#read(u.segs, u.len));
        lens.push(u.len);
      }
      const frame = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
      let off = 0;
      for (const p of parts) {
        frame.set(p, off);
        off += p.length;
      }
      out.push({
        flags: first[0],
        gsoType: first[1],
        hdrLen: v.getUint16(2, true),
        gsoSize: v.getUint16(4, true),
        csumStart: v.getUint16(6, true),
        csumOffset: v.getUint16(8, true),
        numBuffers,
        frame,
        lens,
      });
      i += Math.max(numBuffers, 1);
    }
    return out;
  }

  /** Raw used entries of queue `q` (for checking lengths of buffers returned empty). */
  used(q: number): { id: number; len: number }[] {
    return this.rings[q].takeUsed().map(({ id, len }) => ({ id, len }));
  }

  /**
   * Sends a control command on the control queue `q` and returns the ack
   * byte (or -1 when the device did not complete the request).
   */
  ctrl(q: number, cls: number, cmd: number, payload: Uint8Array = new Uint8Array(0)): number {
    const out = new Uint8Array(2 + payload.length);
    out[0] = cls;
    out[1] = cmd;
    out.set(payload, 2);
    const head = this.alloc(2);
    this.mem.write(head, out.subarray(0, 2));
    const segs: Seg[] = [{ addr: head, len: 2, write: false }];
    if (payload.length > 0) {
      const data = this.alloc(payload.length);
      this.mem.write(data, payload);
      segs.push({ addr: data, len: payload.length, write: false });
    }
    const ack = this.alloc(1);
    this.mem.write8(ack, 0xee);
    segs.push({ addr: ack, len: 1, write: true });
    this.rings[q].add(segs);
    this.kick(q);
    const used = this.rings[q].takeUsed();
    if (used.length !== 1) return -1;
    return this.mem.read8(ack);
  }

  #read(segs: Seg[], len: number): Uint8Array {
    const out = new Uint8Array(len);
    let off = 0;
    for (const s of segs) {
      if (!s.write || off >= len) continue;
      const n = Math.min(s.len, len - off);
      this.mem.read(s.addr, out.subarray(off, off + n));
      off += n;
    }
    return out;
  }
}

/** Writes a 12-byte virtio_net_hdr from fields. */
export function encodeHeader(bytes: Uint8Array, h: Partial<RxFrame>): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  v.setUint8(0, h.flags ?? 0);
  v.setUint8(1, h.gsoType ?? 0);
  v.setUint16(2, h.hdrLen ?? 0, true);
  v.setUint16(4, h.gsoSize ?? 0, true);
  v.setUint16(6, h.csumStart ?? 0, true);
  v.setUint16(8, h.csumOffset ?? 0, true);
  v.setUint16(10, h.numBuffers ?? 0, true);
}

/** MAC address bytes from a string. */
export function mac(s: string): Uint8Array {
  return Uint8Array.from(s.split(":").map((p) => parseInt(p, 16)));
}

/** Builds an Ethernet frame: `dst`, `src`, ethertype, payload (of `length` bytes in all when given). */
export function ethFrame(
  dst: string,
  src: string,
  type = 0x0800,
  payload: Uint8Array | number = 46,
): Uint8Array {
  const body = typeof payload === "number" ? patterned(payload) : payload;
  const f = new Uint8Array(14 + body.length);
  f.set(mac(dst), 0);
  f.set(mac(src), 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  f.set(body, 14);
  return f;
}

/** `n` bytes of a recognisable pattern. */
export function patterned(n: number, seed = 0): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

/** le32 followed by MAC addresses, for MAC_TABLE_SET. */
export function macList(...macs: string[]): Uint8Array {
  const out = new Uint8Array(4 + 6 * macs.length);
  new DataView(out.buffer).setUint32(0, macs.length, true);
  macs.forEach((m, i) => out.set(mac(m), 4 + 6 * i));
  return out;
}

/** Concatenates byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Two devices on a cable, each with its own guest memory and rings. */
export function cable(
  a: VirtioNetOptions = {},
  b: VirtioNetOptions = {},
  pair: PairOptions = {},
  ringSize = 64,
): { a: Harness; b: Harness } {
  const [ea, eb] = createPair(pair);
  return {
    a: new Harness(new VirtioNet({ mac: "52:54:00:00:00:0a", ...a, backend: ea }), { ringSize }),
    b: new Harness(new VirtioNet({ mac: "52:54:00:00:00:0b", ...b, backend: eb }), { ringSize }),
  };
}
