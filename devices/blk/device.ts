import { DmaAccess } from "../../src/dma/dma_access.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { type DmaSpace, DmaTranslation } from "../../src/dma/dma_space.ts";
import { GuestFault } from "../../src/guest_fault.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import type { ActivateContext, VirtioDevice, VirtioDeviceHost } from "../../src/virtio/device.ts";
import { VirtioDeviceId } from "../../src/virtio/device_id.ts";
import { hasFeature, VirtioFeature } from "../../src/virtio/features.ts";
import type { BlockBackend, BlockResult } from "./backends/block_backend.ts";
import {
  resolveBlkOptions,
  type ResolvedBlkOptions,
  setCapacity,
  type VirtioBlkOptions,
  writeBlkConfig,
} from "./config.ts";
import {
  VIRTIO_BLK_CONFIG_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_BLK_SEGMENT_SIZE,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  VirtioBlkConfigOffset,
  VirtioBlkFeature,
  VirtioBlkRequestType as T,
  VirtioBlkStatus as S,
} from "./constants.ts";
import { createVirtioBlkStats, type VirtioBlkStats } from "./metrics.ts";

const TWO_32 = 0x1_0000_0000;
/** The largest high word of a sector number that keeps it below 2^53. */
const MAX_SAFE_HIGH = 0x1f_ffff;
const EMPTY = new Uint8Array(0);

/** What a request's backend work is. */
type Op = number;
const OP_NONE = 0;
const OP_READ = 1;
const OP_WRITE = 2;
const OP_DISCARD = 3;
const OP_WRITE_ZEROES = 4;
const OP_FLUSH = 5;

/** The state of one virtqueue the device runs: its queue, its request pool, its bound. */
class QueueRun {
  readonly queue: DeviceQueue;
  readonly index: number;
  /** Requests ready for reuse. */
  readonly free: BlkRequest[] = [];
  /** Requests created so far (at most the in-flight bound). */
  created = 0;
  /** False once the queue or the device was reset: late completions are dropped. */
  alive = true;
  /** The in-flight bound was reached: the device stopped popping and asked not to be kicked. */
  throttled = false;
  /** Inside the pop loop: completions push but leave publishing to the loop. */
  processing = false;
  /** VIRTIO_F_IN_ORDER: chains must be used in the order they were popped. */
  readonly inOrder: boolean;
  /** With IN_ORDER, the requests in pop order from `orderHead` on. */
  readonly order: BlkRequest[] = [];
  orderHead = 0;

  constructor(queue: DeviceQueue, inOrder: boolean) {
    this.queue = queue;
    this.index = queue.index;
    this.inOrder = inOrder;
  }
}

/** One request in flight; objects are pooled per queue and reused. */
class BlkRequest {
  readonly run: QueueRun;
  readonly chain: DescriptorChain;
  /** Data runs: views of guest memory, one per contiguous piece of the data part. */
  readonly views: Uint8Array[] = [];
  viewCount = 0;
  /** DISCARD / WRITE_ZEROES segments as byte ranges. */
  readonly segOffset: Float64Array;
  readonly segLength: Float64Array;
  readonly segUnmap: Uint8Array;
  segCount = 0;
  op: Op = OP_NONE;
  /** Byte offset on the disk. */
  offset = 0;
  /** Data bytes of an IN / OUT request. */
  length = 0;
  /** Where the status byte lives. */
  statusBytes: Uint8Array = EMPTY;
  statusOffset = 0;
  /** Bytes written to the writable part before the status byte. */
  written = 0;
  /** Backend operations not settled yet, plus one while they are being issued. */
  pending = 0;
  /** A backend operation failed. */
  failed = false;
  /** Flush the backend once the data operations are done (FLUSH, or writethrough). */
  flushAfter = false;
  /** With IN_ORDER: completed, waiting for older requests; the used length to push. */
  ready = false;
  usedLength = 0;
  /** Settles one backend operation; bound once per pooled object. */
  readonly onDone: () => void;
  /** Settles one failed backend operation; bound once per pooled object. */
  readonly onError: (e: unknown) => void;

  constructor(
    run: QueueRun,
    dma: DmaSpace,
    chainCapacity: number,
    segCapacity: number,
    settle: (req: BlkRequest) => void,
    error: (req: BlkRequest, e: unknown) => void,
  ) {
    this.run = run;
    this.chain = new DescriptorChain(dma, chainCapacity);
    this.segOffset = new Float64Array(segCapacity);
    this.segLength = new Float64Array(segCapacity);
    this.segUnmap = new Uint8Array(segCapacity);
    this.onDone = () => settle(this);
    this.onError = (e) => {
      error(this, e);
      settle(this);
    };
  }
}

/** The saved state of a {@linkcode VirtioBlk}: plain data (JSON-safe). */
export interface VirtioBlkState {
  /** Format version, 1. */
  version: 1;
  /** Capacity in sectors when saved; restoring onto a different size is refused. */
  capacity: number;
  /** The `writeback` config byte (0 or 1). */
  writeback: number;
  /** The negotiated feature word as a hex string (`"0x…"`), `"0x0"` before negotiation. */
  features: string;
}

/**
 * A virtio-blk device (virtio 1.x §5.2, device id 2) over a
 * {@linkcode BlockBackend}.
 *
 * Requests: IN, OUT, FLUSH (and legacy FLUSH_OUT), GET_ID, DISCARD and
 * WRITE_ZEROES (with the unmap flag). Each completes as soon as its backend
 * work does: synchronously inside `notify` for a synchronous backend (no
 * promise, no allocation beyond the data views), or later and out of order for
 * an asynchronous one (with VIRTIO_F_IN_ORDER, early completions wait for
 * older ones before their chains are used). At most `queueDepth` requests are in flight per queue;
 * at the bound the device stops popping and asks not to be kicked, and
 * resumes when a request completes.
 *
 * Status rules (spec §5.2.6, QEMU where the spec is silent):
 * - IOERR: a range past the capacity; an IN/OUT length or sector not a
 *   multiple of the logical block size; any write (OUT, DISCARD, WRITE_ZEROES)
 *   to a read-only disk; a DISCARD / WRITE_ZEROES payload that is empty or not
 *   whole 16-byte segments, or a segment over `max_*_sectors`; a backend
 *   failure; a DMA fault on the request's header or data.
 * - UNSUPP: an unknown type, GET_LIFETIME, SECURE_ERASE and zone commands;
 *   FLUSH / DISCARD / WRITE_ZEROES when the feature was not negotiated; a
 *   segment with an unknown flag; DISCARD with the unmap flag; more segments
 *   than `max_*_seg`.
 * - The device is broken by the guest (DEVICE_NEEDS_RESET through
 *   `host.fail`): a chain without a device-writable byte for the status, a
 *   header shorter than 16 bytes, a status byte the device cannot write, and
 *   any fault on the rings themselves.
 *
 * Durability: FLUSH completes after `backend.flush()` does, so every write
 * that completed before the FLUSH was taken from the ring is durable when the
 * driver sees the FLUSH complete (spec §5.2.6.2 rule c). In writethrough mode
 * (no FLUSH negotiated, or CONFIG_WCE with `writeback` 0) every write is
 * flushed before it completes.
 *
 * @example
 * ```ts
 * import { MemoryBackend, VirtioBlk } from "@vireo/vireo/blk";
 * const blk = new VirtioBlk({ backend: new MemoryBackend(1 << 20), serial: "disk0" });
 * console.log(blk.capacity, blk.config[0], blk.config[1]); // 2048 0 8
 * ```
 */
export class VirtioBlk implements VirtioDevice {
  /** {@linkcode VirtioDeviceId.BLOCK}. */
  readonly deviceId: number = VirtioDeviceId.BLOCK;
  /** The virtio-blk feature bits offered. */
  readonly deviceFeatures: bigint;
  /** Request queues. */
  readonly numQueues: number;
  /** `struct virtio_blk_config` (96 bytes). */
  readonly config: Uint8Array = new Uint8Array(VIRTIO_BLK_CONFIG_SIZE);
  /** The storage. */
  readonly backend: BlockBackend;
  /** Counters. */
  readonly stats: VirtioBlkStats = createVirtioBlkStats();
  /** The options as resolved (defaults filled in). */
  readonly options: ResolvedBlkOptions;

  #host: VirtioDeviceHost | null = null;
  #runs: (QueueRun | null)[] = [];
  #dma: DmaSpace | null = null;
  #features = 0n;
  #capacity = 0;
  readonly #blockSectors: number;
  readonly #chainCapacity: number;
  readonly #segCapacity: number;
  #negFlush = false;
  #negDiscard = false;
  #negWriteZeroes = false;
  #writethrough = true;
  #broken = false;
  #inFlight = 0;
  #idleWaiters: (() => void)[] = [];
  readonly #t = new DmaTranslation();
  readonly #hdr = new Uint8Array(16);
  readonly #hdrView = new DataView(this.#hdr.buffer);
  readonly #settle = (req: BlkRequest): void => this.#settleOne(req);
  readonly #error = (req: BlkRequest, e: unknown): void => this.#backendError(req, e);

  /**
   * Creates the device.
   *
   * @param options backend, serial, queues and limits
   * @throws {TypeError} when an option has the wrong type
   * @throws {RangeError} when an option is out of range
   */
  constructor(options: VirtioBlkOptions) {
    const o = resolveBlkOptions(options);
    this.options = o;
    this.backend = o.backend;
    this.deviceFeatures = o.features;
    this.numQueues = o.numQueues;
    this.#blockSectors = o.blockSize / VIRTIO_BLK_SECTOR_SIZE;
    this.#chainCapacity = Math.min(o.segMax + 4, 0x10000);
    this.#segCapacity = Math.max(
      o.discard?.maxSegments ?? 1,
      o.writeZeroes?.maxSegments ?? 1,
    );
    this.#capacity = Math.floor(o.backend.size / VIRTIO_BLK_SECTOR_SIZE);
    writeBlkConfig(this.config, o, this.#capacity);
  }

  /** Capacity in 512-byte sectors, as the config reports it. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Requests taken from the rings and not completed yet, over all queues. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** True once the guest broke the device, until the next reset. */
  get broken(): boolean {
    return this.#broken;
  }

  /** True when writes are currently made durable before they complete. */
  get writethrough(): boolean {
    return this.#writethrough;
  }

  /** See {@linkcode VirtioDevice.queueMaxSize}. */
  queueMaxSize(_index: number): number {
    return this.options.queueSize;
  }

  /** See {@linkcode VirtioDevice.bind}. @throws {Error} when bound twice */
  bind(host: VirtioDeviceHost): void {
    if (this.#host !== null) throw new Error("Cannot bind a virtio-blk device twice");
    this.#host = host;
  }

  /**
   * See {@linkcode VirtioDevice.writeConfig}: only `writeback` is writable, and
   * only once VIRTIO_BLK_F_CONFIG_WCE was accepted; other writes are ignored.
   */
  writeConfig(offset: number, data: Uint8Array): void {
    const at = VirtioBlkConfigOffset.WRITEBACK - offset;
    if (at < 0 || at >= data.length) return;
    if (!hasFeature(this.#features, VirtioBlkFeature.CONFIG_WCE)) return;
    this.config[VirtioBlkConfigOffset.WRITEBACK] = data[at] !== 0 ? 1 : 0;
    this.#updateCacheMode();
  }

  /**
   * See {@linkcode VirtioDevice.validateFeatures}: every subset is acceptable.
   * With CONFIG_WCE but not FLUSH, `writeback` is set to 0 (spec §5.2.5).
   */
  validateFeatures(features: bigint): string | null {
    this.#setFeatures(features);
    if (
      hasFeature(features, VirtioBlkFeature.CONFIG_WCE) &&
      !hasFeature(features, VirtioBlkFeature.FLUSH)
    ) {
      this.config[VirtioBlkConfigOffset.WRITEBACK] = 0;
      this.#updateCacheMode();
    }
    return null;
  }

  /** See {@linkcode VirtioDevice.activate}. */
  activate(context: ActivateContext): void {
    this.#setFeatures(context.features);
    this.#dma = context.dma;
    this.#killRuns();
    const inOrder = hasFeature(context.features, VirtioFeature.IN_ORDER);
    this.#runs = context.queues.map((q) => (q === null ? null : new QueueRun(q, inOrder)));
  }

  /** See {@linkcode VirtioDevice.notify}: takes requests until the ring is empty or the bound is hit. */
  notify(index: number, _data?: number): void {
    const run = this.#runs[index];
    if (run === undefined || run === null || this.#broken) return;
    this.#process(run);
  }

  /** See {@linkcode VirtioDevice.resetQueue}: requests still in flight there are dropped when they complete. */
  resetQueue(index: number): void {
    const run = this.#runs[index];
    if (run === undefined || run === null) return;
    run.alive = false;
    this.#runs[index] = null;
  }

  /** See {@linkcode VirtioDevice.enableQueue}. */
  enableQueue(index: number, queue: DeviceQueue): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.numQueues) {
      throw new RangeError(
        `Cannot enable virtio-blk queue ${index}: the device has ${this.numQueues}`,
      );
    }
    const old = this.#runs[index];
    if (old) old.alive = false;
    this.#runs[index] = new QueueRun(queue, hasFeature(this.#features, VirtioFeature.IN_ORDER));
  }

  /**
   * See {@linkcode VirtioDevice.reset}. Requests whose backend work is still
   * running are dropped when it finishes; an asynchronous backend may still
   * write their read data into guest memory meanwhile (await
   * {@linkcode VirtioBlk.idle} before reusing that memory if it matters).
   */
  reset(): void {
    this.#killRuns();
    this.#runs = [];
    this.#dma = null;
    this.#broken = false;
    this.#setFeatures(0n);
    this.config[VirtioBlkConfigOffset.WRITEBACK] = this.options.writeback;
    this.#updateCacheMode();
  }

  /**
   * Resolves once no request is in flight (all backend work finished), at once
   * if none is. For tests, and before {@linkcode VirtioBlk.saveState}.
   */
  idle(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Re-reads the backend's size, updates `capacity` and raises a config
   * change notification when it changed (spec §5.2.6: SHOULD notify).
   *
   * @returns the new capacity in sectors
   */
  updateCapacity(): number {
    const size = this.backend.size;
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new RangeError(
        `Cannot update the virtio-blk capacity: backend size ${size} is not a byte count`,
      );
    }
    const capacity = Math.floor(size / VIRTIO_BLK_SECTOR_SIZE);
    if (capacity !== this.#capacity) {
      this.#capacity = capacity;
      setCapacity(this.config, capacity);
      this.#host?.configChanged();
    }
    return capacity;
  }

  /**
   * See {@linkcode VirtioDevice.saveState}.
   *
   * @throws {RangeError} while requests are in flight (await {@linkcode VirtioBlk.idle} first)
   */
  saveState(): Record<string, unknown> {
    if (this.#inFlight !== 0) {
      throw new RangeError(
        `Cannot save virtio-blk state while ${this.#inFlight} requests are in flight: await idle() first`,
      );
    }
    const state: VirtioBlkState = {
      version: 1,
      capacity: this.#capacity,
      writeback: this.config[VirtioBlkConfigOffset.WRITEBACK],
      features: `0x${this.#features.toString(16)}`,
    };
    return { ...state };
  }

  /**
   * See {@linkcode VirtioDevice.restoreState}.
   *
   * @throws {TypeError} on a malformed state
   * @throws {RangeError} when the saved capacity is not the backend's
   */
  restoreState(state: Record<string, unknown>): void {
    if (typeof state !== "object" || state === null || state.version !== 1) {
      throw new TypeError("Cannot restore virtio-blk state: expected an object with version 1");
    }
    const { capacity, writeback, features } = state;
    if (!Number.isSafeInteger(capacity) || (capacity as number) < 0) {
      throw new TypeError(
        `Cannot restore virtio-blk state: capacity ${capacity} is not a sector count`,
      );
    }
    if (writeback !== 0 && writeback !== 1) {
      throw new TypeError(`Cannot restore virtio-blk state: writeback ${writeback} is not 0 or 1`);
    }
    if (typeof features !== "string" || !/^0x[0-9a-f]{1,32}$/.test(features)) {
      throw new TypeError(
        `Cannot restore virtio-blk state: features ${features} is not a hex string`,
      );
    }
    if (capacity !== this.#capacity) {
      throw new RangeError(
        `Cannot restore virtio-blk state: saved capacity ${capacity} sectors differs from the backend's ${this.#capacity}`,
      );
    }
    const f = BigInt(features);
    if ((f & ((1n << 24n) - 1n) & ~this.deviceFeatures) !== 0n) {
      throw new TypeError(
        `Cannot restore virtio-blk state: features ${features} include device bits this device does not offer`,
      );
    }
    this.#setFeatures(f);
    this.config[VirtioBlkConfigOffset.WRITEBACK] = writeback;
    this.#updateCacheMode();
  }

  // --- negotiation -----------------------------------------------------------

  #setFeatures(features: bigint): void {
    this.#features = features;
    this.#negFlush = hasFeature(features, VirtioBlkFeature.FLUSH);
    this.#negDiscard = hasFeature(features, VirtioBlkFeature.DISCARD);
    this.#negWriteZeroes = hasFeature(features, VirtioBlkFeature.WRITE_ZEROES);
    this.#updateCacheMode();
  }

  /** Writethrough unless FLUSH lets the driver flush, and CONFIG_WCE (if accepted) says writeback. */
  #updateCacheMode(): void {
    const wce = hasFeature(this.#features, VirtioBlkFeature.CONFIG_WCE);
    this.#writethrough = !this.#negFlush ||
      (wce && this.config[VirtioBlkConfigOffset.WRITEBACK] === 0);
  }

  #killRuns(): void {
    for (const run of this.#runs) if (run) run.alive = false;
  }

  // --- the queue loop --------------------------------------------------------

  /** Pops and starts requests while below the bound, then publishes the used entries. */
  #process(run: QueueRun): void {
    const queue = run.queue;
    const depth = Math.min(this.options.queueDepth, queue.size);
    run.processing = true;
    try {
      for (;;) {
        let req = run.free.pop();
        if (req === undefined) {
          if (run.created < depth) {
            req = this.#newRequest(run);
          } else {
            if (!run.throttled) {
              run.throttled = true;
              this.stats.throttled++;
              queue.setNotification(false);
            }
            break;
          }
        }
        if (!queue.pop(req.chain)) {
          run.free.push(req);
          if (run.throttled) {
            run.throttled = false;
            if (queue.setNotification(true)) continue;
          }
          break;
        }
        if (++this.#inFlight > this.stats.peakInFlight) this.stats.peakInFlight = this.#inFlight;
        if (run.inOrder) run.order.push(req);
        try {
          this.#start(req);
        } catch (e) {
          this.#retire(); // a malformed request never completes
          throw e;
        }
        if (this.#broken || !run.alive) break;
      }
      run.processing = false;
      if (run.alive && !this.#broken && queue.publishUsed()) this.#host?.interrupt(run.index);
    } catch (e) {
      run.processing = false;
      this.#fault(e);
    }
  }

  /** One request fewer in flight; wakes `idle()` waiters at zero. */
  #retire(): void {
    if (--this.#inFlight === 0 && this.#idleWaiters.length > 0) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  #newRequest(run: QueueRun): BlkRequest {
    if (this.#dma === null) throw new Error("Cannot run a virtio-blk queue before activation");
    run.created++;
    return new BlkRequest(
      run,
      this.#dma,
      this.#chainCapacity,
      this.#segCapacity,
      this.#settle,
      this.#error,
    );
  }

  /** A guest fault breaks the device; anything else is a bug and propagates. */
  #fault(e: unknown): void {
    if (!(e instanceof GuestFault)) throw e;
    this.stats.deviceErrors++;
    this.#broken = true;
    this.#host?.fail(`virtio-blk: ${e.message}`);
  }

  // --- parsing ---------------------------------------------------------------

  /** Validates the framing, reads the header and starts the request. @throws {GuestFault} */
  #start(req: BlkRequest): void {
    const chain = req.chain;
    const q = req.run.index;
    if (chain.writableLength === 0) {
      throw new GuestFault(
        `queue ${q}: request at head ${chain.head} has no device-writable byte for the status`,
      );
    }
    if (chain.readableLength < VIRTIO_BLK_OUTHDR_SIZE) {
      throw new GuestFault(
        `queue ${q}: request at head ${chain.head} has a ${chain.readableLength}-byte header, expected 16`,
      );
    }
    // The status byte is the last byte of the writable part.
    let seg = chain.segmentCount - 1;
    while (chain.lengths[seg] === 0) seg--;
    const statusAddr = chain.addrs[seg] + chain.lengths[seg] - 1;
    const t = this.#t;
    try {
      chain.dma.translate(statusAddr, 1, DmaAccess.Write, t);
    } catch (e) {
      if (e instanceof DmaFault) {
        throw new GuestFault(`queue ${q}: cannot write the status byte: ${e.message}`, {
          cause: e,
        });
      }
      throw e;
    }
    req.statusBytes = t.bytes;
    req.statusOffset = t.offset;
    req.written = 0;
    req.failed = false;
    req.flushAfter = false;
    req.viewCount = 0;
    req.segCount = 0;
    req.op = OP_NONE;

    const hdr = this.#hdr;
    if (!this.#readReadable(chain, 0, hdr)) return this.#complete(req, S.IOERR);
    const type = this.#hdrView.getUint32(0, true);
    switch (type) {
      case T.IN:
        this.stats.readRequests++;
        return this.#startData(req, false);
      case T.OUT:
        this.stats.writeRequests++;
        return this.#startData(req, true);
      case T.FLUSH:
      case T.FLUSH_OUT:
        this.stats.flushRequests++;
        if (!this.#negFlush) return this.#complete(req, S.UNSUPP);
        req.op = OP_FLUSH;
        req.flushAfter = true;
        return this.#issue(req);
      case T.GET_ID:
        this.stats.getIdRequests++;
        return this.#getId(req);
      case T.DISCARD:
        this.stats.discardRequests++;
        return this.#startRanges(req, OP_DISCARD);
      case T.WRITE_ZEROES:
        this.stats.writeZeroesRequests++;
        return this.#startRanges(req, OP_WRITE_ZEROES);
      default:
        return this.#complete(req, S.UNSUPP);
    }
  }

  /** The sector of the header in `#hdr`, or -1 when it is at or above 2^53. */
  #headerSector(): number {
    const v = this.#hdrView;
    const high = v.getUint32(12, true);
    return high > MAX_SAFE_HIGH ? -1 : high * TWO_32 + v.getUint32(8, true);
  }

  /** IN and OUT. */
  #startData(req: BlkRequest, write: boolean): void {
    const chain = req.chain;
    if (write && this.options.readOnly) {
      this.stats.readOnlyWrites++;
      return this.#complete(req, S.IOERR);
    }
    const length = write ? chain.readableLength - VIRTIO_BLK_OUTHDR_SIZE : chain.writableLength - 1;
    const sector = this.#headerSector();
    const blockSectors = this.#blockSectors;
    const sectors = length / VIRTIO_BLK_SECTOR_SIZE;
    const cap = this.#capacity;
    if (sector < 0 || sector > cap || sectors > cap - sector) {
      this.stats.outOfRange++;
      return this.#complete(req, S.IOERR);
    }
    if (length % (blockSectors * VIRTIO_BLK_SECTOR_SIZE) !== 0 || sector % blockSectors !== 0) {
      this.stats.misaligned++;
      return this.#complete(req, S.IOERR);
    }
    req.offset = sector * VIRTIO_BLK_SECTOR_SIZE;
    req.length = length;
    try {
      if (write) {
        this.#collect(req, 0, chain.readableCount, VIRTIO_BLK_OUTHDR_SIZE, length, DmaAccess.Read);
      } else {
        this.#collect(req, chain.readableCount, chain.segmentCount, 0, length, DmaAccess.Write);
      }
    } catch (e) {
      if (!(e instanceof DmaFault)) throw e;
      this.stats.dataDmaFaults++;
      return this.#complete(req, S.IOERR);
    }
    req.op = write ? OP_WRITE : OP_READ;
    req.written = write ? 0 : length;
    req.flushAfter = write && this.#writethrough;
    this.#issue(req);
  }

  /** GET_ID: the serial, NUL-padded to 20 bytes, truncated to the buffer if shorter. */
  #getId(req: BlkRequest): void {
    const chain = req.chain;
    const n = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableLength - 1);
    const writer = chain.writer;
    writer.rewind();
    try {
      writer.write(n === VIRTIO_BLK_ID_BYTES ? this.options.id : this.options.id.subarray(0, n));
    } catch (e) {
      if (!(e instanceof DmaFault)) throw e;
      this.stats.dataDmaFaults++;
      return this.#complete(req, S.IOERR);
    }
    req.written = n;
    this.#complete(req, S.OK);
  }

  /** DISCARD and WRITE_ZEROES: read and check every segment, then issue them. */
  #startRanges(req: BlkRequest, op: Op): void {
    const o = this.options;
    const limits = op === OP_DISCARD ? o.discard : o.writeZeroes;
    const negotiated = op === OP_DISCARD ? this.#negDiscard : this.#negWriteZeroes;
    if (limits === null || !negotiated) return this.#complete(req, S.UNSUPP);
    if (o.readOnly) {
      this.stats.readOnlyWrites++;
      return this.#complete(req, S.IOERR);
    }
    const payload = req.chain.readableLength - VIRTIO_BLK_OUTHDR_SIZE;
    if (payload === 0 || payload % VIRTIO_BLK_SEGMENT_SIZE !== 0) {
      this.stats.badSegments++;
      return this.#complete(req, S.IOERR);
    }
    const count = payload / VIRTIO_BLK_SEGMENT_SIZE;
    if (count > limits.maxSegments) {
      this.stats.badSegments++;
      return this.#complete(req, S.UNSUPP);
    }
    // Read every segment first: an unknown flag anywhere makes the whole request UNSUPP.
    const hdr = this.#hdr;
    const view = this.#hdrView;
    let unsupported = false;
    let bad = false;
    const cap = this.#capacity;
    const bs = this.#blockSectors;
    for (let i = 0; i < count; i++) {
      if (!this.#readReadable(req.chain, VIRTIO_BLK_OUTHDR_SIZE + i * 16, hdr)) {
        return this.#complete(req, S.IOERR);
      }
      const high = view.getUint32(4, true);
      const sector = high > MAX_SAFE_HIGH ? -1 : high * TWO_32 + view.getUint32(0, true);
      const sectors = view.getUint32(8, true);
      const flags = view.getUint32(12, true);
      if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0) unsupported = true;
      const unmap = (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0;
      if (op === OP_DISCARD && unmap) unsupported = true;
      if (
        sectors > limits.maxSectors || sector < 0 || sector > cap || sectors > cap - sector ||
        sector % bs !== 0 || sectors % bs !== 0
      ) {
        bad = true;
      }
      req.segOffset[i] = sector * VIRTIO_BLK_SECTOR_SIZE;
      req.segLength[i] = sectors * VIRTIO_BLK_SECTOR_SIZE;
      req.segUnmap[i] = unmap && o.writeZeroes?.mayUnmap ? 1 : 0;
    }
    if (unsupported) {
      this.stats.badSegments++;
      return this.#complete(req, S.UNSUPP);
    }
    if (bad) {
      this.stats.outOfRange++;
      return this.#complete(req, S.IOERR);
    }
    req.segCount = count;
    req.op = op;
    req.flushAfter = this.#writethrough;
    this.#issue(req);
  }

  /**
   * Copies `dest.length` bytes from offset `at` of the chain's readable part
   * into `dest`; false (counted) when the device cannot reach them.
   */
  #readReadable(chain: DescriptorChain, at: number, dest: Uint8Array): boolean {
    const t = this.#t;
    const dma = chain.dma;
    const end = chain.readableCount;
    let seg = 0;
    let segOff = at;
    while (seg < end && segOff >= chain.lengths[seg]) {
      segOff -= chain.lengths[seg];
      seg++;
    }
    let pos = 0;
    const n = dest.length;
    try {
      while (pos < n && seg < end) {
        const left = chain.lengths[seg] - segOff;
        const want = left < n - pos ? left : n - pos;
        dma.translate(chain.addrs[seg] + segOff, want, DmaAccess.Read, t);
        const bytes = t.bytes;
        for (let i = 0, o = t.offset; i < t.length; i++) dest[pos + i] = bytes[o + i];
        pos += t.length;
        segOff += t.length;
        if (segOff === chain.lengths[seg]) {
          seg++;
          segOff = 0;
        }
      }
    } catch (e) {
      if (!(e instanceof DmaFault)) throw e;
      this.stats.dataDmaFaults++;
      return false;
    }
    return pos === n;
  }

  /**
   * Translates `length` bytes of segments `[first, end)`, after skipping `skip`
   * bytes, into `req.views`. @throws {DmaFault}
   */
  #collect(
    req: BlkRequest,
    first: number,
    end: number,
    skip: number,
    length: number,
    access: DmaAccess,
  ): void {
    const chain = req.chain;
    const lengths = chain.lengths;
    const addrs = chain.addrs;
    const dma = chain.dma;
    const t = this.#t;
    const views = req.views;
    let seg = first;
    while (seg < end && skip >= lengths[seg]) {
      skip -= lengths[seg];
      seg++;
    }
    let segOff = skip;
    let left = length;
    let n = 0;
    while (left > 0 && seg < end) {
      const avail = lengths[seg] - segOff;
      if (avail === 0) {
        seg++;
        segOff = 0;
        continue;
      }
      dma.translate(addrs[seg] + segOff, avail < left ? avail : left, access, t);
      const run = t.length;
      views[n++] = t.bytes.subarray(t.offset, t.offset + run);
      segOff += run;
      left -= run;
    }
    req.viewCount = n;
  }

  // --- backend work and completion -------------------------------------------

  /** Issues the request's backend operations; completes it when all have settled. */
  #issue(req: BlkRequest): void {
    const b = this.backend;
    req.pending = 1;
    let r: BlockResult;
    try {
      switch (req.op) {
        case OP_READ:
        case OP_WRITE: {
          const views = req.views;
          const write = req.op === OP_WRITE;
          let off = req.offset;
          for (let i = 0; i < req.viewCount; i++) {
            const v = views[i];
            r = write ? b.write(off, v) : b.read(off, v);
            if (r !== undefined) {
              req.pending++;
              r.then(req.onDone, req.onError);
            }
            off += v.length;
          }
          break;
        }
        case OP_DISCARD:
        case OP_WRITE_ZEROES:
          for (let i = 0; i < req.segCount; i++) {
            const len = req.segLength[i];
            if (len === 0) continue;
            r = req.op === OP_DISCARD
              ? b.discard(req.segOffset[i], len)
              : b.writeZeroes(req.segOffset[i], len, req.segUnmap[i] === 1);
            if (r !== undefined) {
              req.pending++;
              r.then(req.onDone, req.onError);
            }
          }
          break;
        case OP_FLUSH:
          break;
      }
    } catch (e) {
      this.#backendError(req, e);
    }
    this.#settleOne(req);
  }

  #backendError(req: BlkRequest, e: unknown): void {
    req.failed = true;
    this.stats.backendErrors++;
    this.stats.lastBackendError = e instanceof Error ? e.message : String(e);
  }

  /** One backend operation (or the issuing pass) finished. */
  #settleOne(req: BlkRequest): void {
    if (--req.pending !== 0) return;
    if (req.failed) return this.#complete(req, S.IOERR);
    if (req.flushAfter) {
      req.flushAfter = false;
      req.pending = 1;
      try {
        const r = this.backend.flush();
        if (r !== undefined) {
          req.pending++;
          r.then(req.onDone, req.onError);
        }
      } catch (e) {
        this.#backendError(req, e);
      }
      return this.#settleOne(req);
    }
    this.#complete(req, S.OK);
  }

  /** Writes the status byte and returns the chain to the driver. */
  #complete(req: BlkRequest, status: number): void {
    const run = req.run;
    const stats = this.stats;
    if (status === S.OK) {
      stats.completedOk++;
      if (req.op === OP_READ) stats.bytesRead += req.length;
      else if (req.op === OP_WRITE) stats.bytesWritten += req.length;
    } else if (status === S.IOERR) {
      stats.ioErrors++;
    } else {
      stats.unsupported++;
    }
    req.op = OP_NONE;
    req.length = 0;
    this.#retire();
    if (!run.alive || this.#broken) {
      stats.droppedCompletions++;
      return;
    }
    req.statusBytes[req.statusOffset] = status;
    const written = status === S.OK ? req.written + 1 : 1;
    try {
      if (run.inOrder) {
        this.#pushInOrder(run, req, written);
      } else {
        run.queue.push(req.chain.token, written);
        run.free.push(req);
      }
      if (!run.processing) {
        if (run.throttled) this.#process(run);
        else if (run.queue.publishUsed()) this.#host?.interrupt(run.index);
      }
    } catch (e) {
      this.#fault(e);
    }
  }

  /** IN_ORDER: holds `req` until every request popped before it was pushed. */
  #pushInOrder(run: QueueRun, req: BlkRequest, written: number): void {
    req.ready = true;
    req.usedLength = written;
    const order = run.order;
    while (run.orderHead < order.length && order[run.orderHead].ready) {
      const r = order[run.orderHead++];
      r.ready = false;
      run.queue.push(r.chain.token, r.usedLength);
      run.free.push(r);
    }
    if (run.orderHead === order.length) {
      order.length = 0;
      run.orderHead = 0;
    }
  }
}
