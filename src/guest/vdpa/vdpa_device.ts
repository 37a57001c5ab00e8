/**
 * A vDPA device as the guest kernel's vDPA bus presents it to `virtio_vdpa`:
 * the operations of Linux's `struct vdpa_config_ops` (`include/linux/vdpa.h`)
 * plus the device's mapping operations (`vdpa->map`, `vdpa->vmap`). The VDUSE
 * kernel model implements it; the guest's {@linkcode VirtioVdpaDevice} drives it.
 *
 * All calls are synchronous. Operations that the parent implements with a
 * message to userspace (VDUSE's `set_status`, `reset`, `set_group_asid`) see
 * the reply at once when the userspace daemon answers from its wakeup, as the
 * vireo daemon does.
 *
 * @module
 */
import type { VirtioMap, VirtioMapOps } from "../virtio/map_ops.ts";

/** A virtqueue's state (`struct vdpa_vq_state`): split or packed. */
export interface VdpaVqState {
  /** Split rings: the next available index the device will read. */
  split?: { availIndex: number };
  /** Packed rings: wrap counters and indices. */
  packed?: {
    lastAvailCounter: number;
    lastAvailIdx: number;
    lastUsedCounter: number;
    lastUsedIdx: number;
  };
}

/** A callback the parent calls (`struct vdpa_callback`); `null` removes it. */
export type VdpaCallback = (() => void) | null;

/**
 * One vDPA device: identity, `vdpa_config_ops` in camelCase and the mapping
 * operations every virtqueue mapping must use.
 */
export interface VdpaDevice {
  /** The device name on the vDPA bus. */
  readonly name: string;
  /** Number of virtqueues (`vdpa->nvqs`). */
  readonly nvqs: number;
  /** Number of virtqueue groups (`vdpa->ngroups`). */
  readonly ngroups: number;
  /** Number of address spaces (`vdpa->nas`). */
  readonly nas: number;
  /** The mapping operations (`vdpa->map`); null when the parent uses the DMA API. */
  readonly mapOps: VirtioMapOps | null;
  /** The device-wide map token (`vdpa->vmap`). */
  readonly vmap: VirtioMap;

  /** `get_device_id`. */
  getDeviceId(): number;
  /** `get_vendor_id`. */
  getVendorId(): number;
  /** `get_device_features`: the features the device offers. */
  getDeviceFeatures(): bigint;
  /** `set_driver_features`: returns 0 or a negative errno. */
  setDriverFeatures(features: bigint): number;
  /** `get_driver_features`. */
  getDriverFeatures(): bigint;
  /** `get_status`. */
  getStatus(): number;
  /** `set_status` (never 0: use `reset`). The new status may be refused; read it back. */
  setStatus(status: number): void;
  /** `reset`: returns 0 or a negative errno (the device is reset either way). */
  reset(): number;
  /** `get_config_size`. */
  getConfigSize(): number;
  /** `get_config`: fills `dest` from `offset`; bytes beyond the config space read as zero. */
  getConfig(offset: number, dest: Uint8Array): void;
  /** `set_config`. */
  setConfig(offset: number, src: Uint8Array): void;
  /** `get_generation`. */
  getGeneration(): number;
  /** `set_config_cb`: called on a config-change interrupt. */
  setConfigCb(cb: VdpaCallback): void;
  /** `get_vq_align`. */
  getVqAlign(): number;
  /** `get_vq_num_max`: the largest ring size of any queue. */
  getVqNumMax(): number;
  /** `get_vq_size`: queue `index`'s size (its current num, else its maximum). */
  getVqSize(index: number): number;
  /** `set_vq_num`. */
  setVqNum(index: number, num: number): void;
  /** `set_vq_address`: device addresses of the three ring areas; 0 or a negative errno. */
  setVqAddress(index: number, desc: number, driver: number, device: number): number;
  /** `set_vq_ready`. */
  setVqReady(index: number, ready: boolean): void;
  /** `get_vq_ready`. */
  getVqReady(index: number): boolean;
  /** `set_vq_state`: 0 or a negative errno. */
  setVqState(index: number, state: VdpaVqState): number;
  /** `get_vq_state`: the state, or a negative errno. */
  getVqState(index: number): VdpaVqState | number;
  /** `set_vq_cb`: the queue's interrupt handler. */
  setVqCb(index: number, cb: VdpaCallback): void;
  /** `kick_vq`: the driver notifies queue `index`. */
  kickVq(index: number): void;
  /** `get_vq_group`. */
  getVqGroup(index: number): number;
  /** `get_vq_map`: queue `index`'s map token. */
  getVqMap(index: number): VirtioMap;
  /** `set_group_asid`: moves a group to an address space; 0 or a negative errno. */
  setGroupAsid(group: number, asid: number): number;
}
