/**
 * The guest driver's copy of `include/uapi/linux/virtio_blk.h`: feature bits,
 * request types, status values and config offsets. Restated on purpose so
 * that the guest model shares no code with the device it tests.
 *
 * @module
 */

/** Feature bits the guest driver knows (`VIRTIO_BLK_F_*`). */
export const VIRTIO_BLK_F = {
  /** `size_max` valid. */
  SIZE_MAX: 1,
  /** `seg_max` valid. */
  SEG_MAX: 2,
  /** `geometry` valid. */
  GEOMETRY: 4,
  /** Read-only disk. */
  RO: 5,
  /** `blk_size` valid. */
  BLK_SIZE: 6,
  /** FLUSH command. */
  FLUSH: 9,
  /** Topology fields valid. */
  TOPOLOGY: 10,
  /** `writeback` writable. */
  CONFIG_WCE: 11,
  /** Several request queues. */
  MQ: 12,
  /** DISCARD command. */
  DISCARD: 13,
  /** WRITE_ZEROES command. */
  WRITE_ZEROES: 14,
} as const;

/** Request types (`VIRTIO_BLK_T_*`). */
export const VIRTIO_BLK_T = {
  /** Read. */
  IN: 0,
  /** Write. */
  OUT: 1,
  /** Flush the write cache. */
  FLUSH: 4,
  /** Device id (serial). */
  GET_ID: 8,
  /** Discard ranges. */
  DISCARD: 11,
  /** Write zeroes over ranges. */
  WRITE_ZEROES: 13,
} as const;

/** Status byte values (`VIRTIO_BLK_S_*`). */
export const VIRTIO_BLK_S = {
  /** Success. */
  OK: 0,
  /** I/O error. */
  IOERR: 1,
  /** Unsupported. */
  UNSUPP: 2,
} as const;

/** `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** `VIRTIO_BLK_ID_BYTES`. */
export const VIRTIO_BLK_ID_BYTES = 20;
/** The protocol sector size (`SECTOR_SIZE`). */
export const SECTOR_SIZE = 512;

/** Offsets in `struct virtio_blk_config`. */
export const VIRTIO_BLK_CONFIG = {
  /** le64 capacity (sectors). */
  capacity: 0x00,
  /** le32 size_max. */
  size_max: 0x08,
  /** le32 seg_max. */
  seg_max: 0x0c,
  /** le16 geometry.cylinders. */
  cylinders: 0x10,
  /** u8 geometry.heads. */
  heads: 0x12,
  /** u8 geometry.sectors. */
  sectors: 0x13,
  /** le32 blk_size. */
  blk_size: 0x14,
  /** u8 physical_block_exp. */
  physical_block_exp: 0x18,
  /** u8 alignment_offset. */
  alignment_offset: 0x19,
  /** le16 min_io_size. */
  min_io_size: 0x1a,
  /** le32 opt_io_size. */
  opt_io_size: 0x1c,
  /** u8 writeback (`wce`). */
  wce: 0x20,
  /** le16 num_queues. */
  num_queues: 0x22,
  /** le32 max_discard_sectors. */
  max_discard_sectors: 0x24,
  /** le32 max_discard_seg. */
  max_discard_seg: 0x28,
  /** le32 discard_sector_alignment. */
  discard_sector_alignment: 0x2c,
  /** le32 max_write_zeroes_sectors. */
  max_write_zeroes_sectors: 0x30,
  /** le32 max_write_zeroes_seg. */
  max_write_zeroes_seg: 0x34,
  /** u8 write_zeroes_may_unmap. */
  write_zeroes_may_unmap: 0x38,
} as const;
