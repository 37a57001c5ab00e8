/**
 * A model of Linux's `drivers/block/virtio_blk.c` with a small block layer on
 * top: probe (feature negotiation, config, queues), request submission
 * through the guest virtqueues, completion from the queue interrupt, and
 * promise-returning reads, writes, flushes, discards, write-zeroes and GET_ID.
 *
 * The driver reaches the device only through a {@linkcode BlkGuestDevice}
 * (a transport driver), guest memory and interrupts.
 *
 * @module
 */
import { DeviceStatus } from "../../virtio/status.ts";
import { VirtioFeature } from "../../virtio/features.ts";
import { DmaDirection, Errno } from "../dma/dma_api.ts";
import type { SgEntry, Virtqueue } from "../virtio/virtqueue.ts";
import { BlockErrno, BlockError } from "./block_error.ts";
import type { BlkGuestDevice } from "./blk_guest_device.ts";
import {
  type BlkRequestMapper,
  type BlkRequestMapping,
  virtqueueRequestMapper,
} from "./request_mapper.ts";
import {
  SECTOR_SIZE,
  VIRTIO_BLK_CONFIG as C,
  VIRTIO_BLK_F as F,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S as S,
  VIRTIO_BLK_T as T,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "./virtio_blk_uapi.ts";

const VIRTIO_ID_BLOCK = 2;
const TWO_32 = 0x1_0000_0000;

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** The device features Linux's virtio_blk asks for (its `features[]` table, minus SECURE_ERASE and ZONED). */
export const VIRTIO_BLK_DRIVER_FEATURES: bigint = [
  F.SEG_MAX,
  F.SIZE_MAX,
  F.GEOMETRY,
  F.RO,
  F.BLK_SIZE,
  F.FLUSH,
  F.TOPOLOGY,
  F.CONFIG_WCE,
  F.MQ,
  F.DISCARD,
  F.WRITE_ZEROES,
].reduce((m, b) => m | bit(b), 0n);

/** Options of {@linkcode VirtioBlkDriver.probe}. */
export interface VirtioBlkDriverOptions {
  /** Device features to ask for (default {@linkcode VIRTIO_BLK_DRIVER_FEATURES}). */
  features?: bigint;
  /** Most request queues to use, like `nr_cpu_ids` (default 4). */
  maxQueues?: number;
  /** How buffers become device addresses (default: the virtqueue maps them). */
  mapper?: BlkRequestMapper;
  /** Bytes per data segment the block layer allocates (a multiple of 4096; default 65536). */
  segmentSize?: number;
  /** Largest request the block layer builds, in bytes (default 1 MiB, like max_sectors_kb). */
  maxRequestBytes?: number;
  /** Called with the new capacity (sectors) when a config change reports one ("new size"). */
  onCapacityChange?: (sectors: number) => void;
}

/** A block request at the driver level: one virtio-blk request, buffers given by the caller. */
export interface BlkDriverRequest {
  /** `VIRTIO_BLK_T_*`. */
  type: number;
  /** Sector in 512-byte units (0 for commands without one). */
  sector?: number;
  /** Data segments at guest physical addresses (none by default). */
  data?: readonly SgEntry[];
  /** Data direction; defaults to TO_DEVICE when bit 0 of `type` is set, else FROM_DEVICE. */
  dataDirection?: DmaDirection;
  /** Request queue (default: round robin). */
  queue?: number;
  /** The reserved / ioprio header field (default 0). */
  ioprio?: number;
}

/** How a driver-level request ended on the device. */
export interface BlkCompletion {
  /** The status byte the device wrote. */
  status: number;
  /** The used length the device reported. */
  len: number;
}

/** The queue limits read from config at probe (Linux `struct queue_limits`). */
export interface BlkQueueLimits {
  /** Logical block size in bytes. */
  logicalBlockSize: number;
  /** Physical block size in bytes. */
  physicalBlockSize: number;
  /** Most data segments per request. */
  maxSegments: number;
  /** Largest data segment in bytes. */
  maxSegmentSize: number;
  /** Largest discard segment in sectors (0: DISCARD not negotiated). */
  maxDiscardSectors: number;
  /** Most discard segments per request. */
  maxDiscardSegments: number;
  /** Discard alignment hint in sectors. */
  discardAlignment: number;
  /** Largest write-zeroes segment in sectors (0: WRITE_ZEROES not negotiated). */
  maxWriteZeroesSectors: number;
  /** Most write-zeroes segments per request. */
  maxWriteZeroesSegments: number;
  /** The device may deallocate zeroed ranges. */
  writeZeroesMayUnmap: boolean;
}

/** One request in flight: the token given to the virtqueue. */
interface InflightRequest {
  readonly queue: number;
  /** kmalloc'd: header at +0 (16 bytes), status at +16. */
  readonly hdr: number;
  /** Extra kmalloc'd payload (discard segments, id buffer) to free, or -1. */
  readonly payload: number;
  readonly buffers: { data: readonly SgEntry[]; dataDirection: DmaDirection };
  mapping: BlkRequestMapping | null;
  resolve(c: BlkCompletion): void;
  reject(e: BlockError): void;
}

/**
 * A guest virtio-blk driver and its block device.
 *
 * @example
 * ```ts ignore
 * const disk = VirtioBlkDriver.probe(transportDriver);
 * await disk.write(0, new Uint8Array(4096).fill(1));
 * await disk.flush();
 * const data = await disk.read(0, 4096);
 * ```
 */
export class VirtioBlkDriver {
  /** The transport driver. */
  readonly dev: BlkGuestDevice;
  readonly #vqs: readonly Virtqueue<InflightRequest>[];
  /** Queue limits. */
  readonly limits: BlkQueueLimits;
  /** The disk is read-only (VIRTIO_BLK_F_RO). */
  readonly readOnly: boolean;
  /** The mapping seam. */
  readonly mapper: BlkRequestMapper;
  readonly #segmentSize: number;
  readonly #maxRequestBytes: number;
  readonly #onCapacityChange: ((sectors: number) => void) | null;
  readonly #pending: InflightRequest[][];
  readonly #inflight: Set<InflightRequest>[];
  readonly #kickScheduled: boolean[];
  readonly #starts: (() => void)[];
  #capacity = 0;
  #nextQueue = 0;
  #broken: string | null = null;

  private constructor(
    dev: BlkGuestDevice,
    vqs: Virtqueue<InflightRequest>[],
    limits: BlkQueueLimits,
    options: VirtioBlkDriverOptions,
  ) {
    this.dev = dev;
    this.#vqs = vqs;
    this.limits = limits;
    this.readOnly = this.hasFeature(F.RO);
    this.mapper = options.mapper ?? virtqueueRequestMapper;
    const segmentSize = options.segmentSize ?? 65536;
    this.#segmentSize = Math.min(segmentSize, limits.maxSegmentSize);
    const maxReq = options.maxRequestBytes ?? 1 << 20;
    this.#maxRequestBytes = Math.max(
      limits.logicalBlockSize,
      Math.min(maxReq, limits.maxSegments * this.#segmentSize) -
        (Math.min(maxReq, limits.maxSegments * this.#segmentSize) % limits.logicalBlockSize),
    );
    this.#onCapacityChange = options.onCapacityChange ?? null;
    this.#pending = vqs.map(() => []);
    this.#inflight = vqs.map(() => new Set());
    this.#kickScheduled = vqs.map(() => false);
    this.#starts = vqs.map((_, q) => () => this.#kick(q));
  }

  /**
   * Probes a virtio-blk device: feature negotiation and FEATURES_OK, config,
   * `find_vqs`, DRIVER_OK. On failure the device is left with FAILED set.
   * Models `virtio_dev_probe` + `virtblk_probe`.
   *
   * @throws {TypeError} when the device is not a block device
   * @throws {BlockError} `EINVAL` for an unusable config
   * @throws {Error} the transport's error when negotiation or queue setup fails
   * @throws {RangeError} when an option is out of range
   */
  static probe(dev: BlkGuestDevice, options: VirtioBlkDriverOptions = {}): VirtioBlkDriver {
    if (dev?.deviceId !== VIRTIO_ID_BLOCK) {
      throw new TypeError(`Cannot probe virtio-blk: device id ${dev?.deviceId} is not 2`);
    }
    const segmentSize = options.segmentSize ?? 65536;
    if (!Number.isSafeInteger(segmentSize) || segmentSize < 4096 || segmentSize % 4096 !== 0) {
      throw new RangeError(
        `Cannot probe virtio-blk: segmentSize ${segmentSize} is not a multiple of 4096`,
      );
    }
    const maxQueues = options.maxQueues ?? 4;
    if (!Number.isSafeInteger(maxQueues) || maxQueues < 1) {
      throw new RangeError(
        `Cannot probe virtio-blk: maxQueues ${maxQueues} is not a positive integer`,
      );
    }
    try {
      dev.negotiate(
        (options.features ?? VIRTIO_BLK_DRIVER_FEATURES) | bit(VirtioFeature.VERSION_1),
      );
      const has = (b: number) => dev.hasFeature(b);
      const blkSize = has(F.BLK_SIZE) ? dev.readConfig32(C.blk_size) : SECTOR_SIZE;
      if (blkSize < 512 || blkSize > 65536 || (blkSize & (blkSize - 1)) !== 0) {
        throw new BlockError(`virtio_blk: invalid block size: ${blkSize}`, BlockErrno.EINVAL);
      }
      let numQueues = 1;
      if (has(F.MQ)) {
        numQueues = dev.readConfig16(C.num_queues);
        if (numQueues === 0) {
          throw new BlockError(
            "virtio_blk: MQ advertised but zero queues reported",
            BlockErrno.EINVAL,
          );
        }
      }
      numQueues = Math.min(numQueues, maxQueues);
      let driver: VirtioBlkDriver | null = null;
      const done = (vq: Virtqueue<InflightRequest>) => {
        if (driver !== null) driver.#done(vq);
      };
      const queues = dev.setupQueues<InflightRequest>(
        Array.from({ length: numQueues }, (_, i) => ({ name: `req.${i}`, callback: done })),
      );
      let segMax = has(F.SEG_MAX) ? dev.readConfig32(C.seg_max) : 1;
      if (segMax === 0) segMax = 1;
      segMax = Math.min(segMax, 32766);
      if (!has(VirtioFeature.INDIRECT_DESC)) {
        segMax = Math.min(segMax, Math.max(1, Math.min(...queues.map((q) => q.size)) - 2));
      }
      const sizeMax = has(F.SIZE_MAX) ? dev.readConfig32(C.size_max) || 0xffff_ffff : 0xffff_ffff;
      const physExp = has(F.TOPOLOGY) ? dev.readConfig8(C.physical_block_exp) : 0;
      const limits: BlkQueueLimits = {
        logicalBlockSize: blkSize,
        physicalBlockSize: blkSize * 2 ** physExp,
        maxSegments: segMax,
        maxSegmentSize: Math.max(4096, Math.floor(sizeMax / 4096) * 4096),
        maxDiscardSectors: 0,
        maxDiscardSegments: 0,
        discardAlignment: 0,
        maxWriteZeroesSectors: 0,
        maxWriteZeroesSegments: 0,
        writeZeroesMayUnmap: false,
      };
      if (has(F.DISCARD)) {
        limits.maxDiscardSectors = dev.readConfig32(C.max_discard_sectors) || 0xffff_ffff;
        limits.maxDiscardSegments = Math.min(dev.readConfig32(C.max_discard_seg) || segMax, 256);
        limits.discardAlignment = dev.readConfig32(C.discard_sector_alignment);
      }
      if (has(F.WRITE_ZEROES)) {
        limits.maxWriteZeroesSectors = dev.readConfig32(C.max_write_zeroes_sectors) || 0xffff_ffff;
        limits.maxWriteZeroesSegments = dev.readConfig32(C.max_write_zeroes_seg) || 1;
        limits.writeZeroesMayUnmap = dev.readConfig8(C.write_zeroes_may_unmap) !== 0;
      }
      const d = new VirtioBlkDriver(dev, queues, limits, options);
      d.#capacity = readCapacity(dev);
      dev.onConfigChange(() => d.configChanged());
      dev.setDriverOk();
      driver = d;
      return d;
    } catch (e) {
      dev.fail();
      throw e;
    }
  }

  /** The request queues (`req.0`, `req.1`, ...); tokens are the driver's own. */
  get queues(): readonly Virtqueue<unknown>[] {
    return this.#vqs;
  }

  /** Capacity in 512-byte sectors, as last read from config. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Why the driver stopped (device broken, removed), or `null`. */
  get brokenReason(): string | null {
    return this.#broken;
  }

  /** Requests submitted and not completed, over all queues. */
  get inFlight(): number {
    let n = 0;
    for (let q = 0; q < this.#vqs.length; q++) {
      n += this.#inflight[q].size + this.#pending[q].length;
    }
    return n;
  }

  /** True when feature `bitNumber` was negotiated (`virtio_has_feature`). */
  hasFeature(bitNumber: number): boolean {
    return this.dev.hasFeature(bitNumber);
  }

  /**
   * The cache mode as Linux shows it in `cache_type`: with CONFIG_WCE the
   * `writeback` field, else writeback exactly when FLUSH was negotiated.
   * Models `virtblk_get_cache_mode`.
   */
  get cacheMode(): "write back" | "write through" {
    const wb = this.hasFeature(F.CONFIG_WCE)
      ? this.dev.readConfig8(C.wce) !== 0
      : this.hasFeature(F.FLUSH);
    return wb ? "write back" : "write through";
  }

  /**
   * Changes the cache mode through the `writeback` config field. Models a
   * write to `cache_type` (`cache_type_store`).
   *
   * @throws {BlockError} `EINVAL` without CONFIG_WCE
   */
  setCacheMode(mode: "write back" | "write through"): void {
    if (!this.hasFeature(F.CONFIG_WCE)) {
      throw new BlockError(
        "virtio_blk: the cache mode is fixed without CONFIG_WCE",
        BlockErrno.EINVAL,
      );
    }
    if (mode !== "write back" && mode !== "write through") {
      throw new TypeError(
        `Cannot set cache mode "${mode}": expected "write back" or "write through"`,
      );
    }
    this.dev.writeConfig8(C.wce, mode === "write back" ? 1 : 0);
  }

  // --- the virtio_blk driver proper ------------------------------------------

  /**
   * Submits one virtio-blk request with caller-provided data segments and
   * resolves with the device's status byte (never rejecting for a status).
   * Rejects with `EIO` when the device or queue breaks, or the mapping fails
   * for good. Models `virtio_queue_rq` + `virtblk_add_req`.
   *
   * @throws {RangeError} on a malformed request (bad queue, sector or type)
   */
  submit(request: BlkDriverRequest): Promise<BlkCompletion> {
    const type = request.type;
    if (!Number.isInteger(type) || type < 0 || type > 0xffff_ffff) {
      throw new RangeError(`Cannot submit a block request of type ${type}`);
    }
    const sector = request.sector ?? 0;
    if (!Number.isSafeInteger(sector) || sector < 0) {
      throw new RangeError(`Cannot submit a block request at sector ${sector}`);
    }
    const q = request.queue ?? this.#pickQueue();
    if (!Number.isInteger(q) || q < 0 || q >= this.#vqs.length) {
      throw new RangeError(`Cannot submit to queue ${q}: the driver has ${this.#vqs.length}`);
    }
    const data = request.data ?? [];
    const dataDirection = request.dataDirection ??
      ((type & 1) !== 0 ? DmaDirection.TO_DEVICE : DmaDirection.FROM_DEVICE);
    return this.#queue(q, type, sector, request.ioprio ?? 0, data, dataDirection, -1);
  }

  /** The queue interrupt handler. Models `virtblk_done`. */
  #done(vq: Virtqueue<InflightRequest>): void {
    const q = vq.index;
    do {
      vq.disableCb();
      let buf;
      while ((buf = vq.getBuf()) !== null) this.#complete(buf.token, buf.len);
      if (vq.isBroken()) {
        this.#failQueue(q, `queue ${q} is broken: ${vq.brokenReason}`);
        return;
      }
    } while (!vq.enableCb());
    this.#run(q);
  }

  /**
   * The config change handler: re-reads the capacity ("new size"), and fails
   * every request when the device reports DEVICE_NEEDS_RESET. Models
   * `virtblk_config_changed_work`.
   */
  configChanged(): void {
    if ((this.dev.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET) !== 0) {
      this.#breakAll("the device needs a reset");
      return;
    }
    const capacity = readCapacity(this.dev);
    if (capacity !== this.#capacity) {
      this.#capacity = capacity;
      this.#onCapacityChange?.(capacity);
    }
  }

  /**
   * Detaches the driver: fails what is still outstanding, resets the device
   * and deletes the queues. Models `virtblk_remove`.
   */
  remove(): void {
    this.#breakAll("the driver was removed");
    this.dev.onConfigChange(null);
    this.dev.reset();
    this.dev.deleteQueues();
  }

  // --- the block layer -------------------------------------------------------

  /**
   * Reads `length` bytes at `sector`: allocates guest pages, splits the range
   * into requests that respect the queue limits, and copies the result out.
   *
   * @throws {RangeError} when `length` or `sector` is not a multiple of the logical block size
   * @returns the bytes; rejects with a {@linkcode BlockError}
   */
  read(sector: number, length: number, options: { queue?: number } = {}): Promise<Uint8Array> {
    this.#checkRange(sector, length);
    const out = new Uint8Array(length);
    return this.#transfer(sector, length, false, out, options.queue).then(() => out);
  }

  /**
   * Writes `data` at `sector` through guest pages, split as the limits require.
   *
   * @throws {RangeError} when the length or sector is not a multiple of the logical block size
   * @returns nothing; rejects with `EROFS` on a read-only disk, or the device's error
   */
  write(sector: number, data: Uint8Array, options: { queue?: number } = {}): Promise<void> {
    if (!(data instanceof Uint8Array)) {
      throw new TypeError("Cannot write: data must be a Uint8Array");
    }
    this.#checkRange(sector, data.length);
    if (this.readOnly) {
      return Promise.reject(
        new BlockError("virtio_blk: write to a read-only disk", BlockErrno.EROFS),
      );
    }
    return this.#transfer(sector, data.length, true, data, options.queue);
  }

  /**
   * Flushes the device's write cache. In write-through mode there is nothing
   * to flush and no request is sent (the block layer drops the flush).
   */
  async flush(options: { queue?: number } = {}): Promise<void> {
    if (this.cacheMode === "write through" || !this.hasFeature(F.FLUSH)) return;
    check(await this.submit({ type: T.FLUSH, queue: options.queue }), "flush");
  }

  /**
   * Discards `sectors` sectors at `sector`, in segments of at most
   * `max_discard_sectors`, `max_discard_seg` per request.
   */
  discard(sector: number, sectors: number, options: { queue?: number } = {}): Promise<void> {
    checkSectors(sector, sectors);
    if (!this.hasFeature(F.DISCARD)) {
      return Promise.reject(
        new BlockError("virtio_blk: DISCARD is not supported", BlockErrno.EOPNOTSUPP),
      );
    }
    return this.#ranges(T.DISCARD, sector, sectors, false, options.queue);
  }

  /**
   * Zeroes `sectors` sectors at `sector` with WRITE_ZEROES; the unmap flag is
   * set unless `unmap` is false (the block layer's REQ_NOUNMAP).
   */
  writeZeroes(
    sector: number,
    sectors: number,
    options: { unmap?: boolean; queue?: number } = {},
  ): Promise<void> {
    checkSectors(sector, sectors);
    if (!this.hasFeature(F.WRITE_ZEROES)) {
      return Promise.reject(
        new BlockError("virtio_blk: WRITE_ZEROES is not supported", BlockErrno.EOPNOTSUPP),
      );
    }
    return this.#ranges(T.WRITE_ZEROES, sector, sectors, options.unmap ?? true, options.queue);
  }

  /**
   * Reads the device id (GET_ID): the serial up to its first NUL, or the empty
   * string when the device answers IOERR or UNSUPP. Models `serial_show`.
   */
  async getId(options: { queue?: number } = {}): Promise<string> {
    const heap = this.dev.heap;
    const buf = heap.kmalloc(VIRTIO_BLK_ID_BYTES);
    if (buf === null) throw new BlockError("virtio_blk: out of memory", BlockErrno.ENOMEM);
    const c = await this.#queue(
      options.queue ?? this.#pickQueue(),
      T.GET_ID,
      0,
      0,
      [{ addr: buf, length: VIRTIO_BLK_ID_BYTES }],
      DmaDirection.FROM_DEVICE,
      buf,
    );
    if (c.status !== S.OK) return "";
    const bytes = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    this.dev.memory.read(buf, bytes);
    let end = bytes.indexOf(0);
    if (end < 0) end = VIRTIO_BLK_ID_BYTES;
    return String.fromCharCode(...bytes.subarray(0, end));
  }

  #checkRange(sector: number, length: number): void {
    const bs = this.limits.logicalBlockSize;
    if (!Number.isSafeInteger(sector) || sector < 0 || (sector * SECTOR_SIZE) % bs !== 0) {
      throw new RangeError(
        `Cannot access sector ${sector}: not aligned to the ${bs}-byte block size`,
      );
    }
    if (!Number.isSafeInteger(length) || length < 0 || length % bs !== 0) {
      throw new RangeError(
        `Cannot access ${length} bytes: not a multiple of the ${bs}-byte block size`,
      );
    }
  }

  /** Splits a read or write into requests of at most `maxRequestBytes`, each over freshly allocated pages. */
  async #transfer(
    sector: number,
    length: number,
    write: boolean,
    bytes: Uint8Array,
    queue: number | undefined,
  ): Promise<void> {
    if (sector + length / SECTOR_SIZE > this.#capacity) {
      throw new BlockError(
        `virtio_blk: access beyond end of device (sector ${sector} + ${
          length / SECTOR_SIZE
        } > ${this.#capacity})`,
        BlockErrno.EIO,
      );
    }
    const parts: Promise<void>[] = [];
    for (let off = 0; off < length; off += this.#maxRequestBytes) {
      const n = Math.min(this.#maxRequestBytes, length - off);
      parts.push(
        this.#transferOne(sector + off / SECTOR_SIZE, bytes.subarray(off, off + n), write, queue),
      );
    }
    const results = await Promise.allSettled(parts);
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }

  async #transferOne(
    sector: number,
    bytes: Uint8Array,
    write: boolean,
    queue: number | undefined,
  ): Promise<void> {
    const pages = this.dev.pages;
    const memory = this.dev.memory;
    const segs: SgEntry[] = [];
    try {
      for (let off = 0; off < bytes.length; off += this.#segmentSize) {
        const n = Math.min(this.#segmentSize, bytes.length - off);
        const addr = pages.allocPagesExact(n);
        if (addr === null) {
          throw new BlockError("virtio_blk: out of guest memory", BlockErrno.ENOMEM);
        }
        segs.push({ addr, length: n });
        if (write) memory.write(addr, bytes.subarray(off, off + n));
      }
      const c = await this.submit({
        type: write ? T.OUT : T.IN,
        sector,
        data: segs,
        queue,
      });
      check(c, write ? "write" : "read");
      if (!write) {
        let off = 0;
        for (const s of segs) {
          memory.read(s.addr, bytes.subarray(off, off + s.length));
          off += s.length;
        }
      }
    } finally {
      for (const s of segs) pages.freePagesExact(s.addr, s.length);
    }
  }

  /** DISCARD / WRITE_ZEROES over a range, as few requests as the limits allow. */
  async #ranges(
    type: number,
    sector: number,
    sectors: number,
    unmap: boolean,
    queue: number | undefined,
  ): Promise<void> {
    if (this.readOnly) {
      throw new BlockError("virtio_blk: write to a read-only disk", BlockErrno.EROFS);
    }
    if (sector + sectors > this.#capacity) {
      throw new BlockError("virtio_blk: access beyond end of device", BlockErrno.EIO);
    }
    const l = this.limits;
    const maxSectors = type === T.DISCARD ? l.maxDiscardSectors : l.maxWriteZeroesSectors;
    const maxSegs = type === T.DISCARD ? l.maxDiscardSegments : l.maxWriteZeroesSegments;
    const ranges: [number, number][] = [];
    for (let s = sector; s < sector + sectors;) {
      const n = Math.min(maxSectors, sector + sectors - s);
      ranges.push([s, n]);
      s += n;
    }
    const heap = this.dev.heap;
    const memory = this.dev.memory;
    const requests: Promise<BlkCompletion>[] = [];
    for (let i = 0; i < ranges.length; i += maxSegs) {
      const batch = ranges.slice(i, i + maxSegs);
      const buf = heap.kmalloc(16 * batch.length);
      if (buf === null) throw new BlockError("virtio_blk: out of memory", BlockErrno.ENOMEM);
      batch.forEach(([s, n], k) => {
        memory.write64(buf + 16 * k, s);
        memory.write32(buf + 16 * k + 8, n);
        memory.write32(buf + 16 * k + 12, unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0);
      });
      requests.push(
        this.#queue(
          queue ?? this.#pickQueue(),
          type,
          0,
          0,
          [{ addr: buf, length: 16 * batch.length }],
          DmaDirection.TO_DEVICE,
          buf,
        ),
      );
    }
    const what = type === T.DISCARD ? "discard" : "write zeroes";
    for (const c of await Promise.all(requests)) check(c, what);
  }

  // --- submission and completion ---------------------------------------------

  #pickQueue(): number {
    const q = this.#nextQueue;
    this.#nextQueue = (q + 1) % this.#vqs.length;
    return q;
  }

  #queue(
    q: number,
    type: number,
    sector: number,
    ioprio: number,
    data: readonly SgEntry[],
    dataDirection: DmaDirection,
    payload: number,
  ): Promise<BlkCompletion> {
    if (this.#broken !== null) {
      if (payload >= 0) this.dev.heap.kfree(payload);
      return Promise.reject(new BlockError(`virtio_blk: ${this.#broken}`, BlockErrno.EIO));
    }
    const heap = this.dev.heap;
    const hdr = heap.kmalloc(32);
    if (hdr === null) {
      if (payload >= 0) heap.kfree(payload);
      return Promise.reject(new BlockError("virtio_blk: out of memory", BlockErrno.ENOMEM));
    }
    const memory = this.dev.memory;
    memory.write32(hdr, type >>> 0);
    memory.write32(hdr + 4, ioprio >>> 0);
    memory.write32(hdr + 8, sector >>> 0);
    memory.write32(hdr + 12, Math.floor(sector / TWO_32));
    memory.write8(hdr + 16, 0xff);
    return new Promise((resolve, reject) => {
      this.#pending[q].push({
        queue: q,
        hdr,
        payload,
        buffers: { data, dataDirection },
        mapping: null,
        resolve,
        reject,
      });
      this.#run(q);
    });
  }

  /** Adds pending requests to queue `q` until it is full, then schedules one kick. */
  #run(q: number): void {
    const vq = this.#vqs[q];
    const pending = this.#pending[q];
    let added = false;
    while (pending.length > 0 && this.#broken === null) {
      const req = pending[0];
      const mapped = this.mapper.mapRequest({
        header: { addr: req.hdr, length: 16 },
        data: req.buffers.data,
        dataDirection: req.buffers.dataDirection,
        status: { addr: req.hdr + 16, length: 1 },
      });
      if (typeof mapped === "number") {
        if (mapped === -Errno.ENOMEM && this.#inflight[q].size > 0) break; // retry on completion
        pending.shift();
        this.#finish(req, new BlockError(`virtio_blk: mapping failed (${mapped})`, BlockErrno.EIO));
        continue;
      }
      const err = vq.addSgs(mapped.out, mapped.in, req, mapped.premapped);
      if (err === 0) {
        req.mapping = mapped;
        pending.shift();
        this.#inflight[q].add(req);
        added = true;
        continue;
      }
      this.mapper.unmapRequest(mapped);
      if ((err === -Errno.ENOSPC || err === -BlockErrno.ENOMEM) && this.#inflight[q].size > 0) {
        break;
      }
      pending.shift();
      this.#finish(
        req,
        new BlockError(`virtio_blk: cannot queue the request (${err})`, BlockErrno.EIO),
      );
    }
    if (added && !this.#kickScheduled[q]) {
      this.#kickScheduled[q] = true;
      queueMicrotask(this.#starts[q]);
    }
  }

  #kick(q: number): void {
    this.#kickScheduled[q] = false;
    const vq = this.#vqs[q];
    if (!vq.kick() && vq.isBroken()) this.#failQueue(q, `queue ${q} is broken: ${vq.brokenReason}`);
  }

  #complete(req: InflightRequest, len: number): void {
    if (!this.#inflight[req.queue].delete(req)) return;
    const status = this.dev.memory.read8(req.hdr + 16);
    this.#release(req);
    req.resolve({ status, len });
  }

  #release(req: InflightRequest): void {
    if (req.mapping !== null) this.mapper.unmapRequest(req.mapping);
    req.mapping = null;
    const heap = this.dev.heap;
    heap.kfree(req.hdr);
    if (req.payload >= 0) heap.kfree(req.payload);
  }

  #finish(req: InflightRequest, error: BlockError): void {
    this.#release(req);
    req.reject(error);
  }

  #failQueue(q: number, reason: string): void {
    for (const req of this.#inflight[q]) {
      this.#finish(req, new BlockError(`virtio_blk: ${reason}`, BlockErrno.EIO));
    }
    this.#inflight[q].clear();
    for (const req of this.#pending[q].splice(0)) {
      this.#finish(req, new BlockError(`virtio_blk: ${reason}`, BlockErrno.EIO));
    }
  }

  #breakAll(reason: string): void {
    if (this.#broken === null) this.#broken = reason;
    for (let q = 0; q < this.#vqs.length; q++) {
      this.#vqs[q].markBroken(reason);
      this.#failQueue(q, reason);
    }
  }
}

/** Reads the le64 capacity (sectors), clamped below 2^53. */
function readCapacity(dev: BlkGuestDevice): number {
  const v = dev.readConfig64(C.capacity);
  return v >= 1n << 53n ? Number.MAX_SAFE_INTEGER : Number(v);
}

/** Throws `RangeError` unless both are non-negative integers. */
function checkSectors(sector: number, sectors: number): void {
  if (
    !Number.isSafeInteger(sector) || sector < 0 || !Number.isSafeInteger(sectors) || sectors < 0
  ) {
    throw new RangeError(`Cannot discard or zero ${sectors} sectors at sector ${sector}`);
  }
}

/** Turns a status byte into success or the block layer's error. Models `virtblk_result`. */
function check(c: BlkCompletion, what: string): void {
  if (c.status === S.OK) return;
  if (c.status === S.UNSUPP) {
    throw new BlockError(
      `virtio_blk: ${what} not supported by the device`,
      BlockErrno.EOPNOTSUPP,
      c.status,
    );
  }
  throw new BlockError(
    `virtio_blk: ${what} failed with status ${c.status}`,
    BlockErrno.EIO,
    c.status,
  );
}
