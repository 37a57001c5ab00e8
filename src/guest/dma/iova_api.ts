/**
 * The IOVA-based ("two-step") DMA API of `include/linux/dma-mapping.h`:
 * reserve IOVA once, link physical ranges into it, sync once, then destroy
 * (or unlink and free). Only dma-iommu implements it; for any other device
 * `iovaTryAlloc` returns false and the caller uses the streaming API.
 *
 * The kernel's contract is kept, including its sharp edges:
 *
 * - `iovaTryAlloc` zeroes the caller-owned state first, so a failure leaves
 *   `dmaUseIova(state)` false;
 * - only the first link may start in the middle of a granule (`-EIO`), and
 *   every link but the last must end on a granule, or the next link's IOVA is
 *   unaligned (`-EINVAL`); ranges are mapped granule-expanded;
 * - a link only queues the mapping: with virtio-iommu nothing reaches the
 *   device until `iovaSync`, so a guest that skips it gets DMA faults;
 * - `iovaUnlink` always invalidates synchronously; `iovaDestroy` defers the
 *   invalidation and the IOVA release to the flush queue in lazy mode.
 *
 * Errors are negative errno values, as in the kernel. One addition: linking
 * past the reservation, or on a state without one, is refused with `-EINVAL`
 * and a warning (the kernel does not check and maps IOVA the caller does not own).
 *
 * @example
 * ```ts ignore
 * const state = newIovaState();
 * if (iovaTryAlloc(dma, state, segs[0].phys, total)) {
 *   let off = 0;
 *   for (const s of segs) { iovaLink(dma, state, s.phys, off, s.len, DmaDirection.TO_DEVICE); off += s.len; }
 *   iovaSync(dma, state, 0, off); // one kick for every MAP
 *   // ... the device uses [state.addr, state.addr + total) ...
 *   iovaDestroy(dma, state, off, DmaDirection.TO_DEVICE);
 * }
 * ```
 *
 * @module
 */
import type { DmaApi, DmaDirection } from "./dma_api.ts";
import { DmaIommu, type DmaIovaState, IommuErrno } from "./dma_iommu.ts";

export type { DmaIovaState } from "./dma_iommu.ts";

/** A zeroed `struct dma_iova_state` for the caller to own. */
export function newIovaState(): DmaIovaState {
  return { addr: 0, size: 0 };
}

/**
 * True when the state holds an IOVA reservation (its size is not 0).
 * Models `dma_use_iova`.
 */
export function dmaUseIova(state: DmaIovaState): boolean {
  return state.size !== 0;
}

/** The reservation's requested size in bytes. Models `dma_iova_size`. */
export function dmaIovaSize(state: DmaIovaState): number {
  return state.size;
}

/**
 * Reserves IOVA for `size` bytes; `phys` only gives the offset inside a
 * granule of the first byte (page-aligned I/O may pass 0). Zeroes `state`
 * first. Returns false when the device is not behind an IOMMU paging domain,
 * `size` is 0 (or not a safe integer), or the IOVA space below the DMA mask
 * is exhausted: the caller then uses the streaming API. Models
 * `dma_iova_try_alloc`.
 *
 * @param dev the device's DMA API
 * @param state caller-owned state, filled on success
 * @param phys guest physical address of the first byte (for its offset)
 * @param size bytes to reserve
 */
export function iovaTryAlloc(
  dev: DmaApi,
  state: DmaIovaState,
  phys: number,
  size: number,
): boolean {
  state.addr = 0;
  state.size = 0;
  if (!(dev instanceof DmaIommu)) return false;
  return dev.iovaTryAlloc(state, phys, size);
}

/**
 * Maps `size` bytes at `phys` to `state.addr + offset`, granule-expanded,
 * without making the mapping visible (the IOMMU driver's requests are queued,
 * not sent). Models `dma_iova_link`.
 *
 * @param dev the device's DMA API
 * @param state a reservation from {@linkcode iovaTryAlloc}
 * @param phys guest physical address of the range
 * @param offset byte offset inside the reservation
 * @param size bytes to link
 * @param dir direction: TO_DEVICE maps READ, FROM_DEVICE WRITE, BIDIRECTIONAL both
 * @param attrs `DMA_ATTR_*` bits (`DMA_ATTR_MMIO` makes an MMIO mapping)
 * @returns 0; `-EIO` when a link after the first starts mid-granule;
 * `-EINVAL` when the IOVA is unaligned (a previous link did not end on a
 * granule), the range is past the reservation or the state has none;
 * `-EOPNOTSUPP` when the device has no IOMMU; or the IOMMU driver's error
 * @throws {RangeError} for an invalid direction
 */
export function iovaLink(
  dev: DmaApi,
  state: DmaIovaState,
  phys: number,
  offset: number,
  size: number,
  dir: DmaDirection,
  attrs = 0,
): number {
  if (!(dev instanceof DmaIommu)) return -IommuErrno.EOPNOTSUPP;
  return dev.iovaLink(state, phys, offset, size, dir, attrs);
}

/**
 * Makes what was linked in `[offset, offset + size)` visible to the device:
 * the IOMMU driver's `iotlb_sync_map` (virtio-iommu: kick the request queue
 * and wait for every queued MAP). Models `dma_iova_sync`.
 *
 * @returns 0, `-EOPNOTSUPP` without an IOMMU, `-EINVAL` for a state without a
 * reservation, or the IOMMU driver's error
 */
export function iovaSync(dev: DmaApi, state: DmaIovaState, offset: number, size: number): number {
  if (!(dev instanceof DmaIommu)) return -IommuErrno.EOPNOTSUPP;
  return dev.iovaSync(state, offset, size);
}

/**
 * Unmaps `[offset, offset + size)` (granule-expanded) and invalidates
 * synchronously, in lazy mode too; the IOVA stays reserved. Models
 * `dma_iova_unlink`.
 *
 * @throws {RangeError} for an invalid direction
 */
export function iovaUnlink(
  dev: DmaApi,
  state: DmaIovaState,
  offset: number,
  size: number,
  dir: DmaDirection,
  attrs = 0,
): void {
  if (dev instanceof DmaIommu) dev.iovaUnlink(state, offset, size, dir, attrs);
}

/**
 * Unmaps `[0, mappedLen)` and frees the reservation in one pass; in lazy mode
 * the invalidation and the IOVA release wait for the flush queue. With
 * `mappedLen` 0 (the first link failed) it only frees. Models
 * `dma_iova_destroy`.
 *
 * @throws {RangeError} for an invalid direction
 */
export function iovaDestroy(
  dev: DmaApi,
  state: DmaIovaState,
  mappedLen: number,
  dir: DmaDirection,
  attrs = 0,
): void {
  if (dev instanceof DmaIommu) dev.iovaDestroy(state, mappedLen, dir, attrs);
}

/**
 * Returns the reservation to the IOVA allocator; every linked range must have
 * been unlinked (live links would stay mapped). Models `dma_iova_free`.
 */
export function iovaFree(dev: DmaApi, state: DmaIovaState): void {
  if (dev instanceof DmaIommu) dev.iovaFree(state);
}

/**
 * The granule mask with an IOMMU (ranges may be merged on granule
 * boundaries), 0 without one ("cannot merge"). Models
 * `dma_get_merge_boundary`.
 */
export function getMergeBoundary(dev: DmaApi): number {
  return dev instanceof DmaIommu ? dev.getMergeBoundary() : 0;
}
