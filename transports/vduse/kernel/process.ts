/**
 * What the emulated VDUSE kernel needs from the calling process during an
 * ioctl: installing a new file descriptor (`receive_fd`), looking up an
 * eventfd (`eventfd_ctx_fdget`) and pinning user memory (`pin_user_pages`).
 *
 * @module
 */
import type { VduseFile } from "./iotlb.ts";

/** A kick eventfd as the kernel holds it (`struct eventfd_ctx`). */
export interface VduseEventfd {
  /** `eventfd_signal`: adds one to the counter and wakes the reader. */
  signal(): void;
}

/** The calling process, as an ioctl sees it. */
export interface VduseProcess {
  /**
   * Installs a new fd for `file` with the access of `perm` (`VDUSE_ACCESS_*`)
   * and returns it, or a negative errno.
   */
  installFile(file: VduseFile, perm: number): number;
  /** The eventfd behind `fd`, or -EBADF (no such fd) / -EINVAL (not an eventfd). */
  eventfdCtx(fd: number): VduseEventfd | number;
  /**
   * Pins `size` bytes of the process's memory at user address `uaddr` and
   * returns them, or `null` when they are not mapped.
   */
  pinUserPages(uaddr: number, size: number): Uint8Array | null;
}
