/**
 * A tiny virtio device for the examples: each buffer's device-readable bytes
 * are copied into its device-writable part. Its config space is 8 bytes: a
 * read-only le32 "magic" (0xEC40EC40) and a writable le32 "scratch" word.
 * Device type 0x3F is not a real virtio device; it only shows the plumbing.
 *
 * @module
 */
import type { DmaSpace } from "../src/dma/dma_space.ts";
import { DescriptorChain } from "../src/queue/descriptor_chain.ts";
import type { DeviceQueue } from "../src/queue/device_queue.ts";
import type { ActivateContext, VirtioDevice, VirtioDeviceHost } from "../src/virtio/device.ts";

/** The echo device's virtio type. */
export const ECHO_DEVICE_ID = 0x3f;
/** The value of the read-only config word. */
export const ECHO_MAGIC = 0xec40ec40;

/** A device that echoes readable bytes into the writable part of each chain. */
export class EchoDevice implements VirtioDevice {
  /** Device type 0x3F. */
  readonly deviceId: number = ECHO_DEVICE_ID;
  /** No device-specific features. */
  readonly deviceFeatures: bigint = 0n;
  /** Number of queues. */
  readonly numQueues: number;
  /** Magic (read-only) and scratch (writable) words. */
  readonly config: Uint8Array = new Uint8Array(8);
  /** Chains echoed so far. */
  echoed = 0;
  #host: VirtioDeviceHost | null = null;
  #queues: (DeviceQueue | null)[] = [];
  #chain: DescriptorChain | null = null;
  readonly #maxSize: number;

  /** An echo device with `numQueues` queues of at most `maxSize` entries. */
  constructor(numQueues = 1, maxSize = 256) {
    this.numQueues = numQueues;
    this.#maxSize = maxSize;
    new DataView(this.config.buffer).setUint32(0, ECHO_MAGIC, true);
  }

  /** Every queue takes up to `maxSize` entries. */
  queueMaxSize(_index: number): number {
    return this.#maxSize;
  }

  /** Remembers the transport. */
  bind(host: VirtioDeviceHost): void {
    this.#host = host;
  }

  /** Only the scratch word (bytes 4..7) is writable. */
  writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      if (offset + i >= 4 && offset + i < 8) this.config[offset + i] = data[i];
    }
  }

  /** Accepts any features. */
  validateFeatures(_features: bigint): string | null {
    return null;
  }

  /** DRIVER_OK: takes the queues and the DMA space. */
  activate(context: ActivateContext): void {
    this.#queues = [...context.queues];
    this.#chain = new DescriptorChain(context.dma as DmaSpace, 1024);
  }

  /** Echoes every available chain of queue `index`, then interrupts once. */
  notify(index: number): void {
    const queue = this.#queues[index];
    const chain = this.#chain;
    if (!queue || chain === null) return;
    while (queue.pop(chain)) {
      const n = chain.reader.copyTo(chain.writer, chain.readableLength);
      queue.push(chain.token, n);
      this.echoed++;
    }
    if (queue.publishUsed()) this.#host?.interrupt(index);
  }

  /** Forgets a reset queue. */
  resetQueue(index: number): void {
    this.#queues[index] = null;
  }

  /** Takes a re-enabled queue. */
  enableQueue(index: number, queue: DeviceQueue): void {
    this.#queues[index] = queue;
  }

  /** Drops every queue. */
  reset(): void {
    this.#queues = [];
  }

  /** Changes the scratch word from the device side and tells the driver. */
  changeScratch(value: number): void {
    new DataView(this.config.buffer).setUint32(4, value, true);
    this.#host?.configChanged();
  }

  /** The config bytes. */
  saveState(): Record<string, unknown> {
    return { config: Array.from(this.config) };
  }

  /** Restores the config bytes. */
  restoreState(state: Record<string, unknown>): void {
    const config = state.config;
    if (!Array.isArray(config) || config.length !== 8) {
      throw new TypeError("Cannot restore the echo device: config must be 8 bytes");
    }
    this.config.set(config as number[]);
  }
}
