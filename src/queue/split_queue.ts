import { DmaAccess } from "../dma/dma_access.ts";
import type { DmaSpace } from "../dma/dma_space.ts";
import { hex } from "../guest_fault.ts";
import type { DescriptorChain } from "./descriptor_chain.ts";
import type { DeviceQueue, QueueConfig } from "./device_queue.ts";
import { vringNeedEvent } from "./event_idx.ts";
import {
  DESC_LEN,
  descTableSize,
  SPLIT_AVAIL_FLAGS,
  SPLIT_AVAIL_IDX,
  SPLIT_AVAIL_RING,
  SPLIT_DESC_FLAGS,
  SPLIT_DESC_NEXT,
  SPLIT_USED_FLAGS,
  SPLIT_USED_IDX,
  SPLIT_USED_RING,
  splitAvailEventOffset,
  splitAvailSize,
  splitUsedEventOffset,
  splitUsedSize,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_DESC_SIZE,
  VRING_USED_F_NO_NOTIFY,
} from "./ring_layout.ts";
import { checkQueueConfig, EMPTY_VIEW, IndirectTable, overlaps, ringView } from "./ring_view.ts";
import { VirtqueueError, type VirtqueueErrorKind } from "./virtqueue_error.ts";

const TWO_32 = 0x1_0000_0000;
const LIMIT = 2 ** 53;

/**
 * The device side of a split virtqueue (virtio §2.7): descriptor table,
 * available ring and used ring at three driver-chosen addresses.
 *
 * The three areas are translated once through the {@linkcode DmaSpace} into
 * cached views and translated again only after the space reports an
 * invalidation, so {@linkcode SplitQueue.pop}, {@linkcode SplitQueue.push} and
 * {@linkcode SplitQueue.publishUsed} allocate nothing. Every rule a driver can
 * break is checked where the value is read and reported as
 * {@linkcode VirtqueueError}; unreachable memory surfaces as `DmaFault`.
 *
 * @example
 * ```ts
 * import { DescriptorChain, DirectDmaSpace, GuestMemory, SplitQueue } from "@vireo/vireo";
 * const mem = new GuestMemory([{ base: 0, size: 0x10000 }]);
 * const dma = new DirectDmaSpace(mem);
 * const q = new SplitQueue({
 *   index: 0, size: 4, descAddr: 0x1000, driverAddr: 0x2000, deviceAddr: 0x3000,
 *   eventIdx: false, indirect: false, inOrder: false,
 * }, dma);
 * // The driver puts one 64-byte device-writable buffer in descriptor 0.
 * mem.write64(0x1000, 0x8000);
 * mem.write32(0x1008, 64);
 * mem.write16(0x100c, 2); // VRING_DESC_F_WRITE
 * mem.write16(0x2004, 0); // avail.ring[0] = head 0
 * mem.write16(0x2002, 1); // avail.idx = 1
 * const chain = new DescriptorChain(dma, 16);
 * if (q.pop(chain)) {
 *   chain.writer.writeU32(0xcafe);
 *   q.push(chain.token, chain.writer.written);
 * }
 * console.log(q.publishUsed(), mem.read16(0x3002)); // true 1
 * ```
 */
export class SplitQueue implements DeviceQueue {
  /** Queue index within the device. */
  readonly index: number;
  /** Ring size (a power of two). */
  readonly size: number;
  /** Always false: this is the split layout. */
  readonly packed: boolean = false;
  /** Device address of the descriptor table. */
  readonly descAddr: number;
  /** Device address of the available ring. */
  readonly availAddr: number;
  /** Device address of the used ring. */
  readonly usedAddr: number;
  /** VIRTIO_RING_F_EVENT_IDX was negotiated. */
  readonly eventIdx: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC was negotiated. */
  readonly indirect: boolean;
  /** VIRTIO_F_IN_ORDER was negotiated (buffers must be pushed in pop order). */
  readonly inOrder: boolean;

  readonly #dma: DmaSpace;
  readonly #mask: number;
  readonly #usedEventOff: number;
  readonly #availEventOff: number;
  /** 1 for each head popped and not yet pushed. */
  readonly #headInFlight: Uint8Array;
  /** With IN_ORDER: the heads in flight, oldest first (a ring of `size` entries). */
  readonly #order: Uint16Array;
  #orderHead = 0;
  #orderTail = 0;
  readonly #table: IndirectTable;
  #unlisten: (() => void) | null;
  #detached = false;
  #stale = true;
  #desc: DataView = EMPTY_VIEW;
  #avail: DataView = EMPTY_VIEW;
  #used: DataView = EMPTY_VIEW;

  #lastAvail = 0;
  #shadowAvail = 0;
  #usedIdx = 0;
  #publishedUsed = 0;
  #inFlight = 0;
  #notify = true;

  /**
   * Creates the queue without touching guest memory (the rings are translated
   * on first use), so a transport can create one on every enable or reset.
   *
   * @param config where the rings are and what was negotiated (copied)
   * @param dma the device's view of memory
   * @throws {RangeError} when `config.size` is not a power of two in 1..32768
   *   (transports check the driver's `queue_size` first) or `config.index` is not
   *   a non-negative integer
   */
  constructor(config: QueueConfig, dma: DmaSpace) {
    checkQueueConfig(config, false);
    this.index = config.index;
    this.size = config.size;
    this.descAddr = config.descAddr;
    this.availAddr = config.driverAddr;
    this.usedAddr = config.deviceAddr;
    this.eventIdx = !!config.eventIdx;
    this.indirect = !!config.indirect;
    this.inOrder = !!config.inOrder;
    this.#dma = dma;
    this.#mask = config.size - 1;
    this.#usedEventOff = splitUsedEventOffset(config.size);
    this.#availEventOff = splitAvailEventOffset(config.size);
    this.#headInFlight = new Uint8Array(config.size);
    this.#order = new Uint16Array(this.inOrder ? config.size : 0);
    this.#table = new IndirectTable(dma);
    this.#unlisten = dma.addInvalidationListener((address, length) => {
      if (
        overlaps(address, length, this.descAddr, descTableSize(this.size)) ||
        overlaps(address, length, this.availAddr, splitAvailSize(this.size, this.eventIdx)) ||
        overlaps(address, length, this.usedAddr, splitUsedSize(this.size, this.eventIdx))
      ) {
        this.#stale = true;
      }
    });
  }

  /** Chains popped but not yet pushed. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** The device's free-running (16-bit) index of the next available entry to pop. */
  get lastAvailIdx(): number {
    return this.#lastAvail;
  }

  /** The device's free-running (16-bit) used index, including pushed but unpublished entries. */
  get usedIdx(): number {
    return this.#usedIdx;
  }

  /** See {@linkcode DeviceQueue.pop}. @throws {VirtqueueError} @throws {DmaFault} */
  pop(chain: DescriptorChain): boolean {
    if (this.#stale) this.#refresh();
    const last = this.#lastAvail;
    if (last === this.#shadowAvail) {
      const availIdx = this.#avail.getUint16(SPLIT_AVAIL_IDX, true);
      if (availIdx === last) return false;
      if (((availIdx - last) & 0xffff) > this.size) {
        throw this.#error(
          "avail-index-jump",
          `driver moved avail idx from ${last} to ${availIdx}, more than the queue size ${this.size} ahead`,
        );
      }
      this.#shadowAvail = availIdx;
    }
    const head = this.#avail.getUint16(SPLIT_AVAIL_RING + 2 * (last & this.#mask), true);
    if (head >= this.size) {
      throw this.#error("bad-head", `avail ring entry ${last} names head ${head}, out of range`);
    }
    if (this.#headInFlight[head] !== 0) {
      throw this.#error("bad-head", `head ${head} is made available again while still in flight`);
    }
    chain.clear(this.#dma);
    chain.ringSlots = this.#walk(chain, head);
    chain.token = head;
    chain.head = head;
    this.#headInFlight[head] = 1;
    this.#inFlight++;
    if (this.inOrder) {
      this.#order[this.#orderTail] = head;
      this.#orderTail = (this.#orderTail + 1) & this.#mask;
    }
    const next = (last + 1) & 0xffff;
    this.#lastAvail = next;
    if (this.eventIdx && this.#notify) this.#used.setUint16(this.#availEventOff, next, true);
    return true;
  }

  /**
   * See {@linkcode DeviceQueue.push}: writes the used element `{id, len}`; the
   * driver sees it after {@linkcode SplitQueue.publishUsed}.
   *
   * @throws {RangeError} when `token` is not a chain in flight, `written` is not a
   *   u32, or IN_ORDER was negotiated and `token` is not the oldest chain in flight
   */
  push(token: number, written: number): void {
    if (this.#stale) this.#refresh();
    if (!(token >= 0 && token < this.size && this.#headInFlight[token] === 1)) {
      throw new RangeError(`Cannot push token ${token} on virtqueue ${this.index}: not in flight`);
    }
    if (!(written >= 0 && written <= 0xffff_ffff && written === Math.floor(written))) {
      throw new RangeError(`Cannot push ${written} written bytes: not a 32-bit length`);
    }
    if (this.inOrder) {
      const oldest = this.#order[this.#orderHead];
      if (oldest !== token) {
        throw new RangeError(
          `Cannot push head ${token} on virtqueue ${this.index}: IN_ORDER requires head ${oldest} first`,
        );
      }
      this.#orderHead = (this.#orderHead + 1) & this.#mask;
    }
    const used = this.#used;
    const off = SPLIT_USED_RING + 8 * (this.#usedIdx & this.#mask);
    used.setUint32(off, token, true);
    used.setUint32(off + 4, written, true);
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
    this.#headInFlight[token] = 0;
    this.#inFlight--;
  }

  /**
   * See {@linkcode DeviceQueue.publishUsed}: stores `used.idx` once for the
   * batch, then applies `VRING_AVAIL_F_NO_INTERRUPT`, or with EVENT_IDX the
   * `used_event` rule against the used index of the previous publish.
   */
  publishUsed(): boolean {
    if (this.#stale) this.#refresh();
    const newIdx = this.#usedIdx;
    const oldIdx = this.#publishedUsed;
    if (newIdx === oldIdx) return false;
    this.#used.setUint16(SPLIT_USED_IDX, newIdx, true);
    this.#publishedUsed = newIdx;
    if (this.eventIdx) {
      return vringNeedEvent(this.#avail.getUint16(this.#usedEventOff, true), newIdx, oldIdx);
    }
    return (this.#avail.getUint16(SPLIT_AVAIL_FLAGS, true) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * See {@linkcode DeviceQueue.setNotification}. Without EVENT_IDX it sets or
   * clears `VRING_USED_F_NO_NOTIFY`; with EVENT_IDX, enabling writes
   * `avail_event` = the current avail idx (and pops keep it current), while
   * disabling stops updating it.
   */
  setNotification(enabled: boolean): boolean {
    if (this.#stale) this.#refresh();
    this.#notify = enabled;
    const avail = this.#avail;
    if (!this.eventIdx) {
      this.#used.setUint16(SPLIT_USED_FLAGS, enabled ? 0 : VRING_USED_F_NO_NOTIFY, true);
    } else if (enabled) {
      this.#used.setUint16(this.#availEventOff, avail.getUint16(SPLIT_AVAIL_IDX, true), true);
    }
    if (!enabled) return false;
    // Re-check after publishing the request, closing the race with a driver
    // that looked at the old value before adding buffers.
    return avail.getUint16(SPLIT_AVAIL_IDX, true) !== this.#lastAvail;
  }

  /**
   * See {@linkcode DeviceQueue.detach}: unregisters from the DMA space and
   * drops the cached ring views; any later use throws `Error`.
   */
  detach(): void {
    this.#detached = true;
    this.#stale = true;
    this.#desc = this.#avail = this.#used = EMPTY_VIEW;
    this.#table.release();
    this.#unlisten?.();
    this.#unlisten = null;
  }

  /** Walks the chain at `head` into `chain`; returns the table descriptors used. */
  #walk(chain: DescriptorChain, head: number): number {
    const desc = this.#desc;
    const size = this.size;
    let idx = head;
    let count = 0;
    for (;;) {
      if (++count > size) {
        throw this.#error(
          "descriptor-loop",
          `chain at head ${head} visits more than ${size} descriptors`,
        );
      }
      const off = idx * VRING_DESC_SIZE;
      const flags = desc.getUint16(off + SPLIT_DESC_FLAGS, true);
      const len = desc.getUint32(off + DESC_LEN, true);
      const high = desc.getUint32(off + 4, true);
      const addr = high * TWO_32 + desc.getUint32(off, true);
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        this.#walkIndirect(chain, idx, flags, addr, high, len);
        return count;
      }
      this.#add(chain, addr, high, len, flags, idx);
      if ((flags & VRING_DESC_F_NEXT) === 0) return count;
      const next = desc.getUint16(off + SPLIT_DESC_NEXT, true);
      if (next >= size) {
        throw this.#error("bad-next", `descriptor ${idx} has next ${next}, out of range`);
      }
      idx = next;
    }
  }

  /** Walks the indirect table described by descriptor `idx` into `chain`. */
  #walkIndirect(
    chain: DescriptorChain,
    idx: number,
    flags: number,
    addr: number,
    high: number,
    len: number,
  ): void {
    if (!this.indirect) {
      throw this.#error(
        "indirect-not-negotiated",
        `descriptor ${idx} is indirect but VIRTIO_RING_F_INDIRECT_DESC was not negotiated`,
      );
    }
    if ((flags & VRING_DESC_F_NEXT) !== 0) {
      throw this.#error("indirect-with-next", `descriptor ${idx} has both INDIRECT and NEXT`);
    }
    if (len === 0 || len % VRING_DESC_SIZE !== 0) {
      throw this.#error(
        "bad-indirect-length",
        `descriptor ${idx} points at an indirect table of ${len} bytes`,
      );
    }
    if (high > 0x1f_ffff || addr > LIMIT - len) {
      throw this.#error(
        "bad-address",
        `indirect table at ${hex(addr)} (${len} bytes) ends above 2^53`,
      );
    }
    const entries = len / VRING_DESC_SIZE;
    const table = this.#table;
    table.map(addr, len);
    let j = 0;
    let count = 0;
    for (;;) {
      if (++count > entries) {
        throw this.#error(
          "descriptor-loop",
          `indirect table at ${hex(addr)} visits more than its ${entries} entries`,
        );
      }
      const off = table.entry(j);
      const data = table.data;
      const eflags = data.getUint16(off + SPLIT_DESC_FLAGS, true);
      if ((eflags & VRING_DESC_F_INDIRECT) !== 0) {
        throw this.#error(
          "nested-indirect",
          `indirect table at ${hex(addr)} entry ${j} is itself indirect`,
        );
      }
      const elen = data.getUint32(off + DESC_LEN, true);
      const ehigh = data.getUint32(off + 4, true);
      const eaddr = ehigh * TWO_32 + data.getUint32(off, true);
      this.#add(chain, eaddr, ehigh, elen, eflags, j);
      if ((eflags & VRING_DESC_F_NEXT) === 0) return;
      const next = data.getUint16(off + SPLIT_DESC_NEXT, true);
      if (next >= entries) {
        throw this.#error(
          "bad-next",
          `indirect table at ${hex(addr)} entry ${j} has next ${next}, out of range`,
        );
      }
      j = next;
    }
  }

  /** Appends one descriptor's buffer to `chain`, checking the rules a segment must obey. */
  #add(
    chain: DescriptorChain,
    addr: number,
    high: number,
    len: number,
    flags: number,
    idx: number,
  ): void {
    if (high > 0x1f_ffff || addr > LIMIT - len) {
      throw this.#error(
        "bad-address",
        `descriptor ${idx} buffer at ${hex(addr)} (${len} bytes) ends above 2^53`,
      );
    }
    const writable = (flags & VRING_DESC_F_WRITE) !== 0;
    if (!writable && chain.segmentCount !== chain.readableCount) {
      throw this.#error(
        "readable-after-writable",
        `descriptor ${idx} is device-readable but follows a device-writable one`,
      );
    }
    if (!chain.addSegment(addr, len, writable)) {
      throw this.#error(
        "chain-too-long",
        `chain has more than the ${chain.capacity} segments the device accepts`,
      );
    }
  }

  #refresh(): void {
    if (this.#detached) {
      throw new Error(`Cannot use virtqueue ${this.index}: it was detached`);
    }
    const dma = this.#dma;
    const size = this.size;
    const q = this.index;
    const desc = ringView(
      dma,
      q,
      "descriptor table",
      this.descAddr,
      descTableSize(size),
      DmaAccess.Read,
    );
    const avail = ringView(
      dma,
      q,
      "available ring",
      this.availAddr,
      splitAvailSize(size, this.eventIdx),
      DmaAccess.Read,
    );
    const used = ringView(
      dma,
      q,
      "used ring",
      this.usedAddr,
      splitUsedSize(size, this.eventIdx),
      DmaAccess.Write,
    );
    this.#desc = desc;
    this.#avail = avail;
    this.#used = used;
    this.#stale = false;
  }

  #error(kind: VirtqueueErrorKind, detail: string): VirtqueueError {
    return new VirtqueueError(this.index, kind, detail);
  }
}
