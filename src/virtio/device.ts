import type { DmaSpace } from "../dma/dma_space.ts";
import type { DeviceQueue } from "../queue/device_queue.ts";

/**
 * What a transport gives a device model: the only ways the device can signal
 * the guest. Handed over once by {@linkcode VirtioDevice.bind}.
 */
export interface VirtioDeviceHost {
  /** Sends a used-buffer notification for `queue` (MSI-X vector or ISR bit 0 + INTx). */
  interrupt(queue: number): void;
  /** The device changed its config space: bump config_generation and raise a config interrupt. */
  configChanged(): void;
  /**
   * The device hit an error caused by the guest: set DEVICE_NEEDS_RESET, raise a
   * config interrupt, and record `reason` as the diagnostic.
   */
  fail(reason: string): void;
}

/** What the device needs to start processing queues (at DRIVER_OK). */
export interface ActivateContext {
  /** The features both sides agreed on. */
  readonly features: bigint;
  /** One entry per queue the device has; `null` where the driver did not enable the queue. */
  readonly queues: readonly (DeviceQueue | null)[];
  /** The device's view of memory (direct, IOMMU or VDUSE). */
  readonly dma: DmaSpace;
}

/**
 * The contract every device model implements. A device never knows its
 * transport: the same model runs behind virtio-pci, virtio-mmio or VDUSE.
 *
 * Life cycle: `bind` once; then any number of (`validateFeatures`? →
 * `activate` → `notify`* → `reset`) rounds. Guest mistakes found during
 * `notify` may be thrown as `GuestFault` (the transport catches them) or
 * reported through {@linkcode VirtioDeviceHost.fail}.
 */
export interface VirtioDevice {
  /** The virtio device type id ({@linkcode VirtioDeviceId}). */
  readonly deviceId: number;
  /** Features the device offers (device-type bits plus the transport bits it supports). */
  readonly deviceFeatures: bigint;
  /** How many virtqueues the device has. */
  readonly numQueues: number;
  /** The largest ring size the device accepts for queue `index`. */
  queueMaxSize(index: number): number;
  /**
   * The device-specific config space, read byte-exact by transports. Devices
   * update it in place and call {@linkcode VirtioDeviceHost.configChanged}.
   */
  readonly config: Uint8Array;
  /** The driver wrote `data` at `offset` of the config space; the device decides what is writable. */
  writeConfig(offset: number, data: Uint8Array): void;
  /** Connects the device to its transport. Called once. */
  bind(host: VirtioDeviceHost): void;
  /**
   * Checks the features the driver accepted (at FEATURES_OK): `null` to accept,
   * or a sentence saying why they are refused.
   */
  validateFeatures(features: bigint): string | null;
  /** The driver set DRIVER_OK: start using the queues. */
  activate(context: ActivateContext): void;
  /** The driver notified queue `index` (`data` is the notification data when negotiated). */
  notify(index: number, data?: number): void;
  /** The driver reset queue `index` (VIRTIO_F_RING_RESET): forget its in-flight chains. */
  resetQueue(index: number): void;
  /** The driver re-enabled queue `index` after a queue reset. */
  enableQueue(index: number, queue: DeviceQueue): void;
  /** Device reset: drop every queue and in-flight request, back to the initial state. */
  reset(): void;
  /** The device's own state (config, backend position) as plain data. */
  saveState(): Record<string, unknown>;
  /** Restores what {@linkcode VirtioDevice.saveState} produced. @throws {TypeError} on a malformed state */
  restoreState(state: Record<string, unknown>): void;
}
