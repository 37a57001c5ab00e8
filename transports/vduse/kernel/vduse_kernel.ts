/**
 * The emulated VDUSE kernel module: `/dev/vduse/control` (API version state
 * machine, device creation with the kernel's validation order and errnos,
 * destruction), the device nodes, the sysfs knobs (`bounce_size`,
 * `msg_timeout`) and the management side (`vdpa dev add` / `del`) that
 * attaches a device to the guest's vDPA bus.
 *
 * The module lives in the guest: its memory is guest memory, its coherent
 * allocations come from the guest's page allocator.
 *
 * @module
 */
import type { GuestMemory } from "../../../src/memory/guest_memory.ts";
import type { PageAllocator } from "../../../src/guest/page_allocator.ts";
import type { VdpaDevice } from "../../../src/guest/vdpa/vdpa_device.ts";
import { VirtioDeviceId } from "../../../src/virtio/device_id.ts";
import { VirtioFeature } from "../../../src/virtio/features.ts";
import { LinuxErrno } from "../errno.ts";
import {
  decodeDevConfig,
  decodeName,
  decodeU64,
  encodeU64,
  VDUSE_API_VERSION,
  VDUSE_API_VERSION_1,
  VDUSE_DEV_CONFIG_SIZE,
  VDUSE_NAME_MAX,
  VduseIoctl,
} from "../uapi.ts";
import {
  VDUSE_BOUNCE_SIZE,
  VDUSE_MAX_BOUNCE_SIZE,
  VDUSE_MIN_BOUNCE_SIZE,
  VDUSE_PAGE_SIZE,
} from "./iova_domain.ts";
import { VduseMapOps } from "./map_ops.ts";
import { globalTimers, type VduseTimers } from "./timers.ts";
import { VduseDev } from "./vduse_dev.ts";

/** The control fd's initial version state (the kernel's `U64_MAX`). */
export const VDUSE_API_VERSION_NOT_ASKED = -1;
/** `VDUSE_MSG_DEFAULT_TIMEOUT`: 30 seconds. */
export const VDUSE_MSG_DEFAULT_TIMEOUT = 30;
/** `VDUSE_DEV_MAX_GROUPS`. */
export const VDUSE_DEV_MAX_GROUPS = 0xffff;
/** `VDUSE_DEV_MAX_AS`. */
export const VDUSE_DEV_MAX_AS = 0xffff;
/** `VIRTIO_BLK_F_CONFIG_WCE`: refused for block devices. */
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
/** `VIRTIO_NET_F_CTRL_VQ`: refused for net devices unless {@linkcode VduseKernelOptions.allowNetCtrlVq}. */
export const VIRTIO_NET_F_CTRL_VQ = 17;

/** How to create a {@linkcode VduseKernel}. */
export interface VduseKernelOptions {
  /** Guest memory: the memory of the kernel the module runs in. */
  memory: GuestMemory;
  /** The guest page allocator (coherent allocations: rings). */
  pages: PageAllocator;
  /** The clock for message timeouts (the global timers by default). */
  timers?: VduseTimers;
  /**
   * Runs interrupt work later, as the kernel's workqueue does
   * (`queueMicrotask` by default). Pass `(work) => work()` to deliver
   * interrupts synchronously inside `VQ_INJECT_IRQ`.
   */
  schedule?: (work: () => void) => void;
  /** The creating process has CAP_NET_ADMIN (net devices need it); true by default. */
  capNetAdmin?: boolean;
  /**
   * Accept VIRTIO_NET_F_CTRL_VQ for net devices created with API v1, as a
   * kernel with commit 56e71885 reverted does: the configuration the ASID
   * series was written for, where the control queue sits in its own group
   * and address space so that a shadowing daemon sees it apart from the
   * data queues. Off by default, as upstream (API v0 devices are refused
   * either way).
   */
  allowNetCtrlVq?: boolean;
  /**
   * Device ids accepted besides net, block and fs (an emulator extension for
   * test devices; the kernel allows only those three).
   */
  extraDeviceIds?: readonly number[];
  /** Default `bounce_size` of new devices (64 MiB). */
  bounceSize?: number;
  /** Default `msg_timeout` of new devices, in seconds (30; 0 waits forever). */
  msgTimeout?: number;
}

/** One open `/dev/vduse/control` (its private API version state). */
export class VduseControlFile {
  /** The fd's API version, or {@linkcode VDUSE_API_VERSION_NOT_ASKED}. */
  apiVersion: number = VDUSE_API_VERSION_NOT_ASKED;
  readonly #kernel: VduseKernel;

  /** Opens the control node of `kernel`. */
  constructor(kernel: VduseKernel) {
    this.#kernel = kernel;
  }

  /**
   * An ioctl on the control fd (`vduse_ioctl`). Unknown commands give
   * -EINVAL, as the kernel does.
   */
  ioctl(request: number, arg: Uint8Array | null): number {
    const bytes = arg ?? new Uint8Array(0);
    switch (request >>> 0) {
      case VduseIoctl.GET_API_VERSION:
        if (this.apiVersion === VDUSE_API_VERSION_NOT_ASKED) this.apiVersion = VDUSE_API_VERSION_1;
        if (bytes.length < 8) return -LinuxErrno.EFAULT;
        bytes.set(encodeU64(this.apiVersion));
        return 0;
      case VduseIoctl.SET_API_VERSION: {
        if (bytes.length < 8) return -LinuxErrno.EFAULT;
        const v = decodeU64(bytes);
        if (v > BigInt(VDUSE_API_VERSION_1)) return -LinuxErrno.EINVAL;
        this.apiVersion = Number(v);
        return 0;
      }
      case VduseIoctl.CREATE_DEV:
        if (bytes.length < VDUSE_DEV_CONFIG_SIZE) return -LinuxErrno.EFAULT;
        if (this.apiVersion === VDUSE_API_VERSION_NOT_ASKED) this.apiVersion = VDUSE_API_VERSION;
        return this.#kernel.createDev(bytes, this.apiVersion);
      case VduseIoctl.DESTROY_DEV:
        if (bytes.length < VDUSE_NAME_MAX) return -LinuxErrno.EFAULT;
        return this.#kernel.destroyDev(decodeName(bytes));
      default:
        return -LinuxErrno.EINVAL;
    }
  }
}

/**
 * The emulated VDUSE module of one guest kernel.
 *
 * @example
 * ```ts ignore
 * const kernel = new VduseKernel({ memory, pages });
 * const backend = new EmulatedVduseBackend(kernel);
 * const daemon = new VduseDaemon(backend, device, { name: "blk0" });
 * daemon.start();
 * const vdpa = kernel.vdpaDevAdd("blk0"); // then bind virtio_vdpa to it
 * ```
 */
export class VduseKernel {
  /** Devices by name. */
  readonly devices: Map<string, VduseDev> = new Map();
  /** The map ops every attached device hands the vDPA bus. */
  readonly mapOps: VduseMapOps = new VduseMapOps();
  readonly #options: VduseKernelOptions;
  readonly #allowed: Set<number>;

  /**
   * Loads the module.
   *
   * @throws {TypeError} when memory or pages are missing
   * @throws {RangeError} when the bounce size is outside 1 MiB..1 GiB
   */
  constructor(options: VduseKernelOptions) {
    if (options?.memory === undefined || options.pages === undefined) {
      throw new TypeError(
        "Cannot load the VDUSE module: options.memory and options.pages are required",
      );
    }
    const bounce = options.bounceSize ?? VDUSE_BOUNCE_SIZE;
    if (!(bounce >= VDUSE_MIN_BOUNCE_SIZE && bounce <= VDUSE_MAX_BOUNCE_SIZE)) {
      throw new RangeError(
        `Cannot load the VDUSE module: bounce size ${bounce} is not in 1 MiB..1 GiB`,
      );
    }
    this.#options = options;
    this.#allowed = new Set([
      VirtioDeviceId.NET,
      VirtioDeviceId.BLOCK,
      VirtioDeviceId.FS,
      ...(options.extraDeviceIds ?? []),
    ]);
  }

  /** `open("/dev/vduse/control")`. */
  openControl(): VduseControlFile {
    return new VduseControlFile(this);
  }

  /** `open("/dev/vduse/<name>")`: the device, or -ENODEV / -EBUSY (already open). */
  openDevice(name: string): VduseDev | number {
    const dev = this.devices.get(name);
    if (dev === undefined) return -LinuxErrno.ENODEV;
    if (dev.connected) return -LinuxErrno.EBUSY;
    dev.connected = true;
    return dev;
  }

  /** `VDUSE_CREATE_DEV` after the header was copied (`bytes` is the user argument). */
  createDev(bytes: Uint8Array, apiVersion: number): number {
    const c = decodeDevConfig(bytes);
    const f = c.features;
    const bit = (n: number): boolean => ((f >> BigInt(n)) & 1n) === 1n;
    const v1 = apiVersion >= VDUSE_API_VERSION_1;
    const valid = c.reserved!.every((r) => r === 0) &&
      (v1
        ? c.ngroups >= 1 && c.ngroups <= VDUSE_DEV_MAX_GROUPS && c.nas >= 1 &&
          c.nas <= VDUSE_DEV_MAX_AS
        : c.ngroups === 0 && c.nas === 0) &&
      c.vqAlign <= VDUSE_PAGE_SIZE && c.configSize! <= VDUSE_PAGE_SIZE && c.vqNum <= 0xffff &&
      c.name.length > 0 && this.#allowed.has(c.deviceId) &&
      bit(VirtioFeature.ACCESS_PLATFORM) &&
      !(c.deviceId === VirtioDeviceId.BLOCK && bit(VIRTIO_BLK_F_CONFIG_WCE)) &&
      !(c.deviceId === VirtioDeviceId.NET && bit(VIRTIO_NET_F_CTRL_VQ) &&
        !(v1 && this.#options.allowNetCtrlVq === true)) &&
      !(c.deviceId === VirtioDeviceId.NET && !bit(VirtioFeature.VERSION_1));
    if (!valid) return -LinuxErrno.EINVAL;
    if (c.config.length < c.configSize!) return -LinuxErrno.EFAULT;
    if (c.deviceId === VirtioDeviceId.NET && this.#options.capNetAdmin === false) {
      return -LinuxErrno.EPERM;
    }
    if (this.devices.has(c.name)) return -LinuxErrno.EEXIST;
    const dev = new VduseDev({
      name: c.name,
      vendorId: c.vendorId,
      deviceId: c.deviceId,
      features: f,
      vqNum: c.vqNum,
      vqAlign: c.vqAlign,
      ngroups: v1 ? c.ngroups : 1,
      nas: v1 ? c.nas : 1,
      config: c.config,
      apiVersion,
      bounceSize: this.#options.bounceSize ?? VDUSE_BOUNCE_SIZE,
      msgTimeout: this.#options.msgTimeout ?? VDUSE_MSG_DEFAULT_TIMEOUT,
      memory: this.#options.memory,
      pages: this.#options.pages,
      timers: this.#options.timers ?? globalTimers,
      schedule: this.#options.schedule ?? ((work) => queueMicrotask(work)),
      mapOps: this.mapOps,
    });
    this.devices.set(c.name, dev);
    return 0;
  }

  /** `VDUSE_DESTROY_DEV`: -EINVAL (unknown), -EBUSY (attached or open), else 0. */
  destroyDev(name: string): number {
    const dev = this.devices.get(name);
    if (dev === undefined) return -LinuxErrno.EINVAL;
    if (dev.attached || dev.connected) return -LinuxErrno.EBUSY;
    dev.devReset();
    dev.destroyDomains();
    this.devices.delete(name);
    return 0;
  }

  /**
   * `vdpa dev add name <name> mgmtdev vduse`: creates the address spaces'
   * domains and returns the vDPA device the guest's `virtio_vdpa` binds, or
   * -EINVAL (unknown, or a queue without VQ_SETUP) / -EEXIST (attached).
   */
  vdpaDevAdd(name: string): VdpaDevice | number {
    const dev = this.devices.get(name);
    if (dev === undefined || !dev.ready) return -LinuxErrno.EINVAL;
    if (dev.attached) return -LinuxErrno.EEXIST;
    dev.createDomains();
    dev.attached = true;
    return dev;
  }

  /** `vdpa dev del`: detaches the device (its domains stay until DESTROY_DEV). */
  vdpaDevDel(name: string): number {
    const dev = this.devices.get(name);
    if (dev === undefined || !dev.attached) return -LinuxErrno.ENODEV;
    dev.attached = false;
    return 0;
  }

  /**
   * sysfs `bounce_size`: -EPERM once the device has domains, -EINVAL outside
   * 1 MiB..1 GiB; rounded down to a page.
   */
  setBounceSize(name: string, size: number): number {
    const dev = this.devices.get(name);
    if (dev === undefined) return -LinuxErrno.ENODEV;
    if (dev.as[0]?.domain !== null && dev.as[0]?.domain !== undefined) return -LinuxErrno.EPERM;
    if (!(size >= VDUSE_MIN_BOUNCE_SIZE && size <= VDUSE_MAX_BOUNCE_SIZE)) {
      return -LinuxErrno.EINVAL;
    }
    dev.bounceSize = Math.floor(size / VDUSE_PAGE_SIZE) * VDUSE_PAGE_SIZE;
    return 0;
  }

  /** sysfs `msg_timeout` in seconds (0 waits forever). */
  setMsgTimeout(name: string, seconds: number): number {
    const dev = this.devices.get(name);
    if (dev === undefined) return -LinuxErrno.ENODEV;
    if (!(Number.isInteger(seconds) && seconds >= 0)) return -LinuxErrno.EINVAL;
    dev.msgTimeout = seconds;
    return 0;
  }
}
