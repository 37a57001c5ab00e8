/**
 * The guest's DMA API as a Linux driver sees it (`include/linux/dma-mapping.h`):
 * streaming mappings, coherent allocations, syncs and their error convention.
 *
 * One {@linkcode DmaApi} object stands for the API bound to one device (the
 * kernel's `struct device *dev` argument), so the dma-direct and dma-iommu
 * implementations can differ per device. Addresses are `number`s: guest
 * physical addresses on the CPU side, bus addresses (IOVAs) on the device side.
 *
 * @module
 */

/**
 * The direction of a streaming mapping (`enum dma_data_direction`), seen from
 * the device: TO_DEVICE buffers are read by the device, FROM_DEVICE buffers are
 * written by it.
 */
export const DmaDirection = {
  /** The device may read and write the buffer (`DMA_BIDIRECTIONAL`). */
  BIDIRECTIONAL: 0,
  /** The device reads the buffer (`DMA_TO_DEVICE`). */
  TO_DEVICE: 1,
  /** The device writes the buffer (`DMA_FROM_DEVICE`). */
  FROM_DEVICE: 2,
  /** Debugging only: mapping with it is a driver bug (`DMA_NONE`). */
  NONE: 3,
} as const;

/** One of the {@linkcode DmaDirection} values. */
export type DmaDirection = typeof DmaDirection[keyof typeof DmaDirection];

/**
 * The "mapping failed" DMA address (`DMA_MAPPING_ERROR`).
 *
 * The kernel's value is the all-ones 64-bit `dma_addr_t`, which a JS `number`
 * cannot hold exactly. vireo uses `-1`: no valid address is negative, so the
 * sentinel can never collide with a real mapping, comparing against it is a
 * plain `===`, and splitting it into two 32-bit halves the usual way
 * (`Math.floor(a / 2 ** 32)` and `a >>> 0`) gives all-ones, the kernel's bit
 * pattern, should it ever reach a 64-bit field.
 */
export const DMA_MAPPING_ERROR: number = -1;

/** `DMA_ATTR_SKIP_CPU_SYNC`: map or unmap without CPU cache maintenance or bounce copies. */
export const DMA_ATTR_SKIP_CPU_SYNC: number = 1 << 5;

/**
 * The largest mapping size (`SIZE_MAX`) returned by `maxMappingSize()` when
 * nothing limits a single mapping: the largest exact integer a `number` holds.
 */
export const DMA_SIZE_MAX: number = Number.MAX_SAFE_INTEGER;

/**
 * The Linux errno values the guest model returns, positive as in
 * `include/uapi/asm-generic/errno-base.h`; functions return them negated
 * (`-Errno.ENOMEM`), as the kernel does.
 */
export const Errno = {
  /** No such file or directory. */
  ENOENT: 2,
  /** I/O error. */
  EIO: 5,
  /** Out of memory. */
  ENOMEM: 12,
  /** Invalid argument. */
  EINVAL: 22,
  /** No space left (a full virtqueue). */
  ENOSPC: 28,
} as const;

/** Memory allocated by `dma_alloc_coherent`: one buffer seen from both sides. */
export interface CoherentAllocation {
  /** The guest physical address the CPU (the guest model) reads and writes. */
  cpuAddr: number;
  /** The address the device uses for the same bytes (the kernel's `dma_handle`). */
  dmaAddr: number;
}

/**
 * The DMA API of one device, as its Linux driver calls it.
 *
 * Implementations: `DmaDirect` (dma-direct, identity) and the IOMMU-backed
 * dma-iommu. A failed streaming mapping returns {@linkcode DMA_MAPPING_ERROR}
 * (test it with `mappingError`); a failed coherent allocation returns `null`.
 * Neither throws for conditions the kernel reports by value; misuse (an invalid
 * direction, a negative size) throws `RangeError`, where the kernel would BUG.
 */
export interface DmaApi {
  /**
   * Maps `size` bytes at guest physical address `phys` for streaming DMA and
   * returns the device address, or {@linkcode DMA_MAPPING_ERROR}.
   * Models `dma_map_page_attrs` (and `dma_map_single_attrs`, which is the same
   * thing for a guest physical address).
   *
   * @param phys guest physical address of the buffer (page address plus offset)
   * @param size length in bytes
   * @param dir who reads and who writes the buffer
   * @param attrs `DMA_ATTR_*` bits, e.g. {@linkcode DMA_ATTR_SKIP_CPU_SYNC}
   */
  mapPage(phys: number, size: number, dir: DmaDirection, attrs?: number): number;
  /**
   * Ends a streaming mapping made by {@linkcode DmaApi.mapPage}; the arguments
   * must equal the mapping's. Models `dma_unmap_page_attrs`.
   */
  unmapPage(dmaAddr: number, size: number, dir: DmaDirection, attrs?: number): void;
  /**
   * Gives (part of) a streaming mapping back to the CPU after the device used
   * it. Models `dma_sync_single_for_cpu`.
   */
  syncSingleForCpu(dmaAddr: number, size: number, dir: DmaDirection): void;
  /**
   * Gives (part of) a streaming mapping to the device after the CPU wrote it.
   * Models `dma_sync_single_for_device`.
   */
  syncSingleForDevice(dmaAddr: number, size: number, dir: DmaDirection): void;
  /**
   * Allocates `size` bytes of zeroed memory that CPU and device share, or
   * returns `null` (the kernel's NULL). Models `dma_alloc_coherent`.
   */
  allocCoherent(size: number): CoherentAllocation | null;
  /**
   * Frees memory from {@linkcode DmaApi.allocCoherent}, with the same size and
   * addresses. Models `dma_free_coherent`.
   */
  freeCoherent(size: number, cpuAddr: number, dmaAddr: number): void;
  /**
   * Returns `-Errno.ENOMEM` when `dmaAddr` is {@linkcode DMA_MAPPING_ERROR},
   * else 0. Models `dma_mapping_error`.
   */
  mappingError(dmaAddr: number): number;
  /** True when syncs are needed for the mapping at `dmaAddr`. Models `dma_need_sync`. */
  needSync(dmaAddr: number): boolean;
  /**
   * The largest size one `mapPage` call accepts ({@linkcode DMA_SIZE_MAX} when
   * unlimited). Models `dma_max_mapping_size`.
   */
  maxMappingSize(): number;
}

/**
 * Throws unless `dir` is a direction a mapping may use (the kernel's
 * `valid_dma_direction`, which excludes `NONE`).
 *
 * @param dir the direction passed to a mapping call
 * @throws {RangeError} when `dir` is not BIDIRECTIONAL, TO_DEVICE or FROM_DEVICE
 */
export function checkDmaDirection(dir: number): void {
  if (dir !== 0 && dir !== 1 && dir !== 2) {
    throw new RangeError(`Cannot map for DMA direction ${dir}: expected 0, 1 or 2`);
  }
}
