import type { DmaSpace } from "../../src/dma/dma_space.ts";
import type { MsixCapability } from "../../src/pci/msix.ts";
import { PciFunction } from "../../src/pci/pci_function.ts";
import type { PciRegionHandler } from "../../src/pci/bar.ts";
import { PciCapabilityId } from "../../src/pci/registers.ts";
import type { VirtioDevice } from "../../src/virtio/device.ts";
import { VirtioDeviceId } from "../../src/virtio/device_id.ts";
import { hasFeature, VirtioFeature } from "../../src/virtio/features.ts";
import {
  type RingFeatureOptions,
  VirtioCore,
  type VirtioDiagnostics,
} from "../core/virtio_core.ts";

/** virtio PCI capability structure types (cfg_type). */
export const VirtioPciCapType = {
  COMMON_CFG: 1,
  NOTIFY_CFG: 2,
  ISR_CFG: 3,
  DEVICE_CFG: 4,
  PCI_CFG: 5,
} as const;

/** Offsets of the fields of the common configuration structure. */
export const CommonCfg = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  CONFIG_MSIX_VECTOR: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC_LO: 0x20,
  QUEUE_DESC_HI: 0x24,
  QUEUE_DRIVER_LO: 0x28,
  QUEUE_DRIVER_HI: 0x2c,
  QUEUE_DEVICE_LO: 0x30,
  QUEUE_DEVICE_HI: 0x34,
  QUEUE_NOTIF_CONFIG_DATA: 0x38,
  QUEUE_RESET: 0x3a,
  ADMIN_QUEUE_INDEX: 0x3c,
  ADMIN_QUEUE_NUM: 0x3e,
} as const;

/** Size of the common configuration structure (the 1.3 layout, 64 bytes). */
export const COMMON_CFG_LENGTH = 0x40;
/** `VIRTIO_MSI_NO_VECTOR`: an event mapped to no MSI-X vector. */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;
/** The BAR holding the virtio structures (64-bit, prefetchable; takes slots 4 and 5). */
export const VIRTIO_BAR = 4;
/** The BAR holding the MSI-X table (at 0) and PBA (at 0x800). */
export const MSIX_BAR = 1;
/** Offsets of the structures inside {@linkcode VIRTIO_BAR}, 4 KiB apart as QEMU lays them out. */
export const VirtioPciLayout = {
  COMMON: 0x0000,
  ISR: 0x1000,
  DEVICE: 0x2000,
  NOTIFY: 0x3000,
} as const;

/** The width of every common-config register (offset → bytes). */
const REGISTER_WIDTH: ReadonlyMap<number, number> = new Map(
  Object.values(CommonCfg).map((offset) => [offset, widthOf(offset)]),
);

function widthOf(offset: number): number {
  if (offset < 0x10 || (offset >= 0x20 && offset < 0x38)) return 4;
  if (offset === 0x14 || offset === 0x15) return 1;
  return 2;
}

/** Options of a virtio-pci function. */
export interface VirtioPciOptions extends RingFeatureOptions {
  /** The identity view of guest memory (no ACCESS_PLATFORM). */
  dma: DmaSpace;
  /** The IOMMU endpoint space, used once ACCESS_PLATFORM is negotiated. */
  platformDma?: DmaSpace;
  /** MSI-X vectors (default: one per queue plus one for config, at least 2). */
  msixVectors?: number;
  /** notify_off_multiplier: bytes between queue doorbells (default 4; 0 = one shared doorbell). */
  notifyOffMultiplier?: number;
  /** Subsystem id (default 0x1100, as QEMU's modern devices). */
  subsystemId?: number;
  /** A name for diagnostics. */
  name?: string;
}

/**
 * A modern (non-transitional) virtio-pci function for any {@linkcode VirtioDevice}:
 * vendor 0x1AF4, device 0x1040 + type, the five virtio capabilities, the
 * virtio structures in a 64-bit memory BAR and MSI-X in a 32-bit one, with
 * legacy INTx and the ISR as fallback.
 *
 * Attach `pci` to a {@linkcode PciHostBridge} or forward an emulator's own
 * config and BAR accesses to it.
 *
 * Common-config reads narrower than a register return that register's bytes
 * (v86 splits 16-bit MMIO reads into byte reads); wider, straddling or unknown
 * accesses read 0, write nothing and are counted in `diagnostics.badAccesses`.
 */
export class VirtioPci {
  /** The PCI function: config space, BARs, MSI-X, INTx. */
  readonly pci: PciFunction;
  /** The transport-independent virtio state. */
  readonly core: VirtioCore;
  /** The MSI-X capability. */
  readonly msix: MsixCapability;
  /** notify_off_multiplier. */
  readonly notifyOffMultiplier: number;
  #isr = 0;
  #configVector = VIRTIO_MSI_NO_VECTOR;
  readonly #queueVectors: Uint16Array;
  #pciCfgOffset = 0;

  /**
   * Creates the function for `device`.
   * @throws {TypeError|RangeError} on bad options
   */
  constructor(device: VirtioDevice, options: VirtioPciOptions) {
    const multiplier = options.notifyOffMultiplier ?? 4;
    const notificationData = options.notificationData ?? false;
    const minMultiplier = notificationData ? 4 : 2;
    if (
      !Number.isInteger(multiplier) ||
      (multiplier !== 0 && (multiplier < minMultiplier || (multiplier & (multiplier - 1)) !== 0))
    ) {
      throw new RangeError(
        `Cannot create virtio-pci: notify_off_multiplier ${multiplier} is not 0 or a power of two >= ${minMultiplier}`,
      );
    }
    this.notifyOffMultiplier = multiplier;
    this.core = new VirtioCore(device, {
      ...options,
      signalQueue: (index) => this.#signalQueue(index),
      signalConfig: () => this.#signalConfig(),
    });
    const queues = device.numQueues;
    this.#queueVectors = new Uint16Array(queues).fill(VIRTIO_MSI_NO_VECTOR);
    const pci = new PciFunction({
      vendorId: 0x1af4,
      deviceId: 0x1040 + device.deviceId,
      revisionId: 1,
      classCode: classCodeOf(device.deviceId),
      subsystemVendorId: 0x1af4,
      subsystemId: options.subsystemId ?? 0x1100,
      interruptPin: 1,
      name: options.name ?? `virtio-pci (device ${device.deviceId})`,
    });
    this.pci = pci;

    const notifyLength = Math.max(2, queues * Math.max(multiplier, 4));
    const barSize = nextPowerOfTwo(VirtioPciLayout.NOTIFY + notifyLength);
    pci.defineBar(MSIX_BAR, { kind: "mem32", size: 0x1000 });
    pci.defineBar(VIRTIO_BAR, { kind: "mem64", size: barSize, prefetchable: true });
    const vectors = options.msixVectors ?? Math.max(2, queues + 1);
    this.msix = pci.addMsix({ vectors, tableBar: MSIX_BAR, tableOffset: 0, pbaOffset: 0x800 });

    pci.mapRegion(VIRTIO_BAR, VirtioPciLayout.COMMON, COMMON_CFG_LENGTH, this.#commonHandler());
    pci.mapRegion(VIRTIO_BAR, VirtioPciLayout.ISR, 1, this.#isrHandler());
    const configLength = device.config.length;
    if (configLength > 0) {
      pci.mapRegion(VIRTIO_BAR, VirtioPciLayout.DEVICE, configLength, this.#deviceHandler());
    }
    pci.mapRegion(VIRTIO_BAR, VirtioPciLayout.NOTIFY, notifyLength, this.#notifyHandler());

    this.#addVirtioCap(VirtioPciCapType.COMMON_CFG, VirtioPciLayout.COMMON, COMMON_CFG_LENGTH);
    this.#addVirtioCap(
      VirtioPciCapType.NOTIFY_CFG,
      VirtioPciLayout.NOTIFY,
      notifyLength,
      multiplier,
    );
    this.#addVirtioCap(VirtioPciCapType.ISR_CFG, VirtioPciLayout.ISR, 1);
    if (configLength > 0) {
      this.#addVirtioCap(VirtioPciCapType.DEVICE_CFG, VirtioPciLayout.DEVICE, configLength);
    }
    this.#addPciCfgCap();
  }

  /** The device model behind the function. */
  get device(): VirtioDevice {
    return this.core.device;
  }

  /** Ignored accesses and the last device error (virtio level; PCI level is `pci.diagnostics`). */
  get diagnostics(): VirtioDiagnostics {
    return this.core.diagnostics;
  }

  /** The ISR byte as it stands (reading it through the BAR clears it). */
  get isr(): number {
    return this.#isr;
  }

  // ---- interrupts -------------------------------------------------------------

  #signalQueue(index: number): void {
    if (this.msix.enabled) {
      const vector = this.#queueVectors[index];
      if (vector !== VIRTIO_MSI_NO_VECTOR) this.msix.notify(vector);
      return;
    }
    this.#isr |= 1;
    this.pci.setIntx(true);
  }

  #signalConfig(): void {
    this.#isr |= 2; // set before any config notification, MSI-X or not
    if (this.msix.enabled) {
      if (this.#configVector !== VIRTIO_MSI_NO_VECTOR) this.msix.notify(this.#configVector);
      return;
    }
    this.pci.setIntx(true);
  }

  #reset(): void {
    this.#isr = 0;
    this.pci.setIntx(false);
    this.#configVector = VIRTIO_MSI_NO_VECTOR;
    this.#queueVectors.fill(VIRTIO_MSI_NO_VECTOR);
  }

  // ---- common configuration ---------------------------------------------------

  #commonHandler(): PciRegionHandler {
    return {
      read: (offset, size) => {
        // Find the register containing [offset, offset + size).
        for (let base = offset; base >= 0 && offset - base < 4; base--) {
          const width = REGISTER_WIDTH.get(base);
          if (width === undefined) continue;
          if (offset + size > base + width) break;
          const value = this.#readCommon(base);
          const shift = (offset - base) * 8;
          return size === 4 ? value >>> 0 : (value >>> shift) & ((1 << (size * 8)) - 1);
        }
        return this.#bad();
      },
      write: (offset, size, value) => {
        if (REGISTER_WIDTH.get(offset) !== size) {
          this.#bad();
          return;
        }
        this.#writeCommon(offset, value >>> 0);
      },
    };
  }

  #readCommon(offset: number): number {
    const core = this.core;
    const q = core.selectedQueue;
    switch (offset) {
      case CommonCfg.DEVICE_FEATURE_SELECT:
        return core.deviceFeatureSelect;
      case CommonCfg.DEVICE_FEATURE:
        return core.readDeviceFeatureWindow();
      case CommonCfg.DRIVER_FEATURE_SELECT:
        return core.driverFeatureSelect;
      case CommonCfg.DRIVER_FEATURE:
        return core.readDriverFeatureWindow();
      case CommonCfg.CONFIG_MSIX_VECTOR:
        return this.#configVector;
      case CommonCfg.NUM_QUEUES:
        return core.queues.length;
      case CommonCfg.DEVICE_STATUS:
        return core.status;
      case CommonCfg.CONFIG_GENERATION:
        return core.configGeneration & 0xff;
      case CommonCfg.QUEUE_SELECT:
        return core.queueSelect;
      case CommonCfg.QUEUE_SIZE:
        return q?.size ?? 0;
      case CommonCfg.QUEUE_MSIX_VECTOR:
        return q === undefined ? VIRTIO_MSI_NO_VECTOR : this.#queueVectors[core.queueSelect];
      case CommonCfg.QUEUE_ENABLE:
        return q?.enabled ? 1 : 0;
      case CommonCfg.QUEUE_NOTIFY_OFF:
        return q === undefined ? 0 : core.queueSelect;
      case CommonCfg.QUEUE_DESC_LO:
      case CommonCfg.QUEUE_DESC_HI:
      case CommonCfg.QUEUE_DRIVER_LO:
      case CommonCfg.QUEUE_DRIVER_HI:
      case CommonCfg.QUEUE_DEVICE_LO:
      case CommonCfg.QUEUE_DEVICE_HI:
        return q === undefined ? 0 : q.addressHalves[(offset - CommonCfg.QUEUE_DESC_LO) >> 2];
      case CommonCfg.QUEUE_NOTIF_CONFIG_DATA:
        return q === undefined ? 0 : core.queueSelect;
      default: // QUEUE_RESET (resets complete at once), admin queue fields (no admin queues)
        return 0;
    }
  }

  #writeCommon(offset: number, value: number): void {
    const core = this.core;
    const q = core.selectedQueue;
    switch (offset) {
      case CommonCfg.DEVICE_FEATURE_SELECT:
        core.deviceFeatureSelect = value;
        return;
      case CommonCfg.DRIVER_FEATURE_SELECT:
        core.driverFeatureSelect = value;
        return;
      case CommonCfg.DRIVER_FEATURE:
        core.writeDriverFeatureWindow(value);
        return;
      case CommonCfg.CONFIG_MSIX_VECTOR:
        this.#configVector = value < this.msix.vectors ? value : VIRTIO_MSI_NO_VECTOR;
        return;
      case CommonCfg.DEVICE_STATUS:
        core.writeStatus(value);
        if (value === 0) this.#reset();
        return;
      case CommonCfg.QUEUE_SELECT:
        core.queueSelect = value;
        return;
      case CommonCfg.QUEUE_SIZE:
        if (q !== undefined && !q.enabled) q.size = value;
        return;
      case CommonCfg.QUEUE_MSIX_VECTOR:
        if (q !== undefined) {
          this.#queueVectors[core.queueSelect] = value < this.msix.vectors
            ? value
            : VIRTIO_MSI_NO_VECTOR;
        }
        return;
      case CommonCfg.QUEUE_ENABLE:
        if (q === undefined) return;
        if (value === 1) core.enableQueue(core.queueSelect);
        else this.#bad(); // the driver must not write anything but 1
        return;
      case CommonCfg.QUEUE_DESC_LO:
      case CommonCfg.QUEUE_DESC_HI:
      case CommonCfg.QUEUE_DRIVER_LO:
      case CommonCfg.QUEUE_DRIVER_HI:
      case CommonCfg.QUEUE_DEVICE_LO:
      case CommonCfg.QUEUE_DEVICE_HI:
        if (q !== undefined && !q.enabled) {
          q.addressHalves[(offset - CommonCfg.QUEUE_DESC_LO) >> 2] = value;
        }
        return;
      case CommonCfg.QUEUE_RESET:
        if (
          q !== undefined && value === 1 && hasFeature(core.features, VirtioFeature.RING_RESET)
        ) {
          core.resetQueue(core.queueSelect);
          this.#queueVectors[core.queueSelect] = VIRTIO_MSI_NO_VECTOR;
        }
        return;
      default: // read-only fields
        this.#bad();
    }
  }

  // ---- ISR, device config, notify ------------------------------------------

  #isrHandler(): PciRegionHandler {
    return {
      read: (_offset, size) => {
        if (size !== 1) return this.#bad();
        const value = this.#isr;
        this.#isr = 0;
        this.pci.setIntx(false);
        return value;
      },
      write: () => {
        this.#bad();
      },
    };
  }

  #deviceHandler(): PciRegionHandler {
    return {
      read: (offset, size) => {
        const config = this.core.device.config;
        if (!(size === 1 || size === 2 || size === 4) || offset + size > config.length) {
          return this.#bad();
        }
        let value = 0;
        for (let i = size - 1; i >= 0; i--) value = (value << 8) | config[offset + i];
        return value >>> 0;
      },
      write: (offset, size, value) => {
        const config = this.core.device.config;
        if (!(size === 1 || size === 2 || size === 4) || offset + size > config.length) {
          this.#bad();
          return;
        }
        const data = new Uint8Array(size);
        for (let i = 0; i < size; i++) data[i] = value >>> (8 * i);
        this.core.writeConfig(offset, data);
      },
    };
  }

  #notifyHandler(): PciRegionHandler {
    return {
      read: () => this.#bad(),
      write: (offset, size, value) => {
        if (size !== 2 && size !== 4) {
          this.#bad();
          return;
        }
        if (!this.pci.busMaster) {
          this.core.diagnostics.ignoredNotifies++;
          return;
        }
        // With a multiplier the doorbell names the queue; a shared doorbell takes it from the value.
        const m = this.notifyOffMultiplier;
        const index = m === 0 ? value & 0xffff : Math.floor(offset / m);
        this.core.notify(index, size === 4 ? value >>> 0 : undefined);
      },
    };
  }

  // ---- capabilities -----------------------------------------------------------

  #addVirtioCap(type: number, offset: number, length: number, multiplier?: number): number {
    const capLength = multiplier === undefined ? 16 : 20;
    const cfg = this.pci.config;
    const at = this.pci.addCapability(PciCapabilityId.VENDOR, capLength);
    cfg.define8(at + 2, capLength);
    cfg.define8(at + 3, type);
    cfg.define8(at + 4, VIRTIO_BAR);
    cfg.define32(at + 8, offset);
    cfg.define32(at + 12, length);
    if (multiplier !== undefined) cfg.define32(at + 16, multiplier);
    return at;
  }

  /** The VIRTIO_PCI_CAP_PCI_CFG window: BAR accesses through config space. */
  #addPciCfgCap(): void {
    const cfg = this.pci.config;
    const at = this.pci.addCapability(PciCapabilityId.VENDOR, 20, {
      beforeRead: (off, len) => {
        if (off + len > 16) this.#pciCfgAccess(false);
      },
      afterWrite: (off, len) => {
        if (off + len > 16) this.#pciCfgAccess(true);
      },
    });
    cfg.define8(at + 2, 20);
    cfg.define8(at + 3, VirtioPciCapType.PCI_CFG);
    cfg.define8(at + 4, 0, 0xff);
    cfg.define32(at + 8, 0, 0xffff_ffff);
    cfg.define32(at + 12, 0, 0xffff_ffff);
    cfg.define32(at + 16, 0, 0xffff_ffff);
    this.#pciCfgOffset = at;
  }

  #pciCfgAccess(write: boolean): void {
    const cfg = this.pci.config;
    const at = this.#pciCfgOffset;
    const bar = cfg.get8(at + 4);
    const offset = cfg.get32(at + 8);
    const length = cfg.get32(at + 12);
    // Only 1, 2 or 4 bytes at a multiple of the length, as the spec asks of drivers.
    if (!(length === 1 || length === 2 || length === 4) || offset % length !== 0) return;
    if (write) {
      this.pci.barWrite(bar, offset, length, cfg.get32(at + 16));
    } else {
      cfg.set32(at + 16, this.pci.barRead(bar, offset, length));
    }
  }

  #bad(): number {
    this.core.diagnostics.badAccesses++;
    return 0;
  }
}

function classCodeOf(deviceId: number): number {
  switch (deviceId) {
    case VirtioDeviceId.NET:
      return 0x020000; // Ethernet controller
    case VirtioDeviceId.BLOCK:
      return 0x010000; // SCSI storage controller, as QEMU
    default:
      return 0xff0000; // unclassified
  }
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}
