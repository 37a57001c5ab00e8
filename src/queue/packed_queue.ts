import { DmaAccess } from "../dma/dma_access.ts";
import type { DmaSpace } from "../dma/dma_space.ts";
import { hex } from "../guest_fault.ts";
import type { DescriptorChain } from "./descriptor_chain.ts";
import type { DeviceQueue, QueueConfig } from "./device_queue.ts";
import { packedNeedEvent } from "./event_idx.ts";
import {
  DESC_LEN,
  descTableSize,
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_EVENT_FLAGS,
  PACKED_EVENT_OFF_WRAP,
  PACKED_EVENT_SIZE,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_DESC_SIZE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
} from "./ring_layout.ts";
import { checkQueueConfig, EMPTY_VIEW, IndirectTable, overlaps, ringView } from "./ring_view.ts";
import { VirtqueueError, type VirtqueueErrorKind } from "./virtqueue_error.ts";

const TWO_32 = 0x1_0000_0000;
const LIMIT = 2 ** 53;
/** Token = ring slots × TOKEN_SLOTS + buffer id. */
const TOKEN_SLOTS = 0x1_0000;

/**
 * The device side of a packed virtqueue (virtio §2.8): one descriptor ring
 * with AVAIL/USED flag bits and wrap counters, plus the driver and device
 * event suppression areas.
 *
 * A popped chain's token encodes its buffer id and the number of ring slots it
 * took (`slots * 0x10000 + id`), so chains can be pushed back in any order:
 * used descriptors are written in completion order at the device's used
 * position, which advances by each chain's slot count. Within a batch the
 * first used descriptor's flags are written last, at
 * {@linkcode PackedQueue.publishUsed}, so the driver sees the batch at once.
 *
 * The three areas are translated once through the {@linkcode DmaSpace} and
 * again only after an invalidation, so the hot path allocates nothing.
 *
 * @example
 * ```ts
 * import { DescriptorChain, DirectDmaSpace, GuestMemory, PackedQueue } from "@vireo/vireo";
 * const mem = new GuestMemory([{ base: 0, size: 0x10000 }]);
 * const dma = new DirectDmaSpace(mem);
 * const q = new PackedQueue({
 *   index: 0, size: 4, descAddr: 0x1000, driverAddr: 0x2000, deviceAddr: 0x3000,
 *   eventIdx: false, indirect: false, inOrder: false,
 * }, dma);
 * // The driver makes buffer id 3 available in slot 0 (wrap counter 1).
 * mem.write64(0x1000, 0x8000);
 * mem.write32(0x1008, 64);
 * mem.write16(0x100c, 3);
 * mem.write16(0x100e, 0x80 | 2); // AVAIL | WRITE
 * const chain = new DescriptorChain(dma, 16);
 * q.pop(chain);
 * q.push(chain.token, 0);
 * console.log(q.publishUsed(), mem.read16(0x100c), mem.read16(0x100e).toString(16)); // true 3 "8080"
 * ```
 */
export class PackedQueue implements DeviceQueue {
  /** Queue index within the device. */
  readonly index: number;
  /** Ring size (any size in 1..32768). */
  readonly size: number;
  /** Always true: this is the packed layout. */
  readonly packed: boolean = true;
  /** Device address of the descriptor ring. */
  readonly descAddr: number;
  /** Device address of the driver event suppression area (the device reads it). */
  readonly driverEventAddr: number;
  /** Device address of the device event suppression area (the device writes it). */
  readonly deviceEventAddr: number;
  /** VIRTIO_RING_F_EVENT_IDX was negotiated. */
  readonly eventIdx: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC was negotiated. */
  readonly indirect: boolean;
  /** VIRTIO_F_IN_ORDER was negotiated (buffers must be pushed in pop order). */
  readonly inOrder: boolean;

  readonly #dma: DmaSpace;
  readonly #table: IndirectTable;
  /** Ring slots of each buffer id in flight; 0 when the id is not in flight. */
  readonly #idSlots: Uint16Array;
  /** With IN_ORDER: the tokens in flight, oldest first (a ring of `size` entries). */
  readonly #order: Uint32Array;
  #orderHead = 0;
  #orderTail = 0;
  #unlisten: (() => void) | null;
  #detached = false;
  #stale = true;
  #desc: DataView = EMPTY_VIEW;
  #driverEvent: DataView = EMPTY_VIEW;
  #deviceEvent: DataView = EMPTY_VIEW;

  #nextAvail = 0;
  #availWrap = 1;
  #nextUsed = 0;
  #usedWrap = 1;
  #slotsInFlight = 0;
  #inFlight = 0;
  /** Slot of the batch's first used descriptor, whose flags wait for publishUsed; -1 if none. */
  #deferredSlot = -1;
  #deferredFlags = 0;
  #batchSlots = 0;
  #publishedOff = 0;
  #publishedWrap = 1;
  /** The device event area is in DESC mode: keep its off_wrap at the next avail position. */
  #descMode = false;

  /**
   * Creates the queue without touching guest memory (the rings are translated
   * on first use), so a transport can create one on every enable or reset.
   *
   * @param config where the rings are and what was negotiated (copied)
   * @param dma the device's view of memory
   * @throws {RangeError} when `config.size` is not in 1..32768 (transports check
   *   the driver's `queue_size` first) or `config.index` is not a non-negative integer
   */
  constructor(config: QueueConfig, dma: DmaSpace) {
    checkQueueConfig(config, true);
    this.index = config.index;
    this.size = config.size;
    this.descAddr = config.descAddr;
    this.driverEventAddr = config.driverAddr;
    this.deviceEventAddr = config.deviceAddr;
    this.eventIdx = !!config.eventIdx;
    this.indirect = !!config.indirect;
    this.inOrder = !!config.inOrder;
    this.#dma = dma;
    this.#table = new IndirectTable(dma);
    this.#idSlots = new Uint16Array(config.size);
    this.#order = new Uint32Array(this.inOrder ? config.size : 0);
    this.#unlisten = dma.addInvalidationListener((address, length) => {
      if (
        overlaps(address, length, this.descAddr, descTableSize(this.size)) ||
        overlaps(address, length, this.driverEventAddr, PACKED_EVENT_SIZE) ||
        overlaps(address, length, this.deviceEventAddr, PACKED_EVENT_SIZE)
      ) {
        this.#stale = true;
      }
    });
  }

  /** Chains popped but not yet pushed. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Ring slot the device will look at next for an available descriptor. */
  get nextAvail(): number {
    return this.#nextAvail;
  }

  /** The device's avail wrap counter (0 or 1; starts at 1). */
  get availWrapCounter(): number {
    return this.#availWrap;
  }

  /** Ring slot of the next used descriptor the device will write. */
  get nextUsed(): number {
    return this.#nextUsed;
  }

  /** The device's used wrap counter (0 or 1; starts at 1). */
  get usedWrapCounter(): number {
    return this.#usedWrap;
  }

  /** See {@linkcode DeviceQueue.pop}. @throws {VirtqueueError} @throws {DmaFault} */
  pop(chain: DescriptorChain): boolean {
    if (this.#stale) this.#refresh();
    const desc = this.#desc;
    const size = this.size;
    let slot = this.#nextAvail;
    let wrap = this.#availWrap;
    let flags = desc.getUint16(slot * VRING_DESC_SIZE + PACKED_DESC_FLAGS, true);
    if (((flags >> 7) & 1) !== wrap || ((flags >> 15) & 1) === wrap) return false;
    chain.clear(this.#dma);
    const free = size - this.#slotsInFlight;
    let n = 0;
    let id: number;
    for (;;) {
      if (++n > free) {
        throw n > size
          ? this.#error(
            "chain-too-long",
            `chain at slot ${this.#nextAvail} has more than ${size} descriptors`,
          )
          : this.#error(
            "avail-index-jump",
            `chain at slot ${this.#nextAvail} runs past the ${free} slots not in flight`,
          );
      }
      const off = slot * VRING_DESC_SIZE;
      if (n > 1) flags = desc.getUint16(off + PACKED_DESC_FLAGS, true);
      const len = desc.getUint32(off + DESC_LEN, true);
      const high = desc.getUint32(off + 4, true);
      const addr = high * TWO_32 + desc.getUint32(off, true);
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (n > 1) {
          throw this.#error(
            "indirect-with-next",
            `descriptor in slot ${slot} is indirect but continues a NEXT chain`,
          );
        }
        this.#walkIndirect(chain, slot, flags, addr, high, len);
        id = desc.getUint16(off + PACKED_DESC_ID, true);
        break;
      }
      this.#add(chain, addr, high, len, flags, slot);
      if ((flags & VRING_DESC_F_NEXT) === 0) {
        id = desc.getUint16(off + PACKED_DESC_ID, true);
        break;
      }
      if (++slot === size) {
        slot = 0;
        wrap ^= 1;
      }
    }
    if (id >= size) {
      throw this.#error("bad-buffer-id", `buffer id ${id} in slot ${slot} is out of range`);
    }
    if (this.#idSlots[id] !== 0) {
      throw this.#error("bad-buffer-id", `buffer id ${id} in slot ${slot} is already in flight`);
    }
    if (++slot === size) {
      slot = 0;
      wrap ^= 1;
    }
    this.#nextAvail = slot;
    this.#availWrap = wrap;
    this.#idSlots[id] = n;
    this.#slotsInFlight += n;
    this.#inFlight++;
    const token = n * TOKEN_SLOTS + id;
    if (this.inOrder) {
      this.#order[this.#orderTail] = token;
      if (++this.#orderTail === size) this.#orderTail = 0;
    }
    chain.token = token;
    chain.head = id;
    chain.ringSlots = n;
    if (this.#descMode) {
      this.#deviceEvent.setUint16(PACKED_EVENT_OFF_WRAP, slot | (wrap << 15), true);
    }
    return true;
  }

  /**
   * See {@linkcode DeviceQueue.push}: writes a used descriptor (`id`, `len`,
   * AVAIL = USED = the used wrap counter, WRITE when bytes were written) at the
   * used position and advances it by the chain's slot count.
   *
   * @throws {RangeError} when `token` is not a chain in flight, `written` is not a
   *   u32, or IN_ORDER was negotiated and `token` is not the oldest chain in flight
   */
  push(token: number, written: number): void {
    if (this.#stale) this.#refresh();
    const id = token & 0xffff;
    const slots = Math.floor(token / TOKEN_SLOTS);
    if (
      !(Number.isInteger(token) && token >= 0 && id < this.size && slots > 0 &&
        this.#idSlots[id] === slots)
    ) {
      throw new RangeError(`Cannot push token ${token} on virtqueue ${this.index}: not in flight`);
    }
    if (!(written >= 0 && written <= 0xffff_ffff && written === Math.floor(written))) {
      throw new RangeError(`Cannot push ${written} written bytes: not a 32-bit length`);
    }
    const size = this.size;
    if (this.inOrder) {
      const oldest = this.#order[this.#orderHead];
      if (oldest !== token) {
        throw new RangeError(
          `Cannot push buffer id ${id} on virtqueue ${this.index}: IN_ORDER requires buffer id ${
            oldest & 0xffff
          } first`,
        );
      }
      if (++this.#orderHead === size) this.#orderHead = 0;
    }
    const desc = this.#desc;
    const slot = this.#nextUsed;
    const off = slot * VRING_DESC_SIZE;
    desc.setUint32(off + DESC_LEN, written, true);
    desc.setUint16(off + PACKED_DESC_ID, id, true);
    const flags =
      (this.#usedWrap !== 0 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0) |
      (written > 0 ? VRING_DESC_F_WRITE : 0);
    if (this.#deferredSlot < 0) {
      this.#deferredSlot = slot;
      this.#deferredFlags = flags;
      this.#batchSlots = slots;
    } else if (this.#batchSlots + slots > size) {
      // The batch would come round to its own first slot: expose it now.
      this.#flushDeferred();
      this.#deferredSlot = slot;
      this.#deferredFlags = flags;
      this.#batchSlots = slots;
    } else {
      desc.setUint16(off + PACKED_DESC_FLAGS, flags, true);
      this.#batchSlots += slots;
    }
    let next = slot + slots;
    if (next >= size) {
      next -= size;
      this.#usedWrap ^= 1;
    }
    this.#nextUsed = next;
    this.#idSlots[id] = 0;
    this.#slotsInFlight -= slots;
    this.#inFlight--;
  }

  /**
   * See {@linkcode DeviceQueue.publishUsed}: writes the flags of the batch's
   * first used descriptor, then reads the driver event suppression area:
   * ENABLE interrupts, DISABLE does not, DESC (with EVENT_IDX) interrupts when
   * the batch passed the descriptor named by `off_wrap`.
   */
  publishUsed(): boolean {
    if (this.#stale) this.#refresh();
    if (this.#deferredSlot < 0) return false;
    this.#flushDeferred();
    const oldOff = this.#publishedOff;
    const oldWrap = this.#publishedWrap;
    const newOff = this.#nextUsed;
    const newWrap = this.#usedWrap;
    this.#publishedOff = newOff;
    this.#publishedWrap = newWrap;
    const ev = this.#driverEvent;
    const mode = ev.getUint16(PACKED_EVENT_FLAGS, true) & 3;
    if (mode === VRING_PACKED_EVENT_FLAG_DISABLE) return false;
    if (mode === VRING_PACKED_EVENT_FLAG_DESC && this.eventIdx) {
      const offWrap = ev.getUint16(PACKED_EVENT_OFF_WRAP, true);
      return packedNeedEvent(offWrap, this.size, oldOff, oldWrap, newOff, newWrap);
    }
    return true;
  }

  /**
   * See {@linkcode DeviceQueue.setNotification}: writes DISABLE, ENABLE, or with
   * EVENT_IDX DESC mode with `off_wrap` at the next slot the device will read
   * (pops keep it there while enabled). Enabling re-checks that slot.
   */
  setNotification(enabled: boolean): boolean {
    if (this.#stale) this.#refresh();
    const ev = this.#deviceEvent;
    if (!enabled) {
      this.#descMode = false;
      ev.setUint16(PACKED_EVENT_FLAGS, VRING_PACKED_EVENT_FLAG_DISABLE, true);
      return false;
    }
    const slot = this.#nextAvail;
    const wrap = this.#availWrap;
    if (this.eventIdx) {
      this.#descMode = true;
      ev.setUint16(PACKED_EVENT_OFF_WRAP, slot | (wrap << 15), true);
      ev.setUint16(PACKED_EVENT_FLAGS, VRING_PACKED_EVENT_FLAG_DESC, true);
    } else {
      ev.setUint16(PACKED_EVENT_FLAGS, VRING_PACKED_EVENT_FLAG_ENABLE, true);
    }
    // Re-check after publishing the request, closing the race with a driver
    // that looked at the old value before adding buffers.
    const flags = this.#desc.getUint16(slot * VRING_DESC_SIZE + PACKED_DESC_FLAGS, true);
    return ((flags >> 7) & 1) === wrap && ((flags >> 15) & 1) !== wrap;
  }

  /**
   * See {@linkcode DeviceQueue.detach}: unregisters from the DMA space and
   * drops the cached ring views; any later use throws `Error`.
   */
  detach(): void {
    this.#detached = true;
    this.#stale = true;
    this.#desc = this.#driverEvent = this.#deviceEvent = EMPTY_VIEW;
    this.#table.release();
    this.#unlisten?.();
    this.#unlisten = null;
  }

  #flushDeferred(): void {
    this.#desc.setUint16(
      this.#deferredSlot * VRING_DESC_SIZE + PACKED_DESC_FLAGS,
      this.#deferredFlags,
      true,
    );
    this.#deferredSlot = -1;
    this.#batchSlots = 0;
  }

  /** Reads the indirect table described by the descriptor in `slot` into `chain`. */
  #walkIndirect(
    chain: DescriptorChain,
    slot: number,
    flags: number,
    addr: number,
    high: number,
    len: number,
  ): void {
    if (!this.indirect) {
      throw this.#error(
        "indirect-not-negotiated",
        `descriptor in slot ${slot} is indirect but VIRTIO_RING_F_INDIRECT_DESC was not negotiated`,
      );
    }
    if ((flags & VRING_DESC_F_NEXT) !== 0) {
      throw this.#error(
        "indirect-with-next",
        `descriptor in slot ${slot} has both INDIRECT and NEXT`,
      );
    }
    if (len === 0 || len % VRING_DESC_SIZE !== 0) {
      throw this.#error(
        "bad-indirect-length",
        `descriptor in slot ${slot} points at an indirect table of ${len} bytes`,
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
    // Entries are read in order up to the end of the table; NEXT and ids inside
    // are ignored. The chain's capacity bounds the work for huge tables.
    for (let j = 0; j < entries; j++) {
      const off = table.entry(j);
      const data = table.data;
      const eflags = data.getUint16(off + PACKED_DESC_FLAGS, true);
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
    }
  }

  /** Appends one descriptor's buffer to `chain`, checking the rules a segment must obey. */
  #add(
    chain: DescriptorChain,
    addr: number,
    high: number,
    len: number,
    flags: number,
    where: number,
  ): void {
    if (high > 0x1f_ffff || addr > LIMIT - len) {
      throw this.#error(
        "bad-address",
        `descriptor ${where} buffer at ${hex(addr)} (${len} bytes) ends above 2^53`,
      );
    }
    const writable = (flags & VRING_DESC_F_WRITE) !== 0;
    if (!writable && chain.segmentCount !== chain.readableCount) {
      throw this.#error(
        "readable-after-writable",
        `descriptor ${where} is device-readable but follows a device-writable one`,
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
    const q = this.index;
    const desc = ringView(
      dma,
      q,
      "descriptor ring",
      this.descAddr,
      descTableSize(this.size),
      DmaAccess.ReadWrite,
    );
    const driverEvent = ringView(
      dma,
      q,
      "driver event suppression area",
      this.driverEventAddr,
      PACKED_EVENT_SIZE,
      DmaAccess.Read,
    );
    const deviceEvent = ringView(
      dma,
      q,
      "device event suppression area",
      this.deviceEventAddr,
      PACKED_EVENT_SIZE,
      DmaAccess.Write,
    );
    this.#desc = desc;
    this.#driverEvent = driverEvent;
    this.#deviceEvent = deviceEvent;
    this.#stale = false;
  }

  #error(kind: VirtqueueErrorKind, detail: string): VirtqueueError {
    return new VirtqueueError(this.index, kind, detail);
  }
}
