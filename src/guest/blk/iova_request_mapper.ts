/**
 * A block request mapper using the IOVA-based ("two-step") DMA API, the way
 * Linux's blk-mq DMA iterator maps a request for nvme-pci
 * (`blk_rq_dma_map_iter_start` → `blk_rq_dma_map_iova`, torn down by
 * `blk_rq_dma_unmap`):
 *
 * 1. one `dma_iova_try_alloc` for the whole payload, given the first
 *    segment's physical address for its offset inside a granule;
 * 2. one `dma_iova_link` per data segment at a running offset;
 * 3. one `dma_iova_sync` for everything linked (with virtio-iommu: one kick
 *    that sends every queued MAP);
 * 4. the device gets one contiguous IOVA range for the data;
 * 5. at completion one `dma_iova_destroy` of the whole range (one UNMAP).
 *
 * Like blk-mq, the IOVA path is only tried when every gap between segments is
 * granule aligned (`dma_get_merge_boundary`): the previous segment ends and
 * the next one starts on a granule. Otherwise, or when `dma_iova_try_alloc`
 * fails (no IOMMU, identity domain, IOVA space exhausted), the request is
 * mapped with streaming mappings by a {@linkcode DmaApiRequestMapper}.
 *
 * virtio-blk differs from NVMe in one way: NVMe's command sits in the
 * coherent submission queue, while virtio-blk's 16-byte header and 1-byte
 * status are small kmalloc'd buffers the device must also reach. By default
 * (`headerInRange`) the granule holding both is linked into the same
 * reservation right after the data, device-readable and device-writable, so
 * a request costs one reservation, one sync and one UNMAP. The price is
 * Linux's own for small buffers behind an IOMMU: the rest of that granule is
 * device-visible too. With `headerInRange: false` the header and status are
 * streamed with `dma_map_page` each, as the virtio core would map them.
 *
 * @example
 * ```ts ignore
 * const dma = viommu.setupDma(0x10); // the blk device's dma-iommu
 * const mapper = new IovaRequestMapper(dma);
 * const disk = VirtioBlkDriver.probe(blkGuest, { mapper });
 * await disk.read(0, 128 * 1024); // one IOVA range, one sync, one UNMAP
 * ```
 *
 * @module
 */
import { type DmaApi, DmaDirection, Errno } from "../dma/dma_api.ts";
import { DeferredDmaApi } from "../dma/deferred_dma.ts";
import {
  type DmaIovaState,
  getMergeBoundary,
  iovaDestroy,
  iovaFree,
  iovaLink,
  iovaSync,
  iovaTryAlloc,
  iovaUnlink,
  newIovaState,
} from "../dma/iova_api.ts";
import type { SgEntry } from "../virtio/virtqueue.ts";
import {
  type BlkRequestBuffers,
  type BlkRequestMapper,
  type BlkRequestMapping,
  DmaApiRequestMapper,
} from "./request_mapper.ts";

/** Options of {@linkcode IovaRequestMapper}. */
export interface IovaRequestMapperOptions {
  /**
   * Link the granule holding the request header and status into the request's
   * reservation (default true); false streams them with `dma_map_page`.
   */
  headerInRange?: boolean;
  /**
   * Largest descriptor the device accepts (its `size_max`): the single data
   * range is handed to the device in pieces of at most this many bytes, all
   * inside the same IOVA range. Default: no limit.
   */
  maxSegmentSize?: number;
}

/** Counters of an {@linkcode IovaRequestMapper}. */
export interface IovaRequestMapperStats {
  /** Requests mapped into one IOVA range. */
  iovaRequests: number;
  /** Segments linked with `dma_iova_link` (the header granule included). */
  links: number;
  /** `dma_iova_sync` calls. */
  syncs: number;
  /** `dma_iova_destroy` calls. */
  destroys: number;
  /** Requests streamed because `dma_iova_try_alloc` failed (no IOMMU, or no IOVA space). */
  fallbackNoIova: number;
  /** Requests streamed because a gap between segments was not granule aligned. */
  fallbackUnaligned: number;
  /** Requests without data (flush), streamed: there is nothing to link. */
  fallbackNoData: number;
  /** Requests whose link or sync failed (mapped nothing, returned an errno). */
  errors: number;
}

/** What undoes one IOVA-mapped request. */
class IovaMapState {
  constructor(
    readonly dev: DmaApi,
    readonly state: DmaIovaState,
    readonly mappedLen: number,
    readonly dir: DmaDirection,
    /** The streamed header/status mapping when they are not in the range. */
    readonly streamed: BlkRequestMapping | null,
  ) {}
}

/** Rounds `n` up to a multiple of `mask + 1` (a power of two). */
function alignUp(n: number, mask: number): number {
  return n + mask - ((n + mask) % (mask + 1));
}

/**
 * A {@linkcode BlkRequestMapper} that maps each request's data segments into
 * one IOVA range with the IOVA-based DMA API, falling back to streaming
 * mappings when that is not possible. Models blk-mq's DMA iterator as used by
 * nvme-pci; see the module documentation.
 */
export class IovaRequestMapper implements BlkRequestMapper {
  /** The DMA API of the virtio device's parent (a `DeferredDmaApi` is followed to its target). */
  readonly dma: DmaApi;
  /** The streaming fallback. */
  readonly fallback: DmaApiRequestMapper;
  /** Whether the header and status granule is linked into the request's range. */
  readonly headerInRange: boolean;
  /** Largest data descriptor handed to the device. */
  readonly maxSegmentSize: number;
  /** Counters. */
  readonly stats: IovaRequestMapperStats = {
    iovaRequests: 0,
    links: 0,
    syncs: 0,
    destroys: 0,
    fallbackNoIova: 0,
    fallbackUnaligned: 0,
    fallbackNoData: 0,
    errors: 0,
  };
  /** IOVA ranges mapped and not yet destroyed. */
  live = 0;

  /**
   * Maps through `dma`.
   *
   * @throws {RangeError} when `maxSegmentSize` is not a positive integer
   */
  constructor(dma: DmaApi, options: IovaRequestMapperOptions = {}) {
    this.dma = dma;
    this.fallback = new DmaApiRequestMapper(dma);
    this.headerInRange = options.headerInRange ?? true;
    const max = options.maxSegmentSize ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(`Cannot create an IOVA request mapper: maxSegmentSize ${max}`);
    }
    this.maxSegmentSize = max;
  }

  /** The DMA API calls go to: a deferred API's target once it is set. */
  get device(): DmaApi {
    const d = this.dma;
    return d instanceof DeferredDmaApi && d.target !== null ? d.target : d;
  }

  /** See {@linkcode BlkRequestMapper.mapRequest}. */
  mapRequest(buffers: BlkRequestBuffers): BlkRequestMapping | number {
    const data = buffers.data;
    if (data.length === 0) {
      this.stats.fallbackNoData++;
      return this.fallback.mapRequest(buffers);
    }
    const dev = this.device;
    // blk_can_dma_map_iova: no gap bits inside the merge boundary. Without
    // an IOMMU the boundary is 0 and try_alloc below fails.
    const mask = getMergeBoundary(dev);
    let gaps = 0;
    let total = data[0].length;
    for (let i = 1; i < data.length; i++) {
      gaps |= (data[i - 1].addr + data[i - 1].length) % (mask + 1);
      gaps |= data[i].addr % (mask + 1);
      total += data[i].length;
    }
    if (gaps !== 0) {
      this.stats.fallbackUnaligned++;
      return this.fallback.mapRequest(buffers);
    }
    const pad0 = data[0].addr % (mask + 1);
    // The header granule, when header and status share one, goes right after the data.
    const hdrGranule = buffers.header.addr - (buffers.header.addr % (mask + 1));
    const shared = this.headerInRange && mask > 0 &&
      buffers.header.addr + buffers.header.length <= hdrGranule + mask + 1 &&
      buffers.status.addr >= hdrGranule &&
      buffers.status.addr + buffers.status.length <= hdrGranule + mask + 1;
    const hdrOffset = alignUp(pad0 + total, mask) - pad0;
    const size = shared ? hdrOffset + mask + 1 : total;
    const state = newIovaState();
    if (!iovaTryAlloc(dev, state, data[0].addr, size)) {
      this.stats.fallbackNoIova++;
      return this.fallback.mapRequest(buffers);
    }
    const dir = buffers.dataDirection;
    let mapped = 0;
    let err = 0;
    for (const seg of data) {
      err = iovaLink(dev, state, seg.addr, mapped, seg.length, dir);
      if (err !== 0) break;
      this.stats.links++;
      mapped += seg.length;
    }
    if (err === 0 && shared) {
      err = iovaLink(dev, state, hdrGranule, hdrOffset, mask + 1, DmaDirection.BIDIRECTIONAL);
      if (err === 0) {
        this.stats.links++;
        mapped = size;
      }
    }
    if (err === 0) {
      err = iovaSync(dev, state, 0, mapped);
      this.stats.syncs++;
    }
    let streamed: BlkRequestMapping | null = null;
    if (err === 0 && !shared) {
      // Header and status alone, streamed: the data list is empty here.
      const r = this.fallback.mapRequest({ ...buffers, data: [] });
      if (typeof r === "number") err = r;
      else streamed = r;
    }
    if (err !== 0) {
      // Undo what was linked and return the whole reservation (blk-mq
      // destroys `mapped` bytes, which frees less than it reserved).
      if (mapped > 0) iovaUnlink(dev, state, 0, mapped, dir);
      iovaFree(dev, state);
      this.stats.errors++;
      return err === -Errno.ENOMEM ? err : -Errno.EIO;
    }
    this.stats.iovaRequests++;
    this.live++;
    const dataEntries: SgEntry[] = [];
    for (let off = 0; off < total; off += this.maxSegmentSize) {
      dataEntries.push({
        addr: state.addr + off,
        length: Math.min(this.maxSegmentSize, total - off),
      });
    }
    let header: SgEntry;
    let status: SgEntry;
    if (streamed !== null) {
      header = streamed.out[0];
      status = streamed.in[streamed.in.length - 1];
    } else {
      const base = state.addr + hdrOffset - hdrGranule;
      header = { addr: base + buffers.header.addr, length: buffers.header.length };
      status = { addr: base + buffers.status.addr, length: buffers.status.length };
    }
    const toDevice = dir === DmaDirection.TO_DEVICE;
    return {
      out: toDevice ? [header, ...dataEntries] : [header],
      in: toDevice ? [status] : [...dataEntries, status],
      premapped: true,
      state: new IovaMapState(dev, state, mapped, dir, streamed),
    };
  }

  /** See {@linkcode BlkRequestMapper.unmapRequest}. */
  unmapRequest(mapping: BlkRequestMapping): void {
    const s = mapping.state;
    if (!(s instanceof IovaMapState)) {
      this.fallback.unmapRequest(mapping);
      return;
    }
    iovaDestroy(s.dev, s.state, s.mappedLen, s.dir);
    this.stats.destroys++;
    this.live--;
    if (s.streamed !== null) this.fallback.unmapRequest(s.streamed);
  }
}
