/**
 * The guest driver's virtqueues: a model of Linux's `drivers/virtio/virtio_ring.c`
 * for the split and packed layouts, with the kernel's verbs in camelCase.
 *
 * A driver virtqueue only writes guest memory and calls its `notify` callback
 * (the transport's doorbell); the transport calls {@linkcode Virtqueue.interrupt}
 * when the device signals the queue. Every address it writes into a ring comes
 * from the queue's {@linkcode VirtqueueMapper}.
 *
 * @module
 */
import type { VirtqueueMapper } from "./map_ops.ts";
import { PackedVirtqueue } from "./packed_ring.ts";
import { SplitVirtqueue } from "./split_ring.ts";
import { MAX_QUEUE_SIZE } from "./vring.ts";

/** The ring layout: split (virtio 1.0 §2.7) or packed (VIRTIO_F_RING_PACKED, §2.8). */
export type VirtqueueLayout = "split" | "packed";

/**
 * One scatter-gather element (the part of `struct scatterlist` a virtqueue
 * reads): a guest physical address and a length. For premapped buffers `addr`
 * is already a device address (`sg_dma_address`).
 */
export interface SgEntry {
  /** Guest physical address (device address when premapped). */
  addr: number;
  /** Length in bytes, below 2^32. */
  length: number;
}

/** A buffer the device has used: the caller's token and the bytes the device wrote. */
export interface UsedBuffer<T> {
  /** The token given when the buffer was added. */
  token: T;
  /** Bytes the device reports it wrote to the buffer's device-writable part. */
  len: number;
}

/** How to create a driver virtqueue: what `vring_create_virtqueue` gets. */
export interface VirtqueueOptions<T> {
  /** Queue index within the device. */
  index: number;
  /** Ring size wanted: a power of two for split rings; 1..32768. */
  size: number;
  /** Split or packed. */
  layout: VirtqueueLayout;
  /** VIRTIO_RING_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC was negotiated (and the driver uses it). */
  indirect: boolean;
  /** VIRTIO_F_IN_ORDER was negotiated. */
  inOrder?: boolean;
  /** The mapping seam: rings, indirect tables and buffers are mapped through it. */
  mapper: VirtqueueMapper;
  /**
   * The transport's doorbell (`vq->notify`), called with the queue index.
   * Returning `false` marks the queue broken, as in the kernel.
   */
  notify: (index: number) => boolean | void;
  /**
   * The driver's interrupt handler for this queue (`vq->callback`), called by
   * {@linkcode Virtqueue.interrupt}. Without one, the queue starts with device
   * interrupts suppressed.
   */
  callback?: ((vq: Virtqueue<T>) => void) | null;
  /** Split rings only: halve the size while the ring memory cannot be allocated (`may_reduce_num`); true by default. */
  mayReduceNum?: boolean;
  /** Split rings only: alignment of the used ring (`vring_align`); 64 (`SMP_CACHE_BYTES`) by default. */
  vringAlign?: number;
  /** A name for diagnostics (`vq->name`). */
  name?: string;
}

/**
 * A driver virtqueue: the operations of Linux's `struct virtqueue` API.
 *
 * Buffers are added with a token (any value but `null`/`undefined`, the
 * kernel's `void *data`) and come back from {@linkcode Virtqueue.getBuf} with
 * it. Conditions the kernel reports by value are returned the same way:
 * negative errno values from adds, `null` from `getBuf`, `false` from notify;
 * a device that corrupts the used ring breaks the queue (`BAD_RING`). Only
 * misuse by the caller (a missing token, an empty or malformed scatter list)
 * throws.
 */
export interface Virtqueue<T> {
  /** Queue index within the device. */
  readonly index: number;
  /** Ring size (`virtqueue_get_vring_size`); may be smaller than asked for split rings. */
  readonly size: number;
  /** Split or packed. */
  readonly layout: VirtqueueLayout;
  /** Name for diagnostics. */
  readonly name: string;
  /** EVENT_IDX is in use. */
  readonly eventIdx: boolean;
  /** Indirect descriptors are in use. */
  readonly indirect: boolean;
  /** IN_ORDER is in use. */
  readonly inOrder: boolean;
  /** The mapping seam of this queue. */
  readonly mapper: VirtqueueMapper;
  /** Device address of the descriptor area (`virtqueue_get_desc_addr`). */
  readonly descAddr: number;
  /** Device address of the driver area: avail ring or driver event suppression (`virtqueue_get_avail_addr`). */
  readonly driverAddr: number;
  /** Device address of the device area: used ring or device event suppression (`virtqueue_get_used_addr`). */
  readonly deviceAddr: number;
  /** Free descriptors (`vq->num_free`). */
  readonly numFree: number;
  /** Why the queue is broken, or `null`. */
  readonly brokenReason: string | null;

  /**
   * Adds a buffer made of device-readable `outSgs` followed by device-writable
   * `inSgs`. Returns 0, `-ENOSPC` (ring full), `-ENOMEM` / `-EIO` (a mapping
   * failed; nothing stays mapped) or `-EIO` (queue broken).
   * Models `virtqueue_add_sgs`.
   *
   * @param premapped the addresses are device addresses the caller mapped; the queue never maps or unmaps them
   * @throws {TypeError} when `token` is null or undefined
   * @throws {RangeError} when there are no entries or one is malformed
   */
  addSgs(
    outSgs: readonly SgEntry[],
    inSgs: readonly SgEntry[],
    token: T,
    premapped?: boolean,
  ): number;
  /** Adds a device-readable buffer. Models `virtqueue_add_outbuf`. */
  addOutbuf(sgs: readonly SgEntry[], token: T): number;
  /** Adds a device-writable buffer. Models `virtqueue_add_inbuf`. */
  addInbuf(sgs: readonly SgEntry[], token: T): number;
  /** Adds a device-readable buffer the caller mapped. Models `virtqueue_add_outbuf_premapped`. */
  addOutbufPremapped(sgs: readonly SgEntry[], token: T): number;
  /** Adds a device-writable buffer the caller mapped. Models `virtqueue_add_inbuf_premapped`. */
  addInbufPremapped(sgs: readonly SgEntry[], token: T): number;
  /**
   * Makes every later add premapped. Only allowed while the queue is empty and
   * uses the map API; returns 0 or `-EINVAL`. Models `virtqueue_set_dma_premapped`.
   */
  setPremapped(): number;
  /**
   * Publishes nothing new but decides whether the device needs a kick for what
   * was added since the last call (notification suppression, event idx).
   * Models `virtqueue_kick_prepare`.
   */
  kickPrepare(): boolean;
  /** Rings the doorbell; false when the queue is or becomes broken. Models `virtqueue_notify`. */
  notify(): boolean;
  /** `kickPrepare()` then `notify()` if needed. Models `virtqueue_kick`. */
  kick(): boolean;
  /**
   * The 32-bit value a transport writes with VIRTIO_F_NOTIFICATION_DATA: queue
   * index in bits 15:0, next avail position (and packed wrap counter) above.
   * Models `vring_notification_data`.
   */
  notificationData(): number;
  /**
   * Takes the next used buffer, unmapping it, or returns `null`. Fills and
   * returns `out` when given, so a polling loop allocates nothing.
   * Models `virtqueue_get_buf`.
   */
  getBuf(out?: UsedBuffer<T>): UsedBuffer<T> | null;
  /** True when the device has used buffers the driver has not taken. Models `more_used`. */
  moreUsed(): boolean;
  /**
   * The queue's interrupt handler: calls the callback when there is work.
   * Returns false when there was nothing (`IRQ_NONE`). Models `vring_interrupt`.
   */
  interrupt(): boolean;
  /** Asks the device not to interrupt (a hint). Models `virtqueue_disable_cb`. */
  disableCb(): void;
  /**
   * Re-enables interrupts; returns false when used buffers are already
   * pending (the caller must poll again). Models `virtqueue_enable_cb`.
   */
  enableCb(): boolean;
  /**
   * Re-enables interrupts and returns an opaque position for
   * {@linkcode Virtqueue.poll}. Models `virtqueue_enable_cb_prepare`.
   */
  enableCbPrepare(): number;
  /** True when buffers were used since `enableCbPrepare` returned `opaque`. Models `virtqueue_poll`. */
  poll(opaque: number): boolean;
  /**
   * Re-enables interrupts but, with event idx, only after about three
   * quarters of the outstanding buffers are used; returns false when many are
   * used already. Models `virtqueue_enable_cb_delayed`.
   */
  enableCbDelayed(): boolean;
  /**
   * Detaches one buffer the device never used (after a reset) and returns its
   * token, or `null` when none is left. Models `virtqueue_detach_unused_buf`.
   */
  detachUnusedBuf(): T | null;
  /**
   * Returns the ring to its initial state, handing every outstanding token to
   * `recycle` first. The transport must have disabled the queue (queue reset)
   * and re-enable it afterwards. Models the ring part of `virtqueue_reset`.
   */
  reset(recycle?: (token: T) => void): void;
  /** True when the queue is broken. Models `virtqueue_is_broken`. */
  isBroken(): boolean;
  /** Breaks the queue (a transport found the device unusable). Models `__virtqueue_break`. */
  markBroken(reason?: string): void;
  /** Clears the broken state. Models `__virtqueue_unbreak`. */
  unbreak(): void;
  /**
   * Frees the ring memory and any indirect tables still held; the queue is
   * broken afterwards. Models `vring_del_virtqueue`.
   */
  destroy(): void;
}

/**
 * Creates a driver virtqueue and allocates its rings through the mapper.
 * Returns `null` when ring memory cannot be allocated, where the kernel
 * returns NULL. Models `vring_create_virtqueue`.
 *
 * @throws {TypeError} when an option has the wrong type
 * @throws {RangeError} when the size or alignment is invalid
 *
 * @example
 * ```ts
 * import { createVirtqueue, GuestMemory, PageAllocator, VirtqueueMapper } from "@vireo/vireo";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const mapper = new VirtqueueMapper({
 *   pages: new PageAllocator(memory, { base: 0x10000, size: 0x40000 }),
 *   accessPlatform: false,
 * });
 * const kicks: number[] = [];
 * const vq = createVirtqueue<string>({
 *   index: 0, size: 8, layout: "split", eventIdx: false, indirect: false, mapper,
 *   notify: (i) => { kicks.push(i); },
 * })!;
 * vq.addOutbuf([{ addr: 0x1000, length: 64 }], "hello");
 * vq.kick();
 * console.log(kicks); // [ 0 ]
 * console.log(memory.read16(vq.driverAddr + 2)); // 1: avail idx
 * ```
 */
export function createVirtqueue<T>(options: VirtqueueOptions<T>): Virtqueue<T> | null {
  if (typeof options !== "object" || options === null) {
    throw new TypeError("Cannot create a virtqueue: expected an options object");
  }
  const { index, size, layout } = options;
  if (!Number.isSafeInteger(index) || index < 0 || index > 0xffff) {
    throw new RangeError(`Cannot create a virtqueue: index ${index} is not in 0..65535`);
  }
  if (layout !== "split" && layout !== "packed") {
    throw new TypeError(
      `Cannot create virtqueue ${index}: layout ${String(layout)} is not "split" or "packed"`,
    );
  }
  if (!Number.isSafeInteger(size) || size < 1 || size > MAX_QUEUE_SIZE) {
    throw new RangeError(`Cannot create virtqueue ${index}: size ${size} is not in 1..32768`);
  }
  if (layout === "split" && (size & (size - 1)) !== 0) {
    throw new RangeError(
      `Cannot create virtqueue ${index}: split ring size ${size} is not a power of two`,
    );
  }
  if (typeof options.notify !== "function") {
    throw new TypeError(`Cannot create virtqueue ${index}: notify must be a function`);
  }
  if (
    options.callback !== undefined && options.callback !== null &&
    typeof options.callback !== "function"
  ) {
    throw new TypeError(`Cannot create virtqueue ${index}: callback must be a function`);
  }
  if (typeof options.mapper !== "object" || options.mapper === null) {
    throw new TypeError(`Cannot create virtqueue ${index}: a mapper is required`);
  }
  return layout === "split" ? SplitVirtqueue.create(options) : PackedVirtqueue.create(options);
}
