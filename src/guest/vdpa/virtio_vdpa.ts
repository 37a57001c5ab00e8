/**
 * The guest's `virtio_vdpa` transport driver (`drivers/virtio/virtio_vdpa.c`):
 * binds a virtio device driver (net, blk) to a vDPA device such as a VDUSE
 * device. Every ring and buffer mapping goes through the vDPA device's map
 * ops with the queue's map token (`get_vq_map`), never through the DMA API.
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */
import { hasFeature, VirtioFeature } from "../../virtio/features.ts";
import { DeviceStatus } from "../../virtio/status.ts";
import { VirtqueueMapper } from "../virtio/map_ops.ts";
import {
  GuestErrno,
  RING_TRANSPORT_FEATURES,
  VirtioDriverError,
  VirtioGuestDeviceBase,
  type VirtioGuestDeviceOptions,
  type VirtqueueSpec,
  vringTransportFeatures,
} from "../virtio/virtio_guest_device.ts";
import { createVirtqueue, type Virtqueue } from "../virtio/virtqueue.ts";
import type { VdpaDevice } from "./vdpa_device.ts";

/**
 * The transport bits `virtio_vdpa` keeps: Linux's ring transport features
 * without NOTIFICATION_DATA (VDUSE has no `kick_vq_with_data`).
 */
export const VDPA_TRANSPORT_FEATURES: readonly number[] = Object.freeze(
  RING_TRANSPORT_FEATURES.filter((b) => b !== VirtioFeature.NOTIFICATION_DATA),
);

/** How to bind `virtio_vdpa` to a vDPA device (the DMA API option is not used). */
export type VirtioVdpaOptions = VirtioGuestDeviceOptions;

/**
 * A virtio device on the vDPA bus, as `virtio_vdpa` presents it to the
 * guest's device drivers: a {@linkcode VirtioGuestDevice} whose status,
 * features, config and queues are `vdpa_config_ops` calls.
 *
 * Create it with {@linkcode probeVirtioVdpa}.
 */
export class VirtioVdpaDevice extends VirtioGuestDeviceBase {
  /** Always `"vdpa"`. */
  readonly transport: string = "vdpa";
  /** The vDPA device. */
  readonly vdpa: VdpaDevice;
  #vqs: Virtqueue<unknown>[] = [];

  /** Use {@linkcode probeVirtioVdpa}, which resets the device and sets ACKNOWLEDGE. */
  constructor(vdpa: VdpaDevice, options: VirtioVdpaOptions) {
    super(
      {
        ...options,
        dma: null,
        transportFeatures: options.transportFeatures ?? VDPA_TRANSPORT_FEATURES,
      },
      { deviceId: vdpa.getDeviceId(), vendorId: vdpa.getVendorId(), name: `vdpa ${vdpa.name}` },
    );
    this.vdpa = vdpa;
  }

  /** Models `virtio_vdpa_get_status`. */
  getStatus(): number {
    return this.vdpa.getStatus();
  }

  /** Models `virtio_vdpa_set_status`. */
  protected setStatus(status: number): void {
    this.vdpa.setStatus(status);
  }

  /** Models `virtio_vdpa_reset` (`vdpa_reset`). */
  protected resetDevice(): void {
    const r = this.vdpa.reset();
    if (r !== 0) this.diagnostics.lastError = `${this.name}: reset returned ${r}`;
  }

  /** Models `virtio_vdpa_get_features`. */
  protected getFeatures(): bigint {
    return this.vdpa.getDeviceFeatures();
  }

  /** Models `virtio_vdpa_finalize_features`: ring transport features, then `set_driver_features`. */
  protected finalizeFeatures(features: bigint): bigint {
    features = vringTransportFeatures(features, this.transportKeep);
    const r = this.vdpa.setDriverFeatures(features);
    if (r !== 0) throw this.error(r, `vdpa: set_driver_features failed (${r})`);
    return features;
  }

  /** Models `virtio_vdpa_generation`. */
  configGeneration(): number {
    return this.vdpa.getGeneration();
  }

  /**
   * Checks a config access against `get_config_size`.
   *
   * @throws {RangeError} when the access leaves the config space
   */
  protected override checkConfigRange(offset: number, length: number): void {
    super.checkConfigRange(offset, length);
    if (offset + length > this.vdpa.getConfigSize()) {
      throw new RangeError(
        `Cannot access config ${offset}+${length} of ${this.name}: it has ${this.vdpa.getConfigSize()} bytes`,
      );
    }
  }

  /** Models `virtio_vdpa_get` (`vdpa_get_config`), little-endian. */
  protected get(offset: number, size: number): number {
    const buf = new Uint8Array(size);
    this.vdpa.getConfig(offset, buf);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + buf[i];
    return v;
  }

  /** Models `virtio_vdpa_set` (`vdpa_set_config`). */
  protected set(offset: number, size: number, value: number): void {
    const buf = new Uint8Array(size);
    for (let i = 0; i < size; i++) buf[i] = (value >>> (8 * i)) & 0xff;
    this.vdpa.setConfig(offset, buf);
  }

  /** Models `virtio_vdpa_find_vqs`: one `virtio_vdpa_setup_vq` per spec, then `set_config_cb`. */
  protected findVqs<T>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[] {
    const vqs: Virtqueue<T>[] = [];
    try {
      for (let i = 0; i < specs.length; i++) vqs.push(this.#setupVq(i, specs[i]));
    } catch (e) {
      for (const vq of vqs) this.#delVq(vq as Virtqueue<unknown>);
      throw e;
    }
    this.#vqs = vqs as Virtqueue<unknown>[];
    this.vdpa.setConfigCb(() => this.configChanged());
    return vqs;
  }

  /** Models `virtio_vdpa_del_vqs`. */
  protected delVqs(): void {
    for (const vq of this.#vqs) this.#delVq(vq);
    this.#vqs = [];
  }

  /** Models `virtio_vdpa_setup_vq`. */
  #setupVq<T>(index: number, spec: VirtqueueSpec<T>): Virtqueue<T> {
    const vdpa = this.vdpa;
    const fail = (errno: number, what: string): never => {
      throw this.error(errno, `virtio_vdpa: queue ${index} (${spec.name}): ${what}`);
    };
    if (index >= vdpa.nvqs) fail(-GuestErrno.ENOENT, "no such queue");
    if (vdpa.getVqReady(index)) fail(-GuestErrno.ENOENT, "already set up");
    const maxNum = vdpa.getVqSize(index);
    if (maxNum === 0) fail(-GuestErrno.ENOENT, "size 0");
    const packed = this.hasFeature(VirtioFeature.RING_PACKED);
    let size = maxNum;
    if (spec.size !== undefined && spec.size < size) size = spec.size;
    if (!packed) size = 2 ** Math.floor(Math.log2(size));
    const token = vdpa.getVqMap(index);
    const mapper = new VirtqueueMapper({
      pages: this.pages,
      heap: this.heap,
      accessPlatform: this.hasFeature(VirtioFeature.ACCESS_PLATFORM),
      mapOps: vdpa.mapOps,
      map: token,
    });
    let vq: Virtqueue<T> | null = null;
    vq = createVirtqueue<T>({
      index,
      size,
      layout: packed ? "packed" : "split",
      eventIdx: this.hasFeature(VirtioFeature.EVENT_IDX),
      indirect: this.hasFeature(VirtioFeature.INDIRECT_DESC) && spec.ctx !== true,
      inOrder: this.hasFeature(VirtioFeature.IN_ORDER),
      mapper,
      notify: () => {
        vdpa.kickVq(index);
        return true;
      },
      callback: spec.callback ?? null,
      vringAlign: Math.max(vdpa.getVqAlign(), 1),
      name: spec.name,
    });
    if (vq === null) fail(-GuestErrno.ENOMEM, "no memory for the ring");
    const q = vq!;
    const callback = spec.callback ?? null;
    vdpa.setVqCb(
      index,
      callback === null ? null : () => {
        this.diagnostics.interrupts++;
        if (!q.interrupt()) this.diagnostics.spuriousInterrupts++;
      },
    );
    vdpa.setVqNum(index, q.size);
    if (vdpa.setVqAddress(index, q.descAddr, q.driverAddr, q.deviceAddr) !== 0) {
      q.destroy();
      fail(-GuestErrno.EINVAL, "set_vq_address failed");
    }
    const state = packed
      ? { packed: { lastAvailCounter: 1, lastAvailIdx: 0, lastUsedCounter: 1, lastUsedIdx: 0 } }
      : { split: { availIndex: 0 } };
    const err = vdpa.setVqState(index, state);
    if (err !== 0) {
      q.destroy();
      fail(err, "set_vq_state failed");
    }
    vdpa.setVqReady(index, true);
    return q;
  }

  /** Models `virtio_vdpa_del_vq`. */
  #delVq(vq: Virtqueue<unknown>): void {
    this.vdpa.setVqReady(vq.index, false);
    this.vdpa.setVqCb(vq.index, null);
    vq.destroy();
  }
}

/**
 * Binds `virtio_vdpa` to a vDPA device: `virtio_vdpa_probe` and
 * `register_virtio_device` (reset, then ACKNOWLEDGE). The device driver
 * (net, blk) takes it from there.
 *
 * @param vdpa the vDPA device (a VDUSE device after `vdpa dev add`)
 * @param options the guest's allocators and feature policy
 * @returns the guest virtio device
 * @throws {VirtioDriverError} when the device does not keep ACKNOWLEDGE
 *   (its userspace daemon did not answer)
 *
 * @example
 * ```ts ignore
 * const dev = probeVirtioVdpa(kernel.vdpaDevAdd("blk0") as VdpaDevice, { pages });
 * const blk = VirtioBlkDriver.probe(dev);
 * ```
 */
export function probeVirtioVdpa(vdpa: VdpaDevice, options: VirtioVdpaOptions): VirtioVdpaDevice {
  const dev = new VirtioVdpaDevice(vdpa, options);
  dev.reset();
  dev.addStatus(DeviceStatus.ACKNOWLEDGE);
  if ((dev.getStatus() & DeviceStatus.ACKNOWLEDGE) === 0) {
    throw new VirtioDriverError(
      -GuestErrno.ENODEV,
      `${dev.name}: the device did not accept ACKNOWLEDGE (is its daemon answering?)`,
    );
  }
  return dev;
}

/** True when `dev` negotiated VIRTIO_F_ACCESS_PLATFORM (always, for VDUSE). */
export function usesMapOps(dev: VirtioVdpaDevice): boolean {
  return hasFeature(dev.features, VirtioFeature.ACCESS_PLATFORM) && dev.vdpa.mapOps !== null;
}
