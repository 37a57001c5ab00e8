/**
 * The guest's virtio-mmio driver: a model of Linux's
 * `drivers/virtio/virtio_mmio.c` for version 2 (modern) devices. It only
 * reads and writes the register window on the guest's bus and handles the
 * device's interrupt line; it never calls device code.
 *
 * @module
 */
import { featureWord, hasFeature, VirtioFeature } from "../virtio/features.ts";
import { DeviceStatus } from "../virtio/status.ts";
import type { Virtqueue } from "./virtio/virtqueue.ts";
import {
  GuestErrno,
  type GuestMmioBus,
  VirtioDriverError,
  VirtioGuestDeviceBase,
  type VirtioGuestDeviceOptions,
  type VirtqueueSpec,
  vringTransportFeatures,
} from "./virtio/virtio_guest_device.ts";

/** Register offsets of a virtio-mmio window (`include/uapi/linux/virtio_mmio.h`). */
export const VirtioMmioReg = {
  /** "virt" (0x74726976). */
  MAGIC_VALUE: 0x000,
  /** 2 for modern devices, 1 for legacy. */
  VERSION: 0x004,
  /** Virtio device type; 0 = placeholder. */
  DEVICE_ID: 0x008,
  /** Vendor. */
  VENDOR_ID: 0x00c,
  /** Offered features of the selected window. */
  DEVICE_FEATURES: 0x010,
  /** Device feature window select. */
  DEVICE_FEATURES_SEL: 0x014,
  /** Accepted features of the selected window. */
  DRIVER_FEATURES: 0x020,
  /** Driver feature window select. */
  DRIVER_FEATURES_SEL: 0x024,
  /** Queue select. */
  QUEUE_SEL: 0x030,
  /** Maximum size of the selected queue (0 = absent). */
  QUEUE_NUM_MAX: 0x034,
  /** Size the driver chose. */
  QUEUE_NUM: 0x038,
  /** Queue ready. */
  QUEUE_READY: 0x044,
  /** Queue notifier. */
  QUEUE_NOTIFY: 0x050,
  /** Interrupt status: bit 0 used buffer, bit 1 config change. */
  INTERRUPT_STATUS: 0x060,
  /** Interrupt acknowledge (write 1 to clear). */
  INTERRUPT_ACK: 0x064,
  /** Device status. */
  STATUS: 0x070,
  /** Descriptor area, low half. */
  QUEUE_DESC_LOW: 0x080,
  /** Descriptor area, high half. */
  QUEUE_DESC_HIGH: 0x084,
  /** Driver area (avail ring), low half. */
  QUEUE_AVAIL_LOW: 0x090,
  /** Driver area, high half. */
  QUEUE_AVAIL_HIGH: 0x094,
  /** Device area (used ring), low half. */
  QUEUE_USED_LOW: 0x0a0,
  /** Device area, high half. */
  QUEUE_USED_HIGH: 0x0a4,
  /** Queue reset (RING_RESET). */
  QUEUE_RESET: 0x0c0,
  /** Config generation. */
  CONFIG_GENERATION: 0x0fc,
  /** Start of the device config. */
  CONFIG: 0x100,
} as const;

/** The MagicValue every virtio-mmio window shows ("virt" little-endian). */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** InterruptStatus bit 0: a queue has used buffers (`VIRTIO_MMIO_INT_VRING`). */
export const VIRTIO_MMIO_INT_VRING = 1;
/** InterruptStatus bit 1: the config changed (`VIRTIO_MMIO_INT_CONFIG`). */
export const VIRTIO_MMIO_INT_CONFIG = 2;
/** `VIRTIO_MMIO_VRING_ALIGN`: the used ring alignment Linux uses on virtio-mmio (`PAGE_SIZE`). */
export const VIRTIO_MMIO_VRING_ALIGN = 4096;
/** Feature windows read and written (128 feature bits, as Linux 6.17). */
const FEATURE_WINDOWS = 4;
/** Polls of QueueReset / QueueReady before a queue reset gives up. */
const MAX_QUEUE_POLLS = 1000;

/** Where the driver finds its device. */
export interface VirtioMmioDriverOptions extends VirtioGuestDeviceOptions {
  /** The guest's system bus. */
  bus: GuestMmioBus;
  /** Guest physical base of the register window (`platform_get_resource`). */
  base: number;
  /**
   * The interrupt line (`platform_get_irq`). With `irq` (the host) given, the
   * driver requests it when queues are set up; otherwise route the line to
   * {@linkcode VirtioMmioDriver.interrupt} yourself.
   */
  irqLine?: number;
  /**
   * Keep VIRTIO_F_RING_RESET and reset queues through QueueReset. Linux's
   * virtio-mmio has no queue reset and drops the bit; off by default.
   */
  ringReset?: boolean;
}

/**
 * A guest virtio-mmio (version 2) driver bound to one register window.
 *
 * Create it with {@linkcode probeVirtioMmio}; it then implements
 * {@linkcode VirtioGuestDevice} for a device driver (net, blk) to use.
 * Interrupts: with an `irq` host and an `irqLine` the driver requests the
 * line when queues are set up; otherwise call
 * {@linkcode VirtioMmioDriver.interrupt} while the line is asserted.
 */
export class VirtioMmioDriver extends VirtioGuestDeviceBase {
  /** Always `"mmio"`. */
  readonly transport: string = "mmio";
  /** The bus the window is on. */
  readonly bus: GuestMmioBus;
  /** Guest physical base of the window. */
  readonly base: number;
  /** The register layout version the device reports (2). */
  readonly version: number;
  /** The interrupt line, or null when unknown. */
  readonly irqLine: number | null;
  readonly #ringReset: boolean;
  readonly #handler: () => boolean;
  #irqRequested = false;
  #queues: Virtqueue<unknown>[] = [];
  readonly #resetting = new Set<Virtqueue<unknown>>();

  /** Use {@linkcode probeVirtioMmio}, which checks the window first. */
  constructor(
    options: VirtioMmioDriverOptions,
    identity: { version: number; deviceId: number; vendorId: number },
  ) {
    super(options, {
      deviceId: identity.deviceId,
      vendorId: identity.vendorId,
      name: `virtio-mmio@${options.base.toString(16)}`,
    });
    this.bus = options.bus;
    this.base = options.base;
    this.version = identity.version;
    this.irqLine = options.irqLine ?? null;
    this.#ringReset = options.ringReset === true;
    this.#handler = () => this.interrupt();
  }

  // ---- registers ------------------------------------------------------------------

  #read(reg: number): number {
    return this.bus.memRead(this.base + reg, 4) >>> 0;
  }

  #write(reg: number, value: number): void {
    this.bus.memWrite(this.base + reg, 4, value >>> 0);
  }

  // ---- virtio_config_ops ------------------------------------------------------------

  /** Models `vm_get_status`. */
  getStatus(): number {
    return this.#read(VirtioMmioReg.STATUS) & 0xff;
  }

  /** Models `vm_set_status`. */
  protected setStatus(status: number): void {
    this.#write(VirtioMmioReg.STATUS, status);
  }

  /** Models `vm_reset`: a plain write of 0 (this driver does not poll). */
  protected resetDevice(): void {
    this.#write(VirtioMmioReg.STATUS, 0);
  }

  /** Models `vm_get_features`, for all four windows. */
  protected getFeatures(): bigint {
    let features = 0n;
    for (let sel = FEATURE_WINDOWS - 1; sel >= 0; sel--) {
      this.#write(VirtioMmioReg.DEVICE_FEATURES_SEL, sel);
      features = (features << 32n) | BigInt(this.#read(VirtioMmioReg.DEVICE_FEATURES));
    }
    return features;
  }

  /** Models `vm_finalize_features`. */
  protected finalizeFeatures(features: bigint): bigint {
    const offered = features;
    // Give virtio_ring a chance to accept features.
    features = vringTransportFeatures(features, this.transportKeep);
    if (this.#ringReset && hasFeature(offered, VirtioFeature.RING_RESET)) {
      features |= 1n << BigInt(VirtioFeature.RING_RESET);
    }
    // Make sure there are no mixed devices.
    if (!hasFeature(features, VirtioFeature.VERSION_1)) {
      throw this.error(
        -GuestErrno.EINVAL,
        "New virtio-mmio devices (version 2) must provide VIRTIO_F_VERSION_1 feature!",
      );
    }
    for (let sel = FEATURE_WINDOWS - 1; sel >= 0; sel--) {
      this.#write(VirtioMmioReg.DRIVER_FEATURES_SEL, sel);
      this.#write(VirtioMmioReg.DRIVER_FEATURES, featureWord(features, sel));
    }
    return features;
  }

  /** Models `vm_get` (1, 2 and 4 bytes at their natural width). */
  protected get(offset: number, size: number): number {
    return this.bus.memRead(this.base + VirtioMmioReg.CONFIG + offset, size);
  }

  /** Models `vm_set`. */
  protected set(offset: number, size: number, value: number): void {
    this.bus.memWrite(this.base + VirtioMmioReg.CONFIG + offset, size, value);
  }

  /** Models `vm_generation`. */
  configGeneration(): number {
    return this.#read(VirtioMmioReg.CONFIG_GENERATION);
  }

  /** Models `vm_find_vqs`: request the (shared) interrupt, then `vm_setup_vq` per queue. */
  protected findVqs<T>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[] {
    if (this.irqHost !== null && this.irqLine !== null && !this.#irqRequested) {
      this.irqHost.requestIrq(this.irqLine, this.#handler);
      this.#irqRequested = true;
    }
    const vqs: Virtqueue<T>[] = [];
    this.#queues = vqs as unknown as Virtqueue<unknown>[];
    for (let i = 0; i < specs.length; i++) {
      try {
        vqs.push(this.#setupVq(i, specs[i]));
      } catch (e) {
        this.delVqs();
        throw e;
      }
    }
    return vqs;
  }

  /** Models `vm_setup_vq`. */
  #setupVq<T>(index: number, spec: VirtqueueSpec<T>): Virtqueue<T> {
    const R = VirtioMmioReg;
    // Select the queue we're interested in.
    this.#write(R.QUEUE_SEL, index);
    // Queue shouldn't already be set up.
    if (this.#read(R.QUEUE_READY) !== 0) {
      throw this.error(-GuestErrno.ENOENT, `queue ${index} (${spec.name}) is already set up`);
    }
    const num = this.#read(R.QUEUE_NUM_MAX);
    if (num === 0) {
      throw this.error(-GuestErrno.ENOENT, `queue ${index} (${spec.name}) is not available`);
    }
    if (num > 0x8000) {
      throw this.error(-GuestErrno.ENOMEM, `queue ${index}: QueueNumMax ${num} is above 32768`);
    }
    const withData = this.hasFeature(VirtioFeature.NOTIFICATION_DATA);
    const vq = this.createVq<T>(index, num, spec, (q) => {
      // vm_notify / vm_notify_with_data
      this.#write(R.QUEUE_NOTIFY, withData ? q.notificationData() : q.index);
      return true;
    }, VIRTIO_MMIO_VRING_ALIGN);
    if (vq === null) throw this.error(-GuestErrno.ENOMEM, this.diagnostics.lastError);
    this.#activate(vq as Virtqueue<unknown>);
    return vq;
  }

  /** Writes QueueNum and the six address halves, then QueueReady = 1 (`vm_setup_vq`'s tail). */
  #activate(vq: Virtqueue<unknown>): void {
    const R = VirtioMmioReg;
    this.#write(R.QUEUE_SEL, vq.index);
    this.#write(R.QUEUE_NUM, vq.size);
    this.#writeAddress(R.QUEUE_DESC_LOW, vq.descAddr);
    this.#writeAddress(R.QUEUE_AVAIL_LOW, vq.driverAddr);
    this.#writeAddress(R.QUEUE_USED_LOW, vq.deviceAddr);
    this.#write(R.QUEUE_READY, 1);
  }

  #writeAddress(low: number, address: number): void {
    this.#write(low, address >>> 0);
    this.#write(low + 4, Math.floor(address / 0x1_0000_0000));
  }

  /** Models `vm_del_vqs`: `vm_del_vq` for each queue, then `free_irq`. */
  protected delVqs(): void {
    for (const vq of this.#queues) {
      // Select and deactivate the queue.
      this.#write(VirtioMmioReg.QUEUE_SEL, vq.index);
      this.#write(VirtioMmioReg.QUEUE_READY, 0);
      if (this.#read(VirtioMmioReg.QUEUE_READY) !== 0) {
        this.diagnostics.lastError =
          `${this.name}: queue ${vq.index} still ready after QueueReady = 0`;
      }
      vq.destroy();
    }
    this.#queues = [];
    this.#resetting.clear();
    if (this.#irqRequested && this.irqHost !== null && this.irqLine !== null) {
      this.irqHost.freeIrq(this.irqLine, this.#handler);
      this.#irqRequested = false;
    }
  }

  /**
   * Stops a queue through QueueReset (only with `ringReset` and RING_RESET
   * negotiated), polling until QueueReset and QueueReady read 0.
   */
  protected override disableVqAndReset(vq: Virtqueue<unknown>): number {
    if (!this.hasFeature(VirtioFeature.RING_RESET)) return -GuestErrno.ENOENT;
    const R = VirtioMmioReg;
    this.#write(R.QUEUE_SEL, vq.index);
    this.#write(R.QUEUE_RESET, 1);
    if (!this.#pollZero(R.QUEUE_RESET) || !this.#pollZero(R.QUEUE_READY)) {
      this.diagnostics.lastError = `${this.name}: queue ${vq.index} did not finish its reset`;
      return -GuestErrno.ETIMEDOUT;
    }
    this.#resetting.add(vq);
    return 0;
  }

  /** Re-programs and re-enables a queue after its reset. */
  protected override enableVqAfterReset(vq: Virtqueue<unknown>): number {
    if (!this.#resetting.has(vq)) return -GuestErrno.EBUSY;
    this.#write(VirtioMmioReg.QUEUE_SEL, vq.index);
    if (
      this.#read(VirtioMmioReg.QUEUE_RESET) !== 0 || this.#read(VirtioMmioReg.QUEUE_READY) !== 0
    ) {
      return -GuestErrno.EBUSY;
    }
    this.#activate(vq);
    this.#resetting.delete(vq);
    return 0;
  }

  #pollZero(reg: number): boolean {
    for (let i = 0; i < MAX_QUEUE_POLLS; i++) if (this.#read(reg) === 0) return true;
    return false;
  }

  // ---- interrupts -------------------------------------------------------------------

  /**
   * The interrupt handler: reads InterruptStatus, writes the same bits to
   * InterruptACK, handles a config change, then runs every queue's interrupt.
   * Returns false when the device had nothing pending (`IRQ_NONE`, e.g. a
   * shared line raised by another device). Models `vm_interrupt`.
   */
  interrupt(): boolean {
    // Read and acknowledge interrupts.
    const status = this.#read(VirtioMmioReg.INTERRUPT_STATUS);
    this.diagnostics.interrupts++;
    if (status === 0) {
      this.diagnostics.spuriousInterrupts++;
      return false;
    }
    this.#write(VirtioMmioReg.INTERRUPT_ACK, status);
    let handled = false;
    if ((status & VIRTIO_MMIO_INT_CONFIG) !== 0) {
      this.configChanged();
      handled = true;
    }
    if ((status & VIRTIO_MMIO_INT_VRING) !== 0) {
      for (const vq of this.#queues) {
        if (!this.#resetting.has(vq) && vq.interrupt()) handled = true;
      }
    }
    return handled;
  }
}

/**
 * Probes a virtio-mmio window: checks MagicValue and Version (2; legacy
 * version 1 devices are not modelled), skips placeholder devices (DeviceID 0),
 * then registers the device: reset and ACKNOWLEDGE. Models
 * `virtio_mmio_probe` and `register_virtio_device`.
 *
 * @returns the driver, ready for {@linkcode VirtioMmioDriver.negotiate}
 * @throws {VirtioDriverError} `-ENODEV` for a wrong magic value or a placeholder, `-ENXIO` for an unsupported version
 * @throws {TypeError} when the options are malformed
 *
 * @example
 * ```ts
 * import { GuestMemory, PageAllocator } from "@vireo/vireo";
 * import { probeVirtioMmio } from "./virtio_mmio_driver.ts";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const pages = new PageAllocator(memory, { base: 0x10000, size: 0x10000 });
 * const regs = new Map<number, number>([[0, 0x74726976], [4, 2], [8, 0]]);
 * const bus = { memRead: (a: number) => regs.get(a - 0x1000) ?? 0, memWrite: () => {} };
 * try {
 *   probeVirtioMmio({ bus, base: 0x1000, pages });
 * } catch (e) {
 *   console.log((e as Error).message); // virtio-mmio@1000: device ID 0 is a placeholder: nothing to drive
 * }
 * ```
 */
export function probeVirtioMmio(options: VirtioMmioDriverOptions): VirtioMmioDriver {
  if (options === null || typeof options !== "object") {
    throw new TypeError("Cannot probe virtio-mmio: options must be an object");
  }
  const { bus, base } = options;
  if (
    bus === null || typeof bus !== "object" || typeof bus.memRead !== "function" ||
    typeof bus.memWrite !== "function"
  ) {
    throw new TypeError("Cannot probe virtio-mmio: bus needs memRead and memWrite");
  }
  if (!Number.isSafeInteger(base) || base < 0) {
    throw new RangeError(
      `Cannot probe virtio-mmio at ${base}: base must be a guest physical address`,
    );
  }
  const where = `virtio-mmio@${base.toString(16)}`;
  const fail = (errno: number, message: string): never => {
    throw new VirtioDriverError(errno, `${where}: ${message}`);
  };
  const read = (reg: number): number => bus.memRead(base + reg, 4) >>> 0;
  const magic = read(VirtioMmioReg.MAGIC_VALUE);
  if (magic !== VIRTIO_MMIO_MAGIC) {
    fail(-GuestErrno.ENODEV, `Wrong magic value 0x${magic.toString(16).padStart(8, "0")}!`);
  }
  const version = read(VirtioMmioReg.VERSION);
  if (version !== 2) {
    fail(
      -GuestErrno.ENXIO,
      version === 1
        ? "Version 1 (legacy) is not supported by this model"
        : `Version ${version} not supported!`,
    );
  }
  const deviceId = read(VirtioMmioReg.DEVICE_ID);
  if (deviceId === 0) {
    // A placeholder with no function: end probing with no error reported.
    fail(-GuestErrno.ENODEV, "device ID 0 is a placeholder: nothing to drive");
  }
  const vendorId = read(VirtioMmioReg.VENDOR_ID);
  const driver = new VirtioMmioDriver(options, { version, deviceId, vendorId });
  // register_virtio_device: always start by resetting the device, then we saw it.
  driver.reset();
  driver.addStatus(DeviceStatus.ACKNOWLEDGE);
  return driver;
}
