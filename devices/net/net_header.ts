import { NetGso, NetHdr, NetHdrFlag } from "./constants.ts";

/**
 * The offload metadata of one frame: the fields of `struct virtio_net_hdr_v1`
 * that travel with a frame from a transmitting device to a receiving one
 * (`num_buffers` is per receive and is not part of it).
 *
 * A mutable object so the hot path reuses one per queue instead of allocating.
 *
 * @example
 * ```ts
 * import { NetHeader } from "@vireo/vireo/net";
 * const h = new NetHeader();
 * h.decode(new Uint8Array([1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0]), 0);
 * console.log(h.needsCsum, h.csumStart, h.csumOffset); // true 34 16
 * ```
 */
export class NetHeader {
  /** `flags` (NEEDS_CSUM, DATA_VALID, ...). */
  flags = 0;
  /** `gso_type` ({@linkcode NetGso}, ECN OR-ed in). */
  gsoType = 0;
  /** `hdr_len`: a hint unless GUEST_HDRLEN was negotiated. */
  hdrLen = 0;
  /** `gso_size`: the MSS of a GSO frame. */
  gsoSize = 0;
  /** `csum_start`. */
  csumStart = 0;
  /** `csum_offset`. */
  csumOffset = 0;

  /** True when NEEDS_CSUM is set. */
  get needsCsum(): boolean {
    return (this.flags & NetHdrFlag.NEEDS_CSUM) !== 0;
  }

  /** True when the frame is a GSO frame (`gso_type` other than NONE). */
  get isGso(): boolean {
    return (this.gsoType & ~NetGso.ECN) !== NetGso.NONE;
  }

  /** Back to "no offload". */
  clear(): void {
    this.flags = 0;
    this.gsoType = 0;
    this.hdrLen = 0;
    this.gsoSize = 0;
    this.csumStart = 0;
    this.csumOffset = 0;
  }

  /** Copies every field from `other`. */
  copyFrom(other: NetHeader): void {
    this.flags = other.flags;
    this.gsoType = other.gsoType;
    this.hdrLen = other.hdrLen;
    this.gsoSize = other.gsoSize;
    this.csumStart = other.csumStart;
    this.csumOffset = other.csumOffset;
  }

  /**
   * Reads the fields from 12 header bytes at `bytes[offset]` (little-endian).
   *
   * @throws {RangeError} when fewer than 12 bytes follow `offset`
   */
  decode(bytes: Uint8Array, offset: number): void {
    if (offset < 0 || offset + NetHdr.SIZE > bytes.length) {
      throw new RangeError(`Cannot decode a virtio_net_hdr at ${offset}: 12 bytes are needed`);
    }
    this.flags = bytes[offset];
    this.gsoType = bytes[offset + 1];
    this.hdrLen = bytes[offset + 2] | (bytes[offset + 3] << 8);
    this.gsoSize = bytes[offset + 4] | (bytes[offset + 5] << 8);
    this.csumStart = bytes[offset + 6] | (bytes[offset + 7] << 8);
    this.csumOffset = bytes[offset + 8] | (bytes[offset + 9] << 8);
  }

  /**
   * Writes the fields as a 12-byte header at `bytes[offset]` with
   * `num_buffers` = `numBuffers`.
   *
   * @throws {RangeError} when fewer than 12 bytes follow `offset`
   */
  encode(bytes: Uint8Array, offset: number, numBuffers: number): void {
    if (offset < 0 || offset + NetHdr.SIZE > bytes.length) {
      throw new RangeError(`Cannot encode a virtio_net_hdr at ${offset}: 12 bytes are needed`);
    }
    bytes[offset] = this.flags;
    bytes[offset + 1] = this.gsoType;
    bytes[offset + 2] = this.hdrLen;
    bytes[offset + 3] = this.hdrLen >>> 8;
    bytes[offset + 4] = this.gsoSize;
    bytes[offset + 5] = this.gsoSize >>> 8;
    bytes[offset + 6] = this.csumStart;
    bytes[offset + 7] = this.csumStart >>> 8;
    bytes[offset + 8] = this.csumOffset;
    bytes[offset + 9] = this.csumOffset >>> 8;
    bytes[offset + 10] = numBuffers;
    bytes[offset + 11] = numBuffers >>> 8;
  }
}
