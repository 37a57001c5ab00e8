import type { Iommu, IommuFault } from "../../src/iommu/iommu.ts";
import { IommuMapFlag, IommuStatus } from "../../src/iommu/iommu_status.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import type { ActivateContext, VirtioDevice, VirtioDeviceHost } from "../../src/virtio/device.ts";
import { VirtioDeviceId } from "../../src/virtio/device_id.ts";
import { featureMask, hasFeature } from "../../src/virtio/features.ts";

/** virtio-iommu feature bits (virtio 1.x §5.13.3). */
export const VirtioIommuFeature = {
  /** input_range is valid. */
  INPUT_RANGE: 0,
  /** domain_range is valid. */
  DOMAIN_RANGE: 1,
  /** MAP and UNMAP requests are available. */
  MAP_UNMAP: 2,
  /** Legacy global bypass (not offered: superseded by BYPASS_CONFIG). */
  BYPASS: 3,
  /** PROBE requests are available. */
  PROBE: 4,
  /** The MMIO map flag is available. */
  MMIO: 5,
  /** The `bypass` config byte and ATTACH_F_BYPASS are available. */
  BYPASS_CONFIG: 6,
} as const;

/** Request types. */
export const IommuRequest = { ATTACH: 1, DETACH: 2, MAP: 3, UNMAP: 4, PROBE: 5 } as const;

/** Bytes of property space a PROBE request carries. */
export const PROBE_SIZE = 512;
/** Size of one fault event. */
export const FAULT_EVENT_SIZE = 24;
/** Fault events kept while the driver has posted no event buffer; more are dropped and counted. */
export const MAX_PENDING_FAULTS = 64;

const REQUEST_QUEUE = 0;
const EVENT_QUEUE = 1;
const TAIL = 4;
/** Readable bytes of each request type (head included). */
const REQUEST_LENGTH: Record<number, number> = { 1: 20, 2: 20, 3: 36, 4: 28, 5: 72 };
const ATTACH_F_BYPASS = 1;
const FAULT_F_ADDRESS = 1 << 8;

/** Counters of the virtio-iommu device. */
export interface VirtioIommuStats {
  /** Requests processed, by any status. */
  requests: number;
  /** MAP requests that succeeded. */
  maps: number;
  /** UNMAP requests that succeeded. */
  unmaps: number;
  /** Requests answered with a status other than OK. */
  errors: number;
  /** Fault events delivered to the driver. */
  faultEvents: number;
  /** Fault events dropped because no event buffer was posted and the pending list was full. */
  droppedFaultEvents: number;
}

/**
 * The virtio-iommu device (id 23): the guest's programming interface to a
 * vireo {@linkcode Iommu}. Requests on queue 0 (ATTACH, DETACH, MAP, UNMAP,
 * PROBE) run against the engine; translation faults are reported on queue 1.
 *
 * Like any device model it runs behind vireo's transports; a real Linux guest's
 * virtio-iommu driver can program it as is.
 */
export class VirtioIommu implements VirtioDevice {
  /** Device type 23. */
  readonly deviceId: number = VirtioDeviceId.IOMMU;
  /** INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE, MMIO and BYPASS_CONFIG. */
  readonly deviceFeatures: bigint = featureMask(
    VirtioIommuFeature.INPUT_RANGE,
    VirtioIommuFeature.DOMAIN_RANGE,
    VirtioIommuFeature.MAP_UNMAP,
    VirtioIommuFeature.PROBE,
    VirtioIommuFeature.MMIO,
    VirtioIommuFeature.BYPASS_CONFIG,
  );
  /** requestq and eventq. */
  readonly numQueues = 2;
  /** The 40-byte virtio_iommu_config. */
  readonly config: Uint8Array = new Uint8Array(40);
  /** The engine this device programs. */
  readonly iommu: Iommu;
  /** Request and event counters. */
  readonly stats: VirtioIommuStats = {
    requests: 0,
    maps: 0,
    unmaps: 0,
    errors: 0,
    faultEvents: 0,
    droppedFaultEvents: 0,
  };
  #host: VirtioDeviceHost | undefined;
  #queues: (DeviceQueue | null)[] = [];
  #features = 0n;
  #chain: DescriptorChain | undefined;
  readonly #pending: IommuFault[] = [];
  readonly #probe = new Uint8Array(PROBE_SIZE);
  readonly #event = new Uint8Array(FAULT_EVENT_SIZE);

  /** Creates the device for `iommu` and routes the engine's faults to the event queue. */
  constructor(iommu: Iommu) {
    this.iommu = iommu;
    const view = new DataView(this.config.buffer);
    view.setBigUint64(0, ~BigInt(iommu.granule - 1) & 0xffff_ffff_ffff_ffffn, true);
    view.setBigUint64(8, BigInt(iommu.inputRange[0]), true);
    view.setBigUint64(16, BigInt(iommu.inputRange[1]), true);
    view.setUint32(24, iommu.domainRange[0], true);
    view.setUint32(28, iommu.domainRange[1], true);
    view.setUint32(32, PROBE_SIZE, true);
    this.config[36] = iommu.bypass ? 1 : 0;
    iommu.onFault = (fault) => this.#onFault(fault);
  }

  /** Ring size limit of both queues. */
  queueMaxSize(_index: number): number {
    return 256;
  }

  /** See {@linkcode VirtioDevice.bind}. */
  bind(host: VirtioDeviceHost): void {
    this.#host = host;
  }

  /** Only the `bypass` byte (offset 36) is writable, and only 0 or 1 take effect. */
  writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      if (offset + i === 36 && data[i] <= 1) {
        this.config[36] = data[i];
        this.iommu.bypass = data[i] === 1;
      }
    }
  }

  /** Every offered subset is acceptable. */
  validateFeatures(_features: bigint): string | null {
    return null;
  }

  /** See {@linkcode VirtioDevice.activate}. */
  activate(context: ActivateContext): void {
    this.#features = context.features;
    this.#queues = [...context.queues];
    this.#chain = new DescriptorChain(context.dma, 256);
    this.#deliverFaults();
  }

  /** Processes the request queue, or delivers pending faults when event buffers arrive. */
  notify(index: number): void {
    if (index === EVENT_QUEUE) {
      this.#deliverFaults();
      return;
    }
    const queue = this.#queues[REQUEST_QUEUE];
    if (index !== REQUEST_QUEUE || !queue || !this.#chain) return;
    const chain = this.#chain;
    while (queue.pop(chain)) {
      queue.push(chain.token, this.#handle(chain));
    }
    if (queue.publishUsed()) this.#host?.interrupt(REQUEST_QUEUE);
  }

  /** See {@linkcode VirtioDevice.resetQueue}. */
  resetQueue(index: number): void {
    this.#queues[index] = null;
  }

  /** See {@linkcode VirtioDevice.enableQueue}. */
  enableQueue(index: number, queue: DeviceQueue): void {
    this.#queues[index] = queue;
  }

  /** Device reset: all domains go away; `bypass` keeps its value (it survives device reset). */
  reset(): void {
    this.#queues = [];
    this.#features = 0n;
    this.#pending.length = 0;
    this.iommu.reset();
  }

  /** The config bytes (bypass) as plain data. */
  saveState(): Record<string, unknown> {
    return { bypass: this.config[36] };
  }

  /** Restores {@linkcode VirtioIommu.saveState} output. */
  restoreState(state: Record<string, unknown>): void {
    if (state.bypass !== 0 && state.bypass !== 1) {
      throw new TypeError("Cannot restore virtio-iommu: bypass must be 0 or 1");
    }
    this.writeConfig(36, Uint8Array.of(state.bypass));
  }

  /** Runs one request; returns the used length (0 when the tail cannot be found). */
  #handle(chain: DescriptorChain): number {
    const r = chain.reader;
    const type = r.readU8();
    const need = REQUEST_LENGTH[type];
    const writable = chain.writableLength;
    if (writable < TAIL || type < 0) return 0;
    this.stats.requests++;
    if (need === undefined) return this.#finish(chain, IommuStatus.UNSUPP, 0);
    if (chain.readableLength < need) return 0;
    if (type === IommuRequest.PROBE && writable < PROBE_SIZE + TAIL) return 0;
    const reservedHead = r.readU8() | r.readU8() | r.readU8();
    let status: number = reservedHead === 0 ? IommuStatus.OK : IommuStatus.INVAL;
    let extra = 0;
    if (status === IommuStatus.OK) {
      switch (type) {
        case IommuRequest.ATTACH:
        case IommuRequest.DETACH:
          status = this.#attachOrDetach(type, chain);
          break;
        case IommuRequest.MAP:
          status = this.#map(chain);
          break;
        case IommuRequest.UNMAP:
          status = this.#unmap(chain);
          break;
        case IommuRequest.PROBE:
          status = this.#probeRequest(chain);
          extra = PROBE_SIZE;
          break;
      }
    }
    return this.#finish(chain, status, extra);
  }

  /** Writes the status tail as the last 4 writable bytes; returns the used length. */
  #finish(chain: DescriptorChain, status: number, written: number): number {
    if (status !== IommuStatus.OK) this.stats.errors++;
    const w = chain.writer;
    w.skip(chain.writableLength - TAIL - w.written);
    w.writeU32(status);
    return written + TAIL;
  }

  #attachOrDetach(type: number, chain: DescriptorChain): number {
    const r = chain.reader;
    const domain = r.readU32();
    const endpoint = r.readU32();
    const flags = r.readU32();
    const reserved = r.readU32();
    if (reserved !== 0) return IommuStatus.INVAL;
    if (type === IommuRequest.DETACH) {
      return flags !== 0 ? IommuStatus.INVAL : this.iommu.detach(endpoint, domain);
    }
    const bypassAllowed = hasFeature(this.#features, VirtioIommuFeature.BYPASS_CONFIG);
    if ((flags & ~ATTACH_F_BYPASS) !== 0 || (flags !== 0 && !bypassAllowed)) {
      return IommuStatus.INVAL;
    }
    return this.iommu.attach(endpoint, domain, flags === ATTACH_F_BYPASS);
  }

  #map(chain: DescriptorChain): number {
    const r = chain.reader;
    const domain = r.readU32();
    const start = toNumber(r.readU64());
    const end = toNumber(r.readU64());
    const phys = toNumber(r.readU64());
    const flags = r.readU32();
    if (
      (flags & IommuMapFlag.MMIO) !== 0 && !hasFeature(this.#features, VirtioIommuFeature.MMIO)
    ) {
      return IommuStatus.INVAL;
    }
    if (Number.isNaN(start + end + phys)) return IommuStatus.RANGE;
    const status = this.iommu.map(domain, start, end, phys, flags);
    if (status === IommuStatus.OK) this.stats.maps++;
    return status;
  }

  #unmap(chain: DescriptorChain): number {
    const r = chain.reader;
    const domain = r.readU32();
    const start = toNumber(r.readU64());
    const end = toNumber(r.readU64());
    if (r.readU32() !== 0) return IommuStatus.INVAL;
    if (Number.isNaN(start + end)) return IommuStatus.RANGE;
    const status = this.iommu.unmap(domain, start, end);
    if (status === IommuStatus.OK) this.stats.unmaps++;
    return status;
  }

  /** Writes RESV_MEM properties for the endpoint into the first PROBE_SIZE writable bytes. */
  #probeRequest(chain: DescriptorChain): number {
    const endpoint = chain.reader.readU32();
    const regions = this.iommu.probe(endpoint);
    const out = this.#probe;
    out.fill(0);
    if (regions === null) {
      chain.writer.write(out);
      return IommuStatus.NOENT;
    }
    const view = new DataView(out.buffer);
    let pos = 0;
    for (const region of regions) {
      if (pos + 24 + 4 > PROBE_SIZE) break; // keep room for the terminating NONE property
      view.setUint16(pos, 1, true); // RESV_MEM
      view.setUint16(pos + 2, 20, true);
      out[pos + 4] = region.subtype;
      view.setBigUint64(pos + 8, BigInt(region.start), true);
      view.setBigUint64(pos + 16, BigInt(region.end), true);
      pos += 24;
    }
    chain.writer.write(out);
    return IommuStatus.OK;
  }

  #onFault(fault: IommuFault): void {
    if (this.#pending.length >= MAX_PENDING_FAULTS) {
      this.stats.droppedFaultEvents++;
      return;
    }
    this.#pending.push(fault);
    // Deliver later, outside the faulting device's DMA path.
    queueMicrotask(() => this.#deliverFaults());
  }

  #deliverFaults(): void {
    const queue = this.#queues[EVENT_QUEUE];
    const chain = this.#chain;
    if (!queue || !chain || this.#pending.length === 0) return;
    const ev = this.#event;
    const view = new DataView(ev.buffer);
    let delivered = false;
    try {
      while (this.#pending.length > 0 && queue.pop(chain)) {
        const fault = this.#pending.shift()!;
        ev.fill(0);
        ev[0] = fault.reason;
        view.setUint32(4, fault.access | FAULT_F_ADDRESS, true);
        view.setUint32(8, fault.endpoint, true);
        view.setBigUint64(
          16,
          BigInt(Number.isSafeInteger(fault.address) ? fault.address : 0),
          true,
        );
        queue.push(chain.token, chain.writer.write(ev));
        this.stats.faultEvents++;
        delivered = true;
      }
      if (delivered && queue.publishUsed()) this.#host?.interrupt(EVENT_QUEUE);
    } catch (e) {
      // A broken event ring breaks the device, not the faulting device's DMA.
      this.#host?.fail(e instanceof Error ? e.message : String(e));
    }
  }
}

function toNumber(value: bigint): number {
  return value >= 0n && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : NaN;
}
