/**
 * A tiny device for transport tests: each chain's readable bytes are copied to
 * its writable part. Config space is 8 bytes: a read-only le32 "magic" and a
 * writable le32 "scratch". Device feature bit 0 is offered; bit 1 is offered
 * but refused at FEATURES_OK, to exercise the re-check.
 */
import type { DmaSpace } from "../../src/dma/dma_space.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import type { ActivateContext, VirtioDevice, VirtioDeviceHost } from "../../src/virtio/device.ts";
import { featureMask, hasFeature } from "../../src/virtio/features.ts";

export const ECHO_DEVICE_ID = 0x3f;
export const ECHO_MAGIC = 0xec40ec40;
/** Offered, accepted. */
export const ECHO_F_GOOD = 0;
/** Offered, but refused when accepted. */
export const ECHO_F_REFUSED = 1;

export class EchoDevice implements VirtioDevice {
  readonly deviceId = ECHO_DEVICE_ID;
  readonly deviceFeatures: bigint = featureMask(ECHO_F_GOOD, ECHO_F_REFUSED);
  readonly numQueues: number;
  readonly config = new Uint8Array(8);
  host: VirtioDeviceHost | undefined;
  activations: ActivateContext[] = [];
  queues: (DeviceQueue | null)[] = [];
  dma: DmaSpace | undefined;
  notifies: number[] = [];
  resets = 0;
  queueResets: number[] = [];
  /** Total chains echoed. */
  echoed = 0;
  #chain: DescriptorChain | undefined;

  constructor(numQueues = 2, readonly maxSize = 256) {
    this.numQueues = numQueues;
    new DataView(this.config.buffer).setUint32(0, ECHO_MAGIC, true);
  }

  queueMaxSize(_index: number): number {
    return this.maxSize;
  }
  bind(host: VirtioDeviceHost): void {
    this.host = host;
  }
  writeConfig(offset: number, data: Uint8Array): void {
    // Only the scratch word is writable.
    for (let i = 0; i < data.length; i++) {
      if (offset + i >= 4 && offset + i < 8) this.config[offset + i] = data[i];
    }
  }
  validateFeatures(features: bigint): string | null {
    return hasFeature(features, ECHO_F_REFUSED) ? "echo refuses feature 1" : null;
  }
  activate(context: ActivateContext): void {
    this.activations.push(context);
    this.queues = [...context.queues];
    this.dma = context.dma;
    this.#chain = new DescriptorChain(context.dma, 1024);
  }
  notify(index: number): void {
    this.notifies.push(index);
    const queue = this.queues[index];
    if (!queue || !this.#chain) return;
    const chain = this.#chain;
    while (queue.pop(chain)) {
      const n = chain.reader.copyTo(chain.writer, chain.readableLength);
      queue.push(chain.token, n);
      this.echoed++;
    }
    if (queue.publishUsed()) this.host!.interrupt(index);
  }
  resetQueue(index: number): void {
    this.queueResets.push(index);
    this.queues[index] = null;
  }
  enableQueue(index: number, queue: DeviceQueue): void {
    this.queues[index] = queue;
  }
  reset(): void {
    this.resets++;
    this.queues = [];
  }
  /** Changes the scratch word from the device side and tells the driver. */
  changeConfig(value: number): void {
    new DataView(this.config.buffer).setUint32(4, value, true);
    this.host!.configChanged();
  }
  saveState(): Record<string, unknown> {
    return { config: Array.from(this.config) };
  }
  restoreState(state: Record<string, unknown>): void {
    if (!Array.isArray(state.config) || state.config.length !== 8) {
      throw new TypeError("Cannot restore the echo device: config must be 8 bytes");
    }
    this.config.set(state.config as number[]);
  }
}
