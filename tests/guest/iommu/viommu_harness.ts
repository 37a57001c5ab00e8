/**
 * Test fixtures for the guest virtio-iommu driver and dma-iommu: a loopback
 * guest transport that activates a device model directly with device queues
 * on the guest rings (no register model in between), and a small machine
 * with a virtio-iommu device, its translation engine and endpoints.
 */
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import type { DmaSpace } from "../../../src/dma/dma_space.ts";
import { GuestFault } from "../../../src/guest_fault.ts";
import { Iommu, type IommuOptions } from "../../../src/iommu/iommu.ts";
import type { IommuDmaSpace } from "../../../src/iommu/iommu_dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { createDeviceQueue } from "../../../src/queue/create_device_queue.ts";
import type { VirtioDevice } from "../../../src/virtio/device.ts";
import { featureMask, hasFeature, VirtioFeature } from "../../../src/virtio/features.ts";
import { DeviceStatus } from "../../../src/virtio/status.ts";
import { PageAllocator } from "../../../src/guest/page_allocator.ts";
import type { DmaApi } from "../../../src/guest/dma/dma_api.ts";
import {
  GuestErrno,
  VirtioGuestDeviceBase,
  type VirtioGuestDeviceOptions,
  type VirtqueueSpec,
} from "../../../src/guest/virtio/virtio_guest_device.ts";
import type { Virtqueue } from "../../../src/guest/virtio/virtqueue.ts";
import { VirtioIommu } from "../../../devices/iommu/virtio_iommu.ts";
import {
  VirtioIommuDriver,
  type VirtioIommuDriverOptions,
} from "../../../src/guest/iommu/virtio_iommu_driver.ts";

/** Transport bits the loopback offers by default: split rings with event idx and indirect. */
export const LOOPBACK_FEATURES: bigint = featureMask(
  VirtioFeature.VERSION_1,
  VirtioFeature.EVENT_IDX,
  VirtioFeature.INDIRECT_DESC,
);

/**
 * A guest transport driver without registers: `findVqs` creates driver
 * queues, DRIVER_OK activates the device with device queues over `space` at
 * the same ring addresses, a kick calls `device.notify`, a device interrupt
 * calls the queue's `interrupt`. A `GuestFault` escaping the device marks
 * NEEDS_RESET, as a transport does.
 */
export class LoopbackGuestDevice extends VirtioGuestDeviceBase {
  readonly transport = "loopback";
  /** Reasons the device failed (host.fail or a GuestFault from notify). */
  readonly failures: string[] = [];
  /** Faults that escaped device.notify. */
  readonly escaped: GuestFault[] = [];
  /** Doorbells rung, by queue. */
  readonly notifies: number[] = [];
  /** While true, doorbells wait (a slow device); {@linkcode LoopbackGuestDevice.release} rings them. */
  hold = false;
  readonly #held: number[] = [];
  #status = 0;
  #gen = 0;
  #vqs: Virtqueue<unknown>[] = [];

  constructor(
    readonly device: VirtioDevice,
    options: VirtioGuestDeviceOptions,
    readonly space: DmaSpace,
    readonly transportBits: bigint = LOOPBACK_FEATURES,
  ) {
    super(options, {
      deviceId: device.deviceId,
      vendorId: 0x1af4,
      name: options.name ?? "loopback",
    });
    device.bind({
      interrupt: (q) => {
        if (this.#status & DeviceStatus.DRIVER_OK) this.#vqs[q]?.interrupt();
      },
      configChanged: () => {
        this.#gen++;
        this.configChanged();
      },
      fail: (reason) => this.#fail(reason),
    });
  }

  getStatus(): number {
    return this.#status;
  }
  protected setStatus(status: number): void {
    const was = this.#status;
    if ((status & DeviceStatus.FEATURES_OK) && !(was & DeviceStatus.FEATURES_OK)) {
      if (this.device.validateFeatures(this.features) !== null) status &= ~DeviceStatus.FEATURES_OK;
    }
    this.#status = status;
    if ((status & DeviceStatus.DRIVER_OK) && !(was & DeviceStatus.DRIVER_OK)) this.#activate();
  }
  protected getFeatures(): bigint {
    return this.device.deviceFeatures | this.transportBits;
  }
  protected finalizeFeatures(features: bigint): bigint {
    return features;
  }
  protected get(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (this.device.config[offset + i] ?? 0);
    return v;
  }
  protected set(offset: number, size: number, value: number): void {
    const b = new Uint8Array(size);
    for (let i = 0; i < size; i++) b[i] = (value >>> (8 * i)) & 0xff;
    this.device.writeConfig(offset, b);
  }
  configGeneration(): number {
    return this.#gen;
  }
  protected findVqs<T>(specs: readonly VirtqueueSpec<T>[]): Virtqueue<T>[] {
    const out: Virtqueue<T>[] = [];
    for (let i = 0; i < specs.length; i++) {
      const vq = this.createVq<T>(
        i,
        this.device.queueMaxSize(i),
        specs[i],
        () => this.#notify(i),
        64,
      );
      if (vq === null) {
        for (const q of out) q.destroy();
        throw this.error(-GuestErrno.ENOMEM, `no memory for queue ${i}`);
      }
      out.push(vq);
    }
    this.#vqs = out as unknown as Virtqueue<unknown>[];
    return out;
  }
  protected delVqs(): void {
    for (const vq of this.#vqs) vq.destroy();
    this.#vqs = [];
  }
  protected resetDevice(): void {
    this.device.reset();
    this.#status = 0;
  }

  #notify(index: number): boolean {
    this.notifies.push(index);
    if (this.hold) {
      this.#held.push(index);
      return true;
    }
    if (
      !(this.#status & DeviceStatus.DRIVER_OK) || (this.#status & DeviceStatus.DEVICE_NEEDS_RESET)
    ) {
      return true;
    }
    try {
      this.device.notify(index);
    } catch (e) {
      if (!(e instanceof GuestFault)) throw e;
      this.escaped.push(e);
      this.#fail(e.message);
    }
    return true;
  }

  /** Stops holding and delivers the held doorbells. */
  release(): void {
    this.hold = false;
    for (const index of this.#held.splice(0)) this.#notify(index);
  }

  #fail(reason: string): void {
    this.failures.push(reason);
    this.#status |= DeviceStatus.DEVICE_NEEDS_RESET;
  }

  #activate(): void {
    const packed = hasFeature(this.features, VirtioFeature.RING_PACKED);
    const queues = this.#vqs.map((vq) =>
      createDeviceQueue(
        {
          index: vq.index,
          size: vq.size,
          descAddr: vq.descAddr,
          driverAddr: vq.driverAddr,
          deviceAddr: vq.deviceAddr,
          eventIdx: vq.eventIdx,
          indirect: vq.indirect,
          inOrder: vq.inOrder,
        },
        this.space,
        packed,
      )
    );
    this.device.activate({ features: this.features, queues, dma: this.space });
  }
}

/** A guest with a virtio-iommu device and endpoints 8 and 16. */
export interface ViommuMachine {
  memory: GuestMemory;
  pages: PageAllocator;
  iommu: Iommu;
  device: VirtioIommu;
  vdev: LoopbackGuestDevice;
  viommu: VirtioIommuDriver;
  /** Endpoint 8's DMA space (what a device behind the IOMMU uses). */
  ep8: IommuDmaSpace;
  /** Endpoint 16's DMA space. */
  ep16: IommuDmaSpace;
}

/** Options of {@linkcode makeViommuMachine}. */
export interface ViommuMachineOptions {
  iommu?: Partial<IommuOptions>;
  driver?: VirtioIommuDriverOptions;
  transportBits?: bigint;
  /** Guest RAM bytes (default 16 MiB); pages are managed from 1 MiB up. */
  ram?: number;
}

/** Builds the guest, the IOMMU engine and device, and probes the driver. */
export function makeViommuMachine(options: ViommuMachineOptions = {}): ViommuMachine {
  const ram = options.ram ?? 16 << 20;
  const memory = new GuestMemory([{ base: 0, size: ram }]);
  const pages = new PageAllocator(memory, { base: 0x10_0000, size: ram - 0x10_0000 });
  const iommu = new Iommu({ memory, ...options.iommu });
  const ep8 = iommu.addEndpoint(8);
  const ep16 = iommu.addEndpoint(16);
  const device = new VirtioIommu(iommu);
  const vdev = new LoopbackGuestDevice(
    device,
    { pages, name: "viommu" },
    new DirectDmaSpace(memory),
    options.transportBits,
  );
  const viommu = VirtioIommuDriver.probe(vdev, options.driver);
  return { memory, pages, iommu, device, vdev, viommu, ep8, ep16 };
}

/** Lets queued microtasks (fault event delivery) run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

/**
 * Puts `device` behind the IOMMU as endpoint `ep` of `m`: a loopback guest
 * device with ACCESS_PLATFORM whose DMA goes through the endpoint's IOMMU
 * space, and whose guest queues map through `dma`. Negotiates, sets up
 * `queues` queues and sets DRIVER_OK.
 */
export function behindIommu<T>(
  m: ViommuMachine,
  device: VirtioDevice,
  space: DmaSpace,
  dma: DmaApi,
  queues = 1,
  indirect = true,
): { vdev: LoopbackGuestDevice; vqs: Virtqueue<T>[] } {
  let bits = LOOPBACK_FEATURES | featureMask(VirtioFeature.ACCESS_PLATFORM);
  if (!indirect) bits &= ~featureMask(VirtioFeature.INDIRECT_DESC);
  const vdev = new LoopbackGuestDevice(
    device,
    { pages: m.pages, dma, name: "endpoint" },
    space,
    bits,
  );
  vdev.negotiate(0n); // no device bits; the offered transport bits are kept
  const vqs = vdev.setupQueues<T>(Array.from({ length: queues }, (_, i) => ({ name: `q${i}` })));
  vdev.setDriverOk();
  return { vdev, vqs };
}
