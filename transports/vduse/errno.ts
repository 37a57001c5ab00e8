/**
 * The Linux errno values the VDUSE uAPI returns, positive as in
 * `include/uapi/asm-generic/errno-base.h`. Emulated syscalls return them
 * negated (`-LinuxErrno.EINVAL`), as the raw kernel entry points do.
 *
 * @module
 */

/** Linux errno numbers used by VDUSE (x86_64 / asm-generic values). */
export const LinuxErrno = {
  /** Operation not permitted (broken device, missing capability). */
  EPERM: 1,
  /** No such file or directory (unknown request id, nothing registered, no vduse module). */
  ENOENT: 2,
  /** Interrupted system call. */
  EINTR: 4,
  /** I/O error (a message that failed or timed out). */
  EIO: 5,
  /** Bad file descriptor. */
  EBADF: 9,
  /** Try again (no message pending on a non-blocking read). */
  EAGAIN: 11,
  /** Out of memory. */
  ENOMEM: 12,
  /** Permission denied (opening /dev/vduse/* without the rights). */
  EACCES: 13,
  /** Bad address (a user buffer too short for the structure). */
  EFAULT: 14,
  /** Device or resource busy. */
  EBUSY: 16,
  /** File exists (a device of that name exists). */
  EEXIST: 17,
  /** No such device. */
  ENODEV: 19,
  /** Not a directory. */
  ENOTDIR: 20,
  /** Invalid argument. */
  EINVAL: 22,
  /** Inappropriate ioctl for device (what userspace sees for the kernel's ENOIOCTLCMD). */
  ENOTTY: 25,
  /** No buffer space available (vhost-vdpa group index check). */
  ENOBUFS: 105,
  /** Function not implemented (no such system call). */
  ENOSYS: 38,
  /** Operation not supported. */
  EOPNOTSUPP: 95,
  /** Connection timed out. */
  ETIMEDOUT: 110,
} as const;

/** One of the {@linkcode LinuxErrno} values. */
export type LinuxErrno = typeof LinuxErrno[keyof typeof LinuxErrno];

/**
 * The errno's symbolic name for messages and test output: `errnoName(-22)` is
 * `"-EINVAL"`, `errnoName(0)` is `"0"`.
 *
 * @param value a syscall result (negative errno) or errno
 * @returns the name with the sign kept, or `errno N` when unknown
 */
export function errnoName(value: number): string {
  const code = Math.abs(value);
  for (const [name, n] of Object.entries(LinuxErrno)) {
    if (n === code) return value < 0 ? `-${name}` : name;
  }
  if (code === 0) return "0";
  return value < 0 ? `-errno ${code}` : `errno ${code}`;
}
