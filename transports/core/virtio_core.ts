import type { DmaSpace } from "../../src/dma/dma_space.ts";
import { GuestFault } from "../../src/guest_fault.ts";
import { createDeviceQueue } from "../../src/queue/create_device_queue.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import type { VirtioDevice, VirtioDeviceHost } from "../../src/virtio/device.ts";
import {
  checkAcceptedFeatures,
  featureMask,
  featureWord,
  hasFeature,
  TRANSPORT_FEATURE_BITS,
  VirtioFeature,
  withFeatureWord,
} from "../../src/virtio/features.ts";
import { DeviceStatus } from "../../src/virtio/status.ts";

/** The transport-level features a transport may offer on top of the device's own bits. */
export interface RingFeatureOptions {
  /** Offer VIRTIO_F_RING_PACKED (default true). */
  packed?: boolean;
  /** Offer VIRTIO_RING_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_RING_F_INDIRECT_DESC (default true). */
  indirect?: boolean;
  /** Offer VIRTIO_F_IN_ORDER (default false). */
  inOrder?: boolean;
  /** Offer VIRTIO_F_RING_RESET (default true). */
  ringReset?: boolean;
  /** Offer VIRTIO_F_NOTIFICATION_DATA (default false). */
  notificationData?: boolean;
  /**
   * Offer VIRTIO_F_ACCESS_PLATFORM: the device's DMA goes through `platformDma`
   * (an IOMMU space) once the driver accepts it. Default: offered when `platformDma` is given.
   */
  accessPlatform?: boolean;
}

/** What a transport front end gives the core. */
export interface VirtioCoreOptions extends RingFeatureOptions {
  /** The identity view of guest memory (used without ACCESS_PLATFORM). */
  dma: DmaSpace;
  /** The translated view (an IOMMU endpoint space) used when ACCESS_PLATFORM is negotiated. */
  platformDma?: DmaSpace;
  /** Raise the used-buffer interrupt of queue `index` (MSI-X vector, or ISR bit 0 + INTx). */
  signalQueue(index: number): void;
  /** Raise the configuration-change interrupt (MSI-X config vector, or ISR bit 1 + INTx). */
  signalConfig(): void;
}

/** Which ring area an address register names. */
export const QueueArea = {
  /** Descriptor table (split) or descriptor ring (packed). */
  DESC: 0,
  /** Available ring (split) or driver event suppression (packed). */
  DRIVER: 1,
  /** Used ring (split) or device event suppression (packed). */
  DEVICE: 2,
} as const;

/** The driver-programmed registers of one virtqueue. */
export class QueueRegisters {
  /** Ring size the driver chose (defaults to the device maximum). */
  size: number;
  /** queue_enable / QueueReady. */
  enabled = false;
  /** The live queue once the device runs it. */
  queue: DeviceQueue | null = null;
  /** The largest size the device accepts. */
  readonly maxSize: number;
  /** The three 64-bit ring addresses as 32-bit halves: [desc lo, hi, driver lo, hi, device lo, hi]. */
  readonly addressHalves: Uint32Array = new Uint32Array(6);

  /** Default registers for a queue whose device maximum is `maxSize`. */
  constructor(maxSize: number) {
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  /**
   * The address of `area` ({@linkcode QueueArea}), or `NaN` when the driver
   * wrote a value at or above 2^53 (the queue then fails instead of rounding it).
   */
  address(area: number): number {
    const high = this.addressHalves[area * 2 + 1];
    return high > 0x1f_ffff ? NaN : high * 0x1_0000_0000 + this.addressHalves[area * 2];
  }

  /** Sets the address of `area` from a number below 2^53 (for transports with 64-bit fields). */
  setAddress(area: number, value: number): void {
    this.addressHalves[area * 2] = value >>> 0;
    this.addressHalves[area * 2 + 1] = Math.floor(value / 0x1_0000_0000);
  }

  /** Back to the reset values; a live queue stops touching guest memory. */
  reset(): void {
    this.size = this.maxSize;
    this.addressHalves.fill(0);
    this.enabled = false;
    this.queue?.detach();
    this.queue = null;
  }
}

/** Counters a transport exposes to the embedder for debugging a guest. */
export interface VirtioDiagnostics {
  /** The last reason the device was marked DEVICE_NEEDS_RESET (empty if never). */
  lastError: string;
  /** How many times the device was marked DEVICE_NEEDS_RESET. */
  needsResetCount: number;
  /** Register accesses ignored because of their offset or width. */
  badAccesses: number;
  /** Driver status writes refused (clearing bits, DRIVER_OK without FEATURES_OK, ...). */
  refusedStatusWrites: number;
  /** Notifications ignored (queue not running, device not live). */
  ignoredNotifies: number;
}

const LIVE = DeviceStatus.DRIVER_OK;
const DEVICE_BITS_MASK = ~featureMask(
  ...Array.from(
    { length: TRANSPORT_FEATURE_BITS[1] - TRANSPORT_FEATURE_BITS[0] + 1 },
    (_, i) => TRANSPORT_FEATURE_BITS[0] + i,
  ),
);

/**
 * The transport-independent half of every virtio transport: status and its
 * sequence, feature negotiation with select windows, per-queue registers,
 * reset, config generation, activation of the device, and turning guest faults
 * into DEVICE_NEEDS_RESET. virtio-pci, virtio-mmio and VDUSE map their
 * registers or messages onto it.
 */
export class VirtioCore {
  /** The device model behind this transport. */
  readonly device: VirtioDevice;
  /** Features the transport offers the driver (device bits plus transport bits). */
  readonly offeredFeatures: bigint;
  /** Per-queue registers, one entry per device queue. */
  readonly queues: readonly QueueRegisters[];
  /** Diagnostics the embedder can read. */
  readonly diagnostics: VirtioDiagnostics = {
    lastError: "",
    needsResetCount: 0,
    badAccesses: 0,
    refusedStatusWrites: 0,
    ignoredNotifies: 0,
  };
  /** Device status byte as the driver reads it. */
  status = 0;
  /** device_feature_select. */
  deviceFeatureSelect = 0;
  /** driver_feature_select. */
  driverFeatureSelect = 0;
  /** The features the driver has written so far. */
  driverFeatures = 0n;
  /** queue_select. */
  queueSelect = 0;
  /** config_generation: bumped on every device config change. */
  configGeneration = 0;
  readonly #options: VirtioCoreOptions;
  #dma: DmaSpace;

  /**
   * Wraps `device` and binds it to this core.
   *
   * @throws {TypeError} when the device or options are malformed
   */
  constructor(device: VirtioDevice, options: VirtioCoreOptions) {
    if (typeof device !== "object" || device === null || typeof device.notify !== "function") {
      throw new TypeError("Cannot create a virtio transport: expected a VirtioDevice");
    }
    if (options.dma === undefined) {
      throw new TypeError("Cannot create a virtio transport: options.dma is required");
    }
    this.device = device;
    this.#options = options;
    this.#dma = options.dma;
    const accessPlatform = options.accessPlatform ?? options.platformDma !== undefined;
    if (accessPlatform && options.platformDma === undefined) {
      throw new TypeError(
        "Cannot offer VIRTIO_F_ACCESS_PLATFORM: options.platformDma (an IOMMU space) is required",
      );
    }
    const bits: number[] = [VirtioFeature.VERSION_1];
    if (options.packed ?? true) bits.push(VirtioFeature.RING_PACKED);
    if (options.eventIdx ?? true) bits.push(VirtioFeature.EVENT_IDX);
    if (options.indirect ?? true) bits.push(VirtioFeature.INDIRECT_DESC);
    if (options.inOrder ?? false) bits.push(VirtioFeature.IN_ORDER);
    if (options.ringReset ?? true) bits.push(VirtioFeature.RING_RESET);
    if (options.notificationData ?? false) bits.push(VirtioFeature.NOTIFICATION_DATA);
    if (accessPlatform) bits.push(VirtioFeature.ACCESS_PLATFORM);
    this.offeredFeatures = (device.deviceFeatures & DEVICE_BITS_MASK) | featureMask(...bits);
    const queues: QueueRegisters[] = [];
    for (let i = 0; i < device.numQueues; i++) {
      const max = device.queueMaxSize(i);
      if (!Number.isInteger(max) || max < 1 || max > 0x8000) {
        throw new RangeError(
          `Cannot create a virtio transport: queue ${i} max size ${max} is not in 1..32768`,
        );
      }
      queues.push(new QueueRegisters(max));
    }
    this.queues = queues;
    const host: VirtioDeviceHost = {
      interrupt: (index) => {
        if ((this.status & LIVE) !== 0) this.#options.signalQueue(index);
      },
      configChanged: () => this.configChanged(),
      fail: (reason) => this.fail(reason),
    };
    device.bind(host);
  }

  /** The DMA space the device uses under the negotiated features. */
  get dma(): DmaSpace {
    return this.#dma;
  }

  /** True between DRIVER_OK and the next reset, unless the device needs a reset. */
  get live(): boolean {
    return (this.status & (LIVE | DeviceStatus.DEVICE_NEEDS_RESET)) === LIVE;
  }

  /** The negotiated features (meaningful once FEATURES_OK is set). */
  get features(): bigint {
    return this.driverFeatures;
  }

  /** device_feature: the 32-bit window selected by `deviceFeatureSelect`. */
  readDeviceFeatureWindow(): number {
    return featureWord(this.offeredFeatures, this.deviceFeatureSelect);
  }

  /** driver_feature read: the window selected by `driverFeatureSelect`. */
  readDriverFeatureWindow(): number {
    return featureWord(this.driverFeatures, this.driverFeatureSelect);
  }

  /** driver_feature write. Ignored once FEATURES_OK is set (features are frozen then). */
  writeDriverFeatureWindow(value: number): void {
    if ((this.status & DeviceStatus.FEATURES_OK) !== 0 || this.driverFeatureSelect > 3) {
      this.diagnostics.refusedStatusWrites++;
      return;
    }
    this.driverFeatures = withFeatureWord(this.driverFeatures, this.driverFeatureSelect, value);
  }

  /**
   * A driver write of the status byte: 0 resets; otherwise bits may only be added,
   * FEATURES_OK only sticks for an acceptable feature set, and DRIVER_OK starts the device.
   */
  writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) {
      this.reset();
      return;
    }
    const old = this.status;
    if ((value & old) !== (old & ~DeviceStatus.DEVICE_NEEDS_RESET)) {
      // The driver may not clear bits other than by writing 0.
      this.diagnostics.refusedStatusWrites++;
      return;
    }
    let next = value | (old & DeviceStatus.DEVICE_NEEDS_RESET);
    const added = next & ~old;
    if ((added & DeviceStatus.FEATURES_OK) !== 0) {
      const why = checkAcceptedFeatures(this.offeredFeatures, this.driverFeatures) ??
        this.device.validateFeatures(this.driverFeatures);
      if (why !== null) {
        next &= ~DeviceStatus.FEATURES_OK;
        this.diagnostics.lastError = `FEATURES_OK refused: ${why}`;
        this.diagnostics.refusedStatusWrites++;
      } else {
        this.#dma = hasFeature(this.driverFeatures, VirtioFeature.ACCESS_PLATFORM)
          ? this.#options.platformDma!
          : this.#options.dma;
      }
    }
    if ((added & DeviceStatus.DRIVER_OK) !== 0 && (next & DeviceStatus.FEATURES_OK) === 0) {
      this.diagnostics.lastError = "DRIVER_OK refused: FEATURES_OK is not set";
      this.diagnostics.refusedStatusWrites++;
      next &= ~DeviceStatus.DRIVER_OK;
    }
    this.status = next;
    if ((added & DeviceStatus.DRIVER_OK) !== 0 && (next & DeviceStatus.DRIVER_OK) !== 0) {
      this.#activate();
    }
  }

  /** Device reset: the device, every queue and all negotiation state back to defaults. */
  reset(): void {
    this.device.reset();
    for (const q of this.queues) q.reset();
    this.status = 0;
    this.deviceFeatureSelect = 0;
    this.driverFeatureSelect = 0;
    this.driverFeatures = 0n;
    this.queueSelect = 0;
    this.#dma = this.#options.dma;
  }

  /** The registers of the selected queue, or `undefined` when `queueSelect` names no queue. */
  get selectedQueue(): QueueRegisters | undefined {
    return this.queues[this.queueSelect];
  }

  /**
   * queue_enable / QueueReady written as 1: once the device is live the queue
   * starts at once (a late enable, or re-enable after a queue reset).
   */
  enableQueue(index: number): void {
    const regs = this.queues[index];
    if (regs === undefined || regs.enabled) return;
    regs.enabled = true;
    if (this.live) {
      const queue = this.#makeQueue(index);
      if (queue === null) return;
      regs.queue = queue;
      this.#guard(() => this.device.enableQueue(index, queue));
    }
  }

  /** queue_reset (VIRTIO_F_RING_RESET): the queue stops and returns to its defaults. */
  resetQueue(index: number): void {
    const regs = this.queues[index];
    if (regs === undefined) return;
    if (regs.queue !== null) this.device.resetQueue(index);
    regs.reset();
  }

  /** The driver notified queue `index` (with notification data when negotiated). */
  notify(index: number, data?: number): void {
    const regs = this.queues[index];
    if (!this.live || regs === undefined || regs.queue === null) {
      this.diagnostics.ignoredNotifies++;
      return;
    }
    try {
      this.device.notify(index, data);
    } catch (e) {
      if (e instanceof GuestFault) this.fail(e.message);
      else throw e;
    }
  }

  /** The device changed its config: bump config_generation and tell a live driver. */
  configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    if ((this.status & DeviceStatus.DRIVER_OK) !== 0) this.#options.signalConfig();
  }

  /** The driver wrote device config bytes. */
  writeConfig(offset: number, data: Uint8Array): void {
    this.#guard(() => this.device.writeConfig(offset, data));
  }

  /**
   * Marks the device broken by the guest: DEVICE_NEEDS_RESET, a config
   * interrupt if the driver is live, and `reason` kept as the diagnostic.
   */
  fail(reason: string): void {
    this.diagnostics.lastError = reason;
    this.diagnostics.needsResetCount++;
    if ((this.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0) return;
    this.status |= DeviceStatus.DEVICE_NEEDS_RESET;
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    if ((this.status & DeviceStatus.DRIVER_OK) !== 0) this.#options.signalConfig();
  }

  /** Starts every enabled queue and activates the device (DRIVER_OK). */
  #activate(): void {
    const queues: (DeviceQueue | null)[] = [];
    for (let i = 0; i < this.queues.length; i++) {
      const regs = this.queues[i];
      regs.queue = regs.enabled ? this.#makeQueue(i) : null;
      if (regs.enabled && regs.queue === null) return;
      queues.push(regs.queue);
    }
    this.#guard(() =>
      this.device.activate({ features: this.driverFeatures, queues, dma: this.#dma })
    );
  }

  /** Builds the device queue for `index` from its registers, or fails the device. */
  #makeQueue(index: number): DeviceQueue | null {
    const regs = this.queues[index];
    const f = this.driverFeatures;
    const packed = hasFeature(f, VirtioFeature.RING_PACKED);
    const size = regs.size;
    const validSize = size >= 1 && size <= regs.maxSize &&
      (packed || (size & (size - 1)) === 0);
    if (!validSize) {
      this.fail(`Queue ${index}: size ${size} is not valid (max ${regs.maxSize})`);
      return null;
    }
    const descAddr = regs.address(QueueArea.DESC);
    const driverAddr = regs.address(QueueArea.DRIVER);
    const deviceAddr = regs.address(QueueArea.DEVICE);
    if (Number.isNaN(descAddr + driverAddr + deviceAddr)) {
      this.fail(`Queue ${index}: a ring address is at or above 2^53`);
      return null;
    }
    let queue: DeviceQueue | null = null;
    this.#guard(() => {
      queue = createDeviceQueue(
        {
          index,
          size,
          descAddr,
          driverAddr,
          deviceAddr,
          eventIdx: hasFeature(f, VirtioFeature.EVENT_IDX),
          indirect: hasFeature(f, VirtioFeature.INDIRECT_DESC),
          inOrder: hasFeature(f, VirtioFeature.IN_ORDER),
        },
        this.#dma,
        packed,
      );
    });
    return queue;
  }

  /** Runs device code; a guest fault marks the device NEEDS_RESET instead of escaping. */
  #guard(run: () => void): void {
    try {
      run();
    } catch (e) {
      if (e instanceof GuestFault) this.fail(e.message);
      else throw e;
    }
  }
}
