/**
 * What the guest virtio-net driver needs from its transport driver: the part
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
export interface NetQueueSpec<T> {
  /** The queue's name: `"input.0"`, `"output.0"`, `"control"`. */
  name: string;
  /** The interrupt callback; none leaves interrupts suppressed. */
  callback?: ((vq: Virtqueue<T>) => void) | null;
  /** The driver keeps a context per buffer (no indirect descriptors). */
  ctx?: boolean;
  /** Use at most this many entries. */
  size?: number;
}

/** A virtio device as the guest net driver sees it, through its transport driver. */
export interface NetGuestDevice {
  /** The virtio device type (1 for net). */
  readonly deviceId: number;
  /** The negotiated features. */
  readonly features: bigint;
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** The guest page allocator. */
  readonly pages: PageAllocator;
  /** The guest kmalloc heap. */
  readonly heap: SlabAllocator;
  /** True when `bit` was negotiated. */
  hasFeature(bit: number): boolean;
  /** The device status byte. */
  getStatus(): number;
  /**
   * Negotiates features (DRIVER, features, FEATURES_OK) and returns the
   * negotiated set. @throws when the device refuses them
   */
  negotiate(driverFeatures: bigint): bigint;
  /** Creates one virtqueue per spec, indices 0, 1, ... (`virtio_find_vqs`). @throws on failure */
  setupQueues<T = unknown>(specs: readonly NetQueueSpec<T>[]): Virtqueue<T>[];
  /** Deletes every queue (`del_vqs`). */
  deleteQueues(): void;
  /** Reads config bytes inside the generation loop (`virtio_cread_bytes`). */
  readConfig(offset: number, length: number): Uint8Array;
  /** Reads a config byte. */
  readConfig8(offset: number): number;
  /** Reads a 16-bit config field. */
  readConfig16(offset: number): number;
  /** Reads a 32-bit config field. */
  readConfig32(offset: number): number;
  /** Sets DRIVER_OK (`virtio_device_ready`). */
  setDriverOk(): void;
  /** Resets the device (`virtio_reset_device`). */
  reset(): void;
  /** Sets FAILED. */
  fail(): void;
  /** Installs the config-change handler (`drv->config_changed`). */
  onConfigChange(handler: (() => void) | null): void;
}
