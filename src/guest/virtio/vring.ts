/**
 * Ring constants and small helpers shared by the guest's split and packed
 * virtqueues (names as in Linux's `include/uapi/linux/virtio_ring.h`). Internal
 * to the guest model: the device side has its own copy in `src/queue`, so the
 * two sides check each other instead of sharing a mistake.
 *
 * @module
 */
import type { DmaDirection } from "../dma/dma_api.ts";
import type { VirtqueueMapper } from "./map_ops.ts";
import type { SgEntry } from "./virtqueue.ts";

/** Descriptor flag: the chain continues. */
export const F_NEXT = 1;
/** Descriptor flag: device-writable buffer. */
export const F_WRITE = 2;
/** Descriptor flag: the buffer is an indirect descriptor table. */
export const F_INDIRECT = 4;
/** Packed descriptor flag: AVAIL (bit 7). */
export const F_AVAIL = 0x80;
/** Packed descriptor flag: USED (bit 15). */
export const F_USED = 0x8000;
/** Split `avail.flags`: do not interrupt me. */
export const AVAIL_F_NO_INTERRUPT = 1;
/** Split `used.flags`: do not notify me. */
export const USED_F_NO_NOTIFY = 1;
/** Packed event suppression: enabled. */
export const EVENT_FLAG_ENABLE = 0;
/** Packed event suppression: disabled. */
export const EVENT_FLAG_DISABLE = 1;
/** Packed event suppression: at the descriptor in `off_wrap`. */
export const EVENT_FLAG_DESC = 2;
/** Largest ring size. */
export const MAX_QUEUE_SIZE = 32768;
/** `DMA_TO_DEVICE`. */
export const TO_DEVICE: DmaDirection = 1;
/** `DMA_FROM_DEVICE`. */
export const FROM_DEVICE: DmaDirection = 2;
/** `DMA_MAPPING_ERROR` (see `dma_api.ts`). */
export const MAPPING_ERROR = -1;

/** `vring_need_event`: true when moving from `oldIdx` to `newIdx` passes `eventIdx` (16-bit). */
export function needEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** `vring_size(num, align)`: bytes of a split ring laid out in one block. */
export function vringSize(num: number, align: number): number {
  return alignUp(16 * num + 2 * (3 + num), align) + 2 * 3 + 8 * num;
}

/** Rounds `n` up to a multiple of the power of two `align`. */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** Writes a non-negative integer below 2^53 as a little-endian 64-bit value. */
export function writeLe64(dv: DataView, offset: number, value: number): void {
  dv.setUint32(offset, value >>> 0, true);
  dv.setUint32(
    offset + 4,
    value > 0xffff_ffff || value < 0 ? Math.floor(value / 0x1_0000_0000) : 0,
    true,
  );
}

/**
 * Checks a scatter list before anything is mapped, so misuse never leaves a
 * half-built chain behind.
 *
 * @throws {TypeError} when `sgs` is not an array
 * @throws {RangeError} when an entry's address or length is out of range
 */
export function checkSgs(sgs: readonly SgEntry[], what: string): void {
  if (!Array.isArray(sgs)) {
    throw new TypeError(`Cannot add a buffer: the ${what} scatter list is not an array`);
  }
  for (let i = 0; i < sgs.length; i++) {
    const sg = sgs[i];
    const addr = sg.addr;
    const length = sg.length;
    if (!(addr >= 0 && addr <= Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(
        `Cannot add a buffer: ${what} entry ${i} has address ${addr}, not an integer in [0, 2^53)`,
      );
    }
    if ((length >>> 0) !== length) {
      throw new RangeError(
        `Cannot add a buffer: ${what} entry ${i} has length ${length}, not a 32-bit unsigned integer`,
      );
    }
  }
}

/**
 * Returns a per-buffer record of indirect entries (address, length, flags per
 * entry) with room for `count` entries, reusing the previous one when it is
 * big enough: the kernel keeps the same data beside the indirect table.
 */
export function stashFor(
  stashes: (Float64Array | undefined)[],
  id: number,
  count: number,
): Float64Array {
  const s = stashes[id];
  if (s !== undefined && s.length >= count * 3) return s;
  const grown = new Float64Array(Math.max(count, 8) * 3);
  stashes[id] = grown;
  return grown;
}

/** Unmaps the first `count` indirect entries recorded in `stash` (skipping premapped ones). */
export function unmapStash(
  mapper: VirtqueueMapper,
  stash: Float64Array | null | undefined,
  count: number,
): void {
  if (stash === null || stash === undefined) return;
  for (let k = 0; k < count; k++) {
    const addr = stash[3 * k];
    if (addr !== MAPPING_ERROR) {
      mapper.unmapPage(
        addr,
        stash[3 * k + 1],
        (stash[3 * k + 2] & F_WRITE) !== 0 ? FROM_DEVICE : TO_DEVICE,
        0,
      );
    }
  }
}
