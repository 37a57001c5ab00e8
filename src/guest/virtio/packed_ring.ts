/**
 * The packed driver virtqueue: Linux's `virtqueue_*_packed` functions.
 *
 * @module
 */
import type { GuestMemory, MemoryRegion } from "../../memory/guest_memory.ts";
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
  checkSgs,
  EVENT_FLAG_DESC,
  EVENT_FLAG_DISABLE,
  EVENT_FLAG_ENABLE,
  F_AVAIL,
  F_INDIRECT,
  F_NEXT,
  F_USED,
  F_WRITE,
  FROM_DEVICE,
  MAPPING_ERROR,
  needEvent,
  stashFor,
  TO_DEVICE,
  unmapStash,
  writeLe64,
} from "./vring.ts";

const EMPTY: readonly SgEntry[] = Object.freeze([]);
/** Size of an event suppression structure. */
const EVENT_BYTES = 4;

/** True when a descriptor with `flags` is used for the driver's `wrap` counter (`is_used_desc_packed`). */
function isUsed(flags: number, wrap: number): boolean {
  const avail = (flags >>> 7) & 1;
  const used = (flags >>> 15) & 1;
  return avail === used && used === wrap;
}

function regionFor(memory: GuestMemory, addr: number, length: number, index: number): MemoryRegion {
  const region = memory.regionOf(addr, length);
  if (region === undefined) {
    throw new RangeError(
      `Cannot create virtqueue ${index}: ring memory at 0x${
        addr.toString(16)
      } is not inside one RAM region`,
    );
  }
  return region;
}

/**
 * A packed virtqueue as the Linux driver runs it: a descriptor ring and two
 * 4-byte event suppression areas, each from the coherent allocator, buffer ids
 * from a free list (or equal to the head slot with IN_ORDER), and the
 * per-buffer bookkeeping in preallocated typed arrays.
 *
 * Create it with `createVirtqueue`.
 */
export class PackedVirtqueue<T> implements Virtqueue<T> {
  /** Queue index within the device. */
  readonly index: number;
  /** Ring size. */
  readonly size: number;
  /** Always "packed". */
  readonly layout: VirtqueueLayout = "packed";
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
  /** Device address of the descriptor ring. */
  readonly descAddr: number;
  /** Device address of the driver event suppression area. */
  readonly driverAddr: number;
  /** Device address of the device event suppression area. */
  readonly deviceAddr: number;

  readonly #rings: readonly [CoherentAllocation, CoherentAllocation, CoherentAllocation];
  readonly #memory: GuestMemory;
  readonly #dv: DataView;
  readonly #desc: number;
  readonly #drvDv: DataView;
  readonly #drv: number;
  readonly #devDv: DataView;
  readonly #dev: number;
  readonly #useMapApi: boolean;
  readonly #notifyFn: (index: number) => boolean | void;
  readonly #callback: ((vq: Virtqueue<T>) => void) | null;

  // Per buffer id.
  readonly #tokens: (T | undefined)[];
  readonly #stateNum: Uint16Array;
  readonly #stateLast: Uint16Array;
  readonly #totalLen: Float64Array;
  readonly #indirTable: Float64Array;
  readonly #indirStash: (Float64Array | undefined)[];
  // Per descriptor (`desc_extra`), linked through the id free list; per slot with IN_ORDER.
  readonly #extraAddr: Float64Array;
  readonly #extraLen: Uint32Array;
  readonly #extraFlags: Uint16Array;
  readonly #extraNext: Uint16Array;

  #nextAvailIdx = 0;
  #availWrapCounter = 1;
  #availUsedFlags = F_AVAIL;
  #lastUsedIdx = 0x8000;
  #eventFlagsShadow = EVENT_FLAG_ENABLE;
  #freeHead = 0;
  #numFree: number;
  #numAdded = 0;
  #broken: string | null = null;
  #eventTriggered = false;
  #premapped = false;
  #destroyed = false;
  #batchId = -1;
  #batchLen = 0;

  /**
   * Allocates the descriptor ring and both event areas and builds the queue;
   * `null` when memory runs out. Models `vring_create_virtqueue_packed`.
   */
  static create<T>(options: VirtqueueOptions<T>): PackedVirtqueue<T> | null {
    const mapper = options.mapper;
    const ring = mapper.allocCoherent(options.size * 16);
    if (ring === null) return null;
    const driver = mapper.allocCoherent(EVENT_BYTES);
    if (driver === null) {
      mapper.freeCoherent(options.size * 16, ring);
      return null;
    }
    const device = mapper.allocCoherent(EVENT_BYTES);
    if (device === null) {
      mapper.freeCoherent(EVENT_BYTES, driver);
      mapper.freeCoherent(options.size * 16, ring);
      return null;
    }
    return new PackedVirtqueue(options, ring, driver, device);
  }

  /** Builds a queue over allocated, zeroed memory. Use {@linkcode PackedVirtqueue.create}. */
  constructor(
    options: VirtqueueOptions<T>,
    ring: CoherentAllocation,
    driver: CoherentAllocation,
    device: CoherentAllocation,
  ) {
    const num = options.size;
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
    this.#rings = [ring, driver, device];
    this.descAddr = ring.dmaAddr;
    this.driverAddr = driver.dmaAddr;
    this.deviceAddr = device.dmaAddr;
    const r = regionFor(this.#memory, ring.cpuAddr, num * 16, this.index);
    this.#dv = r.data;
    this.#desc = ring.cpuAddr - r.base;
    const d = regionFor(this.#memory, driver.cpuAddr, EVENT_BYTES, this.index);
    this.#drvDv = d.data;
    this.#drv = driver.cpuAddr - d.base;
    const e = regionFor(this.#memory, device.cpuAddr, EVENT_BYTES, this.index);
    this.#devDv = e.data;
    this.#dev = device.cpuAddr - e.base;
    this.#numFree = num;
    this.#tokens = Array.from({ length: num }, () => undefined);
    this.#stateNum = new Uint16Array(num);
    this.#stateLast = new Uint16Array(num);
    this.#totalLen = new Float64Array(num);
    this.#indirTable = new Float64Array(num).fill(-1);
    this.#indirStash = Array.from({ length: num }, () => undefined);
    this.#extraAddr = new Float64Array(num);
    this.#extraLen = new Uint32Array(num);
    this.#extraFlags = new Uint16Array(num);
    this.#extraNext = new Uint16Array(num);
    this.#init();
  }

  /** The initial state (`virtqueue_init`, `virtqueue_vring_init_packed`). */
  #init(): void {
    const next = this.#extraNext;
    for (let i = 0; i < this.size; i++) next[i] = i + 1 === this.size ? 0 : i + 1;
    this.#freeHead = 0;
    this.#numFree = this.size;
    this.#numAdded = 0;
    this.#nextAvailIdx = 0;
    this.#availWrapCounter = 1;
    this.#availUsedFlags = F_AVAIL;
    this.#lastUsedIdx = 0x8000;
    this.#eventTriggered = false;
    this.#batchId = -1;
    this.#eventFlagsShadow = EVENT_FLAG_ENABLE;
    // No callback? Tell the other side not to bother us.
    if (this.#callback === null) {
      this.#eventFlagsShadow = EVENT_FLAG_DISABLE;
      this.#drvDv.setUint16(this.#drv + 2, this.#eventFlagsShadow, true);
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

  /** Models `virtqueue_add_packed` (and `virtqueue_add_packed_in_order`). */
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

    if (this.indirect && total > 1 && this.#numFree > 0) {
      const err = this.#addIndirect(outs, ins, nOut, total, token, premapped);
      if (err !== -Errno.ENOMEM) return err;
      // Fall back on direct descriptors.
    }
    if (this.#numFree < total) return -Errno.ENOSPC;

    const dv = this.#dv;
    const desc = this.#desc;
    const mapper = this.mapper;
    const map = this.#useMapApi && !premapped;
    const inOrder = this.inOrder;
    const size = this.size;
    const extraAddr = this.#extraAddr;
    const extraLen = this.#extraLen;
    const extraFlags = this.#extraFlags;
    const extraNext = this.#extraNext;
    const head = this.#nextAvailIdx;
    const savedFlags = this.#availUsedFlags;
    const savedWrap = this.#availWrapCounter;
    const id = inOrder ? head : this.#freeHead;
    let curr = id;
    let prev = id;
    let i = head;
    let headFlags = 0;
    let totalLen = 0;
    for (let n = 0; n < total; n++) {
      const isIn = n >= nOut;
      const sg = isIn ? ins[n - nOut] : outs[n];
      const len = sg.length;
      let addr = sg.addr;
      if (map) {
        addr = mapper.mapPage(addr, len, isIn ? FROM_DEVICE : TO_DEVICE, 0);
        if (mapper.mappingError(addr) !== 0) {
          this.#availUsedFlags = savedFlags;
          this.#availWrapCounter = savedWrap;
          this.#unmapChain(id, n);
          this.#withdraw(head, n);
          return -Errno.EIO;
        }
      }
      const flags = this.#availUsedFlags | (n + 1 < total ? F_NEXT : 0) | (isIn ? F_WRITE : 0);
      const o = desc + i * 16;
      writeLe64(dv, o, addr);
      dv.setUint32(o + 8, len, true);
      dv.setUint16(o + 12, id, true);
      // The head's flags are written last, making the whole chain available at once.
      if (i === head) headFlags = flags;
      else dv.setUint16(o + 14, flags, true);
      extraAddr[curr] = premapped ? MAPPING_ERROR : addr;
      extraLen[curr] = len;
      extraFlags[curr] = flags;
      totalLen += len;
      prev = curr;
      curr = inOrder ? (curr + 1 === size ? 0 : curr + 1) : extraNext[curr];
      if (++i >= size) {
        i = 0;
        this.#availUsedFlags ^= F_AVAIL | F_USED;
        this.#availWrapCounter ^= 1;
      }
    }
    this.#numFree -= total;
    this.#nextAvailIdx = i;
    if (!inOrder) this.#freeHead = curr;
    this.#tokens[id] = token;
    this.#stateNum[id] = total;
    this.#stateLast[id] = prev;
    this.#totalLen[id] = totalLen;
    dv.setUint16(desc + head * 16 + 14, headFlags, true);
    this.#numAdded += total;
    return 0;
  }

  /** Models `virtqueue_add_indirect_packed`: one ring slot pointing at a kmalloc'd table. */
  #addIndirect(
    outs: readonly SgEntry[],
    ins: readonly SgEntry[],
    nOut: number,
    total: number,
    token: T,
    premapped: boolean,
  ): number {
    const mapper = this.mapper;
    const bytes = total * 16;
    const table = mapper.heap.kmalloc(bytes);
    if (table === null) return -Errno.ENOMEM;
    if (this.#numFree < 1) {
      mapper.heap.kfree(table);
      return -Errno.ENOSPC;
    }
    const region = this.#memory.regionOf(table, bytes)!;
    const tdv = region.data;
    const base = table - region.base;
    const map = this.#useMapApi && !premapped;
    const head = this.#nextAvailIdx;
    const id = this.inOrder ? head : this.#freeHead;
    const stash = this.#useMapApi ? stashFor(this.#indirStash, id, total) : null;
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
      const flags = isIn ? F_WRITE : 0;
      const o = base + n * 16;
      writeLe64(tdv, o, addr);
      tdv.setUint32(o + 8, len, true);
      tdv.setUint16(o + 12, 0, true);
      tdv.setUint16(o + 14, flags, true);
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
    const flags = F_INDIRECT | this.#availUsedFlags;
    writeLe64(dv, o, tableAddr);
    dv.setUint32(o + 8, bytes, true);
    dv.setUint16(o + 12, id, true);
    this.#extraAddr[id] = tableAddr;
    this.#extraLen[id] = bytes;
    this.#extraFlags[id] = flags;
    // Make the descriptor available after all its data has been written.
    dv.setUint16(o + 14, flags, true);
    this.#numFree -= 1;
    let n = head + 1;
    if (n >= this.size) {
      n = 0;
      this.#availWrapCounter ^= 1;
      this.#availUsedFlags ^= F_AVAIL | F_USED;
    }
    this.#nextAvailIdx = n;
    if (!this.inOrder) this.#freeHead = this.#extraNext[id];
    this.#tokens[id] = token;
    this.#stateNum[id] = 1;
    this.#stateLast[id] = id;
    this.#totalLen[id] = totalLen;
    this.#indirTable[id] = table;
    this.#numAdded += 1;
    return 0;
  }

  /**
   * Returns the `count` slots from `head` that a failed add wrote to the state
   * the previous lap left them in (used, with the other wrap counter), so a
   * device reading ahead never sees them as available. The kernel leaves the
   * non-head flags of a failed chain in place; a later one-descriptor add then
   * exposes a phantom chain. The head's flags were never written.
   */
  #withdraw(head: number, count: number): void {
    const dv = this.#dv;
    let slot = head;
    let wrap = this.#availWrapCounter;
    for (let k = 0; k < count; k++) {
      if (k > 0) dv.setUint16(this.#desc + slot * 16 + 14, wrap !== 0 ? 0 : F_AVAIL | F_USED, true);
      if (++slot === this.size) {
        slot = 0;
        wrap ^= 1;
      }
    }
  }

  /** Next `desc_extra` entry after `curr` in a buffer. */
  #nextExtra(curr: number): number {
    if (this.inOrder) return curr + 1 === this.size ? 0 : curr + 1;
    return this.#extraNext[curr];
  }

  /** Unmaps the first `count` descriptors of buffer `id` (the add's error path). */
  #unmapChain(id: number, count: number): void {
    let curr = id;
    for (let n = 0; n < count; n++) {
      this.#unmapExtra(curr);
      curr = this.#nextExtra(curr);
    }
  }

  /** Models `vring_unmap_extra_packed`. */
  #unmapExtra(curr: number): void {
    if (!this.#useMapApi) return;
    const flags = this.#extraFlags[curr];
    const addr = this.#extraAddr[curr];
    if ((flags & F_INDIRECT) === 0 && addr === MAPPING_ERROR) return;
    this.mapper.unmapPage(
      addr,
      this.#extraLen[curr],
      (flags & F_WRITE) !== 0 ? FROM_DEVICE : TO_DEVICE,
      0,
    );
  }

  /** Models `detach_buf_packed` (and its in-order variant). */
  #detach(id: number): void {
    this.#tokens[id] = undefined;
    const num = this.#stateNum[id];
    if (!this.inOrder) {
      this.#extraNext[this.#stateLast[id]] = this.#freeHead;
      this.#freeHead = id;
    }
    this.#numFree += num;
    if (this.#useMapApi) {
      let curr = id;
      for (let k = 0; k < num; k++) {
        this.#unmapExtra(curr);
        curr = this.#nextExtra(curr);
      }
    }
    const table = this.#indirTable[id];
    if (table >= 0) {
      if (this.#useMapApi) unmapStash(this.mapper, this.#indirStash[id], this.#extraLen[id] / 16);
      this.mapper.heap.kfree(table);
      this.#indirTable[id] = -1;
    }
  }

  /** Models `virtqueue_kick_prepare_packed`. */
  kickPrepare(): boolean {
    const newIdx = this.#nextAvailIdx;
    const oldIdx = newIdx - this.#numAdded;
    this.#numAdded = 0;
    const dv = this.#devDv;
    const flags = dv.getUint16(this.#dev + 2, true);
    if (flags !== EVENT_FLAG_DESC) return flags !== EVENT_FLAG_DISABLE;
    const offWrap = dv.getUint16(this.#dev, true);
    let eventIdx = offWrap & 0x7fff;
    if (offWrap >>> 15 !== this.#availWrapCounter) eventIdx -= this.size;
    return needEvent(eventIdx, newIdx, oldIdx);
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

  /** Models `vring_notification_data` for a packed ring: next offset and wrap counter above the index. */
  notificationData(): number {
    const next = this.#nextAvailIdx | (this.#availWrapCounter << 15);
    return ((next << 16) | this.index) >>> 0;
  }

  /** Models `more_used_packed` (and `more_used_packed_in_order`). */
  moreUsed(): boolean {
    if (this.inOrder && this.#batchId >= 0) return true;
    return this.poll(this.#lastUsedIdx);
  }

  /** Models `virtqueue_get_buf_ctx_packed` (and its in-order variant). */
  getBuf(out?: UsedBuffer<T>): UsedBuffer<T> | null {
    if (this.#broken !== null) return null;
    const dv = this.#dv;
    const lastUsedIdx = this.#lastUsedIdx;
    let lastUsed = lastUsedIdx & 0x7fff;
    let wrap = lastUsedIdx >>> 15;
    let id: number;
    let len: number;
    if (!this.inOrder) {
      const o = this.#desc + lastUsed * 16;
      if (!isUsed(dv.getUint16(o + 14, true), wrap)) return null;
      // Only read the descriptor after seeing its flags (program order).
      id = dv.getUint16(o + 12, true);
      len = dv.getUint32(o + 8, true);
      if (id >= this.size) {
        this.#badRing(`id ${id} out of range`);
        return null;
      }
    } else {
      // The device may write one used descriptor for a batch, naming the
      // batch's last buffer; the buffers before it completed in full.
      id = lastUsed;
      if (this.#batchId < 0) {
        const o = this.#desc + lastUsed * 16;
        if (!isUsed(dv.getUint16(o + 14, true), wrap)) return null;
        const usedId = dv.getUint16(o + 12, true);
        const l = dv.getUint32(o + 8, true);
        if (usedId >= this.size) {
          this.#badRing(`id ${usedId} out of range`);
          return null;
        }
        if (usedId !== lastUsed) {
          this.#batchId = usedId;
          this.#batchLen = l;
          len = this.#totalLen[id];
        } else {
          len = l;
        }
      } else if (id === this.#batchId) {
        len = this.#batchLen;
        this.#batchId = -1;
      } else {
        len = this.#totalLen[id];
      }
    }
    const token = this.#tokens[id];
    if (token === undefined) {
      this.#badRing(`id ${id} is not a head!`);
      return null;
    }
    this.#detach(id);
    lastUsed += this.#stateNum[id];
    if (lastUsed >= this.size) {
      lastUsed -= this.size;
      wrap ^= 1;
    }
    const next = lastUsed | (wrap << 15);
    this.#lastUsedIdx = next;
    // If we expect an interrupt for the next entry, tell the device by
    // writing the event index.
    if (this.#eventFlagsShadow === EVENT_FLAG_DESC) this.#drvDv.setUint16(this.#drv, next, true);
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

  /** Models `virtqueue_disable_cb_packed`. */
  disableCb(): void {
    if (this.#eventFlagsShadow === EVENT_FLAG_DISABLE) return;
    this.#eventFlagsShadow = EVENT_FLAG_DISABLE;
    // A device that triggered an event already will not trigger another.
    if (this.#eventTriggered) return;
    this.#drvDv.setUint16(this.#drv + 2, EVENT_FLAG_DISABLE, true);
  }

  /** Models `virtqueue_enable_cb`. */
  enableCb(): boolean {
    return !this.poll(this.enableCbPrepare());
  }

  /** Models `virtqueue_enable_cb_prepare_packed`. */
  enableCbPrepare(): number {
    this.#eventTriggered = false;
    const dv = this.#drvDv;
    // With event idx, ask to hear about the next used descriptor.
    if (this.eventIdx) dv.setUint16(this.#drv, this.#lastUsedIdx, true);
    if (this.#eventFlagsShadow === EVENT_FLAG_DISABLE) {
      this.#eventFlagsShadow = this.eventIdx ? EVENT_FLAG_DESC : EVENT_FLAG_ENABLE;
      dv.setUint16(this.#drv + 2, this.#eventFlagsShadow, true);
    }
    return this.#lastUsedIdx;
  }

  /** Models `virtqueue_poll_packed`: `opaque` is an `off_wrap` position. */
  poll(opaque: number): boolean {
    const offset = opaque & 0x7fff;
    if (offset >= this.size) return false;
    return isUsed(this.#dv.getUint16(this.#desc + offset * 16 + 14, true), (opaque >>> 15) & 1);
  }

  /** Models `virtqueue_enable_cb_delayed_packed`. */
  enableCbDelayed(): boolean {
    this.#eventTriggered = false;
    const dv = this.#drvDv;
    if (this.eventIdx) {
      // 3/4 of the outstanding buffers, as the kernel does (its own comment calls the value untuned).
      const bufs = Math.floor(((this.size - this.#numFree) * 3) / 4);
      let wrap = this.#lastUsedIdx >>> 15;
      let usedIdx = (this.#lastUsedIdx & 0x7fff) + bufs;
      if (usedIdx >= this.size) {
        usedIdx -= this.size;
        wrap ^= 1;
      }
      dv.setUint16(this.#drv, usedIdx | (wrap << 15), true);
    }
    if (this.#eventFlagsShadow === EVENT_FLAG_DISABLE) {
      this.#eventFlagsShadow = this.eventIdx ? EVENT_FLAG_DESC : EVENT_FLAG_ENABLE;
      dv.setUint16(this.#drv + 2, this.#eventFlagsShadow, true);
    }
    return !this.poll(this.#lastUsedIdx);
  }

  /** Models `virtqueue_detach_unused_buf_packed`. */
  detachUnusedBuf(): T | null {
    const tokens = this.#tokens;
    for (let i = 0; i < this.size; i++) {
      const token = tokens[i];
      if (token === undefined) continue;
      this.#detach(i);
      if (this.#numFree === this.size) this.#batchId = -1;
      return token;
    }
    return null;
  }

  /** Models the ring part of `virtqueue_reset` (`virtqueue_reset_packed`). */
  reset(recycle?: (token: T) => void): void {
    for (let token = this.detachUnusedBuf(); token !== null; token = this.detachUnusedBuf()) {
      recycle?.(token);
    }
    const [ring, driver, device] = this.#rings;
    this.#memory.fill(ring.cpuAddr, this.size * 16, 0);
    this.#memory.fill(driver.cpuAddr, EVENT_BYTES, 0);
    this.#memory.fill(device.cpuAddr, EVENT_BYTES, 0);
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
    const [ring, driver, device] = this.#rings;
    this.mapper.freeCoherent(this.size * 16, ring);
    this.mapper.freeCoherent(EVENT_BYTES, driver);
    this.mapper.freeCoherent(EVENT_BYTES, device);
  }

  /** Models `BAD_RING`: the device corrupted the ring; the queue stops. */
  #badRing(message: string): void {
    this.#broken = `${this.name}: ${message}`;
  }
}
