/** Virtio device type ids (virtio 1.x §5, "Device Types"). */
export const VirtioDeviceId = {
  /** Network card. */
  NET: 1,
  /** Block device. */
  BLOCK: 2,
  /** Console. */
  CONSOLE: 3,
  /** Entropy source. */
  ENTROPY: 4,
  /** Memory balloon (traditional). */
  BALLOON: 5,
  /** SCSI host. */
  SCSI: 8,
  /** 9P transport. */
  NINE_P: 9,
  /** GPU. */
  GPU: 16,
  /** Input device. */
  INPUT: 18,
  /** Socket device. */
  VSOCK: 19,
  /** IOMMU. */
  IOMMU: 23,
  /** File system (virtio-fs). */
  FS: 26,
} as const;
