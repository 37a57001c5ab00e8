/**
 * The wrap-safe event index rule of VIRTIO_RING_F_EVENT_IDX, for split rings
 * (16-bit free-running indices) and packed rings (ring offset plus wrap counter).
 *
 * @module
 */

/**
 * True when moving an index from `oldIdx` to `newIdx` passes `eventIdx`, that is
 * when `eventIdx` lies in `[oldIdx, newIdx)` modulo 2^16: the spec's
 * `vring_need_event(event_idx, new_idx, old_idx)` from `virtio_ring.h`.
 *
 * Used by the device with `used_event` to decide on an interrupt, and by the
 * driver with `avail_event` to decide on a kick.
 *
 * @param eventIdx the index the other side asked to hear about
 * @param newIdx the index after the batch
 * @param oldIdx the index before the batch (at the previous check)
 * @returns whether the other side must be notified
 *
 * @example
 * ```ts
 * import { vringNeedEvent } from "@vireo/vireo";
 * console.log(vringNeedEvent(0, 1, 0)); // true: used idx became 1 with used_event 0
 * console.log(vringNeedEvent(0, 2, 1)); // false: index 0 was already passed
 * console.log(vringNeedEvent(0xffff, 1, 0xfffe)); // true across the 16-bit wrap
 * ```
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/**
 * The packed-ring form of {@linkcode vringNeedEvent}: true when the device's
 * used position moving from (`oldOff`, `oldWrap`) to (`newOff`, `newWrap`)
 * passes the descriptor named by the driver's `off_wrap` (bits 14:0 the ring
 * offset, bit 15 the wrap counter).
 *
 * Positions are compared exactly, as indices modulo `2 * size` (the wrap
 * counter starts at 1, so offset `o` with wrap 1 is index `o` and with wrap 0
 * index `size + o`). A batch moves the position by at most `size` slots, so
 * the comparison is unambiguous.
 *
 * @param offWrap the driver area's `off_wrap`
 * @param size the ring size
 * @param oldOff ring offset before the batch
 * @param oldWrap used wrap counter (0 or 1) before the batch
 * @param newOff ring offset after the batch
 * @param newWrap used wrap counter (0 or 1) after the batch
 * @returns whether the driver must be interrupted
 *
 * @example
 * ```ts
 * import { packedNeedEvent } from "@vireo/vireo";
 * // The driver wants to hear about slot 2 of the first pass (wrap 1).
 * const offWrap = 2 | (1 << 15);
 * console.log(packedNeedEvent(offWrap, 8, 0, 1, 3, 1)); // true: slots 0..2 were used
 * console.log(packedNeedEvent(offWrap, 8, 3, 1, 5, 1)); // false: already passed
 * ```
 */
export function packedNeedEvent(
  offWrap: number,
  size: number,
  oldOff: number,
  oldWrap: number,
  newOff: number,
  newWrap: number,
): boolean {
  const span = 2 * size;
  const event = (offWrap & 0x7fff) + ((offWrap & 0x8000) !== 0 ? 0 : size);
  const newPos = newOff + (newWrap !== 0 ? 0 : size);
  const oldPos = oldOff + (oldWrap !== 0 ? 0 : size);
  // event may be out of range when the driver wrote a bad offset: stay in [0, span).
  const sinceEvent = (((newPos - event - 1) % span) + span) % span;
  const moved = (newPos - oldPos + span) % span;
  return sinceEvent < moved;
}
