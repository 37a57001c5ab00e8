/**
 * Counters of a virtio-blk device: one for every request type, every status
 * and every error path, so a misbehaving guest or backend can be diagnosed
 * from numbers alone.
 *
 * @module
 */

/** The counters a {@linkcode VirtioBlk} keeps; plain mutable numbers, cheap to read. */
export interface VirtioBlkStats {
  /** IN requests received. */
  readRequests: number;
  /** OUT requests received. */
  writeRequests: number;
  /** FLUSH requests received. */
  flushRequests: number;
  /** GET_ID requests received. */
  getIdRequests: number;
  /** DISCARD requests received. */
  discardRequests: number;
  /** WRITE_ZEROES requests received. */
  writeZeroesRequests: number;
  /** Requests completed with VIRTIO_BLK_S_OK. */
  completedOk: number;
  /** Requests completed with VIRTIO_BLK_S_IOERR. */
  ioErrors: number;
  /** Requests completed with VIRTIO_BLK_S_UNSUPP (unknown type, flag or feature). */
  unsupported: number;
  /** Bytes read from the backend into guest memory by successful IN requests. */
  bytesRead: number;
  /** Bytes written to the backend by successful OUT requests. */
  bytesWritten: number;
  /** Requests refused because a range reaches past the capacity. */
  outOfRange: number;
  /** Requests refused because a length or sector is not a multiple of the block size. */
  misaligned: number;
  /** Writes refused because the disk is read-only. */
  readOnlyWrites: number;
  /** DISCARD / WRITE_ZEROES payloads that are empty, not whole segments or over a limit. */
  badSegments: number;
  /** Backend operations that threw or rejected. */
  backendErrors: number;
  /** Request data (header, payload, buffers) the device could not reach by DMA. */
  dataDmaFaults: number;
  /** Times a queue reached its in-flight bound and stopped popping. */
  throttled: number;
  /** Completions dropped because their queue or the device was reset meanwhile. */
  droppedCompletions: number;
  /** Times the guest broke the device (malformed chain, ring fault). */
  deviceErrors: number;
  /** The most requests in flight at once, over all queues. */
  peakInFlight: number;
  /** The message of the last backend error (empty if none). */
  lastBackendError: string;
}

/**
 * A fresh set of zeroed counters.
 *
 * @returns counters, all 0
 *
 * @example
 * ```ts
 * import { createVirtioBlkStats } from "@vireo/vireo/blk";
 * console.log(createVirtioBlkStats().ioErrors); // 0
 * ```
 */
export function createVirtioBlkStats(): VirtioBlkStats {
  return {
    readRequests: 0,
    writeRequests: 0,
    flushRequests: 0,
    getIdRequests: 0,
    discardRequests: 0,
    writeZeroesRequests: 0,
    completedOk: 0,
    ioErrors: 0,
    unsupported: 0,
    bytesRead: 0,
    bytesWritten: 0,
    outOfRange: 0,
    misaligned: 0,
    readOnlyWrites: 0,
    badSegments: 0,
    backendErrors: 0,
    dataDmaFaults: 0,
    throttled: 0,
    droppedCompletions: 0,
    deviceErrors: 0,
    peakInFlight: 0,
    lastBackendError: "",
  };
}
