/**
 * The mapping seam of the guest block driver: how one request's buffers
 * (header, data segments, status) become device addresses.
 *
 * Linux's virtio_blk hands guest physical scatter lists to
 * `virtqueue_add_sgs` and lets the virtio core map them (the default mapper
 * here). The blk-mq DMA iterator instead maps a request's data itself, through
 * the IOVA-based API (`dma_iova_try_alloc` + `dma_iova_link` per segment + one
 * `dma_iova_sync`, torn down with `dma_iova_destroy`) and adds the result as
 * premapped buffers. A mapper implementing that goes through this interface
 * without any change to the driver.
 *
 * @module
 */
import { DMA_MAPPING_ERROR, type DmaApi, DmaDirection, Errno } from "../dma/dma_api.ts";
import type { SgEntry } from "../virtio/virtqueue.ts";

/** A request's buffers at guest physical addresses, before mapping. */
export interface BlkRequestBuffers {
  /** The 16-byte request header (device-readable). */
  readonly header: SgEntry;
  /** Data segments: device-readable for OUT/DISCARD/WRITE_ZEROES, device-writable for IN/GET_ID. */
  readonly data: readonly SgEntry[];
  /** Who accesses the data: TO_DEVICE (the device reads) or FROM_DEVICE (the device writes). */
  readonly dataDirection: DmaDirection;
  /** The 1-byte status (device-writable). */
  readonly status: SgEntry;
}

/** A mapped request: what the driver passes to `addSgs`. */
export interface BlkRequestMapping {
  /** Device-readable entries, in order. */
  readonly out: SgEntry[];
  /** Device-writable entries, in order (the status last). */
  readonly in: SgEntry[];
  /** The entries hold device addresses: add them premapped, the virtqueue maps nothing. */
  readonly premapped: boolean;
  /** Whatever the mapper needs to undo the mapping. */
  readonly state?: unknown;
}

/**
 * Maps and unmaps the buffers of one block request. `mapRequest` returns the
 * entries to add or a negative errno (`-ENOMEM`: try again later); the driver
 * calls `unmapRequest` once the request completed, failed or could not be
 * added.
 */
export interface BlkRequestMapper {
  /** Maps a request's buffers. Models `blk_rq_dma_map_iter_start` and friends. */
  mapRequest(buffers: BlkRequestBuffers): BlkRequestMapping | number;
  /** Undoes {@linkcode BlkRequestMapper.mapRequest}. Models `blk_rq_dma_unmap`. */
  unmapRequest(mapping: BlkRequestMapping): void;
}

/** Builds the out/in lists in virtio-blk order from buffers whose addresses are already final. */
function lists(b: BlkRequestBuffers, data: readonly SgEntry[]): { out: SgEntry[]; in: SgEntry[] } {
  const out: SgEntry[] = [b.header];
  const inn: SgEntry[] = [];
  if (b.dataDirection === DmaDirection.TO_DEVICE) out.push(...data);
  else inn.push(...data);
  inn.push(b.status);
  return { out, in: inn };
}

/**
 * The default mapper: leaves every address guest physical and lets the
 * virtqueue map each entry through its own mapper, as Linux's virtio_blk does.
 *
 * @example
 * ```ts
 * import { virtqueueRequestMapper } from "@vireo/vireo/guest/blk";
 * const m = virtqueueRequestMapper.mapRequest({
 *   header: { addr: 0x1000, length: 16 },
 *   data: [{ addr: 0x2000, length: 512 }],
 *   dataDirection: 2,
 *   status: { addr: 0x1010, length: 1 },
 * });
 * console.log(typeof m === "object" && m.premapped); // false
 * ```
 */
export const virtqueueRequestMapper: BlkRequestMapper = {
  mapRequest(buffers: BlkRequestBuffers): BlkRequestMapping {
    return { ...lists(buffers, buffers.data), premapped: false };
  },
  unmapRequest(_mapping: BlkRequestMapping): void {},
};

/**
 * A mapper that premaps every buffer with the streaming DMA API
 * (`dma_map_page` per entry, `dma_unmap_page` on completion): the classic
 * fallback of the blk-mq DMA iterator when no IOVA range can be reserved. Use
 * it only when the virtqueue would map through the same DMA API (with
 * VIRTIO_F_ACCESS_PLATFORM, or dma-direct where addresses are identical).
 */
export class DmaApiRequestMapper implements BlkRequestMapper {
  /** The DMA API of the virtio device's parent. */
  readonly dma: DmaApi;
  /** Streaming mappings made and not yet unmapped. */
  live = 0;

  /** Maps through `dma`. */
  constructor(dma: DmaApi) {
    this.dma = dma;
  }

  /** See {@linkcode BlkRequestMapper.mapRequest}. */
  mapRequest(buffers: BlkRequestBuffers): BlkRequestMapping | number {
    const done: [number, number, DmaDirection][] = [];
    const map = (sg: SgEntry, dir: DmaDirection): SgEntry | null => {
      const addr = this.dma.mapPage(sg.addr, sg.length, dir);
      if (addr === DMA_MAPPING_ERROR) return null;
      done.push([addr, sg.length, dir]);
      return { addr, length: sg.length };
    };
    const header = map(buffers.header, DmaDirection.TO_DEVICE);
    const data: SgEntry[] = [];
    let ok = header !== null;
    for (const sg of buffers.data) {
      if (!ok) break;
      const m = map(sg, buffers.dataDirection);
      if (m === null) ok = false;
      else data.push(m);
    }
    const status = ok ? map(buffers.status, DmaDirection.FROM_DEVICE) : null;
    if (!ok || status === null || header === null) {
      for (const [addr, size, dir] of done) this.dma.unmapPage(addr, size, dir);
      return -Errno.ENOMEM;
    }
    this.live += done.length;
    return {
      ...lists({ ...buffers, header, status }, data),
      premapped: true,
      state: done,
    };
  }

  /** See {@linkcode BlkRequestMapper.unmapRequest}. */
  unmapRequest(mapping: BlkRequestMapping): void {
    const done = mapping.state as [number, number, DmaDirection][];
    for (const [addr, size, dir] of done) this.dma.unmapPage(addr, size, dir);
    this.live -= done.length;
  }
}
