/**
 * The driver-side view of one virtio device, the same over every transport:
 * what Linux's virtio core (`drivers/virtio/virtio.c`) and a transport's
 * `virtio_config_ops` give a device driver such as `virtio_net` or
 * `virtio_blk`. The guest net and blk drivers are written against
 * {@linkcode VirtioGuestDevice} only, so they run over virtio-pci
 * (`VirtioPciModernDriver`) and virtio-mmio (`VirtioMmioDriver`) alike.
 *
 * {@linkcode VirtioGuestDeviceBase} holds the transport-independent half
 * (status sequence, feature negotiation, config reads with the generation
 * retry, config-change delivery, queue reset); a transport driver supplies the
 * register accesses.
 *
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { featureMask, hasFeature, VirtioFeature } from "../../virtio/features.ts";
import { DeviceStatus } from "../../virtio/status.ts";
import type { DmaApi } from "../dma/dma_api.ts";
import { type PageAllocator, SlabAllocator } from "../page_allocator.ts";
import { VirtqueueMapper } from "./map_ops.ts";
import { createVirtqueue, type Virtqueue } from "./virtqueue.ts";

/**
 * The errno values the transport drivers return or carry in a
 * {@linkcode VirtioDriverError}, positive as in
 * `include/uapi/asm-generic/errno-base.h` (a superset of `Errno`).
 */
export const GuestErrno = {
  /** No such file or directory (here: no such queue, or no queue reset). */
  ENOENT: 2,
  /** I/O error. */
  EIO: 5,
  /** No such device or address. */
  ENXIO: 6,
  /** Out of memory. */
  ENOMEM: 12,
  /** Device or resource busy. */
  EBUSY: 16,
  /** No such device. */
  ENODEV: 19,
  /** Invalid argument. */
  EINVAL: 22,
  /** No space left (too few vectors). */
  ENOSPC: 28,
  /** Connection timed out (a bounded poll gave up; the kernel would wait forever). */
  ETIMEDOUT: 110,
} as const;

/**
 * A probe or setup step of a guest transport driver failed, where the kernel
 * would return a negative errno and log a `dev_err` line. `errno` is that
 * negative value; `message` is the log line.
 */
export class VirtioDriverError extends Error {
  /** The negative errno the kernel function returns (`-GuestErrno.EINVAL`, ...). */
  readonly errno: number;

  /** Creates the error with a negative `errno` and the kernel's log line. */
  constructor(errno: number, message: string) {
    super(message);
    this.name = "VirtioDriverError";
    this.errno = errno;
  }
}

/**
 * How a device driver asks for one virtqueue: Linux's `struct virtqueue_info`
 * (name, callback, ctx) plus an optional size cap.
 */
export interface VirtqueueSpec<T = unknown> {
  /** The queue's name (`vqi->name`), e.g. `"input.0"` or `"req.0"`. */
  name: string;
  /**
   * The interrupt handler (`vqi->callback`). Queues without one get no MSI-X
   * vector and start with device interrupts suppressed.
   */
  callback?: ((vq: Virtqueue<T>) => void) | null;
  /** The driver stores a context per buffer (`vqi->ctx`): indirect descriptors are then not used. */
  ctx?: boolean;
  /**
   * A slow-path queue (`vqi->slow_path`, e.g. an admin queue): under Linux's
   * "shared slow" MSI-X policy it shares the config vector.
   */
  slowPath?: boolean;
  /**
   * Use at most this many entries instead of the device maximum (as after a
   * `virtqueue_resize`); split rings round down to a power of two.
   */
  size?: number;
}

/** One MSI message: the 32-bit `data` written at `address` (x86: 0xFEExxxxx). */
export interface MsiMessage {
  /** The message address. */
  readonly address: number;
  /** The message data. */
  readonly data: number;
}

/**
 * The guest kernel's interrupt services a transport driver calls: `request_irq`
 * on a (shared, level-triggered) line and, for MSI-X, the platform half of
 * `pci_alloc_irq_vectors` (the MSI irq domain). A platform (see
 * `createMachine`) implements it and calls the handlers when the line is
 * asserted or a message arrives.
 */
export interface GuestIrqHost {
  /**
   * Adds `handler` to the line (`request_irq(..., IRQF_SHARED)`). The handler
   * returns true when its device was the source (`IRQ_HANDLED`).
   */
  requestIrq(line: number, handler: () => boolean): void;
  /** Removes a handler added by `requestIrq` (`free_irq`). */
  freeIrq(line: number, handler: () => boolean): void;
  /**
   * Reserves `count` MSI messages whose arrival calls `handler(address, data)`,
   * or returns null when the platform has no vectors left. Without this method
   * the platform has no MSI (Linux booted with `pci=nomsi`).
   */
  allocMsi?(
    count: number,
    handler: (address: number, data: number) => boolean,
  ): MsiMessage[] | null;
  /** Gives back messages from `allocMsi` (`pci_free_irq_vectors`). */
  freeMsi?(messages: readonly MsiMessage[]): void;
}

/** Memory-mapped register access on the guest's system bus (`readl`/`writel`). */
export interface GuestMmioBus {
  /** A 1-, 2- or 4-byte read at guest physical `address`. */
  memRead(address: number, size: number): number;
  /** A 1-, 2- or 4-byte write of the low `size` bytes of `value` at `address`. */
  memWrite(address: number, size: number, value: number): void;
}

/** What the guest learnt about a device, for tests and debugging. */
export interface VirtioGuestDiagnostics {
  /** The last `dev_err`/`dev_warn` line the driver logged (empty if none). */
  lastError: string;
  /** Config reads repeated because config_generation changed under them. */
  configRetries: number;
  /** Interrupts the driver took (INTx handler runs or MSI messages). */
  interrupts: number;
  /** Interrupts that found nothing to do (`IRQ_NONE`). */
  spuriousInterrupts: number;
  /** Config-change notifications delivered to the device driver. */
  configChanges: number;
}

/**
 * One virtio device as its guest driver sees it: the operations Linux's
 * virtio core offers a device driver, over any transport.
 *
 * The usual sequence is the kernel's `virtio_dev_probe`: the transport probe
 * has reset the device and set ACKNOWLEDGE; the device driver calls
 * {@linkcode VirtioGuestDevice.negotiate}, reads config, calls
 * {@linkcode VirtioGuestDevice.setupQueues}, fills receive queues and calls
 * {@linkcode VirtioGuestDevice.setDriverOk}. Failures the kernel reports with
 * an errno throw a {@linkcode VirtioDriverError}; the device driver then calls
 * {@linkcode VirtioGuestDevice.fail} as `virtio_dev_probe` does.
 */
export interface VirtioGuestDevice {
  /** Which transport driver this is: `"pci"` or `"mmio"` (others may follow). */
  readonly transport: string;
  /** A name for diagnostics (the kernel's `dev_name`). */
  readonly name: string;
  /** The virtio device type (`vdev->id.device`): 1 net, 2 block, ... */
  readonly deviceId: number;
  /** The vendor (`vdev->id.vendor`): the PCI subsystem vendor or the MMIO VendorID. */
  readonly vendorId: number;
  /** The features the device offered, read by the last negotiation (`get_features`). */
  readonly deviceFeatures: bigint;
  /** The negotiated features (`vdev->features`); 0 before negotiation. */
  readonly features: bigint;
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** The guest page allocator rings and buffers come from. */
  readonly pages: PageAllocator;
  /** The guest kmalloc heap shared by the device's queues. */
  readonly heap: SlabAllocator;
  /**
   * The DMA API of the device's parent (`vdev->dev.parent`), used by the
   * queues once VIRTIO_F_ACCESS_PLATFORM is negotiated; null when none.
   */
  readonly dma: DmaApi | null;
  /** The queues from the last {@linkcode VirtioGuestDevice.setupQueues}, in order. */
  readonly vqs: readonly Virtqueue<unknown>[];
  /** Counters and the last logged error. */
  readonly diagnostics: VirtioGuestDiagnostics;

  /** True when `bit` was negotiated. Models `virtio_has_feature`. */
  hasFeature(bit: number): boolean;
  /** The status byte read from the device. Models `config->get_status`. */
  getStatus(): number;
  /** Sets status bits (read, OR, write). Models `virtio_add_status`. */
  addStatus(bits: number): void;
  /**
   * Negotiates features: sets ACKNOWLEDGE (if a reset cleared it) and DRIVER,
   * reads every feature window, keeps `driverFeatures` the device offers plus
   * the transport bits the guest understands, writes them, sets FEATURES_OK
   * and checks that the device kept it. Models the feature half of
   * `virtio_dev_probe`, `config->finalize_features` and `virtio_features_ok`.
   *
   * @returns the negotiated features
   * @throws {VirtioDriverError} when VERSION_1 is missing (`-EINVAL`) or the device refuses (`-ENODEV`)
   */
  negotiate(driverFeatures: bigint): bigint;
  /**
   * Creates and activates one virtqueue per spec, indices 0, 1, ... in order,
   * with the transport's interrupt wiring. Models `virtio_find_vqs`
   * (`config->find_vqs`).
   *
   * @throws {VirtioDriverError} when a queue or interrupt cannot be set up
   * @throws {TypeError} when queues are already set up or a spec is malformed
   */
  setupQueues<T = unknown>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[];
  /** Deletes every queue (frees rings, releases interrupts). Models `config->del_vqs`. */
  deleteQueues(): void;
  /**
   * Reads `length` config bytes one byte at a time, repeating while
   * config_generation changes. Models `virtio_cread_bytes`.
   */
  readConfig(offset: number, length: number): Uint8Array;
  /** Reads a config byte. Models `virtio_cread8`. */
  readConfig8(offset: number): number;
  /** Reads a little-endian 16-bit config field. Models `virtio_cread16`. */
  readConfig16(offset: number): number;
  /** Reads a little-endian 32-bit config field. Models `virtio_cread32`. */
  readConfig32(offset: number): number;
  /**
   * Reads a 64-bit config field as two 32-bit halves, repeating while
   * config_generation changes. Models `virtio_cread64`.
   */
  readConfig64(offset: number): bigint;
  /** Writes a config byte. Models `virtio_cwrite8`. */
  writeConfig8(offset: number, value: number): void;
  /** Writes a 16-bit config field. Models `virtio_cwrite16`. */
  writeConfig16(offset: number, value: number): void;
  /** Writes a 32-bit config field. Models `virtio_cwrite32`. */
  writeConfig32(offset: number, value: number): void;
  /** Writes bytes one at a time (`config->set` with length 1 each). */
  writeConfig(offset: number, data: Uint8Array): void;
  /** The config_generation counter. Models `config->generation`. */
  configGeneration(): number;
  /**
   * Sets DRIVER_OK and starts delivering config changes. Models
   * `virtio_device_ready` plus `virtio_config_enable`.
   */
  setDriverOk(): void;
  /**
   * Resets the device (status 0; the PCI driver waits until it reads 0).
   * Queues stay allocated: call {@linkcode VirtioGuestDevice.deleteQueues}.
   * Models `virtio_reset_device`.
   */
  reset(): void;
  /** Sets FAILED (the driver gave up). Models `virtio_add_status(dev, FAILED)`. */
  fail(): void;
  /**
   * Installs the device driver's config-change handler (`drv->config_changed`),
   * called after DRIVER_OK; null removes it.
   */
  onConfigChange(handler: ((device: VirtioGuestDevice) => void) | null): void;
  /**
   * Resets one queue and brings it back empty (VIRTIO_F_RING_RESET): the
   * device stops the queue, unused buffers go to `recycle`, the ring is
   * re-initialised and re-enabled. Models `virtqueue_reset`.
   *
   * @returns 0, or a negative errno (`-ENOENT` without RING_RESET, `-EBUSY`)
   */
  resetQueue<T>(vq: Virtqueue<T>, recycle?: (token: T) => void): number;
}

/** What every guest transport driver takes besides its bus. */
export interface VirtioGuestDeviceOptions {
  /** The guest page allocator (rings, indirect tables, driver buffers). */
  pages: PageAllocator;
  /** A kmalloc heap to share; one over `pages` by default. */
  heap?: SlabAllocator;
  /** The parent device's DMA API (dma-direct or dma-iommu); needed for ACCESS_PLATFORM. */
  dma?: DmaApi | null;
  /** The guest kernel's interrupt services; without them the caller routes interrupts itself. */
  irq?: GuestIrqHost | null;
  /**
   * Feature bits the guest refuses even when offered (as the kernel's debugfs
   * feature filter), e.g. `featureMask(VirtioFeature.RING_PACKED)` for split rings.
   */
  filterFeatures?: bigint;
  /**
   * The transport bits (28..41) the guest keeps; Linux's choice by default
   * (see {@linkcode RING_TRANSPORT_FEATURES}; virtio-pci adds RING_RESET).
   */
  transportFeatures?: readonly number[];
  /** A name for diagnostics. */
  name?: string;
}

/**
 * The transport bits Linux's `vring_transport_features` keeps: INDIRECT_DESC,
 * EVENT_IDX, VERSION_1, ACCESS_PLATFORM, RING_PACKED, ORDER_PLATFORM,
 * NOTIFICATION_DATA. Every other bit of 28..41 is cleared.
 */
export const RING_TRANSPORT_FEATURES: readonly number[] = Object.freeze([
  VirtioFeature.INDIRECT_DESC,
  VirtioFeature.EVENT_IDX,
  VirtioFeature.VERSION_1,
  VirtioFeature.ACCESS_PLATFORM,
  VirtioFeature.RING_PACKED,
  VirtioFeature.ORDER_PLATFORM,
  VirtioFeature.NOTIFICATION_DATA,
]);

/** Bits 28..41: `VIRTIO_TRANSPORT_F_START` to `VIRTIO_TRANSPORT_F_END - 1`. */
export const TRANSPORT_FEATURE_MASK: bigint = featureMask(
  ...Array.from({ length: 14 }, (_, i) => 28 + i),
);

/**
 * Clears the transport bits the guest does not understand. Models
 * `vring_transport_features`.
 *
 * @param features the features so far
 * @param keep the transport bits to keep
 * @returns `features` with the other bits of 28..41 cleared
 */
export function vringTransportFeatures(
  features: bigint,
  keep: readonly number[] = RING_TRANSPORT_FEATURES,
): bigint {
  return features & (~TRANSPORT_FEATURE_MASK | featureMask(...keep));
}

/** Generation retries before a config read gives up (the kernel retries forever). */
export const MAX_CONFIG_RETRIES = 64;

const DRIVER_OK = DeviceStatus.DRIVER_OK;

/**
 * The transport-independent half of a guest virtio device: Linux's virtio
 * core on top of a transport's `virtio_config_ops`. Subclasses implement the
 * protected primitives with register accesses.
 */
export abstract class VirtioGuestDeviceBase implements VirtioGuestDevice {
  /** See {@linkcode VirtioGuestDevice.transport}. */
  abstract readonly transport: string;
  /** See {@linkcode VirtioGuestDevice.name}. */
  readonly name: string;
  /** See {@linkcode VirtioGuestDevice.deviceId}. */
  readonly deviceId: number;
  /** See {@linkcode VirtioGuestDevice.vendorId}. */
  readonly vendorId: number;
  /** See {@linkcode VirtioGuestDevice.memory}. */
  readonly memory: GuestMemory;
  /** See {@linkcode VirtioGuestDevice.pages}. */
  readonly pages: PageAllocator;
  /** See {@linkcode VirtioGuestDevice.heap}. */
  readonly heap: SlabAllocator;
  /** See {@linkcode VirtioGuestDevice.dma}. */
  readonly dma: DmaApi | null;
  /** See {@linkcode VirtioGuestDevice.diagnostics}. */
  readonly diagnostics: VirtioGuestDiagnostics = {
    lastError: "",
    configRetries: 0,
    interrupts: 0,
    spuriousInterrupts: 0,
    configChanges: 0,
  };
  /** The guest kernel's interrupt services, or null. */
  protected readonly irqHost: GuestIrqHost | null;
  /** The transport bits kept by `vringTransportFeatures`. */
  protected readonly transportKeep: readonly number[];
  readonly #filter: bigint;
  #deviceFeatures = 0n;
  #features = 0n;
  #vqs: Virtqueue<unknown>[] = [];
  #queuesSetUp = false;
  #configHandler: ((device: VirtioGuestDevice) => void) | null = null;
  #configEnabled = false;
  #configPending = false;

  /**
   * Sets up the common state.
   *
   * @throws {TypeError} when `options.pages` is missing
   */
  constructor(
    options: VirtioGuestDeviceOptions,
    identity: { deviceId: number; vendorId: number; name: string },
  ) {
    if (options === null || typeof options !== "object" || options.pages === undefined) {
      throw new TypeError("Cannot create a guest virtio device: options.pages is required");
    }
    this.pages = options.pages;
    this.memory = options.pages.memory;
    this.heap = options.heap ?? new SlabAllocator(options.pages);
    this.dma = options.dma ?? null;
    this.irqHost = options.irq ?? null;
    this.#filter = options.filterFeatures ?? 0n;
    this.transportKeep = options.transportFeatures ?? RING_TRANSPORT_FEATURES;
    this.deviceId = identity.deviceId;
    this.vendorId = identity.vendorId;
    this.name = options.name ?? identity.name;
  }

  // ---- the transport's virtio_config_ops ------------------------------------

  /** Reads the status byte (`config->get_status`). */
  abstract getStatus(): number;
  /** Writes the status byte (`config->set_status`); never 0 (see `resetDevice`). */
  protected abstract setStatus(status: number): void;
  /** Reads every device feature window (`config->get_features`). */
  protected abstract getFeatures(): bigint;
  /**
   * Applies the transport's feature rules to `features` (the driver's choice
   * plus the offered transport bits), checks them and writes them to the
   * device (`config->finalize_features`).
   *
   * @returns the features written
   * @throws {VirtioDriverError} when the transport rejects them
   */
  protected abstract finalizeFeatures(features: bigint): bigint;
  /** A config read of 1, 2 or 4 bytes (`config->get`), little-endian value. */
  protected abstract get(offset: number, size: number): number;
  /** A config write of 1, 2 or 4 bytes (`config->set`). */
  protected abstract set(offset: number, size: number, value: number): void;
  /** The config_generation counter (`config->generation`). */
  abstract configGeneration(): number;
  /**
   * Creates the queues and their interrupts (`config->find_vqs`).
   *
   * @throws {VirtioDriverError} on failure, with nothing left set up
   */
  protected abstract findVqs<T>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[];
  /** Deletes the queues made by `findVqs` (`config->del_vqs`). */
  protected abstract delVqs(): void;
  /** Writes 0 to the status (and waits where the transport does) (`config->reset`). */
  protected abstract resetDevice(): void;

  /**
   * Stops one queue in the device (`config->disable_vq_and_reset`); -ENOENT
   * when the transport cannot.
   */
  protected disableVqAndReset(_vq: Virtqueue<unknown>): number {
    return -GuestErrno.ENOENT;
  }

  /** Re-activates a queue after its reset (`config->enable_vq_after_reset`). */
  protected enableVqAfterReset(_vq: Virtqueue<unknown>): number {
    return -GuestErrno.ENOENT;
  }

  // ---- the virtio core ----------------------------------------------------------

  /** See {@linkcode VirtioGuestDevice.deviceFeatures}. */
  get deviceFeatures(): bigint {
    return this.#deviceFeatures;
  }

  /** See {@linkcode VirtioGuestDevice.features}. */
  get features(): bigint {
    return this.#features;
  }

  /** See {@linkcode VirtioGuestDevice.vqs}. */
  get vqs(): readonly Virtqueue<unknown>[] {
    return this.#vqs;
  }

  /** Models `virtio_has_feature`. */
  hasFeature(bit: number): boolean {
    return hasFeature(this.#features, bit);
  }

  /** Models `virtio_add_status`. */
  addStatus(bits: number): void {
    this.setStatus((this.getStatus() | bits) & 0xff);
  }

  /** Models the feature half of `virtio_dev_probe` and `virtio_features_ok`. */
  negotiate(driverFeatures: bigint): bigint {
    if (typeof driverFeatures !== "bigint") {
      throw new TypeError(`Cannot negotiate features of ${this.name}: expected a bigint`);
    }
    if ((this.getStatus() & DeviceStatus.ACKNOWLEDGE) === 0) {
      this.addStatus(DeviceStatus.ACKNOWLEDGE); // register_virtio_device after a reset
    }
    this.addStatus(DeviceStatus.DRIVER);
    const offered = this.getFeatures();
    this.#deviceFeatures = offered;
    let features = driverFeatures & offered;
    // Transport features always preserved to pass to finalize_features.
    features |= offered & TRANSPORT_FEATURE_MASK;
    features &= ~this.#filter;
    try {
      features = this.finalizeFeatures(features);
    } catch (e) {
      this.addStatus(DeviceStatus.FAILED);
      throw e;
    }
    this.#features = features;
    this.addStatus(DeviceStatus.FEATURES_OK);
    const status = this.getStatus();
    if ((status & DeviceStatus.FEATURES_OK) === 0) {
      this.addStatus(DeviceStatus.FAILED);
      throw this.error(
        -GuestErrno.ENODEV,
        `virtio: device refuses features: 0x${features.toString(16)}`,
      );
    }
    return features;
  }

  /** Models `virtio_find_vqs`. */
  setupQueues<T = unknown>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[] {
    if (!Array.isArray(specs)) {
      throw new TypeError(`Cannot set up queues of ${this.name}: specs must be an array`);
    }
    if (this.#queuesSetUp) {
      throw new TypeError(
        `Cannot set up queues of ${this.name}: queues exist; call deleteQueues() first`,
      );
    }
    specs.forEach((s, i) => {
      if (s === null || typeof s !== "object" || typeof s.name !== "string") {
        throw new TypeError(`Cannot set up queue ${i} of ${this.name}: a spec needs a name`);
      }
      if (s.callback !== undefined && s.callback !== null && typeof s.callback !== "function") {
        throw new TypeError(
          `Cannot set up queue ${i} of ${this.name}: callback must be a function`,
        );
      }
      if (s.size !== undefined && (!Number.isInteger(s.size) || s.size < 1)) {
        throw new RangeError(
          `Cannot set up queue ${i} of ${this.name}: size ${s.size} is not a positive integer`,
        );
      }
    });
    const vqs: Virtqueue<T>[] = this.findVqs<T>(specs);
    this.#vqs = vqs as unknown as Virtqueue<unknown>[];
    this.#queuesSetUp = true;
    return vqs;
  }

  /** Models `config->del_vqs`. */
  deleteQueues(): void {
    if (!this.#queuesSetUp) return;
    this.delVqs();
    this.#vqs = [];
    this.#queuesSetUp = false;
  }

  /** Models `virtio_cread_bytes` (`__virtio_cread_many` with 1-byte reads). */
  readConfig(offset: number, length: number): Uint8Array {
    this.checkConfigRange(offset, length);
    const out = new Uint8Array(length);
    this.#withGeneration(() => {
      for (let i = 0; i < length; i++) out[i] = this.get(offset + i, 1);
    });
    return out;
  }

  /** Models `virtio_cread8`. */
  readConfig8(offset: number): number {
    this.checkConfigRange(offset, 1);
    return this.get(offset, 1);
  }

  /** Models `virtio_cread16`. */
  readConfig16(offset: number): number {
    this.checkConfigRange(offset, 2);
    return this.get(offset, 2);
  }

  /** Models `virtio_cread32`. */
  readConfig32(offset: number): number {
    this.checkConfigRange(offset, 4);
    return this.get(offset, 4) >>> 0;
  }

  /** Models `virtio_cread64` (two 32-bit reads inside the generation loop). */
  readConfig64(offset: number): bigint {
    this.checkConfigRange(offset, 8);
    let low = 0;
    let high = 0;
    this.#withGeneration(() => {
      low = this.get(offset, 4) >>> 0;
      high = this.get(offset + 4, 4) >>> 0;
    });
    return (BigInt(high) << 32n) | BigInt(low);
  }

  /** Models `virtio_cwrite8`. */
  writeConfig8(offset: number, value: number): void {
    this.checkConfigRange(offset, 1);
    this.set(offset, 1, value & 0xff);
  }

  /** Models `virtio_cwrite16`. */
  writeConfig16(offset: number, value: number): void {
    this.checkConfigRange(offset, 2);
    this.set(offset, 2, value & 0xffff);
  }

  /** Models `virtio_cwrite32`. */
  writeConfig32(offset: number, value: number): void {
    this.checkConfigRange(offset, 4);
    this.set(offset, 4, value >>> 0);
  }

  /** Writes `data` one byte at a time (`config->set` of length 1 each). */
  writeConfig(offset: number, data: Uint8Array): void {
    if (!(data instanceof Uint8Array)) {
      throw new TypeError(`Cannot write the config of ${this.name}: data must be a Uint8Array`);
    }
    this.checkConfigRange(offset, data.length);
    for (let i = 0; i < data.length; i++) this.set(offset + i, 1, data[i]);
  }

  /** Models `virtio_device_ready` and `virtio_config_enable`. */
  setDriverOk(): void {
    const status = this.getStatus();
    if ((status & DRIVER_OK) !== 0) {
      this.diagnostics.lastError = `${this.name}: DRIVER_OK was already set`;
    }
    this.setStatus(status | DRIVER_OK);
    this.#configEnabled = true;
    if (this.#configPending) {
      this.#configPending = false;
      this.#deliverConfigChange();
    }
  }

  /** Models `virtio_reset_device` (and `virtio_config_disable`). */
  reset(): void {
    this.#configEnabled = false;
    this.#configPending = false;
    this.resetDevice();
  }

  /** Sets FAILED. */
  fail(): void {
    this.addStatus(DeviceStatus.FAILED);
  }

  /** Installs `drv->config_changed`. */
  onConfigChange(handler: ((device: VirtioGuestDevice) => void) | null): void {
    if (handler !== null && typeof handler !== "function") {
      throw new TypeError(`Cannot set the config handler of ${this.name}: expected a function`);
    }
    this.#configHandler = handler;
  }

  /** Models `virtqueue_reset`: disable and recycle, reset the ring, enable again. */
  resetQueue<T>(vq: Virtqueue<T>, recycle?: (token: T) => void): number {
    if (!this.#vqs.includes(vq as Virtqueue<unknown>)) {
      throw new TypeError(`Cannot reset queue ${vq?.name}: it does not belong to ${this.name}`);
    }
    const err = this.disableVqAndReset(vq as Virtqueue<unknown>);
    if (err !== 0) return err;
    vq.reset(recycle);
    return this.enableVqAfterReset(vq as Virtqueue<unknown>);
  }

  // ---- helpers for transports ------------------------------------------------------

  /**
   * Creates the driver virtqueue for device queue `index` with `num` entries
   * (the device maximum), choosing layout and ring features from the
   * negotiated features, as `vring_create_virtqueue` does. Returns null when
   * ring memory cannot be allocated or a split size is not a power of two.
   */
  protected createVq<T>(
    index: number,
    num: number,
    spec: VirtqueueSpec<T>,
    notify: (vq: Virtqueue<T>) => boolean,
    vringAlign: number,
  ): Virtqueue<T> | null {
    const packed = this.hasFeature(VirtioFeature.RING_PACKED);
    if (!packed && (num & (num - 1)) !== 0) {
      this.diagnostics.lastError = `${this.name}: Bad virtqueue length ${num}`;
      return null;
    }
    let size = num;
    if (spec.size !== undefined && spec.size < size) {
      size = spec.size;
      if (!packed) size = 2 ** Math.floor(Math.log2(size));
    }
    const mapper = this.vqMapper(index);
    let vq: Virtqueue<T> | null = null;
    vq = createVirtqueue<T>({
      index,
      size,
      layout: packed ? "packed" : "split",
      eventIdx: this.hasFeature(VirtioFeature.EVENT_IDX),
      indirect: this.hasFeature(VirtioFeature.INDIRECT_DESC) && spec.ctx !== true,
      inOrder: this.hasFeature(VirtioFeature.IN_ORDER),
      mapper,
      notify: () => notify(vq!),
      callback: spec.callback ?? null,
      vringAlign,
      name: spec.name,
    });
    if (vq === null) {
      this.diagnostics.lastError = `${this.name}: no memory for virtqueue ${index} (${spec.name})`;
    }
    return vq;
  }

  /**
   * The mapping seam for queue `index`: the DMA API path when ACCESS_PLATFORM
   * was negotiated, none otherwise. A transport with `virtio_map_ops`
   * (VDUSE through vDPA) overrides it to pass its ops and map token.
   */
  protected vqMapper(_index: number): VirtqueueMapper {
    return new VirtqueueMapper({
      pages: this.pages,
      heap: this.heap,
      accessPlatform: this.hasFeature(VirtioFeature.ACCESS_PLATFORM),
      dma: this.dma,
    });
  }

  /**
   * The device signalled a config change: calls the device driver's handler
   * now when config changes are enabled, else remembers it for
   * {@linkcode VirtioGuestDeviceBase.setDriverOk}. Models `virtio_config_changed`.
   */
  protected configChanged(): void {
    if (!this.#configEnabled) {
      this.#configPending = true;
      return;
    }
    this.#deliverConfigChange();
  }

  /**
   * Records a `dev_err` line and returns the error to throw.
   *
   * @param errno the negative errno
   * @param message the log line
   */
  protected error(errno: number, message: string): VirtioDriverError {
    this.diagnostics.lastError = `${this.name}: ${message}`;
    return new VirtioDriverError(errno, `${this.name}: ${message}`);
  }

  /**
   * Checks a config access range (the kernel BUGs on a bad one).
   *
   * @throws {RangeError} when the range is not inside the device config
   */
  protected checkConfigRange(offset: number, length: number): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0) {
      throw new RangeError(
        `Cannot access config of ${this.name} at ${offset}+${length}: expected non-negative integers`,
      );
    }
  }

  #deliverConfigChange(): void {
    this.diagnostics.configChanges++;
    this.#configHandler?.(this);
  }

  /** `__virtio_cread_many`'s loop, bounded. */
  #withGeneration(read: () => void): void {
    let gen = this.configGeneration();
    for (let tries = 0;; tries++) {
      const old = gen;
      read();
      gen = this.configGeneration();
      if (gen === old) return;
      this.diagnostics.configRetries++;
      if (tries + 1 >= MAX_CONFIG_RETRIES) {
        this.diagnostics.lastError =
          `${this.name}: config_generation kept changing; gave up after ${MAX_CONFIG_RETRIES} reads`;
        return;
      }
    }
  }
}
