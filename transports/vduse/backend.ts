/**
 * The system-call surface the VDUSE daemon needs, as bytes: the same calls a
 * C daemon makes on `/dev/vduse/*`. The emulated kernel implements it
 * ({@linkcode EmulatedVduseBackend}); `ffi_backend_deno.ts` implements it over
 * the real `libc` calls and drives a real `/dev/vduse` (Deno only).
 *
 * Every call returns what the syscall returns: a non-negative result or a
 * negative errno (`-LinuxErrno.EINVAL`), never throws for kernel errors.
 *
 * @module
 */

/** `PROT_READ`. */
export const PROT_READ = 1;
/** `PROT_WRITE`. */
export const PROT_WRITE = 2;

/** The daemon's view of the operating system. */
export interface VduseBackend {
  /** `open("/dev/vduse/control", O_RDWR)`: an fd or a negative errno. */
  openControl(): number;
  /** `open("/dev/vduse/<name>", O_RDWR | O_NONBLOCK)`: an fd or a negative errno. */
  openDevice(name: string): number;
  /** `close(fd)`. */
  close(fd: number): number;
  /**
   * `ioctl(fd, request, arg)`: `arg` is the argument's memory (read and
   * written in place), `null` for argument-less ioctls.
   */
  ioctl(fd: number, request: number, arg: Uint8Array | null): number;
  /** `read(fd, buf)`: bytes read, or -EAGAIN when no request is pending. */
  read(fd: number, buf: Uint8Array): number;
  /** `write(fd, buf)`: bytes written or a negative errno. */
  write(fd: number, buf: Uint8Array): number;
  /**
   * Polls `fd` for POLLIN / POLLERR: `onReady` runs whenever a request
   * becomes readable or the device breaks (the emulated kernel calls it
   * synchronously). Returns a function that stops watching.
   */
  watch(fd: number, onReady: () => void): () => void;
  /**
   * `mmap(NULL, length, prot, MAP_SHARED, fd, offset)`: a view of the mapped
   * bytes, or a negative errno.
   */
  mmap(fd: number, offset: number, length: number, prot: number): Uint8Array | number;
  /** `munmap` of a view from {@linkcode VduseBackend.mmap}. */
  munmap(view: Uint8Array): void;
  /**
   * `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)` whose signals call `onSignal`
   * (the kick callback): an fd or a negative errno.
   */
  eventfd(onSignal: () => void): number;
  /**
   * Resolves once no system call in flight still holds a file this process
   * closed: a `poll(2)` sleeping on a device fd keeps the kernel's file
   * reference (and VDUSE refuses DESTROY_DEV while the device is open) until
   * it returns. Optional: backends whose calls are synchronous need none.
   */
  quiesce?(): Promise<void>;
}
