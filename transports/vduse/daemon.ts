/**
 * A VDUSE userspace daemon that serves any vireo {@linkcode VirtioDevice}
 * over the VDUSE uAPI bytes, through a {@linkcode VduseBackend}: the
 * emulated kernel, or a real `/dev/vduse` through Deno's FFI
 * (`ffi_backend_deno.ts`), without change here.
 *
 * What it does, as QEMU's libvduse and DPDK do:
 * - start: SET_API_VERSION, CREATE_DEV (EEXIST accepted), open the device,
 *   VQ_SETUP every queue (with its group under API v1), then poll the fd;
 * - messages: SET_STATUS (FEATURES_OK checked against DEV_GET_FEATURES and
 *   the device; DRIVER_OK starts the dataplane; 0 stops it), UPDATE_IOTLB
 *   (drop the cached regions), SET_VQ_GROUP_ASID (rebind the group),
 *   GET_VQ_STATE (the queue's next avail index); anything else FAILED;
 * - dataplane: VQ_GET_INFO per queue, device queues over the IOTLB space of
 *   the queue's address space, a kick eventfd per queue whose signal runs
 *   the device, VQ_INJECT_IRQ for used-buffer interrupts, DEV_SET_CONFIG +
 *   DEV_INJECT_CONFIG_IRQ for config changes.
 *
 * @module
 */
import { GuestFault } from "../../src/guest_fault.ts";
import { createDeviceQueue } from "../../src/queue/create_device_queue.ts";
import { PackedQueue } from "../../src/queue/packed_queue.ts";
import { SplitQueue } from "../../src/queue/split_queue.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import type { VirtioDevice, VirtioDeviceHost } from "../../src/virtio/device.ts";
import { VirtioDeviceId } from "../../src/virtio/device_id.ts";
import {
  checkAcceptedFeatures,
  featureMask,
  hasFeature,
  TRANSPORT_FEATURE_BITS,
  VirtioFeature,
} from "../../src/virtio/features.ts";
import { DeviceStatus } from "../../src/virtio/status.ts";
import type { VduseBackend } from "./backend.ts";
import { errnoName, LinuxErrno } from "./errno.ts";
import { VduseIotlbDmaSpace } from "./iotlb_dma_space.ts";
import {
  decodeDevRequest,
  decodeU64,
  decodeVqInfo,
  encodeConfigData,
  encodeDevConfig,
  encodeDevResponse,
  encodeName,
  encodeU64,
  encodeVqConfig,
  encodeVqEventfd,
  encodeVqInfo,
  u64ToAddress,
  VDUSE_API_VERSION_1,
  VDUSE_EVENTFD_DEASSIGN,
  VDUSE_MSG_SIZE,
  type VduseDevRequest,
  VduseIoctl,
  VduseReqResult,
  VduseReqType,
  type VduseVqStateUnion,
} from "./uapi.ts";

/**
 * virtio-net bits the daemon clears by default: the control queue (VDUSE
 * refuses it) and every feature Linux's virtio_net refuses without it
 * (CTRL_GUEST_OFFLOADS, CTRL_VQ, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA,
 * GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, VQ_NOTF_COAL, NOTF_COAL, RSS).
 */
export const VDUSE_NET_CTRL_FEATURES: bigint = featureMask(
  2,
  17,
  18,
  19,
  20,
  21,
  22,
  23,
  52,
  53,
  60,
);

/**
 * virtio-blk bits the daemon clears by default: CONFIG_WCE (VDUSE refuses it:
 * driver writes to the config space are ignored, so the cache mode cannot change).
 */
export const VDUSE_BLK_FILTERED_FEATURES: bigint = featureMask(11);

/** How a {@linkcode VduseDaemon} creates and serves its device. */
export interface VduseDaemonOptions {
  /** Device name (`/dev/vduse/<name>`). */
  name: string;
  /** API version: 0 (default) or 1 (virtqueue groups and address spaces). */
  apiVersion?: 0 | 1;
  /** Virtio vendor id (0 by default). */
  vendorId?: number;
  /** API v1: number of virtqueue groups (default: the largest group in `vqGroups` plus one). */
  ngroups?: number;
  /** API v1: number of address spaces (default: `ngroups`). */
  nas?: number;
  /** API v1: each queue's group (default: all in group 0). */
  vqGroups?: readonly number[];
  /** Offer VIRTIO_F_RING_PACKED (default true). */
  packed?: boolean;
  /** Offer VIRTIO_RING_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_RING_F_INDIRECT_DESC (default true). */
  indirect?: boolean;
  /** Offer VIRTIO_F_IN_ORDER (default false). */
  inOrder?: boolean;
  /**
   * Device feature bits never offered. Default: {@linkcode VDUSE_NET_CTRL_FEATURES}
   * for net devices (VDUSE refuses the control queue),
   * {@linkcode VDUSE_BLK_FILTERED_FEATURES} for block devices, none otherwise.
   */
  filterFeatures?: bigint;
  /** Ring alignment passed to CREATE_DEV (4096). */
  vqAlign?: number;
  /** Cap on every queue's max size (1024, as libvduse and DPDK). */
  maxQueueSize?: number;
}

/** What the daemon counted. */
export interface VduseDaemonStats {
  /** Requests answered, by type name. */
  requests: Record<string, number>;
  /** Kicks received. */
  kicks: number;
  /** Interrupts injected with VQ_INJECT_IRQ. */
  irqs: number;
  /** VQ_INJECT_IRQ calls the kernel refused. */
  irqErrors: number;
  /** Dataplane starts (DRIVER_OK). */
  starts: number;
  /** Dataplane stops (reset). */
  stops: number;
}

interface ActiveQueue {
  queue: DeviceQueue;
  eventfd: number;
}

const TYPE_NAMES = ["GET_VQ_STATE", "SET_STATUS", "UPDATE_IOTLB", "SET_VQ_GROUP_ASID"];

/**
 * Serves one {@linkcode VirtioDevice} as a VDUSE device.
 *
 * @example
 * ```ts ignore
 * const daemon = new VduseDaemon(backend, new VirtioBlk({ backend: disk }), { name: "vda" });
 * if (daemon.start() !== 0) throw new Error(daemon.lastError);
 * ```
 */
export class VduseDaemon {
  /** The device served. */
  readonly device: VirtioDevice;
  /** The system calls. */
  readonly backend: VduseBackend;
  /** Device name. */
  readonly name: string;
  /** The API version in use. */
  readonly apiVersion: number;
  /** The features offered in CREATE_DEV. */
  readonly offeredFeatures: bigint;
  /** Counters. */
  readonly stats: VduseDaemonStats = {
    requests: {},
    kicks: 0,
    irqs: 0,
    irqErrors: 0,
    starts: 0,
    stops: 0,
  };
  /** The last problem, as a sentence (empty when none). */
  lastError = "";
  /** The device reported a guest error (`fail`): queues are not served until reset. */
  needsReset = false;
  /** The status byte as the daemon last accepted it. */
  status = 0;
  /** One IOTLB space per address space (after `start`). */
  spaces: VduseIotlbDmaSpace[] = [];
  /** Each group's address space, as SET_VQ_GROUP_ASID set it. */
  readonly groupAsid: number[];
  /** Each queue's group. */
  readonly vqGroups: readonly number[];
  readonly #ngroups: number;
  readonly #nas: number;
  readonly #options: VduseDaemonOptions;
  #control = -1;
  #fd = -1;
  #unwatch: (() => void) | null = null;
  #active: (ActiveQueue | null)[] = [];
  #live = false;
  readonly #buf = new Uint8Array(VDUSE_MSG_SIZE);
  readonly #resp = new Uint8Array(VDUSE_MSG_SIZE);
  readonly #irqArg = new Uint8Array(4);

  /**
   * Prepares the daemon (nothing is created until `start`).
   *
   * @throws {TypeError} when the device or name is malformed
   * @throws {RangeError} when the API v1 group options are inconsistent
   */
  constructor(backend: VduseBackend, device: VirtioDevice, options: VduseDaemonOptions) {
    if (typeof device !== "object" || device === null || typeof device.notify !== "function") {
      throw new TypeError("Cannot create a VDUSE daemon: expected a VirtioDevice");
    }
    if (typeof options?.name !== "string" || options.name.length === 0) {
      throw new TypeError("Cannot create a VDUSE daemon: options.name must be a non-empty string");
    }
    encodeName(options.name); // throws RangeError when too long
    this.backend = backend;
    this.device = device;
    this.name = options.name;
    this.#options = options;
    this.apiVersion = options.apiVersion ?? 0;
    const groups = options.vqGroups ?? [];
    this.vqGroups = Array.from({ length: device.numQueues }, (_, i) => groups[i] ?? 0);
    const v1 = this.apiVersion >= VDUSE_API_VERSION_1;
    this.#ngroups = v1 ? options.ngroups ?? Math.max(0, ...this.vqGroups) + 1 : 1;
    this.#nas = v1 ? options.nas ?? this.#ngroups : 1;
    if (!v1 && this.vqGroups.some((g) => g !== 0)) {
      throw new RangeError("Cannot create a VDUSE daemon: queue groups need apiVersion 1");
    }
    if (this.vqGroups.some((g) => !(Number.isInteger(g) && g >= 0 && g < this.#ngroups))) {
      throw new RangeError(
        `Cannot create a VDUSE daemon: a queue group is not in 0..${this.#ngroups - 1}`,
      );
    }
    this.groupAsid = new Array(this.#ngroups).fill(0);
    const [lo, hi] = TRANSPORT_FEATURE_BITS;
    let deviceBits = device.deviceFeatures;
    for (let b = lo; b <= hi; b++) deviceBits &= ~(1n << BigInt(b));
    const filter = options.filterFeatures ??
      (device.deviceId === VirtioDeviceId.NET
        ? VDUSE_NET_CTRL_FEATURES
        : device.deviceId === VirtioDeviceId.BLOCK
        ? VDUSE_BLK_FILTERED_FEATURES
        : 0n);
    const bits: number[] = [VirtioFeature.VERSION_1, VirtioFeature.ACCESS_PLATFORM];
    if (options.packed ?? true) bits.push(VirtioFeature.RING_PACKED);
    if (options.eventIdx ?? true) bits.push(VirtioFeature.EVENT_IDX);
    if (options.indirect ?? true) bits.push(VirtioFeature.INDIRECT_DESC);
    if (options.inOrder ?? false) bits.push(VirtioFeature.IN_ORDER);
    this.offeredFeatures = (deviceBits & ~filter) | featureMask(...bits);
    const host: VirtioDeviceHost = {
      interrupt: (queue) => this.#interrupt(queue),
      configChanged: () => this.#configChanged(),
      fail: (reason) => this.#fail(reason),
    };
    device.bind(host);
  }

  /** The device fd (-1 before `start`). */
  get fd(): number {
    return this.#fd;
  }

  /** True between DRIVER_OK and the next reset. */
  get live(): boolean {
    return this.#live;
  }

  /**
   * Creates (or reconnects to) the VDUSE device and starts answering
   * messages. Returns 0 or the failing call's negative errno (see `lastError`).
   */
  start(): number {
    const b = this.backend;
    const ctl = b.openControl();
    if (ctl < 0) return this.#error(ctl, "open /dev/vduse/control");
    this.#control = ctl;
    let r = b.ioctl(ctl, VduseIoctl.SET_API_VERSION, encodeU64(this.apiVersion));
    if (r < 0) return this.#error(r, `SET_API_VERSION ${this.apiVersion}`);
    const v1 = this.apiVersion >= VDUSE_API_VERSION_1;
    r = b.ioctl(
      ctl,
      VduseIoctl.CREATE_DEV,
      encodeDevConfig({
        name: this.name,
        vendorId: this.#options.vendorId ?? 0,
        deviceId: this.device.deviceId,
        features: this.offeredFeatures,
        vqNum: this.device.numQueues,
        vqAlign: this.#options.vqAlign ?? 4096,
        ngroups: v1 ? this.#ngroups : 0,
        nas: v1 ? this.#nas : 0,
        config: this.device.config,
      }),
    );
    if (r < 0 && r !== -LinuxErrno.EEXIST) return this.#error(r, "CREATE_DEV");
    const fd = b.openDevice(this.name);
    if (fd < 0) return this.#error(fd, `open /dev/vduse/${this.name}`);
    this.#fd = fd;
    const cap = this.#options.maxQueueSize ?? 1024;
    for (let i = 0; i < this.device.numQueues; i++) {
      const maxSize = Math.min(this.device.queueMaxSize(i), cap);
      r = b.ioctl(
        fd,
        VduseIoctl.VQ_SETUP,
        encodeVqConfig({ index: i, maxSize, group: this.vqGroups[i] }),
      );
      if (r < 0) return this.#error(r, `VQ_SETUP ${i}`);
    }
    this.spaces = Array.from(
      { length: this.#nas },
      (_, asid) => new VduseIotlbDmaSpace({ backend: b, fd, asid, v2: v1 }),
    );
    this.#unwatch = b.watch(fd, () => this.processMessages());
    this.processMessages();
    return 0;
  }

  /**
   * Stops serving: the dataplane stops, the device fd is closed and the
   * device destroyed (DESTROY_DEV fails with -EBUSY while it is attached to
   * the vDPA bus; the result is returned).
   */
  stop(): number {
    this.#stopDataplane();
    this.#unwatch?.();
    this.#unwatch = null;
    let r = 0;
    if (this.#fd >= 0) this.backend.close(this.#fd);
    this.#fd = -1;
    if (this.#control >= 0) {
      r = this.#destroy(this.#control);
      this.backend.close(this.#control);
      this.#control = -1;
    }
    return r;
  }

  /**
   * `stop`, and when DESTROY_DEV found the device still open (-EBUSY) because
   * a poll in flight held the closed fd, waits for the backend to let go
   * ({@linkcode VduseBackend.quiesce}) and destroys again. Still -EBUSY while
   * the device is attached to the vDPA bus (`vdpa dev del` first).
   */
  async shutdown(): Promise<number> {
    const started = this.#control >= 0;
    let r = this.stop();
    if (started && r === -LinuxErrno.EBUSY && this.backend.quiesce !== undefined) {
      await this.backend.quiesce();
      const ctl = this.backend.openControl();
      if (ctl < 0) return this.#error(ctl, "open /dev/vduse/control");
      r = this.#destroy(ctl);
      this.backend.close(ctl);
    }
    return r;
  }

  #destroy(control: number): number {
    const r = this.backend.ioctl(control, VduseIoctl.DESTROY_DEV, encodeName(this.name));
    if (r < 0) this.#error(r, `DESTROY_DEV ${this.name}`);
    return r;
  }

  /** Reads and answers every pending request; returns how many were answered. */
  processMessages(): number {
    let n = 0;
    while (this.#fd >= 0) {
      const got = this.backend.read(this.#fd, this.#buf);
      if (got !== VDUSE_MSG_SIZE) break;
      const req = decodeDevRequest(this.#buf);
      const name = TYPE_NAMES[req.type] ?? `type ${req.type}`;
      this.stats.requests[name] = (this.stats.requests[name] ?? 0) + 1;
      const [result, vqState] = this.#handle(req);
      encodeDevResponse({
        requestId: req.requestId,
        result,
        vqState: vqState === null ? undefined : { index: req.vqState?.index ?? 0, ...vqState },
      }, this.#resp);
      const w = this.backend.write(this.#fd, this.#resp);
      if (w < 0) this.#error(w, `reply to request ${req.requestId}`);
      n++;
    }
    return n;
  }

  #handle(req: VduseDevRequest): [number, VduseVqStateUnion | null] {
    switch (req.type) {
      case VduseReqType.SET_STATUS:
        return [this.#setStatus(req.status ?? 0), null];
      case VduseReqType.UPDATE_IOTLB: {
        const iova = req.iova!;
        const space = this.spaces[this.apiVersion >= VDUSE_API_VERSION_1 ? iova.asid : 0];
        if (space === undefined) return [VduseReqResult.FAILED, null];
        const start = u64ToAddress(iova.start);
        if (Number.isNaN(start)) return [VduseReqResult.OK, null];
        const last = iova.last >= BigInt(Number.MAX_SAFE_INTEGER)
          ? Number.MAX_SAFE_INTEGER - 1
          : Number(iova.last);
        space.dropRange(start, last);
        return [VduseReqResult.OK, null];
      }
      case VduseReqType.SET_VQ_GROUP_ASID: {
        const { group, asid } = req.vqGroupAsid!;
        if (group >= this.#ngroups || asid >= this.#nas) return [VduseReqResult.FAILED, null];
        this.groupAsid[group] = asid;
        return [VduseReqResult.OK, null];
      }
      case VduseReqType.GET_VQ_STATE: {
        // What vhost-vdpa's GET_VRING_BASE asks: where the device is in the
        // ring. A queue not started yet is at its beginning.
        const q = this.#active[req.vqState!.index]?.queue;
        if (q === undefined) {
          const features = this.#fd >= 0 ? this.#features() : null;
          return [
            VduseReqResult.OK,
            hasFeature(features ?? 0n, VirtioFeature.RING_PACKED)
              // Both wrap counters start at 1 (virtio 1.x, 2.8.1).
              ? {
                packed: {
                  lastAvailCounter: 1,
                  lastAvailIdx: 0,
                  lastUsedCounter: 1,
                  lastUsedIdx: 0,
                },
              }
              : { split: { availIndex: 0 } },
          ];
        }
        if (q instanceof PackedQueue) {
          return [VduseReqResult.OK, {
            packed: {
              lastAvailCounter: q.availWrapCounter,
              lastAvailIdx: q.nextAvail,
              lastUsedCounter: q.usedWrapCounter,
              lastUsedIdx: q.nextUsed,
            },
          }];
        }
        if (q instanceof SplitQueue) {
          return [VduseReqResult.OK, { split: { availIndex: q.lastAvailIdx } }];
        }
        return [VduseReqResult.FAILED, null];
      }
      default:
        return [VduseReqResult.FAILED, null];
    }
  }

  #setStatus(status: number): number {
    const old = this.status;
    if (status === 0) {
      this.#stopDataplane();
      this.device.reset();
      this.status = 0;
      this.needsReset = false;
      return VduseReqResult.OK;
    }
    const added = status & ~old;
    if ((added & DeviceStatus.FEATURES_OK) !== 0) {
      const features = this.#features();
      if (features === null) return VduseReqResult.FAILED;
      const why = checkAcceptedFeatures(this.offeredFeatures, features) ??
        this.device.validateFeatures(features);
      if (why !== null) {
        this.lastError = `FEATURES_OK refused: ${why}`;
        return VduseReqResult.FAILED;
      }
    }
    if ((added & DeviceStatus.DRIVER_OK) !== 0 && !this.#startDataplane()) {
      return VduseReqResult.FAILED;
    }
    this.status = status;
    return VduseReqResult.OK;
  }

  #features(): bigint | null {
    const arg = new Uint8Array(8);
    const r = this.backend.ioctl(this.#fd, VduseIoctl.DEV_GET_FEATURES, arg);
    if (r < 0) {
      this.#error(r, "DEV_GET_FEATURES");
      return null;
    }
    return decodeU64(arg);
  }

  /** DRIVER_OK: queues from VQ_GET_INFO, kick eventfds, then the device starts. */
  #startDataplane(): boolean {
    const features = this.#features();
    if (features === null) return false;
    const packed = hasFeature(features, VirtioFeature.RING_PACKED);
    const queues: (DeviceQueue | null)[] = [];
    const active: (ActiveQueue | null)[] = [];
    const fail = (why: string): boolean => {
      for (const a of active) {
        if (a === null) continue;
        a.queue.detach();
        this.backend.close(a.eventfd);
      }
      this.lastError = why;
      return false;
    };
    for (let i = 0; i < this.device.numQueues; i++) {
      const arg = encodeVqInfo({
        index: i,
        num: 0,
        descAddr: 0n,
        driverAddr: 0n,
        deviceAddr: 0n,
        ready: false,
      });
      const r = this.backend.ioctl(this.#fd, VduseIoctl.VQ_GET_INFO, arg);
      if (r < 0) return fail(`VQ_GET_INFO ${i} failed: ${errnoName(r)}`);
      const info = decodeVqInfo(arg);
      if (!info.ready) {
        queues.push(null);
        active.push(null);
        continue;
      }
      const descAddr = u64ToAddress(info.descAddr);
      const driverAddr = u64ToAddress(info.driverAddr);
      const deviceAddr = u64ToAddress(info.deviceAddr);
      if (Number.isNaN(descAddr + driverAddr + deviceAddr)) {
        return fail(`Queue ${i}: a ring address is at or above 2^53`);
      }
      let queue: DeviceQueue;
      try {
        queue = createDeviceQueue(
          {
            index: i,
            size: info.num,
            descAddr,
            driverAddr,
            deviceAddr,
            eventIdx: hasFeature(features, VirtioFeature.EVENT_IDX),
            indirect: hasFeature(features, VirtioFeature.INDIRECT_DESC),
            inOrder: hasFeature(features, VirtioFeature.IN_ORDER),
          },
          this.spaceOfQueue(i),
          packed,
        );
      } catch (e) {
        return fail(`Queue ${i}: ${(e as Error).message}`);
      }
      const eventfd = this.backend.eventfd(() => this.#kick(i));
      if (eventfd < 0) return fail(`eventfd for queue ${i} failed: ${errnoName(eventfd)}`);
      active.push({ queue, eventfd });
      queues.push(queue);
      const k = this.backend.ioctl(
        this.#fd,
        VduseIoctl.VQ_SETUP_KICKFD,
        encodeVqEventfd({ index: i, fd: eventfd }),
      );
      if (k < 0) return fail(`VQ_SETUP_KICKFD ${i} failed: ${errnoName(k)}`);
    }
    this.#active = active;
    this.#live = true;
    this.needsReset = false;
    this.stats.starts++;
    this.#guard(() =>
      this.device.activate({ features, queues, dma: this.spaceOfQueue(0) ?? this.spaces[0] })
    );
    return true;
  }

  /** The IOTLB space queue `index` uses now (its group's address space). */
  spaceOfQueue(index: number): VduseIotlbDmaSpace {
    return this.spaces[this.groupAsid[this.vqGroups[index] ?? 0] ?? 0];
  }

  #stopDataplane(): void {
    if (this.#live) this.stats.stops++;
    this.#live = false;
    for (let i = 0; i < this.#active.length; i++) {
      const a = this.#active[i];
      if (a === null) continue;
      a.queue.detach();
      if (this.#fd >= 0) {
        this.backend.ioctl(
          this.#fd,
          VduseIoctl.VQ_SETUP_KICKFD,
          encodeVqEventfd({ index: i, fd: VDUSE_EVENTFD_DEASSIGN }),
        );
      }
      this.backend.close(a.eventfd);
    }
    this.#active = [];
    for (const s of this.spaces) s.clear();
  }

  #kick(index: number): void {
    this.stats.kicks++;
    if (!this.#live || this.needsReset) return;
    this.#guard(() => this.device.notify(index));
  }

  #interrupt(queue: number): void {
    if (!this.#live || this.#fd < 0) return;
    const arg = this.#irqArg; // the u32 queue index, little-endian, written in place
    arg[0] = queue;
    arg[1] = queue >>> 8;
    arg[2] = queue >>> 16;
    arg[3] = queue >>> 24;
    const r = this.backend.ioctl(this.#fd, VduseIoctl.VQ_INJECT_IRQ, arg);
    if (r < 0) this.stats.irqErrors++;
    else this.stats.irqs++;
  }

  #configChanged(): void {
    if (this.#fd < 0) return;
    const config = this.device.config;
    if (config.length > 0) {
      const r = this.backend.ioctl(
        this.#fd,
        VduseIoctl.DEV_SET_CONFIG,
        encodeConfigData({ offset: 0, buffer: config }),
      );
      if (r < 0) this.#error(r, "DEV_SET_CONFIG");
    }
    this.backend.ioctl(this.#fd, VduseIoctl.DEV_INJECT_CONFIG_IRQ, null);
  }

  /** The device found a guest error: VDUSE cannot set NEEDS_RESET, so the daemon stops serving. */
  #fail(reason: string): void {
    this.lastError = reason;
    this.needsReset = true;
    if (this.#fd >= 0 && this.#live) {
      this.backend.ioctl(this.#fd, VduseIoctl.DEV_INJECT_CONFIG_IRQ, null);
    }
  }

  #guard(run: () => void): void {
    try {
      run();
    } catch (e) {
      if (e instanceof GuestFault) this.#fail(e.message);
      else throw e;
    }
  }

  #error(errno: number, what: string): number {
    this.lastError = `${what} failed: ${errnoName(errno)}`;
    return errno;
  }
}
