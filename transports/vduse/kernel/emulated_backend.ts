/**
 * One userspace process on the emulated VDUSE kernel: an fd table over the
 * control file, device files, IOTLB files and eventfds, implementing
 * {@linkcode VduseBackend} so the daemon runs on it as on a real kernel.
 *
 * @module
 */
import type { VduseBackend } from "../backend.ts";
import { LinuxErrno } from "../errno.ts";
import type { VduseFile } from "./iotlb.ts";
import type { VduseEventfd, VduseProcess } from "./process.ts";
import { VduseControlFile, type VduseKernel } from "./vduse_kernel.ts";
import type { VduseDev } from "./vduse_dev.ts";

class EventFd implements VduseEventfd {
  count = 0;
  constructor(readonly onSignal: () => void) {}
  signal(): void {
    this.count++;
    this.onSignal();
  }
}

class IotlbFileHandle {
  constructor(readonly file: VduseFile, readonly perm: number) {}
}

type OpenFile = VduseControlFile | VduseDev | IotlbFileHandle | EventFd;

/**
 * A process's fd table on a {@linkcode VduseKernel}. Wakeups are delivered
 * synchronously: `watch` callbacks run inside the kernel's `wake_up`.
 *
 * @example
 * ```ts ignore
 * const backend = new EmulatedVduseBackend(kernel);
 * const fd = backend.openControl();
 * ```
 */
export class EmulatedVduseBackend implements VduseBackend, VduseProcess {
  /** The kernel. */
  readonly kernel: VduseKernel;
  /** Live mmaps (views handed out and not yet unmapped). */
  readonly mappings: Set<Uint8Array> = new Set();
  readonly #fds = new Map<number, OpenFile>();
  readonly #user = new Map<number, Uint8Array>();
  #nextUser = 0x7f00_0000_0000;

  /** Starts a process on `kernel`. */
  constructor(kernel: VduseKernel) {
    this.kernel = kernel;
  }

  /** Open fds (for leak checks in tests). */
  get openFds(): number {
    return this.#fds.size;
  }

  #install(file: OpenFile): number {
    let fd = 3;
    while (this.#fds.has(fd)) fd++;
    this.#fds.set(fd, file);
    return fd;
  }

  /** See {@linkcode VduseBackend.openControl}. */
  openControl(): number {
    return this.#install(this.kernel.openControl());
  }

  /** See {@linkcode VduseBackend.openDevice}. */
  openDevice(name: string): number {
    const dev = this.kernel.openDevice(name);
    return typeof dev === "number" ? dev : this.#install(dev);
  }

  /** See {@linkcode VduseBackend.close}. */
  close(fd: number): number {
    const file = this.#fds.get(fd);
    if (file === undefined) return -LinuxErrno.EBADF;
    this.#fds.delete(fd);
    if (!(file instanceof VduseControlFile) && "release" in file) file.release();
    return 0;
  }

  /** See {@linkcode VduseBackend.ioctl}. */
  ioctl(fd: number, request: number, arg: Uint8Array | null): number {
    const file = this.#fds.get(fd);
    if (file === undefined) return -LinuxErrno.EBADF;
    if (file instanceof VduseControlFile) return file.ioctl(request, arg);
    if (file instanceof EventFd || file instanceof IotlbFileHandle) return -LinuxErrno.ENOTTY;
    return file.ioctl(request, arg, this);
  }

  /** See {@linkcode VduseBackend.read}. */
  read(fd: number, buf: Uint8Array): number {
    const file = this.#fds.get(fd);
    if (file === undefined) return -LinuxErrno.EBADF;
    if (file instanceof VduseControlFile || file instanceof IotlbFileHandle) {
      return -LinuxErrno.EINVAL;
    }
    if (file instanceof EventFd) {
      if (file.count === 0) return -LinuxErrno.EAGAIN;
      if (buf.length < 8) return -LinuxErrno.EINVAL;
      new DataView(buf.buffer, buf.byteOffset, 8).setBigUint64(0, BigInt(file.count), true);
      file.count = 0;
      return 8;
    }
    return file.read(buf);
  }

  /** See {@linkcode VduseBackend.write}. */
  write(fd: number, buf: Uint8Array): number {
    const file = this.#fds.get(fd);
    if (file === undefined) return -LinuxErrno.EBADF;
    if (file instanceof VduseControlFile || file instanceof IotlbFileHandle) {
      return -LinuxErrno.EINVAL;
    }
    if (file instanceof EventFd) {
      file.signal();
      return 8;
    }
    return file.write(buf);
  }

  /** See {@linkcode VduseBackend.watch}. */
  watch(fd: number, onReady: () => void): () => void {
    const file = this.#fds.get(fd);
    if (file === undefined || !("channel" in file)) return () => {};
    return file.channel.addWaiter(onReady);
  }

  /** `poll()` bits of a device fd (0 for other fds). */
  poll(fd: number): number {
    const file = this.#fds.get(fd);
    return file !== undefined && "channel" in file ? file.poll() : 0;
  }

  /** See {@linkcode VduseBackend.mmap}. */
  mmap(fd: number, offset: number, length: number, _prot: number): Uint8Array | number {
    const file = this.#fds.get(fd);
    if (file === undefined) return -LinuxErrno.EBADF;
    if (!(file instanceof IotlbFileHandle)) return -LinuxErrno.ENODEV;
    const view = file.file.mmap(offset, length);
    if (view === null) return -LinuxErrno.EINVAL;
    this.mappings.add(view);
    return view;
  }

  /** See {@linkcode VduseBackend.munmap}. */
  munmap(view: Uint8Array): void {
    this.mappings.delete(view);
  }

  /** See {@linkcode VduseBackend.eventfd}. */
  eventfd(onSignal: () => void): number {
    return this.#install(new EventFd(onSignal));
  }

  /**
   * `mmap(MAP_ANONYMOUS)` in this process: page-aligned memory the process
   * owns, e.g. for `VDUSE_IOTLB_REG_UMEM`. Returns its user address and bytes.
   */
  allocUserMemory(size: number): { uaddr: number; bytes: Uint8Array } {
    const uaddr = this.#nextUser;
    const bytes = new Uint8Array(Math.ceil(size / 4096) * 4096);
    this.#user.set(uaddr, bytes);
    this.#nextUser += bytes.length + 4096;
    return { uaddr, bytes };
  }

  // ---- VduseProcess (what the kernel calls back during ioctls) ----

  /** See {@linkcode VduseProcess.installFile}. */
  installFile(file: VduseFile, perm: number): number {
    return this.#install(new IotlbFileHandle(file, perm));
  }

  /** See {@linkcode VduseProcess.eventfdCtx}. */
  eventfdCtx(fd: number): VduseEventfd | number {
    const file = this.#fds.get(fd);
    if (file === undefined) return -LinuxErrno.EBADF;
    return file instanceof EventFd ? file : -LinuxErrno.EINVAL;
  }

  /** See {@linkcode VduseProcess.pinUserPages}. */
  pinUserPages(uaddr: number, size: number): Uint8Array | null {
    for (const [base, bytes] of this.#user) {
      if (uaddr >= base && uaddr + size <= base + bytes.length) {
        return bytes.subarray(uaddr - base, uaddr - base + size);
      }
    }
    return null;
  }
}
