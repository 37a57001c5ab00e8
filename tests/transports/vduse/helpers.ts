/**
 * Fixtures for the VDUSE tests: a guest with the emulated VDUSE module and
 * one userspace process on it, and small uAPI helpers.
 */
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { PageAllocator } from "../../../src/guest/page_allocator.ts";
import { featureMask, VirtioFeature } from "../../../src/virtio/features.ts";
import { EmulatedVduseBackend } from "../../../transports/vduse/kernel/emulated_backend.ts";
import { ManualTimers } from "../../../transports/vduse/kernel/timers.ts";
import {
  VduseKernel,
  type VduseKernelOptions,
} from "../../../transports/vduse/kernel/vduse_kernel.ts";
import {
  decodeDevRequest,
  encodeDevConfig,
  encodeDevResponse,
  encodeU64,
  encodeVqConfig,
  VDUSE_MSG_SIZE,
  type VduseDevConfig,
  type VduseDevRequest,
  VduseIoctl,
} from "../../../transports/vduse/uapi.ts";

/** The echo test device's id, allowed through `extraDeviceIds`. */
export const ECHO_ID = 0x3f;

/** VERSION_1 | ACCESS_PLATFORM: what every VDUSE device must offer. */
export const BASE_FEATURES: bigint = featureMask(
  VirtioFeature.VERSION_1,
  VirtioFeature.ACCESS_PLATFORM,
);

export interface Fixture {
  memory: GuestMemory;
  pages: PageAllocator;
  timers: ManualTimers;
  kernel: VduseKernel;
  backend: EmulatedVduseBackend;
  /** Interrupt work queued by the kernel; run it with `flush()`. */
  work: (() => void)[];
  flush(): void;
}

/** Guest RAM 0..4 MiB; buffers below 1 MiB, pages from 1 MiB. */
export function setup(options: Partial<VduseKernelOptions> = {}): Fixture {
  const memory = new GuestMemory([{ base: 0, size: 4 << 20 }]);
  const pages = new PageAllocator(memory, { base: 1 << 20, size: 3 << 20 });
  const timers = new ManualTimers();
  const work: (() => void)[] = [];
  const kernel = new VduseKernel({
    memory,
    pages,
    timers,
    schedule: (w) => work.push(w),
    bounceSize: 1 << 20,
    extraDeviceIds: [ECHO_ID],
    ...options,
  });
  const backend = new EmulatedVduseBackend(kernel);
  return {
    memory,
    pages,
    timers,
    kernel,
    backend,
    work,
    flush: () => {
      while (work.length > 0) work.shift()!();
    },
  };
}

/** A valid block device config with `vqNum` queues. */
export function blkConfig(overrides: Partial<VduseDevConfig> = {}): VduseDevConfig {
  return {
    name: "blk0",
    vendorId: 0,
    deviceId: 2,
    features: BASE_FEATURES,
    vqNum: 1,
    vqAlign: 4096,
    ngroups: 0,
    nas: 0,
    config: new Uint8Array(8),
    ...overrides,
  };
}

/** Opens the control fd and sets `version` (skipped when undefined). */
export function control(f: Fixture, version?: number): number {
  const fd = f.backend.openControl();
  if (version !== undefined) f.backend.ioctl(fd, VduseIoctl.SET_API_VERSION, encodeU64(version));
  return fd;
}

/** CREATE_DEV on `ctl`. */
export function createDev(f: Fixture, ctl: number, config: VduseDevConfig): number {
  return f.backend.ioctl(ctl, VduseIoctl.CREATE_DEV, encodeDevConfig(config));
}

/** Creates a device, opens it, sets up every queue with `maxSize`; returns the device fd. */
export function createAndOpen(
  f: Fixture,
  config: VduseDevConfig,
  version = 0,
  maxSize = 64,
  groups: number[] = [],
): number {
  const ctl = control(f, version);
  const r = createDev(f, ctl, config);
  if (r !== 0) throw new Error(`CREATE_DEV failed: ${r}`);
  f.backend.close(ctl);
  const fd = f.backend.openDevice(config.name);
  for (let i = 0; i < config.vqNum; i++) {
    const r2 = f.backend.ioctl(
      fd,
      VduseIoctl.VQ_SETUP,
      encodeVqConfig({ index: i, maxSize, group: groups[i] ?? 0 }),
    );
    if (r2 !== 0) throw new Error(`VQ_SETUP ${i} failed: ${r2}`);
  }
  return fd;
}

/** Reads one request from `fd`, or null. */
export function readRequest(f: Fixture, fd: number): VduseDevRequest | null {
  const buf = new Uint8Array(VDUSE_MSG_SIZE);
  const n = f.backend.read(fd, buf);
  return n === VDUSE_MSG_SIZE ? decodeDevRequest(buf) : null;
}

/** Writes a reply to `fd`. */
export function reply(f: Fixture, fd: number, requestId: number, result = 0): number {
  return f.backend.write(fd, encodeDevResponse({ requestId, result }));
}

/** Answers every pending request OK whenever one arrives; returns the log and a stop function. */
export function autoReply(
  f: Fixture,
  fd: number,
  result: (r: VduseDevRequest) => number = () => 0,
): { log: VduseDevRequest[]; stop: () => void } {
  const log: VduseDevRequest[] = [];
  const stop = f.backend.watch(fd, () => {
    for (let r = readRequest(f, fd); r !== null; r = readRequest(f, fd)) {
      log.push(r);
      reply(f, fd, r.requestId, result(r));
    }
  });
  return { log, stop };
}
