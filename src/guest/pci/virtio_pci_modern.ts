/**
 * The guest's virtio-pci driver for modern devices: a model of Linux's
 * `drivers/virtio/virtio_pci_modern_dev.c` (capability lookup and mapping),
 * `virtio_pci_modern.c` (config ops, queue setup, queue reset) and
 * `virtio_pci_common.c` (interrupt vector policies, INTx handler). It talks to
 * the device only through config accesses, BAR accesses and interrupts.
 *
 * @module
 */
import { PciCapabilityId } from "../../pci/registers.ts";
import { featureWord, hasFeature, VirtioFeature } from "../../virtio/features.ts";
import { DeviceStatus } from "../../virtio/status.ts";
import type { Virtqueue } from "../virtio/virtqueue.ts";
import {
  GuestErrno,
  type MsiMessage,
  VirtioDriverError,
  VirtioGuestDeviceBase,
  type VirtioGuestDeviceOptions,
  type VirtqueueSpec,
  vringTransportFeatures,
} from "../virtio/virtio_guest_device.ts";
import type { GuestPciDevice, PciIomem } from "./pci_enumeration.ts";

/** virtio PCI capability types (`cfg_type`), as in `include/uapi/linux/virtio_pci.h`. */
export const VirtioPciCap = {
  /** Common configuration. */
  COMMON_CFG: 1,
  /** Notifications. */
  NOTIFY_CFG: 2,
  /** ISR status. */
  ISR_CFG: 3,
  /** Device-specific configuration. */
  DEVICE_CFG: 4,
  /** PCI configuration access window. */
  PCI_CFG: 5,
  /** Shared memory region. */
  SHARED_MEMORY_CFG: 8,
  /** Vendor-specific data. */
  VENDOR_CFG: 9,
} as const;

/**
 * Offsets in `struct virtio_pci_modern_common_cfg` (Linux's names: `msix_config`,
 * `guest_feature`, `queue_avail_lo`, ...). The guest keeps its own copy so the
 * device and driver models check each other.
 */
export const VirtioPciCommon = {
  /** `device_feature_select`. */
  DFSELECT: 0x00,
  /** `device_feature`. */
  DF: 0x04,
  /** `guest_feature_select`. */
  GFSELECT: 0x08,
  /** `guest_feature`. */
  GF: 0x0c,
  /** `msix_config`. */
  MSIX: 0x10,
  /** `num_queues`. */
  NUMQ: 0x12,
  /** `device_status`. */
  STATUS: 0x14,
  /** `config_generation`. */
  CFGGENERATION: 0x15,
  /** `queue_select`. */
  Q_SELECT: 0x16,
  /** `queue_size`. */
  Q_SIZE: 0x18,
  /** `queue_msix_vector`. */
  Q_MSIX: 0x1a,
  /** `queue_enable`. */
  Q_ENABLE: 0x1c,
  /** `queue_notify_off`. */
  Q_NOFF: 0x1e,
  /** `queue_desc_lo` (hi at +4). */
  Q_DESCLO: 0x20,
  /** `queue_avail_lo` (hi at +4). */
  Q_AVAILLO: 0x28,
  /** `queue_used_lo` (hi at +4). */
  Q_USEDLO: 0x30,
  /** `queue_notify_data`. */
  Q_NDATA: 0x38,
  /** `queue_reset`. */
  Q_RESET: 0x3a,
  /** `admin_queue_index`. */
  ADM_Q_IDX: 0x3c,
  /** `admin_queue_num`. */
  ADM_Q_NUM: 0x3e,
} as const;

/** `VIRTIO_MSI_NO_VECTOR`. */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;
/** ISR bit 0: a queue interrupt (`VIRTIO_PCI_ISR_INTR`). */
export const VIRTIO_PCI_ISR_INTR = 1;
/** ISR bit 1: a config change (`VIRTIO_PCI_ISR_CONFIG`). */
export const VIRTIO_PCI_ISR_CONFIG = 2;

/** `sizeof(struct virtio_pci_common_cfg)`: the virtio 1.0 layout. */
const COMMON_MIN = 0x38;
/** `offsetofend(struct virtio_pci_modern_common_cfg, admin_queue_num)`. */
const COMMON_MAX = 0x40;
/** `SMP_CACHE_BYTES` on x86: the used-ring alignment virtio-pci asks for. */
const VRING_ALIGN = 64;
const PAGE_SIZE = 4096;
const FEATURE_WINDOWS = 4;
/** Polls of device_status / queue_reset before giving up (the kernel sleeps 1 ms and retries forever). */
const MAX_POLLS = 1000;
/** Vector 0: config changes (`VP_MSIX_CONFIG_VECTOR`). */
const CONFIG_VECTOR = 0;
/** Vector 1 under the shared policy: every queue (`VP_MSIX_VQ_VECTOR`). */
const VQ_VECTOR = 1;

/**
 * How the driver's interrupts are wired (`vp_find_vqs`'s attempts, in order):
 * one MSI-X vector per queue with a callback plus one for config; the same
 * with slow-path queues on the config vector; one config vector plus one
 * shared by every queue; or INTx with the ISR.
 */
export type VirtioPciIrqMode = "none" | "msix-per-vq" | "msix-shared-slow" | "msix-shared" | "intx";

type VectorPolicy = "each" | "shared-slow" | "shared";

/** Options of {@linkcode probeVirtioPciModern}. */
export interface VirtioPciModernOptions extends VirtioGuestDeviceOptions {
  /** The PCI function, as enumeration found it. */
  pci: GuestPciDevice;
}

/** A queue's bookkeeping (`struct virtio_pci_vq_info`). */
interface VqInfo {
  readonly vq: Virtqueue<unknown>;
  readonly msixVector: number;
  readonly hasCallback: boolean;
  /** Removed from the interrupt list by a queue reset. */
  resetting: boolean;
}

/** A mapped capability structure. */
interface Mapped {
  readonly io: PciIomem;
  readonly length: number;
}

/**
 * A guest virtio-pci driver bound to one modern virtio function. Create it
 * with {@linkcode probeVirtioPciModern}; it implements
 * {@linkcode VirtioGuestDevice} for device drivers.
 *
 * Interrupts: a platform either gives a {@linkcode GuestIrqHost} (the driver
 * then requests its INTx line and MSI messages) or routes them itself to
 * {@linkcode VirtioPciModernDriver.handleMsi} and
 * {@linkcode VirtioPciModernDriver.handleIntx}.
 */
export class VirtioPciModernDriver extends VirtioGuestDeviceBase {
  /** Always `"pci"`. */
  readonly transport: string = "pci";
  /** The PCI function. */
  readonly pci: GuestPciDevice;
  /** Bytes of common config mapped (`common_len`, at most 64). */
  readonly commonLength: number;
  /** Bytes of device config mapped (`device_len`, at most 4096; 0 without DEVICE_CFG). */
  readonly deviceLength: number;
  /** `notify_off_multiplier`. */
  readonly notifyOffMultiplier: number;
  /** Bitmask of the BARs the virtio structures use (`modern_bars`). */
  readonly modernBars: number;
  readonly #common: PciIomem;
  readonly #isr: PciIomem;
  readonly #device: PciIomem | null;
  readonly #notifyBase: Mapped | null;
  readonly #notifyCap: number;
  #infos: VqInfo[] = [];
  #mode: VirtioPciIrqMode = "none";
  #msix: readonly MsiMessage[] = [];
  readonly #intxHandler: () => boolean;
  readonly #msiHandler: (address: number, data: number) => boolean;

  /** Use {@linkcode probeVirtioPciModern}, which finds and maps the capabilities. */
  constructor(
    options: VirtioPciModernOptions,
    layout: {
      deviceId: number;
      common: Mapped;
      isr: PciIomem;
      device: Mapped | null;
      notifyBase: Mapped | null;
      notifyCap: number;
      notifyOffMultiplier: number;
      modernBars: number;
    },
  ) {
    const pci = options.pci;
    super(options, {
      deviceId: layout.deviceId,
      vendorId: pci.subsystemVendorId,
      name: `virtio-pci ${pci.slotName}`,
    });
    this.pci = pci;
    this.#common = layout.common.io;
    this.commonLength = layout.common.length;
    this.#isr = layout.isr;
    this.#device = layout.device?.io ?? null;
    this.deviceLength = layout.device?.length ?? 0;
    this.#notifyBase = layout.notifyBase;
    this.#notifyCap = layout.notifyCap;
    this.notifyOffMultiplier = layout.notifyOffMultiplier;
    this.modernBars = layout.modernBars;
    this.#intxHandler = () => this.handleIntx();
    this.#msiHandler = (address, data) => this.handleMsi(address, data);
  }

  /** How interrupts are wired since the last queue setup. */
  get irqMode(): VirtioPciIrqMode {
    return this.#mode;
  }

  /** The MSI-X vector of each queue (`VIRTIO_MSI_NO_VECTOR` for none), in queue order. */
  get queueVectors(): number[] {
    return this.#infos.map((i) => i.msixVector);
  }

  // ---- common config accessors (vp_modern_*) ----------------------------------------

  /** Models `vp_modern_get_status`. */
  getStatus(): number {
    return this.#common.read8(VirtioPciCommon.STATUS);
  }

  /** Models `vp_modern_set_status`. */
  protected setStatus(status: number): void {
    this.#common.write8(VirtioPciCommon.STATUS, status);
  }

  /** Models `vp_reset`: write 0, then poll until the device reads 0. */
  protected resetDevice(): void {
    this.#common.write8(VirtioPciCommon.STATUS, 0);
    for (let i = 0; i < MAX_POLLS; i++) if (this.getStatus() === 0) return;
    this.diagnostics.lastError = `${this.name}: device_status did not read 0 after a reset`;
  }

  /** Models `vp_modern_get_features` (all four windows, as Linux 6.17). */
  protected getFeatures(): bigint {
    let features = 0n;
    for (let sel = FEATURE_WINDOWS - 1; sel >= 0; sel--) {
      this.#common.write32(VirtioPciCommon.DFSELECT, sel);
      features = (features << 32n) | BigInt(this.#common.read32(VirtioPciCommon.DF));
    }
    return features;
  }

  /** Models `vp_finalize_features` (with `vp_transport_features` and `vp_check_common_size`). */
  protected finalizeFeatures(features: bigint): bigint {
    const offered = features;
    // Give virtio_ring a chance to accept features.
    features = vringTransportFeatures(features, this.transportKeep);
    // Give virtio_pci a chance to accept features.
    if (hasFeature(offered, VirtioFeature.RING_RESET)) {
      features |= 1n << BigInt(VirtioFeature.RING_RESET);
    }
    if (!hasFeature(features, VirtioFeature.VERSION_1)) {
      throw this.error(
        -GuestErrno.EINVAL,
        "virtio: device uses modern interface but does not have VIRTIO_F_VERSION_1",
      );
    }
    const needs: [number, number, string][] = [
      [VirtioFeature.NOTIF_CONFIG_DATA, VirtioPciCommon.Q_NDATA + 2, "queue_notify_data"],
      [VirtioFeature.RING_RESET, VirtioPciCommon.Q_RESET + 2, "queue_reset"],
      [VirtioFeature.ADMIN_VQ, VirtioPciCommon.ADM_Q_NUM + 2, "admin_queue_num"],
    ];
    for (const [bit, end, field] of needs) {
      if (hasFeature(features, bit) && end > this.commonLength) {
        throw this.error(
          -GuestErrno.EINVAL,
          `virtio_pci: not enough space to use feature ${bit} (${field}), maximum space ${this.commonLength}`,
        );
      }
    }
    for (let sel = FEATURE_WINDOWS - 1; sel >= 0; sel--) {
      this.#common.write32(VirtioPciCommon.GFSELECT, sel);
      this.#common.write32(VirtioPciCommon.GF, featureWord(features, sel));
    }
    return features;
  }

  /** Models `vp_modern_generation`. */
  configGeneration(): number {
    return this.#common.read8(VirtioPciCommon.CFGGENERATION);
  }

  /**
   * Bounds-checks a device config access against `device_len` (the kernel
   * BUGs).
   *
   * @throws {RangeError} when the access leaves the mapped device config
   */
  protected override checkConfigRange(offset: number, length: number): void {
    super.checkConfigRange(offset, length);
    if (this.#device === null) {
      throw new RangeError(`Cannot access the config of ${this.name}: it has no DEVICE_CFG`);
    }
    if (offset + length > this.deviceLength) {
      throw new RangeError(
        `Cannot access config ${offset}+${length} of ${this.name}: only ${this.deviceLength} bytes are mapped`,
      );
    }
  }

  /** Models `vp_get`. */
  protected get(offset: number, size: number): number {
    const d = this.#device!;
    return size === 1 ? d.read8(offset) : size === 2 ? d.read16(offset) : d.read32(offset);
  }

  /** Models `vp_set`. */
  protected set(offset: number, size: number, value: number): void {
    const d = this.#device!;
    if (size === 1) d.write8(offset, value);
    else if (size === 2) d.write16(offset, value);
    else d.write32(offset, value);
  }

  #select(index: number): void {
    this.#common.write16(VirtioPciCommon.Q_SELECT, index);
  }

  /** Models `vp_modern_config_vector`: write, then read back. */
  #configVector(vector: number): number {
    this.#common.write16(VirtioPciCommon.MSIX, vector);
    return this.#common.read16(VirtioPciCommon.MSIX);
  }

  /** Models `vp_modern_queue_vector`. */
  #queueVector(index: number, vector: number): number {
    this.#select(index);
    this.#common.write16(VirtioPciCommon.Q_MSIX, vector);
    return this.#common.read16(VirtioPciCommon.Q_MSIX);
  }

  // ---- queues ---------------------------------------------------------------------

  /**
   * Models `vp_modern_find_vqs` / `vp_find_vqs`: try MSI-X with a vector per
   * queue, then with slow-path queues on the config vector, then with one
   * shared queue vector, then INTx; finally enable every queue.
   */
  protected findVqs<T>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[] {
    let vqs: Virtqueue<T>[] | null = null;
    let err: VirtioDriverError | null = null;
    for (const policy of ["each", "shared-slow", "shared"] as const) {
      try {
        vqs = this.#findVqsMsix(specs, policy);
        break;
      } catch (e) {
        if (!(e instanceof VirtioDriverError)) throw e;
        err = e;
      }
    }
    if (vqs === null) {
      // Is there an interrupt? If not give up.
      if (this.pci.irq === 0) {
        throw err ?? this.error(-GuestErrno.EINVAL, "no MSI-X and no INTx line");
      }
      vqs = this.#findVqsIntx(specs);
    }
    // Select and activate all queues. Has to be done last: once we do
    // this, there's no way to go back except reset.
    for (const vq of vqs) {
      this.#select(vq.index);
      this.#common.write16(VirtioPciCommon.Q_ENABLE, 1);
    }
    return vqs;
  }

  /** Models `vp_find_vqs_msix` with `vp_request_msix_vectors`. */
  #findVqsMsix<T>(specs: readonly VirtqueueSpec<T>[], policy: VectorPolicy): Virtqueue<T>[] {
    const host = this.irqHost;
    const withCallback = specs.filter((s) => typeof s.callback === "function").length;
    const nvectors = policy === "shared" ? 2 : 1 + withCallback;
    const perVq = policy !== "shared";
    if (host === null || host.allocMsi === undefined) {
      throw this.error(-GuestErrno.EINVAL, "MSI-X is not available on this platform");
    }
    const count = this.pci.msixVectorCount();
    if (count < nvectors) {
      throw this.error(
        count < 0 ? count : -GuestErrno.ENOSPC,
        `cannot allocate ${nvectors} MSI-X vectors (the function has ${Math.max(count, 0)})`,
      );
    }
    const messages = host.allocMsi(nvectors, this.#msiHandler);
    if (messages === null) {
      throw this.error(-GuestErrno.ENOSPC, `the platform has no ${nvectors} MSI vectors left`);
    }
    const rc = this.pci.enableMsix(messages);
    if (rc !== 0) {
      host.freeMsi?.(messages);
      throw this.error(rc, `cannot enable MSI-X with ${nvectors} vectors`);
    }
    this.#msix = messages;
    this.#mode = policy === "each"
      ? "msix-per-vq"
      : policy === "shared-slow"
      ? "msix-shared-slow"
      : "msix-shared";
    const vqs: Virtqueue<T>[] = [];
    try {
      // Set the vector used for configuration; verify we had enough resources.
      if (this.#configVector(CONFIG_VECTOR) === VIRTIO_MSI_NO_VECTOR) {
        throw this.error(-GuestErrno.EBUSY, "the device refused the config MSI-X vector");
      }
      let allocated = perVq ? 1 : 2;
      for (let i = 0; i < specs.length; i++) {
        const spec = specs[i];
        let vector: number;
        if (typeof spec.callback !== "function") vector = VIRTIO_MSI_NO_VECTOR;
        else if (policy === "each" || (policy === "shared-slow" && spec.slowPath !== true)) {
          vector = allocated++;
        } else if (spec.slowPath === true) vector = CONFIG_VECTOR;
        else vector = VQ_VECTOR;
        vqs.push(this.#setupVq(i, spec, vector));
      }
    } catch (e) {
      this.delVqs();
      throw e;
    }
    return vqs;
  }

  /** Models `vp_find_vqs_intx`. */
  #findVqsIntx<T>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[] {
    this.#mode = "intx"; // before request_irq: an asserted line runs the handler at once
    this.irqHost?.requestIrq(this.pci.irq, this.#intxHandler);
    const vqs: Virtqueue<T>[] = [];
    try {
      for (let i = 0; i < specs.length; i++) {
        vqs.push(this.#setupVq(i, specs[i], VIRTIO_MSI_NO_VECTOR));
      }
    } catch (e) {
      this.delVqs();
      throw e;
    }
    return vqs;
  }

  /** Models `setup_vq` (virtio_pci_modern.c) via `vp_setup_vq`. */
  #setupVq<T>(index: number, spec: VirtqueueSpec<T>, msixVector: number): Virtqueue<T> {
    const C = VirtioPciCommon;
    if (index >= this.#common.read16(C.NUMQ)) {
      throw this.error(-GuestErrno.EINVAL, `queue ${index} (${spec.name}) is beyond num_queues`);
    }
    this.#select(index);
    const num = this.#common.read16(C.Q_SIZE);
    // Check if queue is either not available or already active.
    if (num === 0 || this.#common.read16(C.Q_ENABLE) !== 0) {
      throw this.error(
        -GuestErrno.ENOENT,
        `queue ${index} (${spec.name}) is ${num === 0 ? "not available" : "already active"}`,
      );
    }
    const withData = this.hasFeature(VirtioFeature.NOTIFICATION_DATA);
    let doorbell: { io: PciIomem; at: number } | null = null;
    const vq = this.createVq<T>(index, num, spec, (q) => {
      // vp_notify / vp_notify_with_data
      if (doorbell === null) return false;
      if (withData) doorbell.io.write32(doorbell.at, q.notificationData());
      else doorbell.io.write16(doorbell.at, q.index);
      return true;
    }, VRING_ALIGN);
    if (vq === null) throw this.error(-GuestErrno.ENOMEM, this.diagnostics.lastError);
    const rc = this.#activeVq(vq as Virtqueue<unknown>, msixVector);
    if (rc !== 0) {
      vq.destroy();
      throw this.error(rc, `the device refused MSI-X vector ${msixVector} for queue ${index}`);
    }
    doorbell = this.#mapVqNotify(index);
    if (doorbell === null) {
      vq.destroy();
      throw this.error(-GuestErrno.ENOMEM, this.diagnostics.lastError);
    }
    this.#infos.push({
      vq: vq as Virtqueue<unknown>,
      msixVector,
      hasCallback: typeof spec.callback === "function",
      resetting: false,
    });
    return vq;
  }

  /** Models `vp_active_vq`: size, the three addresses, and the vector (read back). */
  #activeVq(vq: Virtqueue<unknown>, msixVector: number): number {
    const C = VirtioPciCommon;
    const c = this.#common;
    this.#select(vq.index);
    c.write16(C.Q_SIZE, vq.size);
    const write64 = (low: number, value: number): void => {
      c.write32(low, value >>> 0);
      c.write32(low + 4, Math.floor(value / 0x1_0000_0000));
    };
    write64(C.Q_DESCLO, vq.descAddr);
    write64(C.Q_AVAILLO, vq.driverAddr);
    write64(C.Q_USEDLO, vq.deviceAddr);
    if (msixVector !== VIRTIO_MSI_NO_VECTOR) {
      if (this.#queueVector(vq.index, msixVector) === VIRTIO_MSI_NO_VECTOR) {
        return -GuestErrno.EBUSY;
      }
    }
    return 0;
  }

  /** Models `vp_modern_map_vq_notify`. */
  #mapVqNotify(index: number): { io: PciIomem; at: number } | null {
    this.#select(index);
    const off = this.#common.read16(VirtioPciCommon.Q_NOFF);
    const at = off * this.notifyOffMultiplier;
    const base = this.#notifyBase;
    if (base !== null) {
      // offset should not wrap
      if (at + 2 > base.length) {
        this.diagnostics.lastError =
          `${this.name}: bad notification offset ${off} (x ${this.notifyOffMultiplier}) for queue ${index} > ${base.length}`;
        return null;
      }
      return { io: base.io, at };
    }
    const m = mapCapability(this.pci, this.#notifyCap, 2, 2, at, 2);
    if (typeof m === "string") {
      this.diagnostics.lastError = `${this.name}: ${m}`;
      return null;
    }
    return { io: m.io, at: 0 };
  }

  /** Models `vp_del_vqs` (with `del_vq`). */
  protected delVqs(): void {
    const msix = this.#mode !== "none" && this.#mode !== "intx";
    for (const info of this.#infos) {
      if (msix) this.#queueVector(info.vq.index, VIRTIO_MSI_NO_VECTOR);
      info.vq.destroy();
    }
    this.#infos = [];
    if (this.#mode === "intx") this.irqHost?.freeIrq(this.pci.irq, this.#intxHandler);
    if (msix) {
      // Disable the vector used for configuration.
      this.#configVector(VIRTIO_MSI_NO_VECTOR);
      this.pci.disableMsix();
      this.irqHost?.freeMsi?.(this.#msix);
      this.#msix = [];
    }
    this.#mode = "none";
  }

  /** Models `vp_modern_disable_vq_and_reset` (with `vp_modern_set_queue_reset`). */
  protected override disableVqAndReset(vq: Virtqueue<unknown>): number {
    if (!this.hasFeature(VirtioFeature.RING_RESET)) return -GuestErrno.ENOENT;
    const info = this.#infos.find((i) => i.vq === vq);
    if (info === undefined) return -GuestErrno.EINVAL;
    const C = VirtioPciCommon;
    this.#select(vq.index);
    this.#common.write16(C.Q_RESET, 1);
    if (!this.#pollZero(C.Q_RESET) || !this.#pollZero(C.Q_ENABLE)) {
      this.diagnostics.lastError = `${this.name}: queue ${vq.index} did not finish its reset`;
      return -GuestErrno.ETIMEDOUT;
    }
    // Delete vq from the irq handler's list.
    info.resetting = true;
    return 0;
  }

  /** Models `vp_modern_enable_vq_after_reset`. */
  protected override enableVqAfterReset(vq: Virtqueue<unknown>): number {
    const info = this.#infos.find((i) => i.vq === vq);
    if (info === undefined || !info.resetting) return -GuestErrno.EBUSY;
    const C = VirtioPciCommon;
    this.#select(vq.index);
    if (this.#common.read16(C.Q_RESET) !== 0) return -GuestErrno.EBUSY;
    if (this.#common.read16(C.Q_ENABLE) !== 0) return -GuestErrno.EBUSY;
    const rc = this.#activeVq(vq, info.msixVector);
    if (rc !== 0) return rc;
    info.resetting = false;
    this.#select(vq.index);
    this.#common.write16(C.Q_ENABLE, 1);
    return 0;
  }

  #pollZero(reg: number): boolean {
    for (let i = 0; i < MAX_POLLS; i++) if (this.#common.read16(reg) === 0) return true;
    return false;
  }

  // ---- interrupts -----------------------------------------------------------------

  /**
   * An MSI message arrived: when it is one of this function's vectors, runs
   * what the vector stands for (vector 0: the config change and slow-path
   * queues, `vp_config_changed`; the shared queue vector: every queue,
   * `vp_vring_interrupt`; a per-queue vector: that queue, `vring_interrupt`).
   *
   * @returns false when the message is not this driver's
   */
  handleMsi(address: number, data: number): boolean {
    const v = this.#msix.findIndex((m) => m.address === address && m.data === data);
    if (v < 0) return false;
    this.diagnostics.interrupts++;
    let handled = false;
    if (v === CONFIG_VECTOR) {
      this.configChanged();
      handled = true;
      for (const info of this.#infos) {
        if (info.msixVector === CONFIG_VECTOR && !info.resetting && info.vq.interrupt()) {
          handled = true;
        }
      }
    } else if (this.#mode === "msix-shared" && v === VQ_VECTOR) {
      handled = this.#vringInterrupt();
    } else {
      for (const info of this.#infos) {
        if (info.msixVector === v && !info.resetting && info.vq.interrupt()) handled = true;
      }
    }
    if (!handled) this.diagnostics.spuriousInterrupts++;
    return true;
  }

  /**
   * The INTx handler: reads (and so clears) the ISR; 0 means another device
   * on a shared line. Bit 1 runs the config-change handling, then every queue
   * with a callback is scanned. Returns what the queue scan returns, as
   * Linux does (`IRQ_NONE` for a config change alone). Models `vp_interrupt`.
   */
  handleIntx(): boolean {
    if (this.#mode !== "intx") return false;
    // reading the ISR has the effect of also clearing it so it's very
    // important to save off the value.
    const isr = this.#isr.read8(0);
    this.diagnostics.interrupts++;
    // It's definitely not us if the ISR was not high.
    if (isr === 0) {
      this.diagnostics.spuriousInterrupts++;
      return false;
    }
    // Configuration change? Tell driver if it wants to know.
    if ((isr & VIRTIO_PCI_ISR_CONFIG) !== 0) this.configChanged();
    return this.#vringInterrupt();
  }

  /** Models `vp_vring_interrupt`. */
  #vringInterrupt(): boolean {
    let handled = false;
    for (const info of this.#infos) {
      if (info.hasCallback && !info.resetting && info.vq.interrupt()) handled = true;
    }
    return handled;
  }
}

/**
 * Maps part of a virtio capability's structure, or returns the kernel's
 * complaint. Models `vp_modern_map_capability`.
 */
function mapCapability(
  pci: GuestPciDevice,
  off: number,
  minlen: number,
  align: number,
  start: number,
  size: number,
): Mapped | string {
  const bar = pci.readConfig8(off + 4);
  let offset = pci.readConfig32(off + 8);
  let length = pci.readConfig32(off + 12);
  if (length <= start) {
    return `virtio_pci: bad capability len ${length} (>${start} expected)`;
  }
  if (length - start < minlen) {
    return `virtio_pci: bad capability len ${length} (>=${minlen} expected)`;
  }
  length -= start;
  if (start + offset > 0xffff_ffff) {
    return `virtio_pci: map wrap-around ${start}+${offset}`;
  }
  offset += start;
  if ((offset & (align - 1)) !== 0) {
    return `virtio_pci: offset ${offset} not aligned to ${align}`;
  }
  if (length > size) length = size;
  const barLength = pci.resourceLen(bar);
  if (minlen + offset > barLength) {
    return `virtio_pci: map virtio ${minlen}@${offset} out of range on bar ${bar} length ${barLength}`;
  }
  const io = pci.iomap(bar, offset, length);
  if (io === null) {
    return `virtio_pci: unable to map virtio ${length}@${offset} on bar ${bar}`;
  }
  return { io, length };
}

/**
 * Finds the first vendor capability of `cfgType` whose BAR index is at most 5
 * and names an implemented BAR, marking the BAR in `bars`. Returns its offset
 * or 0. Models `virtio_pci_find_capability`.
 */
export function findVirtioCapability(
  pci: GuestPciDevice,
  cfgType: number,
  bars: { mask: number } = { mask: 0 },
): number {
  for (
    let pos = pci.findCapability(PciCapabilityId.VENDOR);
    pos > 0;
    pos = pci.findNextCapability(pos, PciCapabilityId.VENDOR)
  ) {
    const type = pci.readConfig8(pos + 3);
    const bar = pci.readConfig8(pos + 4);
    // Ignore structures with reserved BAR values.
    if (bar > 5) continue;
    if (type === cfgType && pci.resourceLen(bar) !== 0 && pci.resourceKind(bar) !== null) {
      bars.mask |= 1 << bar;
      return pos;
    }
  }
  return 0;
}

/**
 * Binds the driver to a PCI function as Linux's `virtio_pci_probe` does:
 * enables the function, runs `vp_modern_probe` (ID checks, capability lookup
 * and mapping with every check the kernel makes), sets Bus Master, then
 * registers the device (reset, ACKNOWLEDGE).
 *
 * @returns the driver, ready for {@linkcode VirtioPciModernDriver.negotiate}
 * @throws {VirtioDriverError} `-ENODEV` for a non-virtio function or one
 *   without COMMON_CFG ("leaving for legacy driver"), `-EINVAL` for missing
 *   ISR/NOTIFY capabilities or a structure that fails the mapping checks
 * @throws {TypeError} when the options are malformed
 *
 * @example
 * ```ts
 * import { PciFunction, PciHostBridge } from "@vireo/vireo";
 * import { enumeratePciBus } from "./pci_enumeration.ts";
 * import { probeVirtioPciModern } from "./virtio_pci_modern.ts";
 * import { GuestMemory, PageAllocator } from "@vireo/vireo";
 * const bridge = new PciHostBridge();
 * const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041 }); // no virtio capabilities
 * fn.defineBar(0, { kind: "mem32", size: 0x1000 });
 * bridge.attach(fn, 1);
 * const [dev] = enumeratePciBus(bridge);
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const pages = new PageAllocator(memory, { base: 0, size: 1 << 20 });
 * try {
 *   probeVirtioPciModern({ pci: dev, pages });
 * } catch (e) {
 *   console.log((e as Error).message); // virtio-pci 00:01.0: virtio_pci: leaving for legacy driver
 * }
 * ```
 */
export function probeVirtioPciModern(options: VirtioPciModernOptions): VirtioPciModernDriver {
  if (options === null || typeof options !== "object" || typeof options.pci !== "object") {
    throw new TypeError("Cannot probe virtio-pci: options.pci (a GuestPciDevice) is required");
  }
  const pci = options.pci;
  const where = `virtio-pci ${pci.slotName}`;
  const fail = (errno: number, message: string): never => {
    throw new VirtioDriverError(errno, `${where}: ${message}`);
  };
  if (pci.vendorId !== 0x1af4) fail(-GuestErrno.ENODEV, "not a virtio function (vendor)");
  const rc = pci.enable();
  if (rc !== 0) fail(rc, "can't enable device: a BAR is not assigned");
  try {
    const layout = modernProbe(pci, fail);
    const driver = new VirtioPciModernDriver(options, layout);
    pci.setMaster();
    // register_virtio_device: always start by resetting the device, then we saw it.
    driver.reset();
    driver.addStatus(DeviceStatus.ACKNOWLEDGE);
    return driver;
  } catch (e) {
    pci.disable();
    throw e;
  }
}

/** Models `vp_modern_probe`. */
function modernProbe(
  pci: GuestPciDevice,
  fail: (errno: number, message: string) => never,
): ConstructorParameters<typeof VirtioPciModernDriver>[1] {
  // We only own devices >= 0x1000 and <= 0x107f: leave the rest.
  if (pci.deviceId < 0x1000 || pci.deviceId > 0x107f) {
    fail(-GuestErrno.ENODEV, `device ID 0x${pci.deviceId.toString(16)} is not a virtio ID`);
  }
  // Transitional devices use the subsystem device id as virtio device id.
  const deviceId = pci.deviceId < 0x1040 ? pci.subsystemId : pci.deviceId - 0x1040;
  const bars = { mask: 0 };
  // Check for a common config: if not, use legacy mode (bar 0).
  const common = findVirtioCapability(pci, VirtioPciCap.COMMON_CFG, bars);
  if (common === 0) fail(-GuestErrno.ENODEV, "virtio_pci: leaving for legacy driver");
  // If common is there, these should be too...
  const isr = findVirtioCapability(pci, VirtioPciCap.ISR_CFG, bars);
  const notify = findVirtioCapability(pci, VirtioPciCap.NOTIFY_CFG, bars);
  if (isr === 0 || notify === 0) {
    fail(-GuestErrno.EINVAL, `virtio_pci: missing capabilities ${common}/${isr}/${notify}`);
  }
  // Device capability is only mandatory for devices that have device-specific configuration.
  const device = findVirtioCapability(pci, VirtioPciCap.DEVICE_CFG, bars);
  const map = (
    off: number,
    minlen: number,
    align: number,
    start: number,
    size: number,
  ): Mapped => {
    const m = mapCapability(pci, off, minlen, align, start, size);
    return typeof m === "string" ? fail(-GuestErrno.EINVAL, m) : m;
  };
  const commonMap = map(common, COMMON_MIN, 4, 0, COMMON_MAX);
  const isrMap = map(isr, 1, 1, 0, 1);
  const notifyOffMultiplier = pci.readConfig32(notify + 16);
  const notifyLength = pci.readConfig32(notify + 12);
  const notifyOffset = pci.readConfig32(notify + 8);
  // If notify length is small, map it all now; otherwise map each queue later.
  const notifyBase = notifyLength + (notifyOffset % PAGE_SIZE) <= PAGE_SIZE
    ? map(notify, 2, 2, 0, notifyLength)
    : null;
  const deviceMap = device === 0 ? null : map(device, 0, 4, 0, PAGE_SIZE);
  return {
    deviceId,
    common: commonMap,
    isr: isrMap.io,
    device: deviceMap,
    notifyBase,
    notifyCap: notify,
    notifyOffMultiplier,
    modernBars: bars.mask,
  };
}
