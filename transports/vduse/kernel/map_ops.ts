/**
 * VDUSE's `virtio_map_ops` (`vduse_map_ops` in `vduse_dev.c`): the mapping
 * operations the guest's virtio core uses for every ring and buffer of a
 * VDUSE device. The map token is the queue's {@linkcode VduseVqGroup}; each op
 * resolves group → address space → IOVA domain and bounces through it.
 *
 * @module
 */
import {
  type CoherentAllocation,
  DMA_MAPPING_ERROR,
  type DmaDirection,
  Errno,
} from "../../../src/guest/dma/dma_api.ts";
import type { VirtioMap, VirtioMapOps } from "../../../src/guest/virtio/map_ops.ts";
import type { VduseIovaDomain } from "./iova_domain.ts";
import { VduseVqGroup } from "./vduse_dev.ts";

function domainOf(map: VirtioMap): VduseIovaDomain | null {
  return map instanceof VduseVqGroup ? map.as.domain : null;
}

/**
 * The nine map ops over VDUSE IOVA domains. A token that is not a VDUSE
 * group (the kernel's NULL group) maps nothing: `mapPage` fails, `alloc`
 * returns null, the rest do nothing.
 *
 * @example
 * ```ts ignore
 * const iova = vduseMapOps.mapPage(vdpa.getVqMap(0), phys, 1500, DmaDirection.TO_DEVICE, 0);
 * ```
 */
export class VduseMapOps implements VirtioMapOps {
  /** `map_page`: a bounce mapping, or `DMA_MAPPING_ERROR`. */
  mapPage(map: VirtioMap, phys: number, size: number, dir: DmaDirection, attrs: number): number {
    const d = domainOf(map);
    return d === null ? DMA_MAPPING_ERROR : d.mapPage(phys, size, dir, attrs);
  }

  /** `unmap_page`: copy back as the direction says, free the slots and IOVA. */
  unmapPage(
    map: VirtioMap,
    mapHandle: number,
    size: number,
    dir: DmaDirection,
    attrs: number,
  ): void {
    domainOf(map)?.unmapPage(mapHandle, size, dir, attrs);
  }

  /** `sync_single_for_cpu`: bounce → driver for FROM_DEVICE / BIDIRECTIONAL. */
  syncSingleForCpu(map: VirtioMap, mapHandle: number, size: number, dir: DmaDirection): void {
    domainOf(map)?.syncSingleForCpu(mapHandle, size, dir);
  }

  /** `sync_single_for_device`: driver → bounce for TO_DEVICE / BIDIRECTIONAL. */
  syncSingleForDevice(map: VirtioMap, mapHandle: number, size: number, dir: DmaDirection): void {
    domainOf(map)?.syncSingleForDevice(mapHandle, size, dir);
  }

  /** `alloc`: zeroed guest pages with a coherent IOVA, or null. */
  alloc(map: VirtioMap, size: number): CoherentAllocation | null {
    return domainOf(map)?.allocCoherent(size) ?? null;
  }

  /** `free`: releases an `alloc`. */
  free(map: VirtioMap, size: number, cpuAddr: number, mapHandle: number, _attrs: number): void {
    domainOf(map)?.freeCoherent(size, cpuAddr, mapHandle);
  }

  /** `need_sync`: true for bounce-window addresses. */
  needSync(map: VirtioMap, mapHandle: number): boolean {
    return domainOf(map)?.needSync(mapHandle) ?? false;
  }

  /** `mapping_error`: -ENOMEM for `DMA_MAPPING_ERROR`, else 0. */
  mappingError(_map: VirtioMap, mapHandle: number): number {
    return mapHandle === DMA_MAPPING_ERROR ? -Errno.ENOMEM : 0;
  }

  /** `max_mapping_size`: the domain's bounce size (0 without a domain). */
  maxMappingSize(map: VirtioMap): number {
    return domainOf(map)?.bounceSize ?? 0;
  }
}
