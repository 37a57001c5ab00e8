import { PciConfigOffset, PciStatus } from "./registers.ts";

/**
 * Callbacks that let a capability (or any register block) own a range of
 * configuration space. Offsets passed to the callbacks are relative to the
 * start of the hooked range, and cover only the bytes of the access that fall
 * inside it.
 */
export interface PciConfigHook {
  /**
   * Called before the guest reads `length` bytes at `offset`: refresh the bytes
   * here (with {@linkcode PciConfigSpace.set8} and friends) if they mirror
   * state kept elsewhere.
   */
  beforeRead?(offset: number, length: number): void;
  /**
   * Called after a guest write of `length` bytes at `offset` was stored
   * (through the write masks). `value` holds the bytes the guest wrote, before
   * masking, little-endian from `offset`.
   */
  afterWrite?(offset: number, length: number, value: number): void;
  /** Called by {@linkcode PciConfigSpace.reset} after the bytes were restored. */
  reset?(): void;
}

interface HookEntry {
  readonly start: number;
  readonly end: number;
  readonly hook: PciConfigHook;
}

/** Where standard capabilities may live: dword aligned, from 0x40 to the end of the header space. */
const CAP_START = 0x40;
const CAP_END = 0x100;
const EXT_CAP_START = 0x100;
/** Linux stops walking a capability list after this many entries. */
const MAX_CAP_WALK = 48;

/**
 * A PCI function's configuration space: 256 bytes (conventional PCI) or
 * 4 KiB (PCI Express), with per-bit write masks.
 *
 * Each bit is read-only (the default), read-write, or write-1-to-clear. The
 * host sets up registers with the `define*` methods (value, masks and reset
 * value in one call) and changes read-only state later with the `set*`
 * methods; the guest goes through {@linkcode PciConfigSpace.read} and
 * {@linkcode PciConfigSpace.write}, which apply the masks and run hooks.
 * All multi-byte values are little-endian.
 *
 * @example
 * ```ts
 * import { PciCapabilityId, PciConfigSpace } from "@vireo/vireo";
 * const config = new PciConfigSpace();
 * const cap = config.addCapability(PciCapabilityId.VENDOR, 8);
 * config.define8(cap + 2, 0x55, 0xff); // a read-write byte in the capability
 * config.write(cap + 2, 1, 0xaa);
 * console.log(cap.toString(16), config.read(cap + 2, 1).toString(16)); // "40 aa"
 * ```
 */
export class PciConfigSpace {
  /** Size in bytes: 256 or 4096. */
  readonly size: number;
  readonly #bytes: Uint8Array;
  readonly #defaults: Uint8Array;
  readonly #writable: Uint8Array;
  readonly #w1c: Uint8Array;
  /** For each byte, 1 + the index of the hook owning it, or 0. */
  readonly #hookOf: Uint16Array;
  readonly #hooks: HookEntry[] = [];
  #nextCap = CAP_START;
  #lastCap = 0;
  #nextExtCap = EXT_CAP_START;
  #lastExtCap = 0;

  /**
   * Creates an all-zero, all-read-only configuration space.
   *
   * @param size 256 (conventional PCI, the default) or 4096 (PCI Express)
   * @throws {RangeError} for any other size
   */
  constructor(size: number = 256) {
    if (size !== 256 && size !== 4096) {
      throw new RangeError(`Cannot create a config space of ${size} bytes: use 256 or 4096`);
    }
    this.size = size;
    this.#bytes = new Uint8Array(size);
    this.#defaults = new Uint8Array(size);
    this.#writable = new Uint8Array(size);
    this.#w1c = new Uint8Array(size);
    this.#hookOf = new Uint16Array(size);
  }

  /**
   * Defines a byte: its current and reset value, which bits the guest may
   * write, and which bits it clears by writing 1.
   *
   * @param offset byte offset in config space
   * @param value initial and reset value
   * @param writable mask of read-write bits (default none)
   * @param w1c mask of write-1-to-clear bits (default none)
   * @throws {RangeError} when `offset` is outside config space
   */
  define8(offset: number, value: number, writable: number = 0, w1c: number = 0): void {
    this.#define(offset, 1, value, writable, w1c);
  }

  /** Defines a little-endian 16-bit register; see {@linkcode PciConfigSpace.define8}. */
  define16(offset: number, value: number, writable: number = 0, w1c: number = 0): void {
    this.#define(offset, 2, value, writable, w1c);
  }

  /** Defines a little-endian 32-bit register; see {@linkcode PciConfigSpace.define8}. */
  define32(offset: number, value: number, writable: number = 0, w1c: number = 0): void {
    this.#define(offset, 4, value, writable, w1c);
  }

  /** The current byte at `offset`, without hooks. @throws {RangeError} outside config space */
  get8(offset: number): number {
    this.#check(offset, 1, "read");
    return this.#bytes[offset];
  }

  /** The current 16-bit value at `offset`, without hooks. @throws {RangeError} */
  get16(offset: number): number {
    this.#check(offset, 2, "read");
    return this.#load(offset, 2);
  }

  /** The current 32-bit value at `offset`, without hooks. @throws {RangeError} */
  get32(offset: number): number {
    this.#check(offset, 4, "read");
    return this.#load(offset, 4);
  }

  /**
   * Sets the current byte at `offset`, ignoring the write masks (host-side state
   * such as status bits or a capability's mirrored fields). The reset value is
   * unchanged.
   *
   * @throws {RangeError} when `offset` is outside config space
   */
  set8(offset: number, value: number): void {
    this.#check(offset, 1, "write");
    this.#bytes[offset] = value;
  }

  /** Sets a current 16-bit value, ignoring masks; see {@linkcode PciConfigSpace.set8}. */
  set16(offset: number, value: number): void {
    this.#check(offset, 2, "write");
    this.#store(offset, 2, value);
  }

  /** Sets a current 32-bit value, ignoring masks; see {@linkcode PciConfigSpace.set8}. */
  set32(offset: number, value: number): void {
    this.#check(offset, 4, "write");
    this.#store(offset, 4, value);
  }

  /**
   * Whether a guest access of `size` bytes at `offset` is well formed: size 1,
   * 2 or 4, inside config space, and not crossing a dword boundary.
   */
  isValidAccess(offset: number, size: number): boolean {
    return (size === 1 || size === 2 || size === 4) && Number.isInteger(offset) &&
      offset >= 0 && offset + size <= this.size && (offset & 3) + size <= 4;
  }

  /**
   * A guest read: runs the hooks of the bytes touched, then returns the value.
   *
   * @param offset byte offset
   * @param size 1, 2 or 4
   * @returns the unsigned little-endian value
   * @throws {RangeError} when the access is not valid ({@linkcode PciConfigSpace.isValidAccess});
   *   guest-facing callers check first
   */
  read(offset: number, size: number): number {
    if (!this.isValidAccess(offset, size)) throw this.#badAccess("read", offset, size);
    if (this.#hooks.length !== 0) this.#runHooks(offset, size, true, 0);
    return this.#load(offset, size);
  }

  /**
   * A guest write: stores `value` through the write masks (read-only bits keep
   * their value, write-1-to-clear bits clear where `value` has a 1), then runs
   * the hooks of the bytes touched.
   *
   * @throws {RangeError} when the access is not valid; guest-facing callers check first
   */
  write(offset: number, size: number, value: number): void {
    if (!this.isValidAccess(offset, size)) throw this.#badAccess("write", offset, size);
    const bytes = this.#bytes;
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const b = (value >>> (8 * i)) & 0xff;
      const w = this.#writable[at];
      bytes[at] = ((bytes[at] & ~w) | (b & w)) & ~(b & this.#w1c[at]);
    }
    if (this.#hooks.length !== 0) this.#runHooks(offset, size, false, value);
  }

  /**
   * Gives `[offset, offset + length)` to `hook`.
   *
   * @throws {RangeError} when the range is outside config space or overlaps another hook
   */
  hook(offset: number, length: number, hook: PciConfigHook): void {
    this.#check(offset, length, "hook");
    for (let i = offset; i < offset + length; i++) {
      if (this.#hookOf[i] !== 0) {
        const other = this.#hooks[this.#hookOf[i] - 1];
        throw new RangeError(
          `Cannot hook config bytes 0x${offset.toString(16)}..0x${
            (offset + length - 1).toString(16)
          }: they overlap the hook at 0x${other.start.toString(16)}`,
        );
      }
    }
    this.#hooks.push({ start: offset, end: offset + length, hook });
    this.#hookOf.fill(this.#hooks.length, offset, offset + length);
  }

  /**
   * Appends a capability to the standard list: allocates `length` bytes at the
   * next dword-aligned offset from 0x40, writes its ID and a 0 next pointer,
   * links it from the previous capability (or the capabilities pointer at
   * 0x34), and sets Status bit 4. All of it is read-only; define the
   * capability's other bytes with the `define*` methods.
   *
   * @param id capability ID ({@linkcode PciCapabilityId})
   * @param length bytes including the 2-byte header
   * @returns the capability's offset
   * @throws {RangeError} when `id` is not a byte, `length` < 2, or it does not fit below 0x100
   */
  addCapability(id: number, length: number): number {
    if (!Number.isInteger(id) || id < 0 || id > 0xff) {
      throw new RangeError(`Cannot add capability ${id}: the ID must be a byte`);
    }
    if (!Number.isInteger(length) || length < 2) {
      throw new RangeError(
        `Cannot add capability 0x${id.toString(16)}: length ${length} is below the 2-byte header`,
      );
    }
    const offset = this.#nextCap;
    if (offset + length > CAP_END) {
      throw new RangeError(
        `Cannot add capability 0x${id.toString(16)}: ${length} bytes do not fit at offset 0x${
          offset.toString(16)
        } below 0x100`,
      );
    }
    this.#define(offset, 1, id, 0, 0);
    this.#define(offset + 1, 1, 0, 0, 0);
    this.#define(
      this.#lastCap === 0 ? PciConfigOffset.CAPABILITY_LIST : this.#lastCap + 1,
      1,
      offset,
      0,
      0,
    );
    const status = PciConfigOffset.STATUS;
    this.#bytes[status] |= PciStatus.CAP_LIST;
    this.#defaults[status] |= PciStatus.CAP_LIST;
    this.#lastCap = offset;
    this.#nextCap = (offset + length + 3) & ~3;
    return offset;
  }

  /**
   * Appends a PCI Express extended capability (4 KiB spaces only): a 32-bit
   * header (ID bits 15:0, version 19:16, next offset 31:20) at the next
   * dword-aligned offset from 0x100, linked from the previous one.
   *
   * @param id extended capability ID (16 bits)
   * @param version capability version (4 bits)
   * @param length bytes including the 4-byte header
   * @returns the capability's offset
   * @throws {RangeError} on a 256-byte space, bad fields, or when it does not fit
   */
  addExtendedCapability(id: number, version: number, length: number): number {
    const what = `Cannot add extended capability ${id}`;
    if (this.size !== 4096) throw new RangeError(`${what}: the config space has only 256 bytes`);
    if (!Number.isInteger(id) || id < 0 || id > 0xffff) {
      throw new RangeError(`${what}: the ID must fit in 16 bits`);
    }
    if (!Number.isInteger(version) || version < 0 || version > 0xf) {
      throw new RangeError(`${what}: version ${version} does not fit in 4 bits`);
    }
    if (!Number.isInteger(length) || length < 4) {
      throw new RangeError(`${what}: length ${length} is below the 4-byte header`);
    }
    const offset = this.#nextExtCap;
    if (offset + length > this.size) {
      throw new RangeError(
        `${what}: ${length} bytes do not fit at offset 0x${offset.toString(16)}`,
      );
    }
    this.#define(offset, 4, id | (version << 16), 0, 0);
    if (this.#lastExtCap !== 0) {
      const prev = this.#lastExtCap;
      this.#define(prev, 4, (this.#load(prev, 4) & 0xfffff) | (offset << 20), 0, 0);
    }
    this.#lastExtCap = offset;
    this.#nextExtCap = (offset + length + 3) & ~3;
    return offset;
  }

  /**
   * Walks the standard capability list as a driver does (pointers masked to
   * dword alignment, at most 48 entries) and returns the offset of the first
   * capability with ID `id`, or 0.
   */
  findCapability(id: number): number {
    let at = this.#bytes[PciConfigOffset.CAPABILITY_LIST] & 0xfc;
    for (let n = 0; at >= CAP_START && n < MAX_CAP_WALK; n++) {
      if (this.#bytes[at] === id) return at;
      at = this.#bytes[at + 1] & 0xfc;
    }
    return 0;
  }

  /**
   * Restores every byte to its reset value (what the `define*` methods set),
   * then calls each hook's `reset` in the order the hooks were added.
   */
  reset(): void {
    this.#bytes.set(this.#defaults);
    for (const h of this.#hooks) h.hook.reset?.();
  }

  /** A copy of the current bytes (for saving state). */
  snapshot(): Uint8Array {
    return this.#bytes.slice();
  }

  /**
   * Replaces the current bytes (for restoring state). Masks, hooks and reset
   * values are unchanged; no hook runs.
   *
   * @throws {RangeError} when `bytes` does not have {@linkcode PciConfigSpace.size} bytes
   */
  restore(bytes: ArrayLike<number>): void {
    if (bytes.length !== this.size) {
      throw new RangeError(
        `Cannot restore a config space of ${this.size} bytes from ${bytes.length} bytes`,
      );
    }
    this.#bytes.set(bytes);
  }

  #define(offset: number, size: number, value: number, writable: number, w1c: number): void {
    this.#check(offset, size, "define");
    for (let i = 0; i < size; i++) {
      const shift = 8 * i;
      const b = (value >>> shift) & 0xff;
      this.#bytes[offset + i] = b;
      this.#defaults[offset + i] = b;
      this.#writable[offset + i] = (writable >>> shift) & 0xff;
      this.#w1c[offset + i] = (w1c >>> shift) & 0xff;
    }
  }

  #load(offset: number, size: number): number {
    const b = this.#bytes;
    if (size === 1) return b[offset];
    if (size === 2) return b[offset] | (b[offset + 1] << 8);
    return (b[offset] | (b[offset + 1] << 8) | (b[offset + 2] << 16) | (b[offset + 3] << 24)) >>>
      0;
  }

  #store(offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) this.#bytes[offset + i] = (value >>> (8 * i)) & 0xff;
  }

  #runHooks(offset: number, size: number, read: boolean, value: number): void {
    const end = offset + size;
    let i = offset;
    while (i < end) {
      const id = this.#hookOf[i];
      if (id === 0) {
        i++;
        continue;
      }
      const h = this.#hooks[id - 1];
      const stop = h.end < end ? h.end : end;
      if (read) {
        h.hook.beforeRead?.(i - h.start, stop - i);
      } else {
        const shift = 8 * (i - offset);
        const bits = 8 * (stop - i);
        const part = bits === 32 ? value >>> shift : (value >>> shift) & ((1 << bits) - 1);
        h.hook.afterWrite?.(i - h.start, stop - i, part >>> 0);
      }
      i = stop;
    }
  }

  #check(offset: number, length: number, what: string): void {
    if (
      !Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 1 ||
      offset + length > this.size
    ) {
      throw new RangeError(
        `Cannot ${what} ${length} config bytes at ${offset}: the config space has ${this.size} bytes`,
      );
    }
  }

  #badAccess(what: string, offset: number, size: number): RangeError {
    return new RangeError(
      `Cannot ${what} ${size} config bytes at ${offset}: use 1, 2 or 4 bytes inside one dword of the ${this.size}-byte space`,
    );
  }
}
