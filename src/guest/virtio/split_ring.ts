/**
 * The split driver virtqueue: Linux's `virtqueue_*_split` functions.
 *
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { type CoherentAllocation, Errno } from "../dma/dma_api.ts";
import type { VirtqueueMapper } from "./map_ops.ts";
import type {
  SgEntry,
  UsedBuffer,
  Virtqueue,
  VirtqueueLayout,
  VirtqueueOptions,
} from "./virtqueue.ts";
import {
  alignUp,
  AVAIL_F_NO_INTERRUPT,
  checkSgs,
  F_INDIRECT,
  F_NEXT,
  F_WRITE,
  FROM_DEVICE,
  MAPPING_ERROR,
  needEvent,
  stashFor,
  TO_DEVICE,
  unmapStash,
  USED_F_NO_NOTIFY,
  vringSize,
  writeLe64,
} from "./vring.ts";

const EMPTY: readonly SgEntry[] = Object.freeze([]);

/**
 * A split virtqueue as the Linux driver runs it: descriptor table, available
 * ring and used ring in one zeroed block (`vring_size(num, vring_align)`),
 * a free list through the descriptors, and the per-descriptor bookkeeping
 * (`desc_extra`, `desc_state`) in preallocated typed arrays.
 *
 * Create it with `createVirtqueue`.
 */
export class SplitVirtqueue<T> implements Virtqueue<T> {
  /** Queue index within the device. */
  readonly index: number;
  /** Ring size. */
  readonly size: number;
  /** Always "split". */
  readonly layout: VirtqueueLayout = "split";
  /** Name for diagnostics. */
  readonly name: string;
  /** EVENT_IDX is in use. */
  readonly eventIdx: boolean;
  /** Indirect descriptors are in use. */
  readonly indirect: boolean;
  /** IN_ORDER is in use. */
  readonly inOrder: boolean;
  /** The mapping seam. */
  readonly mapper: VirtqueueMapper;
  /** Device address of the descriptor table. */
  readonly descAddr: number;
  /** Device address of the available ring. */
  readonly driverAddr: number;
  /** Device address of the used ring. */
  readonly deviceAddr: number;
  /** Bytes of ring memory (`vring_size`). */
  readonly ringBytes: number;

  readonly #ring: CoherentAllocation;
  readonly #memory: GuestMemory;
  readonly #dv: DataView;
  readonly #desc: number;
  readonly #avail: number;
  readonly #used: number;
  readonly #usedEvent: number;
  readonly #availEvent: number;
  readonly #mask: number;
  readonly #useMapApi: boolean;
  readonly #notifyFn: (index: number) => boolean | void;
  readonly #callback: ((vq: Virtqueue<T>) => void) | null;

  readonly #tokens: (T | undefined)[];
  readonly #extraAddr: Float64Array;
  readonly #extraLen: Uint32Array;
  readonly #extraFlags: Uint16Array;
  readonly #extraNext: Uint16Array;
  readonly #descCount: Uint16Array;
  readonly #totalLen: Float64Array;
  readonly #indirTable: Float64Array;
  readonly #indirStash: (Float64Array | undefined)[];

  #freeHead = 0;
  #numFree: number;
  #numAdded = 0;
  #availIdxShadow = 0;
  #availFlagsShadow = 0;
  #lastUsedIdx = 0;
  #broken: string | null = null;
  #eventTriggered = false;
  #premapped = false;
  #destroyed = false;
  #batchId = -1;
  #batchLen = 0;
  #nextUsedHead = 0;

  /**
   * Allocates the ring (halving the size while allocation fails, if allowed)
   * and builds the queue; `null` when no ring memory is left. Models
   * `vring_create_virtqueue_split`.
   */
  static create<T>(options: VirtqueueOptions<T>): SplitVirtqueue<T> | null {
    const align = options.vringAlign ?? 64;
    if (!Number.isSafeInteger(align) || align < 2 || (align & (align - 1)) !== 0) {
      throw new RangeError(
        `Cannot create virtqueue ${options.index}: vring align ${align} is not a power of two`,
      );
    }
    const mapper = options.mapper;
    const mayReduce = options.mayReduceNum ?? true;
    const pageSize = mapper.pages.pageSize;
    let num = options.size;
    let ring: CoherentAllocation | null = null;
    for (; num > 0 && vringSize(num, align) > pageSize; num >>= 1) {
      ring = mapper.allocCoherent(vringSize(num, align));
      if (ring !== null) break;
      if (!mayReduce) return null;
    }
    if (num === 0) return null;
    // Try to get a single page. You are my only hope!
    if (ring === null) ring = mapper.allocCoherent(vringSize(num, align));
    if (ring === null) return null;
    return new SplitVirtqueue(options, num, align, ring);
  }

  /** Builds a queue over an allocated, zeroed ring of `num` entries. Use {@linkcode SplitVirtqueue.create}. */
  constructor(options: VirtqueueOptions<T>, num: number, align: number, ring: CoherentAllocation) {
    this.index = options.index;
    this.size = num;
    this.name = options.name ?? `vq${options.index}`;
    this.eventIdx = options.eventIdx === true;
    this.indirect = options.indirect === true;
    this.inOrder = options.inOrder === true;
    this.mapper = options.mapper;
    this.#memory = options.mapper.memory;
    this.#useMapApi = options.mapper.useMapApi;
    this.#notifyFn = options.notify;
    this.#callback = options.callback ?? null;
    this.#ring = ring;
    this.ringBytes = vringSize(num, align);
    const availOff = 16 * num;
    const usedOff = alignUp(16 * num + 2 * (3 + num), align);
    this.descAddr = ring.dmaAddr;
    this.driverAddr = ring.dmaAddr + availOff;
    this.deviceAddr = ring.dmaAddr + usedOff;
    const region = this.#memory.regionOf(ring.cpuAddr, this.ringBytes);
    if (region === undefined) {
      throw new RangeError(
        `Cannot create virtqueue ${options.index}: its ring at 0x${
          ring.cpuAddr.toString(16)
        } is not inside one RAM region`,
      );
    }
    this.#dv = region.data;
    this.#desc = ring.cpuAddr - region.base;
    this.#avail = this.#desc + availOff;
    this.#used = this.#desc + usedOff;
    this.#usedEvent = this.#avail + 4 + 2 * num;
    this.#availEvent = this.#used + 4 + 8 * num;
    this.#mask = num - 1;
    this.#numFree = num;
    this.#tokens = Array.from({ length: num }, () => undefined);
    this.#extraAddr = new Float64Array(num);
    this.#extraLen = new Uint32Array(num);
    this.#extraFlags = new Uint16Array(num);
    this.#extraNext = new Uint16Array(num);
    this.#descCount = new Uint16Array(num);
    this.#totalLen = new Float64Array(num);
    this.#indirTable = new Float64Array(num).fill(-1);
    this.#indirStash = Array.from({ length: num }, () => undefined);
    this.#init();
  }

  /** Puts every descriptor on the free list and sets the initial flags (`virtqueue_init`, `virtqueue_vring_init_split`). */
  #init(): void {
    const next = this.#extraNext;
    for (let i = 0; i < this.size; i++) next[i] = i + 1 === this.size ? 0 : i + 1;
    this.#freeHead = 0;
    this.#numFree = this.size;
    this.#numAdded = 0;
    this.#availIdxShadow = 0;
    this.#lastUsedIdx = 0;
    this.#eventTriggered = false;
    this.#batchId = -1;
    this.#nextUsedHead = 0;
    this.#availFlagsShadow = 0;
    // No callback? Tell the other side not to bother us.
    if (this.#callback === null) {
      this.#availFlagsShadow |= AVAIL_F_NO_INTERRUPT;
      if (!this.eventIdx) this.#dv.setUint16(this.#avail, this.#availFlagsShadow, true);
    }
  }

  /** See {@linkcode Virtqueue.numFree}. */
  get numFree(): number {
    return this.#numFree;
  }

  /** See {@linkcode Virtqueue.brokenReason}. */
  get brokenReason(): string | null {
    return this.#broken;
  }

  /** See {@linkcode Virtqueue.addSgs}. Models `virtqueue_add_sgs`. */
  addSgs(
    outSgs: readonly SgEntry[],
    inSgs: readonly SgEntry[],
    token: T,
    premapped = false,
  ): number {
    return this.#add(outSgs, inSgs, token, premapped || this.#premapped);
  }

  /** See {@linkcode Virtqueue.addOutbuf}. Models `virtqueue_add_outbuf`. */
  addOutbuf(sgs: readonly SgEntry[], token: T): number {
    return this.#add(sgs, EMPTY, token, this.#premapped);
  }

  /** See {@linkcode Virtqueue.addInbuf}. Models `virtqueue_add_inbuf`. */
  addInbuf(sgs: readonly SgEntry[], token: T): number {
    return this.#add(EMPTY, sgs, token, this.#premapped);
  }

  /** See {@linkcode Virtqueue.addOutbufPremapped}. Models `virtqueue_add_outbuf_premapped`. */
  addOutbufPremapped(sgs: readonly SgEntry[], token: T): number {
    return this.#add(sgs, EMPTY, token, true);
  }

  /** See {@linkcode Virtqueue.addInbufPremapped}. Models `virtqueue_add_inbuf_premapped`. */
  addInbufPremapped(sgs: readonly SgEntry[], token: T): number {
    return this.#add(EMPTY, sgs, token, true);
  }

  /** See {@linkcode Virtqueue.setPremapped}. Models `virtqueue_set_dma_premapped`. */
  setPremapped(): number {
    if (this.#numFree !== this.size || !this.#useMapApi) return -Errno.EINVAL;
    this.#premapped = true;
    return 0;
  }

  /** Models `virtqueue_add_split`. */
  #add(outs: readonly SgEntry[], ins: readonly SgEntry[], token: T, premapped: boolean): number {
    if (token === undefined || token === null) {
      throw new TypeError(`Cannot add a buffer to virtqueue ${this.index}: the token is ${token}`);
    }
    checkSgs(outs, "out");
    checkSgs(ins, "in");
    const nOut = outs.length;
    const total = nOut + ins.length;
    if (total === 0) {
      throw new RangeError(`Cannot add a buffer to virtqueue ${this.index}: it has no entries`);
    }
    if (this.#broken !== null) return -Errno.EIO;

    let table = -1;
    if (this.indirect && total > 1 && this.#numFree > 0) {
      table = this.mapper.heap.kmalloc(total * 16) ?? -1;
    }
    const descsUsed = table >= 0 ? 1 : total;
    if (this.#numFree < descsUsed) {
      // For historical reasons the kernel kicks here when the buffer has
      // outgoing parts, so the device services the ring as soon as it can.
      if (nOut > 0) this.#notifyFn(this.index);
      if (table >= 0) this.mapper.heap.kfree(table);
      return -Errno.ENOSPC;
    }
    if (table >= 0) return this.#addIndirect(table, outs, ins, nOut, total, token, premapped);

    const dv = this.#dv;
    const desc = this.#desc;
    const mapper = this.mapper;
    const map = this.#useMapApi && !premapped;
    const extraAddr = this.#extraAddr;
    const extraLen = this.#extraLen;
    const extraFlags = this.#extraFlags;
    const extraNext = this.#extraNext;
    const head = this.#freeHead;
    let i = head;
    let totalLen = 0;
    for (let n = 0; n < total; n++) {
      const isIn = n >= nOut;
      const sg = isIn ? ins[n - nOut] : outs[n];
      const len = sg.length;
      let addr = sg.addr;
      if (map) {
        addr = mapper.mapPage(addr, len, isIn ? FROM_DEVICE : TO_DEVICE, 0);
        if (mapper.mappingError(addr) !== 0) {
          this.#unmapChain(head, n);
          return -Errno.ENOMEM;
        }
      }
      const flags = (n + 1 < total ? F_NEXT : 0) | (isIn ? F_WRITE : 0);
      const o = desc + i * 16;
      const next = extraNext[i];
      writeLe64(dv, o, addr);
      dv.setUint32(o + 8, len, true);
      dv.setUint16(o + 12, flags, true);
      dv.setUint16(o + 14, next, true);
      extraAddr[i] = premapped ? MAPPING_ERROR : addr;
      extraLen[i] = len;
      extraFlags[i] = flags;
      totalLen += len;
      i = next;
    }
    this.#numFree -= total;
    this.#freeHead = i;
    this.#tokens[head] = token;
    this.#descCount[head] = total;
    this.#totalLen[head] = totalLen;
    this.#publish(head);
    return 0;
  }

  /** The indirect branch of `virtqueue_add_split`: one descriptor pointing at a kmalloc'd table. */
  #addIndirect(
    table: number,
    outs: readonly SgEntry[],
    ins: readonly SgEntry[],
    nOut: number,
    total: number,
    token: T,
    premapped: boolean,
  ): number {
    const mapper = this.mapper;
    const bytes = total * 16;
    const region = this.#memory.regionOf(table, bytes)!;
    const tdv = region.data;
    const base = table - region.base;
    const map = this.#useMapApi && !premapped;
    const head = this.#freeHead;
    const stash = this.#useMapApi ? stashFor(this.#indirStash, head, total) : null;
    let totalLen = 0;
    for (let n = 0; n < total; n++) {
      const isIn = n >= nOut;
      const sg = isIn ? ins[n - nOut] : outs[n];
      const len = sg.length;
      let addr = sg.addr;
      if (map) {
        addr = mapper.mapPage(addr, len, isIn ? FROM_DEVICE : TO_DEVICE, 0);
        if (mapper.mappingError(addr) !== 0) {
          unmapStash(mapper, stash, n);
          mapper.heap.kfree(table);
          return -Errno.ENOMEM;
        }
      }
      const flags = (n + 1 < total ? F_NEXT : 0) | (isIn ? F_WRITE : 0);
      const o = base + n * 16;
      writeLe64(tdv, o, addr);
      tdv.setUint32(o + 8, len, true);
      tdv.setUint16(o + 12, flags, true);
      tdv.setUint16(o + 14, n + 1, true);
      if (stash !== null) {
        stash[3 * n] = premapped ? MAPPING_ERROR : addr;
        stash[3 * n + 1] = len;
        stash[3 * n + 2] = flags;
      }
      totalLen += len;
    }
    // Now that the indirect table is filled in, map it.
    const tableAddr = mapper.mapPage(table, bytes, TO_DEVICE, 0);
    if (mapper.mappingError(tableAddr) !== 0) {
      unmapStash(mapper, stash, total);
      mapper.heap.kfree(table);
      return -Errno.ENOMEM;
    }
    const dv = this.#dv;
    const o = this.#desc + head * 16;
    const next = this.#extraNext[head];
    writeLe64(dv, o, tableAddr);
    dv.setUint32(o + 8, bytes, true);
    dv.setUint16(o + 12, F_INDIRECT, true);
    dv.setUint16(o + 14, next, true);
    this.#extraAddr[head] = tableAddr;
    this.#extraLen[head] = bytes;
    this.#extraFlags[head] = F_INDIRECT;
    this.#numFree -= 1;
    this.#freeHead = next;
    this.#tokens[head] = token;
    this.#descCount[head] = 1;
    this.#totalLen[head] = totalLen;
    this.#indirTable[head] = table;
    this.#publish(head);
    return 0;
  }

  /** Puts `head` in the available ring and publishes the new index. */
  #publish(head: number): void {
    const dv = this.#dv;
    const shadow = this.#availIdxShadow;
    dv.setUint16(this.#avail + 4 + 2 * (shadow & this.#mask), head, true);
    // Descriptors and the ring entry are written before the index (program order).
    const next = (shadow + 1) & 0xffff;
    this.#availIdxShadow = next;
    dv.setUint16(this.#avail + 2, next, true);
    // Very unlikely, but theoretically possible: kick just in case.
    if (++this.#numAdded === 0xffff) this.kick();
  }

  /** Unmaps the first `count` descriptors of the chain at `head` (the add's error path). */
  #unmapChain(head: number, count: number): void {
    let i = head;
    for (let n = 0; n < count; n++) {
      this.#unmapOne(i);
      i = this.#extraNext[i];
    }
  }

  /** Models `vring_unmap_one_split`. */
  #unmapOne(i: number): void {
    if (!this.#useMapApi) return;
    const flags = this.#extraFlags[i];
    const addr = this.#extraAddr[i];
    // Indirect tables are always the ring's own mapping; buffers only when not premapped.
    if ((flags & F_INDIRECT) === 0 && addr === MAPPING_ERROR) return;
    this.mapper.unmapPage(
      addr,
      this.#extraLen[i],
      (flags & F_WRITE) !== 0 ? FROM_DEVICE : TO_DEVICE,
      0,
    );
  }

  /** Models `detach_buf_split` (and `detach_buf_split_in_order`). */
  #detach(head: number): void {
    this.#tokens[head] = undefined;
    const useMap = this.#useMapApi;
    const extraFlags = this.#extraFlags;
    const extraNext = this.#extraNext;
    let i = head;
    for (;;) {
      if (useMap) this.#unmapOne(i);
      if ((extraFlags[i] & F_NEXT) === 0) break;
      i = extraNext[i];
      this.#numFree++;
    }
    if (!this.inOrder) {
      extraNext[i] = this.#freeHead;
      this.#freeHead = head;
    }
    this.#numFree++;
    const table = this.#indirTable[head];
    if (table >= 0) {
      if (useMap) unmapStash(this.mapper, this.#indirStash[head], this.#extraLen[head] / 16);
      this.mapper.heap.kfree(table);
      this.#indirTable[head] = -1;
    }
  }

  /** Models `virtqueue_kick_prepare_split`. */
  kickPrepare(): boolean {
    const newIdx = this.#availIdxShadow;
    const oldIdx = (newIdx - this.#numAdded) & 0xffff;
    this.#numAdded = 0;
    if (this.eventIdx) return needEvent(this.#dv.getUint16(this.#availEvent, true), newIdx, oldIdx);
    return (this.#dv.getUint16(this.#used, true) & USED_F_NO_NOTIFY) === 0;
  }

  /** Models `virtqueue_notify`. */
  notify(): boolean {
    if (this.#broken !== null) return false;
    if (this.#notifyFn(this.index) === false) {
      this.#broken = "the transport could not notify the device";
      return false;
    }
    return true;
  }

  /** Models `virtqueue_kick`. */
  kick(): boolean {
    return this.kickPrepare() ? this.notify() : true;
  }

  /** Models `vring_notification_data` for a split ring: the avail index above the queue index. */
  notificationData(): number {
    return ((this.#availIdxShadow << 16) | this.index) >>> 0;
  }

  /** Models `more_used_split` (and `more_used_split_in_order`). */
  moreUsed(): boolean {
    if (this.inOrder && this.#batchId >= 0) return true;
    return this.#lastUsedIdx !== this.#dv.getUint16(this.#used + 2, true);
  }

  /** Models `virtqueue_get_buf_ctx_split` (and its in-order variant). */
  getBuf(out?: UsedBuffer<T>): UsedBuffer<T> | null {
    if (this.#broken !== null) return null;
    const dv = this.#dv;
    const last = this.#lastUsedIdx;
    let head: number;
    let len: number;
    if (!this.inOrder) {
      if (last === dv.getUint16(this.#used + 2, true)) return null;
      // Only read the entry after seeing the index (program order).
      const e = this.#used + 4 + 8 * (last & this.#mask);
      head = dv.getUint32(e, true);
      len = dv.getUint32(e + 4, true);
      if (head >= this.size) {
        this.#badRing(`id ${head} out of range`);
        return null;
      }
    } else {
      // The device may write one used entry for a batch, naming the batch's
      // last buffer; the buffers before it completed in full.
      head = this.#nextUsedHead;
      if (this.#batchId < 0) {
        if (last === dv.getUint16(this.#used + 2, true)) return null;
        const e = this.#used + 4 + 8 * (last & this.#mask);
        const id = dv.getUint32(e, true);
        const l = dv.getUint32(e + 4, true);
        if (id >= this.size) {
          this.#badRing(`id ${id} out of range`);
          return null;
        }
        if (id !== head) {
          this.#batchId = id;
          this.#batchLen = l;
          len = this.#totalLen[head];
        } else {
          len = l;
        }
      } else if (head === this.#batchId) {
        len = this.#batchLen;
        this.#batchId = -1;
      } else {
        len = this.#totalLen[head];
      }
    }
    const token = this.#tokens[head];
    if (token === undefined) {
      this.#badRing(`id ${head} is not a head!`);
      return null;
    }
    if (this.inOrder) this.#nextUsedHead = (head + this.#descCount[head]) & this.#mask;
    this.#detach(head);
    const next = (last + 1) & 0xffff;
    this.#lastUsedIdx = next;
    // If we expect an interrupt for the next entry, tell the device by
    // writing the event index.
    if ((this.#availFlagsShadow & AVAIL_F_NO_INTERRUPT) === 0) {
      dv.setUint16(this.#usedEvent, next, true);
    }
    if (out !== undefined) {
      out.token = token;
      out.len = len;
      return out;
    }
    return { token, len };
  }

  /** Models `vring_interrupt`. */
  interrupt(): boolean {
    if (!this.moreUsed()) return false;
    if (this.#broken !== null) return true;
    // Just a hint for performance: a device that raised an event will not raise another.
    if (this.eventIdx) this.#eventTriggered = true;
    if (this.#callback !== null) this.#callback(this);
    return true;
  }

  /** Models `virtqueue_disable_cb_split`. */
  disableCb(): void {
    if ((this.#availFlagsShadow & AVAIL_F_NO_INTERRUPT) !== 0) return;
    this.#availFlagsShadow |= AVAIL_F_NO_INTERRUPT;
    // A device that triggered an event already will not trigger another.
    if (this.#eventTriggered) return;
    // With event idx the kernel writes 0 to used_event ("a hack").
    if (this.eventIdx) this.#dv.setUint16(this.#usedEvent, 0, true);
    else this.#dv.setUint16(this.#avail, this.#availFlagsShadow, true);
  }

  /** Models `virtqueue_enable_cb`. */
  enableCb(): boolean {
    return !this.poll(this.enableCbPrepare());
  }

  /** Models `virtqueue_enable_cb_prepare_split`. */
  enableCbPrepare(): number {
    this.#eventTriggered = false;
    if ((this.#availFlagsShadow & AVAIL_F_NO_INTERRUPT) !== 0) {
      this.#availFlagsShadow &= ~AVAIL_F_NO_INTERRUPT;
      if (!this.eventIdx) this.#dv.setUint16(this.#avail, this.#availFlagsShadow, true);
    }
    const last = this.#lastUsedIdx;
    this.#dv.setUint16(this.#usedEvent, last, true);
    return last;
  }

  /** Models `virtqueue_poll_split`. */
  poll(opaque: number): boolean {
    return (opaque & 0xffff) !== this.#dv.getUint16(this.#used + 2, true);
  }

  /** Models `virtqueue_enable_cb_delayed_split`. */
  enableCbDelayed(): boolean {
    this.#eventTriggered = false;
    const dv = this.#dv;
    if ((this.#availFlagsShadow & AVAIL_F_NO_INTERRUPT) !== 0) {
      this.#availFlagsShadow &= ~AVAIL_F_NO_INTERRUPT;
      if (!this.eventIdx) dv.setUint16(this.#avail, this.#availFlagsShadow, true);
    }
    const last = this.#lastUsedIdx;
    // 3/4 of the outstanding buffers, as the kernel does (its own comment calls the value untuned).
    const bufs = Math.floor((((this.#availIdxShadow - last) & 0xffff) * 3) / 4);
    dv.setUint16(this.#usedEvent, (last + bufs) & 0xffff, true);
    return ((dv.getUint16(this.#used + 2, true) - last) & 0xffff) <= bufs;
  }

  /** Models `virtqueue_detach_unused_buf_split`. */
  detachUnusedBuf(): T | null {
    const tokens = this.#tokens;
    for (let i = 0; i < this.size; i++) {
      const token = tokens[i];
      if (token === undefined) continue;
      this.#detach(i);
      this.#availIdxShadow = (this.#availIdxShadow - 1) & 0xffff;
      this.#dv.setUint16(this.#avail + 2, this.#availIdxShadow, true);
      if (this.#numFree === this.size) {
        this.#nextUsedHead = this.#freeHead;
        this.#batchId = -1;
      }
      return token;
    }
    return null;
  }

  /** Models the ring part of `virtqueue_reset` (`virtqueue_reset_split`). */
  reset(recycle?: (token: T) => void): void {
    for (let token = this.detachUnusedBuf(); token !== null; token = this.detachUnusedBuf()) {
      recycle?.(token);
    }
    this.#memory.fill(this.#ring.cpuAddr, this.ringBytes, 0);
    this.#init();
  }

  /** Models `virtqueue_is_broken`. */
  isBroken(): boolean {
    return this.#broken !== null;
  }

  /** Models `__virtqueue_break`. */
  markBroken(reason = "the virtqueue was broken by its driver"): void {
    this.#broken = reason;
  }

  /** Models `__virtqueue_unbreak`. */
  unbreak(): void {
    if (!this.#destroyed) this.#broken = null;
  }

  /** Models `vring_del_virtqueue`. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#broken = "the virtqueue was deleted";
    for (let i = 0; i < this.size; i++) {
      const table = this.#indirTable[i];
      if (table >= 0) {
        this.mapper.heap.kfree(table);
        this.#indirTable[i] = -1;
      }
    }
    this.mapper.freeCoherent(this.ringBytes, this.#ring);
  }

  /** Models `BAD_RING`: the device corrupted the ring; the queue stops. */
  #badRing(message: string): void {
    this.#broken = `${this.name}: ${message}`;
  }
}
