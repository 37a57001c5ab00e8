/**
 * virtio-blk wire constants (virtio 1.x §5.2): feature bits, request types,
 * status codes and the byte offsets of `struct virtio_blk_config`. Names
 * follow Linux's `include/uapi/linux/virtio_blk.h`.
 *
 * @module
 */

/** virtio-blk device feature bits (bit numbers). */
export const VirtioBlkFeature = {
  /** Legacy: request barriers. Never offered. */
  BARRIER: 0,
  /** `size_max` is the largest size of one segment. */
  SIZE_MAX: 1,
  /** `seg_max` is the largest number of data segments per request. */
  SEG_MAX: 2,
  /** `geometry` is valid. */
  GEOMETRY: 4,
  /** The disk is read-only. */
  RO: 5,
  /** `blk_size` is the logical block size. */
  BLK_SIZE: 6,
  /** Legacy: SCSI passthrough. Never offered. */
  SCSI: 7,
  /** The FLUSH command exists (legacy name WCE). */
  FLUSH: 9,
  /** The topology fields are valid. */
  TOPOLOGY: 10,
  /** `writeback` is driver-writable: the cache mode can be toggled. */
  CONFIG_WCE: 11,
  /** `num_queues` request queues. */
  MQ: 12,
  /** The DISCARD command and its limits. */
  DISCARD: 13,
  /** The WRITE_ZEROES command and its limits. */
  WRITE_ZEROES: 14,
  /** The GET_LIFETIME command. Not offered. */
  LIFETIME: 15,
  /** The SECURE_ERASE command. Not offered. */
  SECURE_ERASE: 16,
  /** Zoned block device. Not offered. */
  ZONED: 17,
} as const;

/** virtio-blk request types (`struct virtio_blk_outhdr.type`). */
export const VirtioBlkRequestType = {
  /** Read sectors into the device-writable data part. */
  IN: 0,
  /** Write sectors from the device-readable data part. */
  OUT: 1,
  /** Commit the volatile write cache. */
  FLUSH: 4,
  /** Legacy synonym of FLUSH. */
  FLUSH_OUT: 5,
  /** Read the 20-byte device id (serial). */
  GET_ID: 8,
  /** Read the lifetime metrics. */
  GET_LIFETIME: 10,
  /** Discard ranges (16-byte segments). */
  DISCARD: 11,
  /** Write zeroes over ranges (16-byte segments). */
  WRITE_ZEROES: 13,
  /** Securely erase ranges. */
  SECURE_ERASE: 14,
} as const;

/** virtio-blk status byte values (the last byte of every request). */
export const VirtioBlkStatus = {
  /** Success. */
  OK: 0,
  /** The request failed (bad range, backend error, read-only disk, bad data). */
  IOERR: 1,
  /** The request type or a flag is not supported. */
  UNSUPP: 2,
} as const;

/** Byte offsets of the fields of `struct virtio_blk_config` (all little-endian). */
export const VirtioBlkConfigOffset = {
  /** le64: capacity in 512-byte sectors. */
  CAPACITY: 0x00,
  /** le32: largest segment size (SIZE_MAX). */
  SIZE_MAX: 0x08,
  /** le32: most data segments per request (SEG_MAX). */
  SEG_MAX: 0x0c,
  /** le16: geometry cylinders (GEOMETRY). */
  GEOMETRY_CYLINDERS: 0x10,
  /** u8: geometry heads (GEOMETRY). */
  GEOMETRY_HEADS: 0x12,
  /** u8: geometry sectors per track (GEOMETRY). */
  GEOMETRY_SECTORS: 0x13,
  /** le32: logical block size in bytes (BLK_SIZE). */
  BLK_SIZE: 0x14,
  /** u8: log2(physical block / logical block) (TOPOLOGY). */
  PHYSICAL_BLOCK_EXP: 0x18,
  /** u8: alignment offset in logical blocks (TOPOLOGY). */
  ALIGNMENT_OFFSET: 0x19,
  /** le16: minimum I/O size in logical blocks (TOPOLOGY). */
  MIN_IO_SIZE: 0x1a,
  /** le32: optimal I/O size in logical blocks (TOPOLOGY). */
  OPT_IO_SIZE: 0x1c,
  /** u8: 1 writeback, 0 writethrough (CONFIG_WCE; driver-writable). */
  WRITEBACK: 0x20,
  /** u8: reserved, reads 0. */
  UNUSED0: 0x21,
  /** le16: number of request queues (MQ). */
  NUM_QUEUES: 0x22,
  /** le32: largest sector count of one discard segment (DISCARD). */
  MAX_DISCARD_SECTORS: 0x24,
  /** le32: most segments of one discard request (DISCARD). */
  MAX_DISCARD_SEG: 0x28,
  /** le32: discard alignment in sectors (DISCARD). */
  DISCARD_SECTOR_ALIGNMENT: 0x2c,
  /** le32: largest sector count of one write-zeroes segment (WRITE_ZEROES). */
  MAX_WRITE_ZEROES_SECTORS: 0x30,
  /** le32: most segments of one write-zeroes request (WRITE_ZEROES). */
  MAX_WRITE_ZEROES_SEG: 0x34,
  /** u8: write zeroes may deallocate (WRITE_ZEROES). */
  WRITE_ZEROES_MAY_UNMAP: 0x38,
  /** 3 bytes reserved, read 0. */
  UNUSED1: 0x39,
  /** le32 (SECURE_ERASE, not offered: 0). */
  MAX_SECURE_ERASE_SECTORS: 0x3c,
  /** le32 (SECURE_ERASE, not offered: 0). */
  MAX_SECURE_ERASE_SEG: 0x40,
  /** le32 (SECURE_ERASE, not offered: 0). */
  SECURE_ERASE_SECTOR_ALIGNMENT: 0x44,
  /** The zoned characteristics (ZONED, not offered: all 0), 24 bytes. */
  ZONED: 0x48,
} as const;

/** Size in bytes of `struct virtio_blk_config` (96). */
export const VIRTIO_BLK_CONFIG_SIZE = 0x60;
/** The protocol's sector size: sector numbers and capacity are in these units. */
export const VIRTIO_BLK_SECTOR_SIZE = 512;
/** Size of the request header `struct virtio_blk_outhdr`. */
export const VIRTIO_BLK_OUTHDR_SIZE = 16;
/** Size of one DISCARD / WRITE_ZEROES segment `struct virtio_blk_discard_write_zeroes`. */
export const VIRTIO_BLK_SEGMENT_SIZE = 16;
/** Length of the GET_ID reply. */
export const VIRTIO_BLK_ID_BYTES = 20;
/** Segment flag: WRITE_ZEROES may deallocate the range (invalid for DISCARD). */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
