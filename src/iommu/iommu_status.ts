/** virtio-iommu request status codes (virtio 1.x §5.13.6); the engine returns them as-is. */
export const IommuStatus = {
  /** The request succeeded. */
  OK: 0,
  /** An I/O error. */
  IOERR: 1,
  /** Unsupported request. */
  UNSUPP: 2,
  /** An internal device error. */
  DEVERR: 3,
  /** Invalid parameters (overlap, unknown flag, reserved bits). */
  INVAL: 4,
  /** Out-of-range parameters (misalignment, outside the input range, a split unmap). */
  RANGE: 5,
  /** The domain or endpoint does not exist. */
  NOENT: 6,
  /** Bad address. */
  FAULT: 7,
  /** Out of memory (too many mappings or domains). */
  NOMEM: 8,
} as const;

/** One of the {@linkcode IommuStatus} values. */
export type IommuStatus = typeof IommuStatus[keyof typeof IommuStatus];

/** MAP request flags: the permissions of a mapping. */
export const IommuMapFlag = {
  /** The device may read through the mapping. */
  READ: 1,
  /** The device may write through the mapping. */
  WRITE: 2,
  /** The mapping targets MMIO (an MSI doorbell), not RAM. */
  MMIO: 4,
} as const;

/** Why a DMA faulted in the IOMMU (the `reason` of a virtio-iommu fault event). */
export const IommuFaultReason = {
  /** Unknown cause. */
  UNKNOWN: 0,
  /** The endpoint is not attached to a domain (and not in bypass). */
  DOMAIN: 1,
  /** No mapping covers the address, or it lacks the permission. */
  MAPPING: 2,
} as const;
