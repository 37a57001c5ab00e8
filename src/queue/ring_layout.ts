/**
 * Byte layout of split and packed virtqueues (virtio 1.x §2.7, §2.8): flag
 * bits, field offsets, area sizes and alignments. The names follow Linux's
 * `include/uapi/linux/virtio_ring.h`, so a reader with the spec open finds
 * every constant. All fields are little-endian.
 *
 * @module
 */

/** Descriptor flag: the chain continues at `next` (split) or the next ring slot (packed). */
export const VRING_DESC_F_NEXT = 1;
/** Descriptor flag: the buffer is device-writable (otherwise device-readable). */
export const VRING_DESC_F_WRITE = 2;
/** Descriptor flag: the buffer is a table of indirect descriptors. */
export const VRING_DESC_F_INDIRECT = 4;
/** Packed descriptor flag (bit 7): the driver's wrap counter when it made the descriptor available. */
export const VRING_PACKED_DESC_F_AVAIL = 0x80;
/** Packed descriptor flag (bit 15): equal to AVAIL when the device has used the descriptor. */
export const VRING_PACKED_DESC_F_USED = 0x8000;

/** Split `avail.flags` bit: the driver asks not to be interrupted (ignored with EVENT_IDX). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** Split `used.flags` bit: the device asks not to be notified (not used with EVENT_IDX). */
export const VRING_USED_F_NO_NOTIFY = 1;

/** Packed event suppression flags: notifications enabled. */
export const VRING_PACKED_EVENT_FLAG_ENABLE = 0;
/** Packed event suppression flags: notifications disabled. */
export const VRING_PACKED_EVENT_FLAG_DISABLE = 1;
/** Packed event suppression flags: notify for the descriptor at `off_wrap` (needs EVENT_IDX). */
export const VRING_PACKED_EVENT_FLAG_DESC = 2;
/** Bit of `off_wrap` that holds the wrap counter; bits 14:0 are the ring offset. */
export const VRING_PACKED_EVENT_F_WRAP_CTR = 15;

/** The largest ring size either layout allows. */
export const VIRTQUEUE_MAX_SIZE = 32768;
/** Size in bytes of one descriptor (split table, packed ring and indirect tables alike). */
export const VRING_DESC_SIZE = 16;

/** Offset of `addr` (le64) in a descriptor. */
export const DESC_ADDR = 0;
/** Offset of `len` (le32) in a descriptor. */
export const DESC_LEN = 8;
/** Offset of `flags` (le16) in a split descriptor. */
export const SPLIT_DESC_FLAGS = 12;
/** Offset of `next` (le16) in a split descriptor. */
export const SPLIT_DESC_NEXT = 14;
/** Offset of the buffer `id` (le16) in a packed descriptor. */
export const PACKED_DESC_ID = 12;
/** Offset of `flags` (le16) in a packed descriptor. */
export const PACKED_DESC_FLAGS = 14;

/** Offset of `flags` (le16) in the split available ring. */
export const SPLIT_AVAIL_FLAGS = 0;
/** Offset of `idx` (le16) in the split available ring. */
export const SPLIT_AVAIL_IDX = 2;
/** Offset of `ring[0]` (le16 entries) in the split available ring. */
export const SPLIT_AVAIL_RING = 4;
/** Offset of `flags` (le16) in the split used ring. */
export const SPLIT_USED_FLAGS = 0;
/** Offset of `idx` (le16) in the split used ring. */
export const SPLIT_USED_IDX = 2;
/** Offset of `ring[0]` (8-byte `{le32 id, le32 len}` elements) in the split used ring. */
export const SPLIT_USED_RING = 4;
/** Size in bytes of one split used element. */
export const SPLIT_USED_ELEM_SIZE = 8;

/** Offset of `off_wrap` (le16) in a packed event suppression area. */
export const PACKED_EVENT_OFF_WRAP = 0;
/** Offset of `flags` (le16) in a packed event suppression area. */
export const PACKED_EVENT_FLAGS = 2;
/** Size in bytes of a packed event suppression area. */
export const PACKED_EVENT_SIZE = 4;

/** Required alignment of the split descriptor table. */
export const SPLIT_DESC_ALIGN = 16;
/** Required alignment of the split available ring. */
export const SPLIT_AVAIL_ALIGN = 2;
/** Required alignment of the split used ring. */
export const SPLIT_USED_ALIGN = 4;
/** Required alignment of the packed descriptor ring. */
export const PACKED_DESC_ALIGN = 16;
/** Required alignment of the packed event suppression areas. */
export const PACKED_EVENT_ALIGN = 4;

/** Size in bytes of a split descriptor table or packed descriptor ring of `size` entries. */
export function descTableSize(size: number): number {
  return VRING_DESC_SIZE * size;
}

/** Size in bytes of a split available ring, including `used_event` when `eventIdx`. */
export function splitAvailSize(size: number, eventIdx: boolean): number {
  return SPLIT_AVAIL_RING + 2 * size + (eventIdx ? 2 : 0);
}

/** Size in bytes of a split used ring, including `avail_event` when `eventIdx`. */
export function splitUsedSize(size: number, eventIdx: boolean): number {
  return SPLIT_USED_RING + SPLIT_USED_ELEM_SIZE * size + (eventIdx ? 2 : 0);
}

/** Offset of `used_event` (le16) in a split available ring of `size` entries. */
export function splitUsedEventOffset(size: number): number {
  return SPLIT_AVAIL_RING + 2 * size;
}

/** Offset of `avail_event` (le16) in a split used ring of `size` entries. */
export function splitAvailEventOffset(size: number): number {
  return SPLIT_USED_RING + SPLIT_USED_ELEM_SIZE * size;
}
