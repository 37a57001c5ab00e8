/**
 * A {@linkcode VduseBackend} over a real Linux `/dev/vduse`: the same system
 * calls a C daemon makes (`open`, `ioctl`, `read`, `write`, `mmap`,
 * `eventfd`, `poll`), made through Deno's FFI on `libc.so.6`. The daemon runs
 * on it unchanged, so vireo's device models serve the host kernel the way
 * QEMU's libvduse and DPDK do.
 *
 * Readiness comes from one `poll(2)` loop that runs on a Deno FFI worker
 * thread (a nonblocking symbol), so the JavaScript thread stays free: the
 * device fd's requests and every kick eventfd are handled on the event loop
 * as soon as poll returns. A private wake eventfd restarts the poll when the
 * watched set changes.
 *
 * Deno-only (FFI): needs `--allow-ffi` (and `--allow-read`/`--allow-write`
 * for nothing else: the files are opened by libc).
 *
 * @module
 */
import type { VduseBackend } from "./backend.ts";
import { LinuxErrno } from "./errno.ts";

const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const POLLIN = 0x001;
const POLLERR = 0x008;
const POLLHUP = 0x010;
const POLLNVAL = 0x020;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
const PROT_READ_WRITE = 3;
/** An eventfd increment of 1 (a little-endian u64), written to signal. */
const ONE = new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0]);
/** `struct pollfd` is `int fd; short events; short revents`. */
const POLLFD_SIZE = 8;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** How to create an {@linkcode FfiVduseBackend}. */
export interface FfiVduseBackendOptions {
  /** The C library to load (`libc.so.6`). */
  libc?: string;
  /** Where the VDUSE character devices live (`/dev/vduse`); tests point it elsewhere. */
  devDir?: string;
  /**
   * How long an unmapped region's addresses stay reserved (5000 ms): `munmap`
   * first swaps the VDUSE pages for anonymous ones at the same address, so an
   * asynchronous backend operation still writing into a view of a region the
   * kernel just invalidated (UPDATE_IOTLB during I/O) lands in scratch memory
   * instead of crashing the process; the range is released after this delay.
   */
  unmapGraceMs?: number;
  /** Longest single poll wait in milliseconds (1000); the loop re-polls after it. */
  pollTimeoutMs?: number;
  /** Called with a sentence when a watched fd reports POLLERR/POLLHUP/POLLNVAL. */
  onPollError?: (fd: number, what: string) => void;
  /** Called when a watch or kick callback throws (default: `console.error`); the loop goes on. */
  onCallbackError?: (error: unknown) => void;
}

interface Watch {
  fd: number;
  /** Eventfds are drained before their callback runs; device fds are not. */
  eventfd: boolean;
  run: () => void;
}

interface Mapping {
  pointer: Deno.PointerObject;
  length: number;
}

/**
 * The daemon's system calls on a real kernel.
 *
 * @example
 * ```ts ignore
 * const backend = FfiVduseBackend.open();
 * const daemon = new VduseDaemon(backend, new VirtioBlk({ backend: disk }), { name: "vda" });
 * if (daemon.start() !== 0) throw new Error(daemon.lastError);
 * // ... `vdpa dev add name vda mgmtdev vduse`, serve, then:
 * daemon.stop();
 * await backend.shutdown();
 * ```
 */
export class FfiVduseBackend implements VduseBackend {
  /** Where the VDUSE devices live. */
  readonly devDir: string;
  /** Poll loop iterations so far. */
  polls = 0;
  readonly #lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  readonly #c: Libc;
  readonly #pollTimeoutMs: number;
  readonly #unmapGraceMs: number;
  readonly #retiring = new Set<Mapping>();
  readonly #onPollError: (fd: number, what: string) => void;
  readonly #onCallbackError: (error: unknown) => void;
  readonly #watches = new Map<number, Watch>();
  readonly #mappings = new Map<ArrayBuffer, Mapping>();
  readonly #counter = new Uint8Array(8);
  #wakeFd = -1;
  /** Waiting for the poll in flight to return (see `quiesce`). */
  #quiescers: (() => void)[] = [];
  #loop: Promise<void> | null = null;
  #closed = false;

  /**
   * Loads libc.
   *
   * @throws {Error} when the library cannot be loaded (not Linux, no FFI permission)
   */
  static open(options: FfiVduseBackendOptions = {}): FfiVduseBackend {
    return new FfiVduseBackend(Deno.dlopen(options.libc ?? "libc.so.6", SYMBOLS), options);
  }

  private constructor(lib: Deno.DynamicLibrary<typeof SYMBOLS>, options: FfiVduseBackendOptions) {
    this.#lib = lib;
    this.#c = lib.symbols;
    this.devDir = options.devDir ?? "/dev/vduse";
    this.#pollTimeoutMs = options.pollTimeoutMs ?? 1000;
    this.#unmapGraceMs = options.unmapGraceMs ?? 5000;
    this.#onPollError = options.onPollError ?? (() => {});
    this.#onCallbackError = options.onCallbackError ?? ((e) => console.error(e));
  }

  /** The calling thread's errno, negated. */
  #errno(): number {
    const p = this.#c.__errno_location();
    return p === null ? -LinuxErrno.EINVAL : -new Deno.UnsafePointerView(p).getInt32();
  }

  #openPath(path: string, flags: number): number {
    const fd = this.#c.open(new TextEncoder().encode(path + "\0"), flags, 0);
    return fd < 0 ? this.#errno() : fd;
  }

  /** See {@linkcode VduseBackend.openControl}. */
  openControl(): number {
    return this.#openPath(`${this.devDir}/control`, O_RDWR | O_CLOEXEC);
  }

  /** See {@linkcode VduseBackend.openDevice}. */
  openDevice(name: string): number {
    return this.#openPath(`${this.devDir}/${name}`, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  }

  /** See {@linkcode VduseBackend.close}. Stops watching the fd first. */
  close(fd: number): number {
    if (this.#watches.delete(fd)) this.#wake();
    return this.#c.close(fd) < 0 ? this.#errno() : 0;
  }

  /** See {@linkcode VduseBackend.ioctl}. */
  ioctl(fd: number, request: number, arg: Uint8Array | null): number {
    const r = this.#c.ioctl(fd, BigInt(request), arg);
    return r < 0 ? this.#errno() : r;
  }

  /** See {@linkcode VduseBackend.read}. */
  read(fd: number, buf: Uint8Array): number {
    const r = Number(this.#c.read(fd, buf, BigInt(buf.byteLength)));
    return r < 0 ? this.#errno() : r;
  }

  /** See {@linkcode VduseBackend.write}. */
  write(fd: number, buf: Uint8Array): number {
    const r = Number(this.#c.write(fd, buf, BigInt(buf.byteLength)));
    return r < 0 ? this.#errno() : r;
  }

  /**
   * See {@linkcode VduseBackend.watch}: `onReady` runs on the event loop
   * whenever poll reports the fd readable or in error (after an error the
   * fd is no longer watched, so a broken fd cannot spin the loop).
   */
  watch(fd: number, onReady: () => void): () => void {
    const w: Watch = { fd, eventfd: false, run: onReady };
    this.#watches.set(fd, w);
    this.#startLoop();
    return () => {
      if (this.#watches.get(fd) === w) {
        this.#watches.delete(fd);
        this.#wake();
      }
    };
  }

  /** See {@linkcode VduseBackend.mmap}: a view over the mapped pages (no copy). */
  mmap(fd: number, offset: number, length: number, prot: number): Uint8Array | number {
    if (!(Number.isSafeInteger(length) && length > 0 && Number.isSafeInteger(offset))) {
      return -LinuxErrno.EINVAL;
    }
    const p = this.#c.mmap(null, BigInt(length), prot, MAP_SHARED, fd, BigInt(offset));
    if (p === null || Deno.UnsafePointer.value(p) === MAP_FAILED) return this.#errno();
    const buffer = Deno.UnsafePointerView.getArrayBuffer(p, length);
    this.#mappings.set(buffer, { pointer: p, length });
    return new Uint8Array(buffer);
  }

  /**
   * See {@linkcode VduseBackend.munmap}: the VDUSE pages are released at
   * once; the view reads and writes scratch memory until the address range
   * itself is released `unmapGraceMs` later (see the option).
   */
  munmap(view: Uint8Array): void {
    const m = this.#mappings.get(view.buffer as ArrayBuffer);
    if (m === undefined) return;
    this.#mappings.delete(view.buffer as ArrayBuffer);
    const len = BigInt(m.length);
    const scratch = this.#c.mmap(
      m.pointer,
      len,
      PROT_READ_WRITE,
      MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS,
      -1,
      0n,
    );
    if (scratch === null || Deno.UnsafePointer.value(scratch) === MAP_FAILED) {
      this.#c.munmap(m.pointer, len);
      return;
    }
    this.#retiring.add(m);
    const timer = setTimeout(() => this.#release(m), this.#unmapGraceMs);
    Deno.unrefTimer(timer);
  }

  #release(m: Mapping): void {
    if (this.#retiring.delete(m)) this.#c.munmap(m.pointer, BigInt(m.length));
  }

  /** Mappings not yet unmapped (for leak checks). */
  get mappings(): number {
    return this.#mappings.size;
  }

  /** See {@linkcode VduseBackend.eventfd}: drained, then `onSignal` runs on the event loop. */
  eventfd(onSignal: () => void): number {
    const fd = this.#c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return this.#errno();
    this.#watches.set(fd, { fd, eventfd: true, run: onSignal });
    this.#startLoop();
    return fd;
  }

  /** Signals an eventfd as the kernel would (`write` of a 1 counter); for tests and tools. */
  signal(fd: number): number {
    return this.write(fd, ONE);
  }

  /**
   * Stops the poll loop, unmaps every mapping and unloads libc. Fds the
   * daemon still holds are left to it (`daemon.stop()` first). Resolves when
   * the loop has ended.
   */
  async shutdown(): Promise<void> {
    this.#closed = true;
    this.#watches.clear();
    this.#wake();
    await this.#loop;
    for (const m of this.#mappings.values()) this.#c.munmap(m.pointer, BigInt(m.length));
    this.#mappings.clear();
    for (const m of [...this.#retiring]) this.#release(m);
    if (this.#wakeFd >= 0) this.#c.close(this.#wakeFd);
    this.#wakeFd = -1;
    this.#lib.close();
  }

  /**
   * See {@linkcode VduseBackend.quiesce}: wakes the poll in flight and
   * resolves when it has returned, so the kernel has dropped its references
   * to fds closed before this call.
   */
  quiesce(): Promise<void> {
    if (this.#loop === null) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.#quiescers.push(resolve));
    this.#wake();
    return done;
  }

  /** Resolves when the poll loop stops (nothing watched, or `shutdown`). */
  get idle(): Promise<void> {
    return this.#loop ?? Promise.resolve();
  }

  #wake(): void {
    if (this.#wakeFd >= 0) this.signal(this.#wakeFd);
  }

  #startLoop(): void {
    if (this.#closed) return;
    if (this.#wakeFd < 0) {
      this.#wakeFd = this.#c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (this.#wakeFd < 0) throw new Error(`eventfd failed: errno ${-this.#errno()}`);
    }
    if (this.#loop !== null) {
      this.#wake();
      return;
    }
    this.#loop = this.#run().finally(() => {
      this.#loop = null;
      for (const resolve of this.#quiescers.splice(0)) resolve();
    });
  }

  async #run(): Promise<void> {
    while (!this.#closed && this.#watches.size > 0) {
      const watched = [...this.#watches.values()];
      const fds = new Uint8Array((watched.length + 1) * POLLFD_SIZE);
      const view = new DataView(fds.buffer);
      view.setInt32(0, this.#wakeFd, true);
      view.setInt16(4, POLLIN, true);
      for (let i = 0; i < watched.length; i++) {
        view.setInt32((i + 1) * POLLFD_SIZE, watched[i].fd, true);
        view.setInt16((i + 1) * POLLFD_SIZE + 4, POLLIN, true);
      }
      const n = await this.#c.poll(fds, BigInt(watched.length + 1), this.#pollTimeoutMs);
      this.polls++;
      if (this.#quiescers.length > 0) {
        for (const resolve of this.#quiescers.splice(0)) resolve();
      }
      if (n <= 0) continue; // timeout, or EINTR on the worker thread
      if (view.getInt16(6, true) !== 0) this.#c.read(this.#wakeFd, this.#counter, 8n);
      for (let i = 0; i < watched.length; i++) {
        const revents = view.getInt16((i + 1) * POLLFD_SIZE + 6, true);
        if (revents === 0) continue;
        const w = watched[i];
        if (this.#watches.get(w.fd) !== w) continue; // closed meanwhile
        if (w.eventfd) this.#c.read(w.fd, this.#counter, 8n);
        if ((revents & (POLLERR | POLLHUP | POLLNVAL)) !== 0) {
          this.#watches.delete(w.fd);
          this.#onPollError(
            w.fd,
            `fd ${w.fd} reported ${revents & POLLNVAL ? "POLLNVAL" : ""}${
              revents & POLLERR ? "POLLERR" : ""
            }${revents & POLLHUP ? "POLLHUP" : ""}; no longer watched`,
          );
        }
        try {
          w.run();
        } catch (e) {
          this.#onCallbackError(e);
        }
      }
    }
  }
}
