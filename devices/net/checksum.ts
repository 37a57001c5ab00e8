/**
 * The Internet checksum (RFC 1071) as virtio-net's NEEDS_CSUM asks for it:
 * the 16-bit ones' complement sum from `csum_start` to the end of the frame,
 * stored at `csum_start + csum_offset` (the driver pre-seeds that field with
 * the pseudo-header sum).
 *
 * @module
 */

/**
 * Adds the bytes `bytes[start..end)` to a running ones' complement sum of
 * big-endian 16-bit words. `odd` says whether `start` falls on the low byte
 * of a word (an odd number of bytes were summed before).
 *
 * @param sum the running sum (unfolded; stays below 2^53 for any frame)
 * @param bytes the data
 * @param start first index
 * @param end one past the last index
 * @param odd true when an odd number of bytes were summed before `start`
 * @returns the new unfolded sum
 */
export function addChecksum(
  sum: number,
  bytes: Uint8Array,
  start: number,
  end: number,
  odd: boolean,
): number {
  let i = start;
  if (odd && i < end) sum += bytes[i++];
  for (; i + 1 < end; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  if (i < end) sum += bytes[i] << 8;
  return sum;
}

/**
 * Folds an unfolded sum to 16 bits and complements it: the value to store in
 * a checksum field. A result of 0 is stored as 0xffff (Linux's
 * `CSUM_MANGLED_0`), which means the same for TCP and keeps a UDP checksum
 * from reading as "none".
 *
 * @param sum an unfolded sum from {@linkcode addChecksum}
 * @returns the 16-bit checksum to store big-endian
 */
export function foldChecksum(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  const c = ~sum & 0xffff;
  return c === 0 ? 0xffff : c;
}

/**
 * Finishes a partial checksum in a frame held in host memory: what a device
 * does for a NEEDS_CSUM frame when the receiver cannot take partial checksums.
 *
 * @param frame the Ethernet frame (without virtio_net_hdr)
 * @param csumStart where summing starts
 * @param csumOffset where the checksum field is, relative to `csumStart`
 * @returns false (changing nothing) when the field does not fit in the frame
 *
 * @example
 * ```ts
 * import { finishChecksum } from "@vireo/vireo/net";
 * const frame = new Uint8Array([0x45, 0x00, 0x00, 0x00, 0x12, 0x34]);
 * finishChecksum(frame, 0, 2);
 * console.log(frame[2].toString(16), frame[3].toString(16)); // "a8" "cb"
 * ```
 */
export function finishChecksum(frame: Uint8Array, csumStart: number, csumOffset: number): boolean {
  const at = csumStart + csumOffset;
  if (at + 2 > frame.length) return false;
  const c = foldChecksum(addChecksum(0, frame, csumStart, frame.length, false));
  frame[at] = c >>> 8;
  frame[at + 1] = c & 0xff;
  return true;
}
