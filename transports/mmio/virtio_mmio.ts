import type { DmaSpace } from "../../src/dma/dma_space.ts";
import type { VirtioDevice } from "../../src/virtio/device.ts";
import {
  type RingFeatureOptions,
  VirtioCore,
  type VirtioDiagnostics,
} from "../core/virtio_core.ts";

/** virtio-mmio register offsets (virtio 1.x §4.2.2, version 2). */
export const MmioRegister = {
  MAGIC_VALUE: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  QUEUE_RESET: 0x0c0,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

/** "virt" in little-endian: the value of MagicValue. */
export const MMIO_MAGIC = 0x74726976;
/** vireo's VendorID on virtio-mmio ("VIRO" little-endian). */
export const MMIO_VENDOR_ID = 0x4f524956;

/** Options of a virtio-mmio transport. */
export interface VirtioMmioOptions extends RingFeatureOptions {
  /** The identity view of guest memory. */
  dma: DmaSpace;
  /** An IOMMU space, used once VIRTIO_F_ACCESS_PLATFORM is negotiated. */
  platformDma?: DmaSpace;
  /** The interrupt line: called with `true` when InterruptStatus becomes non-zero, `false` when acked to 0. */
  setIrq(level: boolean): void;
}

/**
 * A virtio-mmio version 2 device: a 4 KiB-or-smaller register window in front
 * of any {@linkcode VirtioDevice}, with one level-triggered interrupt line.
 *
 * The embedder maps `size` bytes at some guest physical address and forwards
 * reads and writes there; registers take aligned 32-bit accesses, the config
 * area also 8- and 16-bit ones. Anything else reads 0, is ignored, and is
 * counted in `diagnostics.badAccesses`.
 */
export class VirtioMmio {
  /** The transport-independent state (status, features, queues). */
  readonly core: VirtioCore;
  /** Bytes of the register window: 0x100 plus the device's config size. */
  readonly size: number;
  #interruptStatus = 0;
  readonly #setIrq: (level: boolean) => void;

  /** Creates the transport for `device`. @throws {TypeError} on bad options */
  constructor(device: VirtioDevice, options: VirtioMmioOptions) {
    if (typeof options?.setIrq !== "function") {
      throw new TypeError("Cannot create a virtio-mmio transport: options.setIrq is required");
    }
    this.#setIrq = options.setIrq;
    this.core = new VirtioCore(device, {
      ...options,
      signalQueue: () => this.#raise(1),
      signalConfig: () => this.#raise(2),
    });
    this.size = MmioRegister.CONFIG + device.config.length;
  }

  /** Counters for ignored accesses and the last device error. */
  get diagnostics(): VirtioDiagnostics {
    return this.core.diagnostics;
  }

  /** InterruptStatus as the driver would read it. */
  get interruptStatus(): number {
    return this.#interruptStatus;
  }

  /** A guest read of `width` (1, 2 or 4) bytes at `offset` in the window. */
  read(offset: number, width: number): number {
    if (offset >= MmioRegister.CONFIG) return this.#readConfig(offset - MmioRegister.CONFIG, width);
    if (width !== 4 || (offset & 3) !== 0) return this.#bad();
    const core = this.core;
    const q = core.selectedQueue;
    switch (offset) {
      case MmioRegister.MAGIC_VALUE:
        return MMIO_MAGIC;
      case MmioRegister.VERSION:
        return 2;
      case MmioRegister.DEVICE_ID:
        return core.device.deviceId;
      case MmioRegister.VENDOR_ID:
        return MMIO_VENDOR_ID;
      case MmioRegister.DEVICE_FEATURES:
        return core.readDeviceFeatureWindow();
      case MmioRegister.QUEUE_NUM_MAX:
        return q === undefined ? 0 : q.maxSize;
      case MmioRegister.QUEUE_READY:
        return q?.enabled ? 1 : 0;
      case MmioRegister.INTERRUPT_STATUS:
        return this.#interruptStatus;
      case MmioRegister.STATUS:
        return core.status;
      case MmioRegister.SHM_LEN_LOW:
      case MmioRegister.SHM_LEN_HIGH:
      case MmioRegister.SHM_BASE_LOW:
      case MmioRegister.SHM_BASE_HIGH:
        return 0xffff_ffff; // no shared memory regions
      case MmioRegister.QUEUE_RESET:
        return 0; // queue resets complete synchronously
      case MmioRegister.CONFIG_GENERATION:
        return core.configGeneration;
      default:
        return this.#bad();
    }
  }

  /** A guest write of `width` (1, 2 or 4) bytes at `offset` in the window. */
  write(offset: number, width: number, value: number): void {
    if (offset >= MmioRegister.CONFIG) {
      this.#writeConfig(offset - MmioRegister.CONFIG, width, value);
      return;
    }
    if (width !== 4 || (offset & 3) !== 0) {
      this.#bad();
      return;
    }
    value >>>= 0;
    const core = this.core;
    const q = core.selectedQueue;
    switch (offset) {
      case MmioRegister.DEVICE_FEATURES_SEL:
        core.deviceFeatureSelect = value;
        return;
      case MmioRegister.DRIVER_FEATURES:
        core.writeDriverFeatureWindow(value);
        return;
      case MmioRegister.DRIVER_FEATURES_SEL:
        core.driverFeatureSelect = value;
        return;
      case MmioRegister.QUEUE_SEL:
        core.queueSelect = value;
        return;
      case MmioRegister.QUEUE_NUM:
        if (q !== undefined && !q.enabled) q.size = value;
        return;
      case MmioRegister.QUEUE_READY:
        if (q === undefined) return;
        if (value === 1) core.enableQueue(core.queueSelect);
        else if (value === 0) core.resetQueue(core.queueSelect);
        return;
      case MmioRegister.QUEUE_NOTIFY:
        core.notify(value & 0xffff, value);
        return;
      case MmioRegister.INTERRUPT_ACK:
        this.#interruptStatus &= ~value;
        if (this.#interruptStatus === 0) this.#setIrq(false);
        return;
      case MmioRegister.STATUS:
        core.writeStatus(value);
        if (value === 0 && this.#interruptStatus !== 0) {
          this.#interruptStatus = 0;
          this.#setIrq(false);
        }
        return;
      case MmioRegister.QUEUE_DESC_LOW:
      case MmioRegister.QUEUE_DESC_HIGH:
      case MmioRegister.QUEUE_DRIVER_LOW:
      case MmioRegister.QUEUE_DRIVER_HIGH:
      case MmioRegister.QUEUE_DEVICE_LOW:
      case MmioRegister.QUEUE_DEVICE_HIGH:
        this.#writeQueueAddress(offset, value);
        return;
      case MmioRegister.SHM_SEL:
        return;
      case MmioRegister.QUEUE_RESET:
        if (value === 1) core.resetQueue(core.queueSelect);
        return;
      default:
        this.#bad();
    }
  }

  #writeQueueAddress(offset: number, value: number): void {
    const q = this.core.selectedQueue;
    if (q === undefined || q.enabled) return; // the driver must not rewrite a live queue
    // 0x80/0x84 desc, 0x90/0x94 driver, 0xa0/0xa4 device: area * 2 + (high ? 1 : 0).
    q.addressHalves[((offset - MmioRegister.QUEUE_DESC_LOW) >> 3) + ((offset >> 2) & 1)] = value;
  }

  #readConfig(offset: number, width: number): number {
    const config = this.core.device.config;
    if (!(width === 1 || width === 2 || width === 4) || offset + width > config.length) {
      return this.#bad();
    }
    let value = 0;
    for (let i = width - 1; i >= 0; i--) value = (value << 8) | config[offset + i];
    return value >>> 0;
  }

  #writeConfig(offset: number, width: number, value: number): void {
    const config = this.core.device.config;
    if (!(width === 1 || width === 2 || width === 4) || offset + width > config.length) {
      this.#bad();
      return;
    }
    const data = new Uint8Array(width);
    for (let i = 0; i < width; i++) data[i] = value >>> (8 * i);
    this.core.writeConfig(offset, data);
  }

  #raise(bit: number): void {
    const before = this.#interruptStatus;
    this.#interruptStatus |= bit;
    if (before === 0) this.#setIrq(true);
  }

  #bad(): number {
    this.core.diagnostics.badAccesses++;
    return 0;
  }
}
