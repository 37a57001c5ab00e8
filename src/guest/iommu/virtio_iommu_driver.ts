/**
 * The guest's virtio-iommu driver: a model of Linux's
 * `drivers/iommu/virtio-iommu.c`, talking to a virtio-iommu device (id 23)
 * only through its virtqueues, config space, kicks and interrupts.
 *
 * It probes the device, PROBEs each endpoint for its reserved regions,
 * attaches endpoints to domains, and gives dma-iommu paging domains whose
 * map and unmap only QUEUE MAP/UNMAP requests; the requests reach the device
 * when a sync point kicks the request queue (`iotlb_sync_map`, `iotlb_sync`,
 * `flush_iotlb_all`), and their status is never read, as in Linux. ATTACH,
 * DETACH, PROBE and mapping replays are synchronous. Fault events from the
 * event queue are logged.
 *
 * @module
 */
import { IommuFaultReason, IommuMapFlag, IommuStatus } from "../../iommu/iommu_status.ts";
import { featureMask, VirtioFeature } from "../../virtio/features.ts";
import { DmaDirect } from "../dma/dma_direct.ts";
import {
  DmaIommu,
  type IommuDomainGeometry,
  type IommuDomainType,
  IommuErrno,
  type IommuPagingDomain,
  IommuProt,
  type IotlbGather,
  type IovaReservedRegion,
} from "../dma/dma_iommu.ts";
import { VirtioDriverError, type VirtioGuestDevice } from "../virtio/virtio_guest_device.ts";
import type { Virtqueue } from "../virtio/virtqueue.ts";

// ---- uapi (include/uapi/linux/virtio_iommu.h) -------------------------------

/** virtio-iommu feature bits (`VIRTIO_IOMMU_F_*`). */
export const ViommuFeature = {
  /** input_range is valid. */
  INPUT_RANGE: 0,
  /** domain_range is valid. */
  DOMAIN_RANGE: 1,
  /** MAP and UNMAP are available (required by the driver). */
  MAP_UNMAP: 2,
  /** Legacy bypass (not accepted by the driver). */
  BYPASS: 3,
  /** PROBE is available. */
  PROBE: 4,
  /** The MMIO map flag is available. */
  MMIO: 5,
  /** The bypass config byte and ATTACH_F_BYPASS are available. */
  BYPASS_CONFIG: 6,
} as const;

/** virtio-iommu request types (`VIRTIO_IOMMU_T_*`). */
export const ViommuRequestType = {
  /** Attach an endpoint to a domain. */
  ATTACH: 1,
  /** Detach an endpoint from a domain. */
  DETACH: 2,
  /** Map a range. */
  MAP: 3,
  /** Unmap a range. */
  UNMAP: 4,
  /** Read an endpoint's properties. */
  PROBE: 5,
} as const;

/** The feature bits Linux's driver accepts (its `feature_table`), without the transport bits. */
export const VIOMMU_DRIVER_FEATURES: readonly number[] = Object.freeze([
  ViommuFeature.MAP_UNMAP,
  ViommuFeature.INPUT_RANGE,
  ViommuFeature.DOMAIN_RANGE,
  ViommuFeature.PROBE,
  ViommuFeature.MMIO,
  ViommuFeature.BYPASS_CONFIG,
]);

/** The software MSI window the driver reports when the device gives no MSI region (`MSI_IOVA_BASE`). */
export const VIOMMU_SW_MSI_BASE = 0x0800_0000;
/** Length of the software MSI window (`MSI_IOVA_LENGTH`). */
export const VIOMMU_SW_MSI_LENGTH = 0x10_0000;
/** Size of one fault event buffer (`struct viommu_event`). */
export const VIOMMU_EVENT_SIZE = 24;
/** Most fault records and log lines the driver keeps (older ones are dropped). */
export const VIOMMU_MAX_LOG = 64;

const TAIL = 4;
const ATTACH_F_BYPASS = 1;
const PROBE_T_NONE = 0;
const PROBE_T_RESV_MEM = 1;
const PROBE_T_MASK = 0xfff;
const RESV_MEM_T_RESERVED = 0;
const RESV_MEM_T_MSI = 1;
const FAULT_F_ADDRESS = 1 << 8;
const FAULT_RESV_MASK = 0xffff_ff00;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** One reserved IOVA region of an endpoint (`struct iommu_resv_region`). */
export interface ViommuResvRegion {
  /** First IOVA. */
  start: number;
  /** Last IOVA (inclusive). */
  end: number;
  /**
   * `reserved` (never map), `msi` (the device's MSI doorbell, never map) or
   * `sw-msi` (the driver's own MSI window, reported when the device gives no
   * MSI region; iommu-dma does not reserve it in DMA domains).
   */
  type: "reserved" | "msi" | "sw-msi";
}

/** One fault event the driver received (`struct virtio_iommu_fault`). */
export interface ViommuFaultRecord {
  /** `IommuFaultReason`: 0 unknown, 1 domain (not attached), 2 mapping. */
  reason: number;
  /** The flags word: READ 1, WRITE 2, EXEC 4, ADDRESS 0x100. */
  flags: number;
  /** The faulting endpoint. */
  endpoint: number;
  /** The faulting IOVA, or `null` when the ADDRESS flag is clear or it is at or above 2^53. */
  address: number | null;
}

/** Counters of the driver. */
export interface ViommuDriverStats {
  /** Requests added to the request queue, by any path. */
  requests: number;
  /** ATTACH requests. */
  attach: number;
  /** DETACH requests. */
  detach: number;
  /** MAP requests (queued or replayed). */
  map: number;
  /** UNMAP requests. */
  unmap: number;
  /** PROBE requests. */
  probe: number;
  /** Request queue kicks (`virtqueue_kick` calls). */
  kicks: number;
  /** Completions taken from the request queue. */
  completed: number;
  /** Queued MAP/UNMAP requests the device answered with an error the driver never reads. */
  unseenErrors: number;
  /** Syncs that gave up because the device did not answer after the kick. */
  timeouts: number;
  /** Fault events received. */
  faultEvents: number;
}

/** Options of {@linkcode VirtioIommuDriver.probe}. */
export interface VirtioIommuDriverOptions {
  /**
   * The virtio-iommu feature bits to accept when offered; default
   * {@linkcode VIOMMU_DRIVER_FEATURES}. Tests remove bits to exercise paths.
   */
  features?: readonly number[];
}

/** How {@linkcode VirtioIommuDriver.setupDma} sets up one device. */
export interface ViommuSetupOptions {
  /** `"paging"` (default): a DMA domain with dma-iommu; `"identity"`: passthrough, dma-direct. */
  domainType?: IommuDomainType;
  /** Strict invalidation (default true); false: lazy, with a flush queue. */
  strict?: boolean;
  /** The device is a PCI device (32-bit IOVAs first). Default true. */
  pci?: boolean;
  /** Skip the 32-bit-first policy (`iommu.forcedac=1`). */
  forceDac?: boolean;
  /** Streaming DMA mask (default 2^53 - 1). */
  mask?: number;
  /** Coherent DMA mask (default `mask`). */
  coherentMask?: number;
  /** More IOVA to keep out of the allocator, e.g. host-bridge windows. */
  reservedRegions?: readonly IovaReservedRegion[];
  /** Flush-queue timer (lazy mode); see `DmaIommuOptions.setTimer`. */
  setTimer?: (callback: () => void, ms: number) => void;
  /** Flush queue size (lazy mode); default 256. */
  fqSize?: number;
  /** A name for diagnostics. */
  name?: string;
}

/** A request in flight (`struct viommu_request`). */
interface ViommuRequest {
  /** Guest physical address of the request buffer (kmalloc'ed). */
  addr: number;
  /** Bytes of the whole request (readable part and writable part). */
  len: number;
  /** Where the device-writable part starts. */
  writeOffset: number;
  /** Request type. */
  type: number;
  /** The caller waits for the status (synchronous requests). */
  writeback: boolean;
  /** Completed by the device. */
  done: boolean;
  /** The status, once completed (IOERR when the device returned a bad length). */
  status: number;
  /** The writable part, copied back for synchronous requests. */
  result: Uint8Array | null;
}

/** One endpoint the driver manages (`struct viommu_endpoint`). */
export class ViommuEndpoint {
  /** The endpoint id (PCI requester id: bus << 8 | devfn). */
  readonly id: number;
  /** Reserved regions from PROBE, sorted by start. */
  readonly resvRegions: ViommuResvRegion[] = [];
  /** The domain it is attached to, or `null`. */
  domain: ViommuDomain | null = null;

  /** Created by {@linkcode VirtioIommuDriver.probeDevice}. */
  constructor(id: number) {
    this.id = id;
  }
}

/**
 * The driver's shadow of one domain's mappings (`mappings`, an interval tree
 * in Linux): sorted by start, overlaps allowed (a guest bug Linux does not
 * prevent either).
 */
class MappingTree {
  readonly start: number[] = [];
  readonly last: number[] = [];
  readonly paddr: number[] = [];
  readonly flags: number[] = [];
  #maxLength = 0;

  get size(): number {
    return this.start.length;
  }

  /** `viommu_add_mapping`. */
  insert(start: number, last: number, paddr: number, flags: number): void {
    const i = this.#firstStartAbove(start);
    this.start.splice(i, 0, start);
    this.last.splice(i, 0, last);
    this.paddr.splice(i, 0, paddr);
    this.flags.splice(i, 0, flags);
    if (last - start + 1 > this.#maxLength) this.#maxLength = last - start + 1;
  }

  /**
   * `viommu_del_mappings`: removes every mapping starting inside
   * `[iova, end]` unless the first mapping overlapping the range starts
   * before `iova` (a split); returns the bytes removed.
   */
  deleteRange(iova: number, end: number): number {
    if (this.#firstOverlapStartsBefore(iova)) return 0;
    const from = this.#firstStartAtOrAbove(iova);
    let to = from;
    let removed = 0;
    while (to < this.start.length && this.start[to] <= end) {
      removed += this.last[to] - this.start[to] + 1;
      to++;
    }
    if (to > from) {
      const n = to - from;
      this.start.splice(from, n);
      this.last.splice(from, n);
      this.paddr.splice(from, n);
      this.flags.splice(from, n);
    }
    return removed;
  }

  /** The first (lowest-start) mapping containing `iova`, or -1. */
  find(iova: number): number {
    const i = this.#firstStartAbove(iova) - 1;
    for (let j = i; j >= 0 && this.start[j] > iova - this.#maxLength; j--) {
      if (this.last[j] >= iova) {
        // Prefer the lowest start among overlapping ones.
        let k = j;
        for (let m = j - 1; m >= 0 && this.start[m] > iova - this.#maxLength; m--) {
          if (this.last[m] >= iova) k = m;
        }
        return k;
      }
    }
    return -1;
  }

  clear(): void {
    this.start.length = 0;
    this.last.length = 0;
    this.paddr.length = 0;
    this.flags.length = 0;
    this.#maxLength = 0;
  }

  #firstOverlapStartsBefore(iova: number): boolean {
    const i = this.#firstStartAtOrAbove(iova);
    for (let j = i - 1; j >= 0 && this.start[j] > iova - this.#maxLength; j--) {
      if (this.last[j] >= iova) return true;
    }
    return false;
  }

  #firstStartAtOrAbove(v: number): number {
    let a = 0;
    let b = this.start.length;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (this.start[mid] < v) a = mid + 1;
      else b = mid;
    }
    return a;
  }

  #firstStartAbove(v: number): number {
    let a = 0;
    let b = this.start.length;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (this.start[mid] <= v) a = mid + 1;
      else b = mid;
    }
    return a;
  }
}

/**
 * One domain of the virtio-iommu driver (`struct viommu_domain`): the paging
 * domain dma-iommu maps through. Map and unmap update the shadow mappings
 * and only queue MAP/UNMAP requests; the sync hooks kick the request queue
 * and wait.
 */
export class ViommuDomain implements IommuPagingDomain {
  /** Paging or identity. */
  readonly type: IommuDomainType;
  /** The driver, once the domain is finalised by its first attach. */
  viommu: VirtioIommuDriver | null = null;
  /** The domain id, once finalised (-1 before). */
  id: number = -1;
  /** Supported page sizes, ascending (from `page_size_mask`). */
  pageSizes: readonly number[] = [];
  /** The aperture (from `input_range`). */
  geometry: IommuDomainGeometry = { apertureStart: 0, apertureEnd: MAX_SAFE, forceAperture: true };
  /** True: the driver flushes lazily (`flush_iotlb_all`, since Linux 6.8). */
  readonly deferredFlush: boolean = true;
  /** Endpoints attached (`nr_endpoints`). */
  nrEndpoints: number = 0;
  /** An identity domain using ATTACH_F_BYPASS. */
  bypass: boolean = false;
  /** Allowed MAP flags (`map_flags`). */
  mapFlags: number = 0;
  readonly #mappings = new MappingTree();

  /** Created by {@linkcode VirtioIommuDriver.allocDomain}. */
  constructor(type: IommuDomainType) {
    this.type = type;
  }

  /** Mappings in the shadow. */
  get mappingCount(): number {
    return this.#mappings.size;
  }

  /** A copy of the shadow mappings, ascending: `[start, last, paddr, flags]`. */
  mappings(): [number, number, number, number][] {
    const m = this.#mappings;
    return m.start.map((s, i) => [s, m.last[i], m.paddr[i], m.flags[i]]);
  }

  /** Queues a MAP (`viommu_map_pages`); returns the bytes mapped or a negative errno. */
  mapPages(iova: number, paddr: number, pgsize: number, pgcount: number, prot: number): number {
    const size = pgsize * pgcount;
    const end = iova + size - 1;
    const flags = (prot & IommuProt.READ ? IommuMapFlag.READ : 0) |
      (prot & IommuProt.WRITE ? IommuMapFlag.WRITE : 0) |
      (prot & IommuProt.MMIO ? IommuMapFlag.MMIO : 0);
    if ((flags & ~this.mapFlags) !== 0) return -IommuErrno.EINVAL;
    this.#mappings.insert(iova, end, paddr, flags);
    if (this.nrEndpoints > 0 && this.viommu !== null) {
      const ret = this.viommu.addMap(this.id, iova, end, paddr, flags, false);
      if (ret !== 0) {
        this.#mappings.deleteRange(iova, end);
        return ret;
      }
    }
    return size;
  }

  /**
   * Removes whole shadow mappings and queues one UNMAP over them
   * (`viommu_unmap_pages`); returns the bytes unmapped, 0 when a mapping
   * would be split or part of the range is not mapped.
   */
  unmapPages(iova: number, pgsize: number, pgcount: number, _gather: IotlbGather): number {
    const size = pgsize * pgcount;
    const unmapped = this.#mappings.deleteRange(iova, iova + size - 1);
    if (unmapped < size) return 0;
    if (this.nrEndpoints === 0 || this.viommu === null) return unmapped;
    return this.viommu.addUnmap(this.id, iova, iova + unmapped - 1) === 0 ? unmapped : 0;
  }

  /** Sends the queued requests and waits (`viommu_iotlb_sync`). */
  iotlbSync(_gather: IotlbGather): void {
    this.viommu?.syncReq();
  }

  /** Sends the queued MAPs and waits (`viommu_iotlb_sync_map`); 0 when nothing is attached. */
  iotlbSyncMap(_iova: number, _size: number): number {
    if (this.nrEndpoints === 0 || this.viommu === null) return 0;
    return this.viommu.syncReq();
  }

  /** Sends every queued request and waits (`viommu_flush_iotlb_all`). */
  flushIotlbAll(): void {
    this.viommu?.syncReq();
  }

  /** The shadow's translation of `iova` (`viommu_iova_to_phys`), or `null`. */
  iovaToPhys(iova: number): number | null {
    const i = this.#mappings.find(iova);
    return i < 0 ? null : this.#mappings.paddr[i] + (iova - this.#mappings.start[i]);
  }

  /** Adds an identity mapping to the shadow only (`viommu_add_mapping`). */
  addShadow(start: number, last: number, paddr: number, flags: number): void {
    this.#mappings.insert(start, last, paddr, flags);
  }

  /** The shadow mappings, for replay. */
  get shadow(): MappingTreeView {
    return this.#mappings;
  }

  /** Drops every shadow mapping (`viommu_domain_free`). */
  clearShadow(): void {
    this.#mappings.clear();
  }
}

/** Read-only access to a domain's shadow mappings. */
export interface MappingTreeView {
  /** Mapping starts, ascending. */
  readonly start: readonly number[];
  /** Mapping ends (inclusive). */
  readonly last: readonly number[];
  /** Mapping targets. */
  readonly paddr: readonly number[];
  /** Mapping flags. */
  readonly flags: readonly number[];
}

/**
 * The virtio-iommu driver for one virtio-iommu device (`struct viommu_dev`).
 *
 * @example
 * ```ts ignore
 * // `vdev` is the VirtioGuestDevice a transport driver found for device id 23.
 * const viommu = VirtioIommuDriver.probe(vdev);
 * const dma = viommu.setupDma(0x08, { strict: true }); // PROBE, ATTACH: the device's DmaApi
 * const iova = dma.mapPage(0x12000, 1500, DmaDirection.TO_DEVICE); // MAP + kick
 * ```
 */
export class VirtioIommuDriver {
  /** The virtio device. */
  readonly vdev: VirtioGuestDevice;
  /** `page_size_mask` as read. */
  readonly pageSizeMask: bigint;
  /** Supported page sizes below 2^53, ascending (`pgsize_bitmap`). */
  readonly pageSizes: readonly number[];
  /** The aperture from `input_range`. */
  readonly geometry: IommuDomainGeometry;
  /** First domain id (`domain_range.start`, default 0). */
  readonly firstDomain: number;
  /** Last domain id (`domain_range.end`, default 2^32 - 1). */
  readonly lastDomain: number;
  /** Allowed MAP flags: READ, WRITE, and MMIO with F_MMIO. */
  readonly mapFlags: number;
  /** Bytes of properties per PROBE (0 without F_PROBE). */
  readonly probeSize: number;
  /** Counters. */
  readonly stats: ViommuDriverStats = {
    requests: 0,
    attach: 0,
    detach: 0,
    map: 0,
    unmap: 0,
    probe: 0,
    kicks: 0,
    completed: 0,
    unseenErrors: 0,
    timeouts: 0,
    faultEvents: 0,
  };
  /** The last fault events (bounded, oldest dropped). */
  readonly faults: ViommuFaultRecord[] = [];
  /** The driver's log lines (`dev_err`, `dev_warn`, `dev_info`; bounded). */
  readonly log: string[] = [];
  /** Endpoints probed, by id. */
  readonly endpoints: Map<number, ViommuEndpoint> = new Map();
  readonly #requestVq: Virtqueue<ViommuRequest>;
  readonly #eventVq: Virtqueue<number>;
  /** Requests added and not yet completed (`viommu->requests`). */
  readonly #pending = new Set<ViommuRequest>();
  readonly #domainIds = new Set<number>();
  #events = 0;
  #eventBytes = 0;
  #removed = false;

  private constructor(
    vdev: VirtioGuestDevice,
    vqs: [Virtqueue<ViommuRequest>, Virtqueue<number>],
    config: {
      pageSizeMask: bigint;
      pageSizes: number[];
      geometry: IommuDomainGeometry;
      firstDomain: number;
      lastDomain: number;
      mapFlags: number;
      probeSize: number;
    },
  ) {
    this.vdev = vdev;
    this.#requestVq = vqs[0];
    this.#eventVq = vqs[1];
    this.pageSizeMask = config.pageSizeMask;
    this.pageSizes = config.pageSizes;
    this.geometry = config.geometry;
    this.firstDomain = config.firstDomain;
    this.lastDomain = config.lastDomain;
    this.mapFlags = config.mapFlags;
    this.probeSize = config.probeSize;
  }

  /**
   * Negotiates features, sets up the request and event queues, reads the
   * config, sets DRIVER_OK and fills the event queue. Models
   * `virtio_dev_probe` + `viommu_probe`.
   *
   * @throws {VirtioDriverError} `-ENODEV` without VERSION_1 or MAP_UNMAP,
   * `-EINVAL` for an empty page size mask, `-ENOMEM` without memory for event
   * buffers; the device is left with FAILED set
   */
  static probe(vdev: VirtioGuestDevice, options: VirtioIommuDriverOptions = {}): VirtioIommuDriver {
    const table = options.features ?? VIOMMU_DRIVER_FEATURES;
    vdev.negotiate(featureMask(...table, VirtioFeature.VERSION_1));
    const fail = (errno: number, message: string): VirtioDriverError => {
      vdev.fail();
      return new VirtioDriverError(errno, `${vdev.name}: ${message}`);
    };
    if (!vdev.hasFeature(VirtioFeature.VERSION_1) || !vdev.hasFeature(ViommuFeature.MAP_UNMAP)) {
      throw fail(-IommuErrno.ENODEV, "virtio-iommu needs VERSION_1 and MAP_UNMAP");
    }
    let driver: VirtioIommuDriver | null = null;
    try {
      const vqs = vdev.setupQueues<unknown>([
        { name: "request", callback: null },
        { name: "event", callback: () => driver?.eventHandler() },
      ]) as unknown as [Virtqueue<ViommuRequest>, Virtqueue<number>];
      const pageSizeMask = vdev.readConfig64(0);
      const pageSizes: number[] = [];
      for (let b = 0; b < 53; b++) {
        if ((pageSizeMask >> BigInt(b)) & 1n) pageSizes.push(2 ** b);
      }
      if (pageSizes.length === 0) {
        throw new VirtioDriverError(
          -IommuErrno.EINVAL,
          `${vdev.name}: page_size_mask 0x${pageSizeMask.toString(16)} has no usable page size`,
        );
      }
      let inputStart = 0n;
      let inputEnd = 0xffff_ffff_ffff_ffffn;
      if (vdev.hasFeature(ViommuFeature.INPUT_RANGE)) {
        inputStart = vdev.readConfig64(8);
        inputEnd = vdev.readConfig64(16);
      }
      let firstDomain = 0;
      let lastDomain = 0xffff_ffff;
      if (vdev.hasFeature(ViommuFeature.DOMAIN_RANGE)) {
        firstDomain = vdev.readConfig32(24);
        lastDomain = vdev.readConfig32(28);
      }
      const probeSize = vdev.hasFeature(ViommuFeature.PROBE) ? vdev.readConfig32(32) : 0;
      let mapFlags = IommuMapFlag.READ | IommuMapFlag.WRITE;
      if (vdev.hasFeature(ViommuFeature.MMIO)) mapFlags |= IommuMapFlag.MMIO;
      const clamp = (v: bigint): number => v > BigInt(MAX_SAFE) ? MAX_SAFE : Number(v);
      driver = new VirtioIommuDriver(vdev, vqs, {
        pageSizeMask,
        pageSizes,
        geometry: {
          apertureStart: clamp(inputStart),
          apertureEnd: clamp(inputEnd),
          forceAperture: true,
        },
        firstDomain,
        lastDomain,
        mapFlags,
        probeSize,
      });
      vdev.setDriverOk();
      const ret = driver.#fillEventQueue();
      if (ret !== 0) {
        throw new VirtioDriverError(ret, `${vdev.name}: cannot fill the event queue`);
      }
      driver.#info(
        `input address: ${bitsOf(driver.geometry.apertureEnd)} bits, page mask: 0x${
          pageSizeMask.toString(16)
        }`,
      );
      return driver;
    } catch (e) {
      vdev.deleteQueues();
      vdev.fail();
      throw e;
    }
  }

  /** Requests added but not yet completed by the device. */
  get pendingRequests(): number {
    return this.#pending.size;
  }

  /** Domain ids in use. */
  get domainCount(): number {
    return this.#domainIds.size;
  }

  // ---- endpoints and domains -------------------------------------------

  /**
   * Registers endpoint `id` and, when the device has PROBE, reads its
   * reserved regions. Returns the endpoint (the same one when already
   * probed) or a negative errno from PROBE. Models `viommu_probe_device` +
   * `viommu_probe_endpoint`.
   */
  probeDevice(id: number): ViommuEndpoint | number {
    if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff) {
      throw new RangeError(`Cannot probe endpoint ${id}: not a 32-bit id`);
    }
    const known = this.endpoints.get(id);
    if (known !== undefined) return known;
    const ep = new ViommuEndpoint(id);
    if (this.probeSize > 0) {
      const ret = this.#probeEndpoint(ep);
      if (ret !== 0) return ret;
    }
    this.endpoints.set(id, ep);
    return ep;
  }

  /**
   * The reserved regions of `ep`, plus the software MSI window when the
   * device reported no MSI region. Models `viommu_get_resv_regions`.
   */
  getResvRegions(ep: ViommuEndpoint): ViommuResvRegion[] {
    const out = ep.resvRegions.map((r) => ({ ...r }));
    if (!out.some((r) => r.type === "msi")) {
      out.push({
        start: VIOMMU_SW_MSI_BASE,
        end: VIOMMU_SW_MSI_BASE + VIOMMU_SW_MSI_LENGTH - 1,
        type: "sw-msi",
      });
    }
    return out;
  }

  /** A new, unfinalised domain. Models `viommu_domain_alloc`. */
  allocDomain(type: IommuDomainType = "paging"): ViommuDomain {
    return new ViommuDomain(type);
  }

  /**
   * Attaches `ep` to `domain` (ATTACH, synchronous), finalising the domain on
   * its first attach; the first endpoint of a domain gets the shadow mappings
   * replayed. Returns 0 or a negative errno (the request's status). Models
   * `viommu_attach_dev`.
   */
  attachDev(domain: ViommuDomain, ep: ViommuEndpoint): number {
    if (domain.viommu === null) {
      const ret = this.#finaliseDomain(domain, ep);
      if (ret !== 0) return ret;
    } else if (domain.viommu !== this) {
      return -IommuErrno.EINVAL;
    }
    if (ep.domain !== null) ep.domain.nrEndpoints--;
    const ret = this.sendReqSync(
      attachRequest(
        ViommuRequestType.ATTACH,
        domain.id,
        ep.id,
        domain.bypass ? ATTACH_F_BYPASS : 0,
      ),
    );
    if (ret !== 0) return ret;
    if (domain.nrEndpoints === 0) {
      const r = this.#replayMappings(domain);
      if (r !== 0) return r;
    }
    domain.nrEndpoints++;
    ep.domain = domain;
    return 0;
  }

  /**
   * Detaches `ep` from its domain (DETACH, synchronous); a failure is a WARN
   * in the log. Returns the request's errno (0 when not attached). Models
   * `viommu_detach_dev`.
   */
  detachDev(ep: ViommuEndpoint): number {
    const domain = ep.domain;
    if (domain === null) return 0;
    const ret = this.sendReqSync(attachRequest(ViommuRequestType.DETACH, domain.id, ep.id, 0));
    if (ret !== 0) this.#err(`WARN: DETACH of endpoint ${ep.id} failed (${ret})`);
    domain.nrEndpoints--;
    ep.domain = null;
    return ret;
  }

  /** Drops a domain's shadow mappings and frees its id. Models `viommu_domain_free`. */
  freeDomain(domain: ViommuDomain): void {
    domain.clearShadow();
    if (domain.viommu === this) this.#domainIds.delete(domain.id);
    domain.viommu = null;
  }

  /**
   * Sets up DMA for endpoint `id` as the IOMMU core does for a device at
   * boot: probe it, allocate its default domain, attach, and return its DMA
   * API: dma-iommu over a paging domain (with the endpoint's reserved regions
   * kept out of the IOVA space), or dma-direct for an identity domain.
   * Models `iommu_probe_device` + `iommu_setup_default_domain` +
   * `iommu_setup_dma_ops`.
   *
   * @throws {VirtioDriverError} with the errno of the PROBE or ATTACH that failed
   */
  setupDma(id: number, options: ViommuSetupOptions & { domainType: "identity" }): DmaDirect;
  /** A paging domain (the default): dma-iommu. */
  setupDma(id: number, options?: ViommuSetupOptions & { domainType?: "paging" }): DmaIommu;
  /** Either, as `options.domainType` says. */
  setupDma(id: number, options?: ViommuSetupOptions): DmaIommu | DmaDirect;
  setupDma(id: number, options: ViommuSetupOptions = {}): DmaIommu | DmaDirect {
    const ep = this.probeDevice(id);
    const name = options.name ?? `endpoint ${id}`;
    if (typeof ep === "number") {
      throw new VirtioDriverError(ep, `${name}: probe failed (${ep})`);
    }
    const domain = this.allocDomain(options.domainType ?? "paging");
    const ret = this.attachDev(domain, ep);
    if (ret !== 0) {
      this.freeDomain(domain);
      throw new VirtioDriverError(ret, `${name}: attach failed (${ret})`);
    }
    const pages = this.vdev.pages;
    if (domain.type === "identity") {
      return new DmaDirect({ pages, mask: options.mask, coherentMask: options.coherentMask });
    }
    const reserved: IovaReservedRegion[] = this.getResvRegions(ep)
      .filter((r) => r.type !== "sw-msi")
      .map((r) => ({ start: r.start, end: r.end }));
    reserved.push(...(options.reservedRegions ?? []));
    return new DmaIommu({
      domain,
      pages,
      mask: options.mask,
      coherentMask: options.coherentMask,
      pci: options.pci,
      forceDac: options.forceDac,
      strict: options.strict,
      reservedRegions: reserved,
      setTimer: options.setTimer,
      fqSize: options.fqSize,
      name,
    });
  }

  /**
   * Resets the device and deletes the queues. Models `viommu_remove`.
   */
  remove(): void {
    if (this.#removed) return;
    this.#removed = true;
    this.vdev.reset();
    this.vdev.deleteQueues();
    this.#pending.clear();
    if (this.#eventBytes > 0) this.vdev.heap.kfree(this.#events);
    this.#eventBytes = 0;
  }

  // ---- requests ------------------------------------------------------------

  /**
   * Queues a MAP without kicking (`viommu_add_req` from `viommu_map_pages`).
   * Used by {@linkcode ViommuDomain}; returns 0 or a negative errno.
   */
  addMap(
    domain: number,
    start: number,
    end: number,
    phys: number,
    flags: number,
    sync: boolean,
  ): number {
    const bytes = new Uint8Array(40);
    const v = new DataView(bytes.buffer);
    bytes[0] = ViommuRequestType.MAP;
    v.setUint32(4, domain, true);
    setU64(v, 8, start);
    setU64(v, 16, end);
    setU64(v, 24, phys);
    v.setUint32(32, flags, true);
    return sync ? this.sendReqSync(bytes) : this.addReq(bytes);
  }

  /** Queues an UNMAP without kicking (`viommu_add_req` from `viommu_unmap_pages`). */
  addUnmap(domain: number, start: number, end: number): number {
    const bytes = new Uint8Array(32);
    const v = new DataView(bytes.buffer);
    bytes[0] = ViommuRequestType.UNMAP;
    v.setUint32(4, domain, true);
    setU64(v, 8, start);
    setU64(v, 16, end);
    return this.addReq(bytes);
  }

  /**
   * Adds a request without kicking, unless the queue is full, in which case
   * everything in flight is synced first. The request's status is never
   * read. Returns 0 or a negative errno. Models `viommu_add_req`.
   *
   * @param buf the whole request: readable part, then the writable part (tail)
   */
  addReq(buf: Uint8Array): number {
    return this.#addReq(buf, false).ret;
  }

  /**
   * Adds a request, kicks, waits for everything in flight and returns the
   * request's status as an errno. Models `viommu_send_req_sync`.
   */
  sendReqSync(buf: Uint8Array): number {
    const { ret, req } = this.#addReq(buf, true);
    if (ret !== 0 || req === null) return ret;
    const sync = this.syncReq();
    if (!req.done) return sync !== 0 ? sync : -IommuErrno.ETIMEDOUT;
    if (req.result !== null) buf.set(req.result, req.writeOffset);
    return viommuStatusToErrno(req.status);
  }

  /**
   * Kicks the request queue and takes every completion until no request is
   * in flight. The kernel spins forever; the model gives up when the device
   * has not answered after the kick (`-ETIMEDOUT`, requests stay in flight)
   * or the queue is broken (`-EIO`). Models `viommu_sync_req`.
   */
  syncReq(): number {
    const vq = this.#requestVq;
    if (this.#removed) return -IommuErrno.EIO;
    this.stats.kicks++;
    vq.kick();
    while (this.#pending.size > 0) {
      const used = vq.getBuf();
      if (used === null) {
        if (vq.isBroken()) {
          this.#err(`request queue broken: ${vq.brokenReason}`);
          return -IommuErrno.EIO;
        }
        this.stats.timeouts++;
        this.#err(`${this.#pending.size} requests not completed after the kick`);
        return -IommuErrno.ETIMEDOUT;
      }
      this.#complete(used.token, used.len);
    }
    return 0;
  }

  #addReq(buf: Uint8Array, writeback: boolean): { ret: number; req: ViommuRequest | null } {
    if (this.#removed) return { ret: -IommuErrno.ENODEV, req: null };
    const type = buf[0];
    const len = buf.length;
    const writeOffset = type === ViommuRequestType.PROBE ? len - this.probeSize - TAIL : len - TAIL;
    if (writeOffset <= 0) return { ret: -IommuErrno.EINVAL, req: null };
    const heap = this.vdev.heap;
    const addr = heap.kzalloc(len);
    if (addr === null) return { ret: -IommuErrno.ENOMEM, req: null };
    this.vdev.memory.write(addr, buf.subarray(0, writeOffset));
    const req: ViommuRequest = {
      addr,
      len,
      writeOffset,
      type,
      writeback,
      done: false,
      status: IommuStatus.IOERR,
      result: null,
    };
    const out = [{ addr, length: writeOffset }];
    const inp = [{ addr: addr + writeOffset, length: len - writeOffset }];
    let ret = this.#requestVq.addSgs(out, inp, req);
    if (ret === -IommuErrno.ENOSPC && this.syncReq() === 0) {
      ret = this.#requestVq.addSgs(out, inp, req);
    }
    if (ret !== 0) {
      heap.kfree(addr);
      return { ret, req: null };
    }
    this.#pending.add(req);
    this.stats.requests++;
    switch (type) {
      case ViommuRequestType.ATTACH:
        this.stats.attach++;
        break;
      case ViommuRequestType.DETACH:
        this.stats.detach++;
        break;
      case ViommuRequestType.MAP:
        this.stats.map++;
        break;
      case ViommuRequestType.UNMAP:
        this.stats.unmap++;
        break;
      case ViommuRequestType.PROBE:
        this.stats.probe++;
        break;
    }
    return { ret: 0, req };
  }

  /** One completion: status (IOERR for a wrong used length), writeback, kfree. */
  #complete(req: ViommuRequest, usedLen: number): void {
    const memory = this.vdev.memory;
    const writeLen = req.len - req.writeOffset;
    if (usedLen === writeLen) {
      req.status = memory.read8(req.addr + req.len - TAIL);
      if (req.writeback) {
        req.result = new Uint8Array(writeLen);
        memory.read(req.addr + req.writeOffset, req.result);
      }
    } else {
      req.status = IommuStatus.IOERR;
    }
    if (!req.writeback && req.status !== IommuStatus.OK) this.stats.unseenErrors++;
    req.done = true;
    this.stats.completed++;
    this.#pending.delete(req);
    this.vdev.heap.kfree(req.addr);
  }

  // ---- probe, attach, replay ---------------------------------------------------

  /** `viommu_probe_endpoint`: PROBE and parse the properties. */
  #probeEndpoint(ep: ViommuEndpoint): number {
    const probeSize = this.probeSize;
    const buf = new Uint8Array(8 + 64 + probeSize + TAIL);
    buf[0] = ViommuRequestType.PROBE;
    new DataView(buf.buffer).setUint32(4, ep.id, true);
    let ret = this.sendReqSync(buf);
    if (ret !== 0) return ret;
    const props = new DataView(buf.buffer, 72, probeSize);
    let cur = 0;
    while (cur + 4 <= probeSize) {
      const type = props.getUint16(cur, true) & PROBE_T_MASK;
      if (type === PROBE_T_NONE) break;
      const len = props.getUint16(cur + 2, true) + 4;
      if (type === PROBE_T_RESV_MEM) {
        ret = this.#addResvMem(ep, props, cur, len);
      } else {
        this.#err(`endpoint ${ep.id}: unknown viommu prop 0x${type.toString(16)}`);
      }
      if (ret !== 0) {
        this.#err(`endpoint ${ep.id}: failed to parse viommu prop 0x${type.toString(16)}`);
      }
      cur += len;
    }
    return ret;
  }

  /** `viommu_add_resv_mem`. */
  #addResvMem(ep: ViommuEndpoint, props: DataView, at: number, len: number): number {
    if (len < 24 || at + 24 > props.byteLength) return -IommuErrno.EINVAL;
    const subtype = props.getUint8(at + 4);
    const start = props.getBigUint64(at + 8, true);
    const end = props.getBigUint64(at + 16, true);
    if (end < start || end > BigInt(MAX_SAFE)) return -IommuErrno.EOVERFLOW;
    let type: ViommuResvRegion["type"];
    if (subtype === RESV_MEM_T_MSI) {
      type = "msi";
    } else {
      if (subtype !== RESV_MEM_T_RESERVED) {
        this.#err(`endpoint ${ep.id}: unknown resv mem subtype 0x${subtype.toString(16)}`);
      }
      type = "reserved";
    }
    const region = { start: Number(start), end: Number(end), type };
    const i = ep.resvRegions.findIndex((r) => r.start > region.start);
    ep.resvRegions.splice(i < 0 ? ep.resvRegions.length : i, 0, region);
    return 0;
  }

  /** `viommu_domain_finalise`. */
  #finaliseDomain(domain: ViommuDomain, ep: ViommuEndpoint): number {
    const granule = this.pageSizes[0];
    if (granule > this.vdev.pages.pageSize) {
      this.#err(`granule 0x${granule.toString(16)} larger than system page size`);
      return -IommuErrno.ENODEV;
    }
    let id = -1;
    for (let d = this.firstDomain; d <= this.lastDomain; d++) {
      if (!this.#domainIds.has(d)) {
        id = d;
        break;
      }
    }
    if (id < 0) return -IommuErrno.ENOSPC;
    this.#domainIds.add(id);
    domain.id = id;
    domain.pageSizes = this.pageSizes;
    domain.geometry = { ...this.geometry };
    domain.mapFlags = this.mapFlags;
    domain.viommu = this;
    if (domain.type === "identity") {
      if (this.vdev.hasFeature(ViommuFeature.BYPASS_CONFIG)) {
        domain.bypass = true;
      } else {
        this.#mapIdentity(domain, ep);
      }
    }
    return 0;
  }

  /** `viommu_domain_map_identity`: the aperture 1:1 around reserved regions, in the shadow. */
  #mapIdentity(domain: ViommuDomain, ep: ViommuEndpoint): void {
    const g = this.pageSizes[0];
    const flags = IommuMapFlag.READ | IommuMapFlag.WRITE;
    let iova = Math.ceil(domain.geometry.apertureStart / g) * g;
    const limit = Math.floor((domain.geometry.apertureEnd + 1) / g) * g - 1;
    for (const r of ep.resvRegions) {
      const rs = Math.floor(r.start / g) * g;
      const re = Math.ceil((r.end + 1) / g) * g - 1;
      if (re < iova || rs > limit) continue;
      if (rs > iova) domain.addShadow(iova, rs - 1, iova, flags);
      if (re >= limit) return;
      iova = re + 1;
    }
    domain.addShadow(iova, limit, iova, flags);
  }

  /** `viommu_replay_mappings`: every shadow mapping as a synchronous MAP. */
  #replayMappings(domain: ViommuDomain): number {
    const m = domain.shadow;
    for (let i = 0; i < m.start.length; i++) {
      const ret = this.addMap(domain.id, m.start[i], m.last[i], m.paddr[i], m.flags[i], true);
      if (ret !== 0) return ret;
    }
    return 0;
  }

  // ---- events ----------------------------------------------------------------

  /** `viommu_fill_evtq`: one 24-byte buffer per free event queue entry. */
  #fillEventQueue(): number {
    const vq = this.#eventVq;
    const n = vq.numFree;
    const base = this.vdev.heap.kzalloc(n * VIOMMU_EVENT_SIZE);
    if (base === null) return -IommuErrno.ENOMEM;
    this.#events = base;
    this.#eventBytes = n * VIOMMU_EVENT_SIZE;
    for (let i = 0; i < n; i++) {
      const addr = base + i * VIOMMU_EVENT_SIZE;
      const ret = vq.addInbuf([{ addr, length: VIOMMU_EVENT_SIZE }], addr);
      if (ret !== 0) return ret;
    }
    return 0;
  }

  /**
   * The event queue's interrupt handler: logs each fault event (events with
   * non-zero reserved bytes are ignored), gives the buffer back and kicks.
   * Models `viommu_event_handler`.
   */
  eventHandler(): void {
    const vq = this.#eventVq;
    const memory = this.vdev.memory;
    for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
      const addr = used.token;
      if (used.len > VIOMMU_EVENT_SIZE) {
        this.#err(`invalid event buffer (len ${used.len} != ${VIOMMU_EVENT_SIZE})`);
      } else if ((memory.read32(addr) & FAULT_RESV_MASK) === 0) {
        this.#fault(addr);
      }
      if (vq.addInbuf([{ addr, length: VIOMMU_EVENT_SIZE }], addr) !== 0) {
        this.#err("could not add event buffer");
      }
    }
    vq.kick();
  }

  /** `viommu_fault_handler`: record and log. */
  #fault(addr: number): void {
    const memory = this.vdev.memory;
    const reason = memory.read8(addr);
    const flags = memory.read32(addr + 4);
    const endpoint = memory.read32(addr + 8);
    const raw = memory.readBigUint64(addr + 16);
    const address = (flags & FAULT_F_ADDRESS) !== 0 && raw <= BigInt(MAX_SAFE) ? Number(raw) : null;
    this.stats.faultEvents++;
    if (this.faults.length >= VIOMMU_MAX_LOG) this.faults.shift();
    this.faults.push({ reason, flags, endpoint, address });
    const name = reason === IommuFaultReason.DOMAIN
      ? "domain"
      : reason === IommuFaultReason.MAPPING
      ? "page"
      : "unknown";
    const rwx = (flags & 1 ? "R" : "") + (flags & 2 ? "W" : "") + (flags & 4 ? "X" : "");
    this.#err(
      address === null
        ? `${name} fault from EP ${endpoint}`
        : `${name} fault from EP ${endpoint} at 0x${address.toString(16)} [${rwx}]`,
    );
  }

  #err(message: string): void {
    if (this.log.length >= VIOMMU_MAX_LOG) this.log.shift();
    this.log.push(`${this.vdev.name}: ${message}`);
  }

  #info(message: string): void {
    this.#err(message);
  }
}

/** Maps a request status to the errno Linux returns. Models `viommu_get_req_errno`. */
export function viommuStatusToErrno(status: number): number {
  switch (status) {
    case IommuStatus.OK:
      return 0;
    case IommuStatus.UNSUPP:
      return -IommuErrno.ENOSYS;
    case IommuStatus.INVAL:
      return -IommuErrno.EINVAL;
    case IommuStatus.RANGE:
      return -IommuErrno.ERANGE;
    case IommuStatus.NOENT:
      return -IommuErrno.ENOENT;
    case IommuStatus.FAULT:
      return -IommuErrno.EFAULT;
    case IommuStatus.NOMEM:
      return -IommuErrno.ENOMEM;
    default:
      return -IommuErrno.EIO;
  }
}

/** An ATTACH or DETACH request (24 bytes). */
function attachRequest(type: number, domain: number, endpoint: number, flags: number): Uint8Array {
  const bytes = new Uint8Array(24);
  const v = new DataView(bytes.buffer);
  bytes[0] = type;
  v.setUint32(4, domain, true);
  v.setUint32(8, endpoint, true);
  v.setUint32(12, flags, true);
  return bytes;
}

function setU64(v: DataView, offset: number, value: number): void {
  v.setUint32(offset, value >>> 0, true);
  v.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true);
}

function bitsOf(v: number): number {
  return v <= 0 ? 0 : Math.ceil(Math.log2(v));
}
