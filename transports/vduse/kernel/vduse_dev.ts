/**
 * One VDUSE device in the emulated kernel (`struct vduse_dev` of
 * `drivers/vdpa/vdpa_user/vduse_dev.c`): its virtqueues, groups and address
 * spaces, config space, status and message channel; the device fd's
 * `ioctl` / `read` / `write` / `poll`; and, once attached to the vDPA bus,
 * the `vdpa_config_ops` the guest's `virtio_vdpa` calls.
 *
 * @module
 */
import type { GuestMemory } from "../../../src/memory/guest_memory.ts";
import type { PageAllocator } from "../../../src/guest/page_allocator.ts";
import type { VirtioMap, VirtioMapOps } from "../../../src/guest/virtio/map_ops.ts";
import type { VdpaCallback, VdpaDevice, VdpaVqState } from "../../../src/guest/vdpa/vdpa_device.ts";
import { DeviceStatus } from "../../../src/virtio/status.ts";
import { hasFeature, VirtioFeature } from "../../../src/virtio/features.ts";
import { LinuxErrno } from "../errno.ts";
import {
  decodeConfigData,
  decodeDevResponse,
  decodeIotlbEntry,
  decodeIotlbEntryV2,
  decodeIovaInfo,
  decodeIovaUmem,
  decodeVqConfig,
  decodeVqEventfd,
  decodeVqInfo,
  encodeIotlbEntry,
  encodeIotlbEntryV2,
  encodeIovaInfo,
  encodeU64,
  encodeVqInfo,
  U64_MAX,
  u64ToAddress,
  VDUSE_API_VERSION_1,
  VDUSE_CONFIG_DATA_SIZE,
  VDUSE_EVENTFD_DEASSIGN,
  VDUSE_IOTLB_ENTRY_SIZE,
  VDUSE_IOTLB_ENTRY_V2_SIZE,
  VDUSE_IOVA_CAP_UMEM,
  VDUSE_IOVA_INFO_SIZE,
  VDUSE_IOVA_UMEM_SIZE,
  VDUSE_VQ_CONFIG_SIZE,
  VDUSE_VQ_EVENTFD_SIZE,
  VDUSE_VQ_INFO_SIZE,
  VduseIoctl,
  VduseReqType,
} from "../uapi.ts";
import { GuestMemoryFile, type IotlbEntry } from "./iotlb.ts";
import { VDUSE_PAGE_SIZE, VduseIovaDomain } from "./iova_domain.ts";
import { type VduseMessage, VduseMsgChannel } from "./msg_channel.ts";
import type { VduseEventfd, VduseProcess } from "./process.ts";
import type { VduseTimers } from "./timers.ts";

/** One virtqueue of a VDUSE device (`struct vduse_virtqueue`). */
export class VduseVirtqueue {
  /** Queue index. */
  readonly index: number;
  /** Largest size (VQ_SETUP); 0 = not configured. */
  numMax = 0;
  /** Size the driver set. */
  num = 0;
  /** Descriptor area IOVA. */
  descAddr = 0;
  /** Driver area IOVA. */
  driverAddr = 0;
  /** Device area IOVA. */
  deviceAddr = 0;
  /** The state the driver set (`set_vq_state`), both views. */
  readonly state = {
    availIndex: 0,
    lastAvailCounter: 0,
    lastAvailIdx: 0,
    lastUsedCounter: 0,
    lastUsedIdx: 0,
  };
  /** The driver made the queue ready. */
  ready = false;
  /** A kick arrived while no kick fd was installed (latched). */
  kicked = false;
  /** The installed kick eventfd. */
  kickfd: VduseEventfd | null = null;
  /** The driver's interrupt callback. */
  cb: VdpaCallback = null;
  /** API v1: the queue's group. */
  group = 0;
  /** Kicks signalled to userspace. */
  kicks = 0;
  /** Interrupts delivered to the driver. */
  irqs = 0;
  /**
   * The interrupt work VQ_INJECT_IRQ queues (`vduse_vq_irq_inject`), made
   * once so that injecting allocates nothing.
   */
  readonly irqWork: () => void = () => {
    if (this.ready && this.cb !== null) {
      this.irqs++;
      this.cb();
    }
  };

  /** Creates queue `index`. */
  constructor(index: number) {
    this.index = index;
  }
}

/** One address space (`struct vduse_as`): its domain once attached, its user bounce pages. */
export class VduseAddressSpace {
  /** Address space id. */
  readonly asid: number;
  /** The IOVA domain, created when the device is attached to the vDPA bus. */
  domain: VduseIovaDomain | null = null;
  /** Registered user bounce pages. */
  umem: { uaddr: number; size: number } | null = null;

  /** Creates address space `asid`. */
  constructor(asid: number) {
    this.asid = asid;
  }
}

/**
 * A virtqueue group (`struct vduse_vq_group`): the map token VDUSE hands the
 * guest's virtio core for every queue of the group. It points at the group's
 * current address space.
 */
export class VduseVqGroup {
  /** Group index. */
  readonly index: number;
  /** The device. */
  readonly dev: VduseDev;
  /** The address space the group's mappings go to. */
  as: VduseAddressSpace;

  /** Creates group `index` bound to `as`. */
  constructor(dev: VduseDev, index: number, as: VduseAddressSpace) {
    this.dev = dev;
    this.index = index;
    this.as = as;
  }
}

/** Everything `VDUSE_CREATE_DEV` decided, plus the kernel services a device uses. */
export interface VduseDevParams {
  /** Device name. */
  name: string;
  /** Virtio vendor id. */
  vendorId: number;
  /** Virtio device id. */
  deviceId: number;
  /** Offered features. */
  features: bigint;
  /** Number of queues. */
  vqNum: number;
  /** Ring alignment. */
  vqAlign: number;
  /** Groups (1 for API v0). */
  ngroups: number;
  /** Address spaces (1 for API v0). */
  nas: number;
  /** Initial config space (its length is config_size). */
  config: Uint8Array;
  /** The control fd's API version at creation. */
  apiVersion: number;
  /** Default bounce size for the whole device. */
  bounceSize: number;
  /** Default `msg_timeout` in seconds. */
  msgTimeout: number;
  /** Guest memory (the kernel's memory). */
  memory: GuestMemory;
  /** Guest page allocator (coherent allocations). */
  pages: PageAllocator;
  /** Clock for message timeouts. */
  timers: VduseTimers;
  /** Runs interrupt work later (the kernel's workqueue). */
  schedule: (work: () => void) => void;
  /** The map ops given to the vDPA bus. */
  mapOps: VirtioMapOps;
}

/** An entry for {@linkcode VduseDev.setMap} (vhost-vdpa mode). */
export interface VdpaMapEntry {
  /** First IOVA. */
  iova: number;
  /** Size in bytes. */
  size: number;
  /** Guest physical address of the bytes. */
  phys: number;
  /** `VHOST_MAP_*` permission. */
  perm: number;
}

const DRIVER_OK = DeviceStatus.DRIVER_OK;

function isZero(values: readonly number[] | undefined): boolean {
  return values === undefined || values.every((v) => v === 0);
}

/**
 * One VDUSE device. The control file creates it; the device file's
 * operations and the vDPA bus's ops are its methods.
 */
export class VduseDev implements VdpaDevice {
  /** Device name. */
  readonly name: string;
  /** Virtio vendor id. */
  readonly vendorId: number;
  /** Virtio device id. */
  readonly deviceId: number;
  /** Offered features. */
  readonly deviceFeatures: bigint;
  /** Ring alignment. */
  readonly vqAlign: number;
  /** API version the device was created with. */
  readonly apiVersion: number;
  /** Queues. */
  readonly vqs: readonly VduseVirtqueue[];
  /** Groups. */
  readonly groups: readonly VduseVqGroup[];
  /** Address spaces. */
  readonly as: readonly VduseAddressSpace[];
  /** The kernel's copy of the config space. */
  readonly config: Uint8Array;
  /** The message channel. */
  readonly channel: VduseMsgChannel;
  /** The map ops handed to the vDPA bus (`vdpa->map`). */
  readonly mapOps: VirtioMapOps;
  /** Features the driver wrote. */
  driverFeatures = 0n;
  /** Device status (what the driver reads back). */
  status = 0;
  /** Config generation: bumped on every reset. */
  generation = 0;
  /** The device file is open. */
  connected = false;
  /** Attached to the vDPA bus (`vdpa dev add`). */
  attached = false;
  /** sysfs `bounce_size`. */
  bounceSize: number;
  /** sysfs `msg_timeout` in seconds (0 = forever). */
  msgTimeout: number;
  /** Config-change callback set by the driver. */
  configCb: VdpaCallback = null;
  /** Config interrupts delivered. */
  configIrqs = 0;
  readonly #params: VduseDevParams;

  /** Creates the device (`vduse_create_dev`, after validation). */
  constructor(params: VduseDevParams) {
    this.#params = params;
    this.name = params.name;
    this.vendorId = params.vendorId;
    this.deviceId = params.deviceId;
    this.deviceFeatures = params.features;
    this.vqAlign = params.vqAlign;
    this.apiVersion = params.apiVersion;
    this.config = params.config.slice();
    this.bounceSize = params.bounceSize;
    this.msgTimeout = params.msgTimeout;
    this.mapOps = params.mapOps;
    this.vqs = Array.from({ length: params.vqNum }, (_, i) => new VduseVirtqueue(i));
    this.as = Array.from({ length: params.nas }, (_, i) => new VduseAddressSpace(i));
    this.groups = Array.from(
      { length: params.ngroups },
      (_, i) => new VduseVqGroup(this, i, this.as[0]),
    );
    this.channel = new VduseMsgChannel({
      timers: params.timers,
      timeoutSeconds: () => this.msgTimeout,
    });
  }

  /** True once a message timed out. */
  get broken(): boolean {
    return this.channel.broken;
  }

  /** Number of queues (`vdpa->nvqs`). */
  get nvqs(): number {
    return this.vqs.length;
  }

  /** Number of groups. */
  get ngroups(): number {
    return this.groups.length;
  }

  /** Number of address spaces. */
  get nas(): number {
    return this.as.length;
  }

  /** The device-wide map token: queue 0's group (`vdpa->vmap`). */
  get vmap(): VirtioMap {
    return this.groups[this.vqs[0]?.group ?? 0];
  }

  /** Every queue has a max size (`vduse_dev_is_ready`): required by `vdpa dev add`. */
  get ready(): boolean {
    return this.vqs.every((vq) => vq.numMax !== 0);
  }

  /** Creates the address spaces' domains (`vdpa dev add`). */
  createDomains(): void {
    const perAs = Math.ceil(this.bounceSize / this.as.length / VDUSE_PAGE_SIZE) * VDUSE_PAGE_SIZE;
    for (const as of this.as) {
      as.domain = new VduseIovaDomain({
        memory: this.#params.memory,
        pages: this.#params.pages,
        bounceSize: perAs,
      });
    }
  }

  /** Releases every domain (`DESTROY_DEV`). */
  destroyDomains(): void {
    for (const as of this.as) {
      as.domain?.destroy();
      as.domain = null;
      as.umem = null;
    }
  }

  // ---- messages ----------------------------------------------------------------

  /**
   * Sends SET_STATUS and applies the status when userspace accepts it
   * (`vduse_vdpa_set_status`). Returns the message, or null on a broken device.
   */
  sendStatus(status: number): VduseMessage | null {
    const msg = this.channel.send({ type: VduseReqType.SET_STATUS, status: status & 0xff });
    msg?.onComplete((m) => {
      if (m.status === 0) this.status = status & 0xff;
    });
    return msg;
  }

  // ---- the device file ------------------------------------------------------------

  /** `read()` on the device fd. */
  read(buf: Uint8Array): number {
    return this.channel.read(buf);
  }

  /** `write()` on the device fd. */
  write(buf: Uint8Array): number {
    return this.channel.write(buf);
  }

  /** `poll()` on the device fd. */
  poll(): number {
    return this.channel.poll();
  }

  /** The device fd was closed (`vduse_dev_release`). */
  release(): void {
    for (const as of this.as) {
      if (as.domain !== null && as.umem !== null) as.domain.deregisterUserBounce();
      as.umem = null;
    }
    this.channel.requeueUnanswered();
    this.connected = false;
  }

  /**
   * An ioctl on the device fd (`vduse_dev_ioctl`). `arg` is the user memory
   * the argument pointer names (in/out); the result is the syscall's return
   * value or a negative errno.
   */
  ioctl(request: number, arg: Uint8Array | null, proc: VduseProcess): number {
    if (this.broken) return -LinuxErrno.EPERM;
    const bytes = arg ?? new Uint8Array(0);
    switch (request >>> 0) {
      case VduseIoctl.IOTLB_GET_FD:
        return this.#getFd(bytes, proc, false);
      case VduseIoctl.IOTLB_GET_FD2:
        if (this.apiVersion < VDUSE_API_VERSION_1) return -LinuxErrno.ENOTTY;
        return this.#getFd(bytes, proc, true);
      case VduseIoctl.DEV_GET_FEATURES:
        if (bytes.length < 8) return -LinuxErrno.EFAULT;
        bytes.set(encodeU64(this.driverFeatures));
        return 0;
      case VduseIoctl.DEV_SET_CONFIG:
        return this.#setConfig(bytes);
      case VduseIoctl.DEV_INJECT_CONFIG_IRQ:
        return this.#queueIrqWork(() => {
          if (this.configCb !== null) {
            this.configIrqs++;
            this.configCb();
          }
        });
      case VduseIoctl.VQ_SETUP:
        return this.#vqSetup(bytes);
      case VduseIoctl.VQ_GET_INFO:
        return this.#vqGetInfo(bytes);
      case VduseIoctl.VQ_SETUP_KICKFD:
        return this.#setupKickfd(bytes, proc);
      case VduseIoctl.VQ_INJECT_IRQ: {
        if (bytes.length < 4) return -LinuxErrno.EFAULT;
        // A u32, little-endian (decoded inline: this is the per-interrupt path).
        const index = (bytes[0] | bytes[1] << 8 | bytes[2] << 16 | bytes[3] << 24) >>> 0;
        const vq = this.vqs[index];
        if (vq === undefined) return -LinuxErrno.EINVAL;
        return this.#queueIrqWork(vq.irqWork);
      }
      case VduseIoctl.IOTLB_REG_UMEM:
        return this.#regUmem(bytes, proc);
      case VduseIoctl.IOTLB_DEREG_UMEM:
        return this.#deregUmem(bytes);
      case VduseIoctl.IOTLB_GET_INFO:
        return this.#getInfo(bytes);
      default:
        return -LinuxErrno.ENOTTY;
    }
  }

  /** The first IOTLB entry of `asid` overlapping `[start, last]`, or an errno. */
  #lookup(asid: number, start: bigint, last: bigint): IotlbEntry | number {
    if (start > last) return -LinuxErrno.EINVAL;
    const domain = this.as[asid]?.domain ?? null;
    if (domain === null) return -LinuxErrno.EINVAL;
    const s = u64ToAddress(start);
    if (Number.isNaN(s)) return -LinuxErrno.EINVAL;
    const l = last >= BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(last);
    return domain.iotlb.first(s, l) ?? -LinuxErrno.EINVAL;
  }

  #getFd(bytes: Uint8Array, proc: VduseProcess, v2: boolean): number {
    const size = v2 ? VDUSE_IOTLB_ENTRY_V2_SIZE : VDUSE_IOTLB_ENTRY_SIZE;
    if (bytes.length < size) return -LinuxErrno.EFAULT;
    let asid = 0;
    const e = v2 ? decodeIotlbEntryV2(bytes) : decodeIotlbEntry(bytes);
    if (v2) {
      const e2 = decodeIotlbEntryV2(bytes);
      if (!isZero(e2.reserved)) return -LinuxErrno.EINVAL;
      if (e2.asid >= this.as.length) return -LinuxErrno.EINVAL;
      asid = e2.asid;
    }
    const found = this.#lookup(asid, e.start, e.last);
    if (typeof found === "number") return found;
    const out = {
      offset: BigInt(found.offset),
      start: BigInt(found.start),
      last: BigInt(found.last),
      perm: found.perm,
    };
    bytes.set(v2 ? encodeIotlbEntryV2({ ...out, asid }) : encodeIotlbEntry(out));
    return proc.installFile(found.file, found.perm);
  }

  #getInfo(bytes: Uint8Array): number {
    if (bytes.length < VDUSE_IOVA_INFO_SIZE) return -LinuxErrno.EFAULT;
    const info = decodeIovaInfo(bytes);
    // The merged code leaves its error at -EFAULT for these checks.
    if (!isZero(info.reserved)) return -LinuxErrno.EFAULT;
    if (this.apiVersion < VDUSE_API_VERSION_1 && info.asid !== 0) return -LinuxErrno.EFAULT;
    if (info.asid >= this.as.length) return -LinuxErrno.EFAULT;
    const found = this.#lookup(info.asid, info.start, info.last);
    if (typeof found === "number") return found;
    const domain = this.as[info.asid].domain!;
    const umem = domain.bounceMapped && found.start === 0 &&
      found.last === domain.bounceSize - 1;
    bytes.set(encodeIovaInfo({
      start: BigInt(found.start),
      last: BigInt(found.last),
      capability: umem ? BigInt(VDUSE_IOVA_CAP_UMEM) : 0n,
      asid: info.asid,
    }));
    return 0;
  }

  #setConfig(bytes: Uint8Array): number {
    if (bytes.length < VDUSE_CONFIG_DATA_SIZE) return -LinuxErrno.EFAULT;
    const d = decodeConfigData(bytes);
    const size = this.config.length;
    if (d.offset > size || d.length === 0 || d.length > size - d.offset) {
      return -LinuxErrno.EINVAL;
    }
    if (d.buffer.length < d.length) return -LinuxErrno.EFAULT;
    this.config.set(d.buffer.subarray(0, d.length), d.offset);
    return 0;
  }

  #queueIrqWork(work: () => void): number {
    if ((this.status & DRIVER_OK) === 0) return -LinuxErrno.EINVAL;
    this.#params.schedule(work);
    return 0;
  }

  #vqSetup(bytes: Uint8Array): number {
    if (bytes.length < VDUSE_VQ_CONFIG_SIZE) return -LinuxErrno.EFAULT;
    const c = decodeVqConfig(bytes);
    if (c.index >= this.vqs.length) return -LinuxErrno.EINVAL;
    if (c.reserved1 !== 0 || !isZero(c.reserved2)) return -LinuxErrno.EINVAL;
    if (this.apiVersion < VDUSE_API_VERSION_1) {
      if (c.group !== 0) return -LinuxErrno.EINVAL;
    } else {
      if (c.group >= this.groups.length) return -LinuxErrno.EINVAL;
      if ((this.status & DRIVER_OK) !== 0) return -LinuxErrno.EINVAL;
    }
    const vq = this.vqs[c.index];
    vq.numMax = c.maxSize;
    vq.group = c.group;
    return 0;
  }

  #vqGetInfo(bytes: Uint8Array): number {
    if (bytes.length < VDUSE_VQ_INFO_SIZE) return -LinuxErrno.EFAULT;
    const index = decodeVqInfo(bytes).index;
    const vq = this.vqs[index];
    if (vq === undefined) return -LinuxErrno.EINVAL;
    const packed = hasFeature(this.driverFeatures, VirtioFeature.RING_PACKED);
    const s = vq.state;
    bytes.set(encodeVqInfo({
      index,
      num: vq.num,
      descAddr: BigInt(vq.descAddr),
      driverAddr: BigInt(vq.driverAddr),
      deviceAddr: BigInt(vq.deviceAddr),
      ...(packed
        ? {
          packed: {
            lastAvailCounter: s.lastAvailCounter,
            lastAvailIdx: s.lastAvailIdx,
            lastUsedCounter: s.lastUsedCounter,
            lastUsedIdx: s.lastUsedIdx,
          },
        }
        : { split: { availIndex: s.availIndex } }),
      ready: vq.ready,
    }));
    return 0;
  }

  #setupKickfd(bytes: Uint8Array, proc: VduseProcess): number {
    if (bytes.length < VDUSE_VQ_EVENTFD_SIZE) return -LinuxErrno.EFAULT;
    const e = decodeVqEventfd(bytes);
    const vq = this.vqs[e.index];
    if (vq === undefined) return -LinuxErrno.EINVAL;
    let ctx: VduseEventfd | null = null;
    if (e.fd >= 0) {
      const found = proc.eventfdCtx(e.fd);
      if (typeof found === "number") return found;
      ctx = found;
    } else if (e.fd !== VDUSE_EVENTFD_DEASSIGN) {
      return 0;
    }
    vq.kickfd = ctx;
    if (vq.ready && vq.kicked && ctx !== null) {
      vq.kicked = false;
      vq.kicks++;
      ctx.signal();
    }
    return 0;
  }

  #umemArgs(bytes: Uint8Array): ReturnType<typeof decodeIovaUmem> | number {
    if (bytes.length < VDUSE_IOVA_UMEM_SIZE) return -LinuxErrno.EFAULT;
    const u = decodeIovaUmem(bytes);
    if (!isZero(u.reserved)) return -LinuxErrno.EINVAL;
    if (this.apiVersion < VDUSE_API_VERSION_1 && u.asid !== 0) return -LinuxErrno.EINVAL;
    if (u.asid >= this.as.length) return -LinuxErrno.EINVAL;
    return u;
  }

  #regUmem(bytes: Uint8Array, proc: VduseProcess): number {
    const u = this.#umemArgs(bytes);
    if (typeof u === "number") return u;
    const as = this.as[u.asid];
    const domain = as.domain;
    const uaddr = u64ToAddress(u.uaddr);
    if (
      domain === null || !domain.bounceMapped || u.size !== BigInt(domain.bounceSize) ||
      u.iova !== 0n || Number.isNaN(uaddr) || uaddr % VDUSE_PAGE_SIZE !== 0
    ) {
      return -LinuxErrno.EINVAL;
    }
    if (as.umem !== null) return -LinuxErrno.EEXIST;
    const pinned = proc.pinUserPages(uaddr, domain.bounceSize);
    if (pinned === null) return -LinuxErrno.ENOMEM;
    const err = domain.registerUserBounce(pinned);
    if (err !== 0) return err;
    as.umem = { uaddr, size: domain.bounceSize };
    return 0;
  }

  #deregUmem(bytes: Uint8Array): number {
    const u = this.#umemArgs(bytes);
    if (typeof u === "number") return u;
    const as = this.as[u.asid];
    if (as.domain === null) return -LinuxErrno.EINVAL;
    if (as.umem === null) return -LinuxErrno.ENOENT;
    if (u.iova !== 0n || u.size !== BigInt(as.domain.bounceSize)) return -LinuxErrno.EINVAL;
    as.domain.deregisterUserBounce();
    as.umem = null;
    return 0;
  }

  // ---- reset ------------------------------------------------------------------------

  /** `vduse_dev_reset`: kernel state back to defaults (bounce windows leave the IOTLBs). */
  devReset(): void {
    for (const as of this.as) as.domain?.resetBounceMap();
    this.status = 0;
    this.driverFeatures = 0n;
    this.generation = (this.generation + 1) >>> 0;
    this.configCb = null;
    for (const vq of this.vqs) {
      vq.ready = false;
      vq.descAddr = 0;
      vq.driverAddr = 0;
      vq.deviceAddr = 0;
      vq.num = 0;
      vq.state.availIndex = 0;
      vq.state.lastAvailCounter = 0;
      vq.state.lastAvailIdx = 0;
      vq.state.lastUsedCounter = 0;
      vq.state.lastUsedIdx = 0;
      vq.kicked = false;
      vq.kickfd = null;
      vq.cb = null;
    }
  }

  // ---- vdpa_config_ops -------------------------------------------------------------

  /** `get_device_id`. */
  getDeviceId(): number {
    return this.deviceId;
  }

  /** `get_vendor_id`. */
  getVendorId(): number {
    return this.vendorId;
  }

  /** `get_device_features`. */
  getDeviceFeatures(): bigint {
    return this.deviceFeatures;
  }

  /** `set_driver_features`: mirrored for DEV_GET_FEATURES, never checked. */
  setDriverFeatures(features: bigint): number {
    this.driverFeatures = BigInt.asUintN(64, features);
    return 0;
  }

  /** `get_driver_features`. */
  getDriverFeatures(): bigint {
    return this.driverFeatures;
  }

  /** `get_status`. */
  getStatus(): number {
    return this.status;
  }

  /**
   * `set_status`: a SET_STATUS message; the status changes only when userspace
   * answers OK (at once when it answers from its wakeup).
   */
  setStatus(status: number): void {
    this.sendStatus(status);
  }

  /**
   * `reset`: SET_STATUS(0), then the kernel state is reset whatever the reply.
   * Returns 0, or -EIO when the reply failed, the device is broken, or the
   * reply has not arrived yet.
   */
  reset(): number {
    const msg = this.channel.send({ type: VduseReqType.SET_STATUS, status: 0 });
    this.devReset();
    return msg === null ? -LinuxErrno.EIO : msg.status;
  }

  /** `get_config_size`. */
  getConfigSize(): number {
    return this.config.length;
  }

  /** `get_config`: zero-filled, then the bytes inside the config space. */
  getConfig(offset: number, dest: Uint8Array): void {
    dest.fill(0);
    const size = this.config.length;
    if (!(offset >= 0) || offset > size) return;
    const len = Math.min(dest.length, size - offset);
    dest.set(this.config.subarray(offset, offset + len));
  }

  /** `set_config`: VDUSE ignores driver writes. */
  setConfig(_offset: number, _src: Uint8Array): void {}

  /** `get_generation`. */
  getGeneration(): number {
    return this.generation;
  }

  /** `set_config_cb`. */
  setConfigCb(cb: VdpaCallback): void {
    this.configCb = cb;
  }

  /** `get_vq_align`. */
  getVqAlign(): number {
    return this.vqAlign;
  }

  /** `get_vq_num_max`: the largest max size over all queues. */
  getVqNumMax(): number {
    let max = 0;
    for (const vq of this.vqs) max = Math.max(max, vq.numMax);
    return max;
  }

  /** `get_vq_size`. */
  getVqSize(index: number): number {
    const vq = this.vqs[index];
    if (vq === undefined) return 0;
    return vq.num !== 0 ? vq.num : vq.numMax;
  }

  /** `set_vq_num`. */
  setVqNum(index: number, num: number): void {
    const vq = this.vqs[index];
    if (vq !== undefined) vq.num = num >>> 0;
  }

  /** `set_vq_address`. */
  setVqAddress(index: number, desc: number, driver: number, device: number): number {
    const vq = this.vqs[index];
    if (vq === undefined) return -LinuxErrno.EINVAL;
    vq.descAddr = desc;
    vq.driverAddr = driver;
    vq.deviceAddr = device;
    return 0;
  }

  /** `set_vq_ready`. */
  setVqReady(index: number, ready: boolean): void {
    const vq = this.vqs[index];
    if (vq !== undefined) vq.ready = ready;
  }

  /** `get_vq_ready`. */
  getVqReady(index: number): boolean {
    return this.vqs[index]?.ready ?? false;
  }

  /** `set_vq_state`. */
  setVqState(index: number, state: VdpaVqState): number {
    const vq = this.vqs[index];
    if (vq === undefined) return -LinuxErrno.EINVAL;
    if (hasFeature(this.driverFeatures, VirtioFeature.RING_PACKED)) {
      const p = state.packed;
      if (p === undefined) return -LinuxErrno.EINVAL;
      vq.state.lastAvailCounter = p.lastAvailCounter;
      vq.state.lastAvailIdx = p.lastAvailIdx;
      vq.state.lastUsedCounter = p.lastUsedCounter;
      vq.state.lastUsedIdx = p.lastUsedIdx;
    } else {
      if (state.split === undefined) return -LinuxErrno.EINVAL;
      vq.state.availIndex = state.split.availIndex;
    }
    return 0;
  }

  /**
   * `get_vq_state`: a GET_VQ_STATE message; the reply's state (packed values
   * masked as the kernel does), or -EIO.
   */
  getVqState(index: number): VdpaVqState | number {
    if (this.vqs[index] === undefined) return -LinuxErrno.EINVAL;
    const msg = this.channel.send({ type: VduseReqType.GET_VQ_STATE, vqState: { index } });
    if (msg === null || msg.status !== 0 || msg.response === null) return -LinuxErrno.EIO;
    const r = decodeDevResponse(msg.response).vqState;
    if (hasFeature(this.driverFeatures, VirtioFeature.RING_PACKED)) {
      const p = r.packed!;
      return {
        packed: {
          lastAvailCounter: p.lastAvailCounter & 1,
          lastAvailIdx: p.lastAvailIdx & 0x7fff,
          lastUsedCounter: p.lastUsedCounter & 1,
          lastUsedIdx: p.lastUsedIdx & 0x7fff,
        },
      };
    }
    return { split: { availIndex: r.split!.availIndex } };
  }

  /** `set_vq_cb`. */
  setVqCb(index: number, cb: VdpaCallback): void {
    const vq = this.vqs[index];
    if (vq !== undefined) vq.cb = cb;
  }

  /** `kick_vq` (`vduse_vq_kick`): signal the kick fd, or latch the kick; dropped when not ready. */
  kickVq(index: number): void {
    const vq = this.vqs[index];
    if (vq === undefined || !vq.ready) return;
    if (vq.kickfd !== null) {
      vq.kicks++;
      vq.kickfd.signal();
    } else {
      vq.kicked = true;
    }
  }

  /** `get_vq_group`. */
  getVqGroup(index: number): number {
    return this.vqs[index]?.group ?? 0;
  }

  /** `get_vq_map`: the queue's group is its map token. */
  getVqMap(index: number): VirtioMap {
    return this.groups[this.vqs[index]?.group ?? 0];
  }

  /**
   * `set_group_asid`: SET_VQ_GROUP_ASID, then the group moves when userspace
   * accepts. Returns 0, -EINVAL (bad group/asid or API v0) or -EIO.
   */
  setGroupAsid(group: number, asid: number): number {
    const msg = this.sendGroupAsid(group, asid);
    return typeof msg === "number" ? msg : msg.status;
  }

  /** {@linkcode VduseDev.setGroupAsid} returning the message for asynchronous waiters. */
  sendGroupAsid(group: number, asid: number): VduseMessage | number {
    if (this.apiVersion < VDUSE_API_VERSION_1) return -LinuxErrno.EINVAL;
    if (!(group >= 0 && group < this.groups.length && asid >= 0 && asid < this.as.length)) {
      return -LinuxErrno.EINVAL;
    }
    const msg = this.channel.send({
      type: VduseReqType.SET_VQ_GROUP_ASID,
      vqGroupAsid: { group, asid },
    });
    if (msg === null) return -LinuxErrno.EIO;
    msg.onComplete((m) => {
      if (m.status === 0) this.groups[group].as = this.as[asid];
    });
    return msg;
  }

  /**
   * `set_map` (vhost-vdpa mode): replaces the whole IOTLB of `asid` with
   * `entries` over guest memory and sends UPDATE_IOTLB [0, U64_MAX]; when the
   * reply fails the new entries are removed again. Returns 0, -EINVAL or -EIO.
   */
  setMap(asid: number, entries: readonly VdpaMapEntry[]): number {
    const domain = this.as[asid]?.domain ?? null;
    if (domain === null) return -LinuxErrno.EINVAL;
    const file = new GuestMemoryFile(this.#params.memory);
    domain.iotlb.clear();
    const added: IotlbEntry[] = entries.map((e) => ({
      start: e.iova,
      last: e.iova + e.size - 1,
      perm: e.perm,
      addr: e.phys,
      file,
      offset: e.phys,
    }));
    for (const e of added) domain.iotlb.add(e);
    const msg = this.channel.send({
      type: VduseReqType.UPDATE_IOTLB,
      iova: { start: 0n, last: U64_MAX, asid },
    });
    if (msg === null) {
      for (const e of added) domain.iotlb.remove(e);
      return -LinuxErrno.EIO;
    }
    msg.onComplete((m) => {
      if (m.status !== 0) { for (const e of added) domain.iotlb.remove(e); }
    });
    return msg.completed ? msg.status : 0;
  }
}
