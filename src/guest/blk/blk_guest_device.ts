/**
 * What the guest virtio-blk driver needs from its transport driver: the part
 * of Linux's virtio core and `virtio_config_ops` it calls. Any transport
 * driver implementing the guest's `VirtioGuestDevice` (virtio-pci modern,
 * virtio-mmio) provides it.
 *
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import type { PageAllocator, SlabAllocator } from "../page_allocator.ts";
import type { Virtqueue } from "../virtio/virtqueue.ts";

/** How the driver asks for one virtqueue (Linux's `struct virtqueue_info`). */
export interface BlkQueueSpec<T> {
  /** The queue's name: `"req.0"`, `"req.1"`, ... */
  name: string;
  /** The interrupt callback (`virtblk_done`). */
  callback?: ((vq: Virtqueue<T>) => void) | null;
}

/** A virtio device as the guest blk driver sees it, through its transport driver. */
export interface BlkGuestDevice {
  /** The virtio device type (2 for block). */
  readonly deviceId: number;
  /** The negotiated features. */
  readonly features: bigint;
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** The guest page allocator (data buffers). */
  readonly pages: PageAllocator;
  /** The guest kmalloc heap (request headers, discard ranges, id buffers). */
  readonly heap: SlabAllocator;
  /** True when `bit` was negotiated (`virtio_has_feature`). */
  hasFeature(bit: number): boolean;
  /** The device status byte. */
  getStatus(): number;
  /**
   * Negotiates features (DRIVER, features, FEATURES_OK) and returns the
   * negotiated set. @throws when the device refuses them
   */
  negotiate(driverFeatures: bigint): bigint;
  /** Creates one virtqueue per spec, indices 0, 1, ... (`virtio_find_vqs`). @throws on failure */
  setupQueues<T = unknown>(specs: readonly BlkQueueSpec<T>[]): Virtqueue<T>[];
  /** Deletes every queue (`del_vqs`). */
  deleteQueues(): void;
  /** Reads a config byte (`virtio_cread8`). */
  readConfig8(offset: number): number;
  /** Reads a 16-bit config field (`virtio_cread16`). */
  readConfig16(offset: number): number;
  /** Reads a 32-bit config field (`virtio_cread32`). */
  readConfig32(offset: number): number;
  /** Reads a 64-bit config field consistently (`virtio_cread64`). */
  readConfig64(offset: number): bigint;
  /** Writes a config byte (`virtio_cwrite8`). */
  writeConfig8(offset: number, value: number): void;
  /** Sets DRIVER_OK (`virtio_device_ready`). */
  setDriverOk(): void;
  /** Resets the device (`virtio_reset_device`). */
  reset(): void;
  /** Sets FAILED. */
  fail(): void;
  /** Installs the config-change handler (`drv->config_changed`). */
  onConfigChange(handler: (() => void) | null): void;
}
