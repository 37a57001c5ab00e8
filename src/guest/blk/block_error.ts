/**
 * The error a guest block request fails with, carrying the Linux errno the
 * block layer would report.
 *
 * @module
 */

/** Linux errno values the block driver model reports (positive, as in errno-base.h). */
export const BlockErrno = {
  /** Operation not permitted. */
  EPERM: 1,
  /** I/O error (VIRTIO_BLK_S_IOERR, a broken device or queue). */
  EIO: 5,
  /** Out of memory (guest pages or kmalloc exhausted). */
  ENOMEM: 12,
  /** No such device (probe failed). */
  ENODEV: 19,
  /** Invalid argument. */
  EINVAL: 22,
  /** Read-only file system (a write to a read-only disk). */
  EROFS: 30,
  /** Operation not supported (VIRTIO_BLK_S_UNSUPP, or the feature is missing). */
  EOPNOTSUPP: 95,
} as const;

/**
 * A failed block request or probe: `errno` is what Linux's block layer
 * reports, `status` the virtio-blk status byte when the device gave one.
 */
export class BlockError extends Error {
  /** The Linux errno (positive). */
  readonly errno: number;
  /** The virtio-blk status byte, or -1 when the request never completed on the device. */
  readonly status: number;

  /** Creates an error with a readable message. */
  constructor(message: string, errno: number, status = -1) {
    super(message);
    this.name = "BlockError";
    this.errno = errno;
    this.status = status;
  }
}
