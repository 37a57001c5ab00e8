/**
 * The VDUSE userspace API, byte-exact: ioctl numbers (the `_IOC` encoding of
 * x86_64 Linux), constants, and encoders/decoders for every ioctl argument and
 * for the 152-byte request/response messages of `include/uapi/linux/vduse.h`
 * (API versions 0 and 1, with the 80-byte `vduse_iotlb_entry_v2` of the
 * "avoid adding implicit padding" fix).
 *
 * 64-bit fields are `bigint` here so every value round-trips exactly (the
 * kernel sends `U64_MAX` in UPDATE_IOTLB); callers turn addresses into
 * `number`s with {@linkcode u64ToAddress}. All layouts are little-endian LP64.
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */

/** The VDUSE ioctl magic (`VDUSE_BASE`). */
export const VDUSE_BASE = 0x81;

/** `_IOC_NONE`: the ioctl moves no data. */
export const IOC_NONE = 0;
/** `_IOC_WRITE`: userspace writes the argument (kernel reads it). */
export const IOC_WRITE = 1;
/** `_IOC_READ`: userspace reads the argument (kernel writes it). */
export const IOC_READ = 2;

/**
 * Encodes an ioctl number as Linux's `_IOC(dir, type, nr, size)` does on
 * x86_64: `dir << 30 | size << 16 | type << 8 | nr`.
 *
 * @param dir {@linkcode IOC_NONE}, {@linkcode IOC_WRITE}, {@linkcode IOC_READ} or both
 * @param type the magic byte
 * @param nr the command number
 * @param size the argument size in bytes (below 2^14)
 * @returns the ioctl request number as an unsigned 32-bit value
 * @throws {RangeError} when a part does not fit its bit field
 *
 * @example
 * ```ts
 * import { IOC_READ, ioc, VDUSE_BASE } from "@vireo/vireo/transports/vduse";
 * console.log(ioc(IOC_READ, VDUSE_BASE, 0, 8).toString(16)); // "80088100"
 * ```
 */
export function ioc(dir: number, type: number, nr: number, size: number): number {
  if (!(dir >= 0 && dir <= 3 && Number.isInteger(dir))) {
    throw new RangeError(`Cannot encode an ioctl: direction ${dir} is not in 0..3`);
  }
  if (!(type >= 0 && type <= 0xff && nr >= 0 && nr <= 0xff)) {
    throw new RangeError(`Cannot encode an ioctl: type ${type} or nr ${nr} is not a byte`);
  }
  if (!(Number.isInteger(size) && size >= 0 && size < 1 << 14)) {
    throw new RangeError(`Cannot encode an ioctl: size ${size} is not in 0..16383`);
  }
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}

/** The parts of an ioctl number, as {@linkcode decodeIoc} returns them. */
export interface IocParts {
  /** Direction bits (`_IOC_DIR`). */
  dir: number;
  /** Magic (`_IOC_TYPE`). */
  type: number;
  /** Command number (`_IOC_NR`). */
  nr: number;
  /** Argument size (`_IOC_SIZE`). */
  size: number;
}

/**
 * Splits an ioctl number into its `_IOC` fields.
 *
 * @param request an ioctl request number
 * @returns direction, type, number and size
 */
export function decodeIoc(request: number): IocParts {
  const r = request >>> 0;
  return { dir: r >>> 30, type: (r >>> 8) & 0xff, nr: r & 0xff, size: (r >>> 16) & 0x3fff };
}

/** Size of `struct vduse_dev_config` without the trailing config blob. */
export const VDUSE_DEV_CONFIG_SIZE = 336;
/** Size of `struct vduse_vq_config`. */
export const VDUSE_VQ_CONFIG_SIZE = 32;
/** Size of `struct vduse_vq_info` on LP64 (44 on i386). */
export const VDUSE_VQ_INFO_SIZE = 48;
/** Size of `struct vduse_vq_eventfd`. */
export const VDUSE_VQ_EVENTFD_SIZE = 8;
/** Size of `struct vduse_iotlb_entry` on LP64 (28 on i386). */
export const VDUSE_IOTLB_ENTRY_SIZE = 32;
/** Size of `struct vduse_iotlb_entry_v2` with explicit padding (identical on i386 and LP64). */
export const VDUSE_IOTLB_ENTRY_V2_SIZE = 80;
/** Size of `struct vduse_config_data` without the trailing buffer. */
export const VDUSE_CONFIG_DATA_SIZE = 8;
/** Size of `struct vduse_iova_umem`. */
export const VDUSE_IOVA_UMEM_SIZE = 48;
/** Size of `struct vduse_iova_info`. */
export const VDUSE_IOVA_INFO_SIZE = 48;
/** Size of `struct vduse_vq_state`. */
export const VDUSE_VQ_STATE_SIZE = 12;
/** Size of both `struct vduse_dev_request` and `struct vduse_dev_response`. */
export const VDUSE_MSG_SIZE = 152;
/** Offset of the union inside a request or response. */
export const VDUSE_MSG_UNION_OFFSET = 24;

/** `VDUSE_NAME_MAX`: bytes of the name field, NUL included. */
export const VDUSE_NAME_MAX = 256;
/** `VDUSE_API_VERSION`: the original API (the macro stays 0 after the ASID series). */
export const VDUSE_API_VERSION = 0;
/** `VDUSE_API_VERSION_1`: virtqueue groups and address space ids. */
export const VDUSE_API_VERSION_1 = 1;

/** The VDUSE ioctl request numbers (x86_64 / LP64 sizes). */
export const VduseIoctl: {
  /** `_IOR(0x81, 0x00, __u64)`: read the control fd's API version. */
  readonly GET_API_VERSION: number;
  /** `_IOW(0x81, 0x01, __u64)`: choose the API version. */
  readonly SET_API_VERSION: number;
  /** `_IOW(0x81, 0x02, struct vduse_dev_config)`: create a device. */
  readonly CREATE_DEV: number;
  /** `_IOW(0x81, 0x03, char[256])`: destroy a device by name. */
  readonly DESTROY_DEV: number;
  /** `_IOWR(0x81, 0x10, struct vduse_iotlb_entry)`: an fd for the IOTLB region of AS 0. */
  readonly IOTLB_GET_FD: number;
  /** `_IOR(0x81, 0x11, __u64)`: the features the driver accepted. */
  readonly DEV_GET_FEATURES: number;
  /** `_IOW(0x81, 0x12, struct vduse_config_data)`: write the config space copy. */
  readonly DEV_SET_CONFIG: number;
  /** `_IO(0x81, 0x13)`: raise the config-change interrupt. */
  readonly DEV_INJECT_CONFIG_IRQ: number;
  /** `_IOW(0x81, 0x14, struct vduse_vq_config)`: set a queue's max size (and group). */
  readonly VQ_SETUP: number;
  /** `_IOWR(0x81, 0x15, struct vduse_vq_info)`: a queue's addresses, size, state, ready. */
  readonly VQ_GET_INFO: number;
  /** `_IOW(0x81, 0x16, struct vduse_vq_eventfd)`: install a kick eventfd. */
  readonly VQ_SETUP_KICKFD: number;
  /** `_IOW(0x81, 0x17, __u32)`: raise a queue's used-buffer interrupt. */
  readonly VQ_INJECT_IRQ: number;
  /** `_IOW(0x81, 0x18, struct vduse_iova_umem)`: use user pages as bounce pages. */
  readonly IOTLB_REG_UMEM: number;
  /** `_IOW(0x81, 0x19, struct vduse_iova_umem)`: stop using user bounce pages. */
  readonly IOTLB_DEREG_UMEM: number;
  /** `_IOWR(0x81, 0x1a, struct vduse_iova_info)`: describe an IOVA region. */
  readonly IOTLB_GET_INFO: number;
  /** `_IOWR(0x81, 0x1b, struct vduse_iotlb_entry_v2)`: like GET_FD for a chosen AS (API v1). */
  readonly IOTLB_GET_FD2: number;
} = {
  GET_API_VERSION: ioc(IOC_READ, VDUSE_BASE, 0x00, 8),
  SET_API_VERSION: ioc(IOC_WRITE, VDUSE_BASE, 0x01, 8),
  CREATE_DEV: ioc(IOC_WRITE, VDUSE_BASE, 0x02, VDUSE_DEV_CONFIG_SIZE),
  DESTROY_DEV: ioc(IOC_WRITE, VDUSE_BASE, 0x03, VDUSE_NAME_MAX),
  IOTLB_GET_FD: ioc(IOC_READ | IOC_WRITE, VDUSE_BASE, 0x10, VDUSE_IOTLB_ENTRY_SIZE),
  DEV_GET_FEATURES: ioc(IOC_READ, VDUSE_BASE, 0x11, 8),
  DEV_SET_CONFIG: ioc(IOC_WRITE, VDUSE_BASE, 0x12, VDUSE_CONFIG_DATA_SIZE),
  DEV_INJECT_CONFIG_IRQ: ioc(IOC_NONE, VDUSE_BASE, 0x13, 0),
  VQ_SETUP: ioc(IOC_WRITE, VDUSE_BASE, 0x14, VDUSE_VQ_CONFIG_SIZE),
  VQ_GET_INFO: ioc(IOC_READ | IOC_WRITE, VDUSE_BASE, 0x15, VDUSE_VQ_INFO_SIZE),
  VQ_SETUP_KICKFD: ioc(IOC_WRITE, VDUSE_BASE, 0x16, VDUSE_VQ_EVENTFD_SIZE),
  VQ_INJECT_IRQ: ioc(IOC_WRITE, VDUSE_BASE, 0x17, 4),
  IOTLB_REG_UMEM: ioc(IOC_WRITE, VDUSE_BASE, 0x18, VDUSE_IOVA_UMEM_SIZE),
  IOTLB_DEREG_UMEM: ioc(IOC_WRITE, VDUSE_BASE, 0x19, VDUSE_IOVA_UMEM_SIZE),
  IOTLB_GET_INFO: ioc(IOC_READ | IOC_WRITE, VDUSE_BASE, 0x1a, VDUSE_IOVA_INFO_SIZE),
  IOTLB_GET_FD2: ioc(IOC_READ | IOC_WRITE, VDUSE_BASE, 0x1b, VDUSE_IOTLB_ENTRY_V2_SIZE),
};

/**
 * The GET_FD2 number of the pre-release 88-byte `vduse_iotlb_entry_v2`
 * (commit 079212f6, before the padding fix): recognised by name only, never served.
 */
export const VDUSE_IOTLB_GET_FD2_PRERELEASE: number = ioc(
  IOC_READ | IOC_WRITE,
  VDUSE_BASE,
  0x1b,
  88,
);

/** `VDUSE_ACCESS_*`: permission of an IOTLB region (same bits as PROT_READ / PROT_WRITE). */
export const VduseAccess = {
  /** Device may read. */
  RO: 1,
  /** Device may write. */
  WO: 2,
  /** Both. */
  RW: 3,
} as const;

/** `VDUSE_EVENTFD_DEASSIGN`: the kick fd value that removes the kick eventfd. */
export const VDUSE_EVENTFD_DEASSIGN = -1;
/** `VDUSE_IOVA_CAP_UMEM`: the region may be backed by user memory. */
export const VDUSE_IOVA_CAP_UMEM = 1;

/** `enum vduse_req_type`: what a request asks. */
export const VduseReqType = {
  /** Report a virtqueue's state (vhost-vdpa GET_VRING_BASE). */
  GET_VQ_STATE: 0,
  /** The driver wrote the status byte (0 = reset). */
  SET_STATUS: 1,
  /** The IOTLB of an address space was replaced: drop mappings in the range. */
  UPDATE_IOTLB: 2,
  /** API v1: move a virtqueue group to another address space. */
  SET_VQ_GROUP_ASID: 3,
} as const;

/** `VDUSE_REQ_RESULT_*`: a response's result. */
export const VduseReqResult = {
  /** Accepted. */
  OK: 0,
  /** Refused (any non-zero value counts as failure). */
  FAILED: 1,
} as const;

/** The all-ones 64-bit value (`U64_MAX`), e.g. the `last` of a whole-space UPDATE_IOTLB. */
export const U64_MAX = 0xffff_ffff_ffff_ffffn;

/**
 * Converts a u64 device address to a `number`, or `NaN` when it is at or
 * above 2^53 (no vireo address is that large; callers treat NaN as invalid).
 *
 * @param value a 64-bit field
 * @returns the value as a number below 2^53, or NaN
 */
export function u64ToAddress(value: bigint): number {
  return value >= 0n && value < 0x20_0000_0000_0000n ? Number(value) : NaN;
}

function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function need(bytes: Uint8Array, size: number, what: string): DataView {
  if (!(bytes instanceof Uint8Array)) throw new TypeError(`Cannot decode ${what}: expected bytes`);
  if (bytes.byteLength < size) {
    throw new RangeError(
      `Cannot decode ${what}: ${bytes.byteLength} bytes is shorter than its ${size}`,
    );
  }
  return dataView(bytes);
}

function u32s(dv: DataView, offset: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(dv.getUint32(offset + i * 4, true));
  return out;
}

function u16s(dv: DataView, offset: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(dv.getUint16(offset + i * 2, true));
  return out;
}

function putU32s(dv: DataView, offset: number, values: readonly number[] | undefined): void {
  if (values === undefined) return;
  for (let i = 0; i < values.length; i++) dv.setUint32(offset + i * 4, values[i], true);
}

function putU16s(dv: DataView, offset: number, values: readonly number[] | undefined): void {
  if (values === undefined) return;
  for (let i = 0; i < values.length; i++) dv.setUint16(offset + i * 2, values[i], true);
}

function u64(value: bigint | number): bigint {
  return BigInt.asUintN(64, BigInt(value));
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Encodes a device name as the 256-byte NUL-padded `char name[VDUSE_NAME_MAX]`.
 *
 * @param name the name (UTF-8, at most 255 bytes)
 * @returns 256 bytes
 * @throws {RangeError} when the name does not fit with its NUL
 */
export function encodeName(name: string): Uint8Array {
  const bytes = encoder.encode(name);
  if (bytes.length >= VDUSE_NAME_MAX) {
    throw new RangeError(
      `Cannot encode VDUSE name "${name}": ${bytes.length} bytes, at most 255 fit`,
    );
  }
  const out = new Uint8Array(VDUSE_NAME_MAX);
  out.set(bytes);
  return out;
}

/**
 * Decodes a `char[256]` name up to its first NUL; like the kernel, byte 255
 * is treated as NUL whatever it holds.
 *
 * @param bytes at least 256 bytes
 * @returns the name
 */
export function decodeName(bytes: Uint8Array): string {
  need(bytes, VDUSE_NAME_MAX, "a VDUSE name");
  let end = 0;
  while (end < VDUSE_NAME_MAX - 1 && bytes[end] !== 0) end++;
  return decoder.decode(bytes.subarray(0, end));
}

/** Encodes a `__u64` ioctl argument (GET/SET_API_VERSION, DEV_GET_FEATURES). */
export function encodeU64(value: bigint | number): Uint8Array {
  const out = new Uint8Array(8);
  dataView(out).setBigUint64(0, u64(value), true);
  return out;
}

/** Decodes a `__u64` ioctl argument. @throws {RangeError} when shorter than 8 bytes */
export function decodeU64(bytes: Uint8Array): bigint {
  return need(bytes, 8, "a u64").getBigUint64(0, true);
}

/** Encodes a `__u32` ioctl argument (VQ_INJECT_IRQ). */
export function encodeU32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  dataView(out).setUint32(0, value >>> 0, true);
  return out;
}

/** Decodes a `__u32` ioctl argument. @throws {RangeError} when shorter than 4 bytes */
export function decodeU32(bytes: Uint8Array): number {
  return need(bytes, 4, "a u32").getUint32(0, true);
}

/** `struct vduse_dev_config` plus its config blob (VDUSE_CREATE_DEV). */
export interface VduseDevConfig {
  /** Device name: the node is `/dev/vduse/<name>`. */
  name: string;
  /** Virtio vendor id. */
  vendorId: number;
  /** Virtio device id (1 net, 2 block, 26 fs). */
  deviceId: number;
  /** Offered feature bits. */
  features: bigint;
  /** Number of virtqueues. */
  vqNum: number;
  /** Ring alignment. */
  vqAlign: number;
  /** API v1: number of virtqueue groups (0 for v0). */
  ngroups: number;
  /** API v1: number of address spaces (0 for v0). */
  nas: number;
  /** `reserved[11]` (must be zero; v0's reserved[13] also covers ngroups and nas). */
  reserved?: readonly number[];
  /** Config space size; `config.length` when omitted on encode. */
  configSize?: number;
  /** Initial config space. */
  config: Uint8Array;
}

/**
 * Encodes `struct vduse_dev_config` followed by the config blob.
 *
 * @param c the configuration
 * @returns 336 + `config.length` bytes
 */
export function encodeDevConfig(c: VduseDevConfig): Uint8Array {
  const out = new Uint8Array(VDUSE_DEV_CONFIG_SIZE + c.config.length);
  const dv = dataView(out);
  out.set(encodeName(c.name), 0);
  dv.setUint32(256, c.vendorId >>> 0, true);
  dv.setUint32(260, c.deviceId >>> 0, true);
  dv.setBigUint64(264, u64(c.features), true);
  dv.setUint32(272, c.vqNum >>> 0, true);
  dv.setUint32(276, c.vqAlign >>> 0, true);
  dv.setUint32(280, c.ngroups >>> 0, true);
  dv.setUint32(284, c.nas >>> 0, true);
  putU32s(dv, 288, c.reserved?.slice(0, 11));
  dv.setUint32(332, (c.configSize ?? c.config.length) >>> 0, true);
  out.set(c.config, VDUSE_DEV_CONFIG_SIZE);
  return out;
}

/**
 * Decodes `struct vduse_dev_config`; `config` holds the bytes after the
 * header, at most `configSize` of them (fewer when `bytes` is short, which
 * the kernel reports as -EFAULT).
 *
 * @param bytes at least 336 bytes
 * @returns the configuration
 * @throws {RangeError} when shorter than the header
 */
export function decodeDevConfig(bytes: Uint8Array): VduseDevConfig {
  const dv = need(bytes, VDUSE_DEV_CONFIG_SIZE, "vduse_dev_config");
  const configSize = dv.getUint32(332, true);
  const end = Math.min(bytes.byteLength, VDUSE_DEV_CONFIG_SIZE + configSize);
  return {
    name: decodeName(bytes),
    vendorId: dv.getUint32(256, true),
    deviceId: dv.getUint32(260, true),
    features: dv.getBigUint64(264, true),
    vqNum: dv.getUint32(272, true),
    vqAlign: dv.getUint32(276, true),
    ngroups: dv.getUint32(280, true),
    nas: dv.getUint32(284, true),
    reserved: u32s(dv, 288, 11),
    configSize,
    config: bytes.slice(VDUSE_DEV_CONFIG_SIZE, end),
  };
}

/** `struct vduse_vq_config` (VDUSE_VQ_SETUP). */
export interface VduseVqConfig {
  /** Queue index. */
  index: number;
  /** Largest ring size; 0 means not configured. */
  maxSize: number;
  /** API v1: the queue's group (must be 0 for v0). */
  group: number;
  /** `reserved1` (u16 at 6; must be zero). */
  reserved1?: number;
  /** `reserved2[10]` (u16s at 12; must be zero). */
  reserved2?: readonly number[];
}

/** Encodes `struct vduse_vq_config` (32 bytes). */
export function encodeVqConfig(c: VduseVqConfig): Uint8Array {
  const out = new Uint8Array(VDUSE_VQ_CONFIG_SIZE);
  const dv = dataView(out);
  dv.setUint32(0, c.index >>> 0, true);
  dv.setUint16(4, c.maxSize & 0xffff, true);
  dv.setUint16(6, (c.reserved1 ?? 0) & 0xffff, true);
  dv.setUint32(8, c.group >>> 0, true);
  putU16s(dv, 12, c.reserved2?.slice(0, 10));
  return out;
}

/** Decodes `struct vduse_vq_config`. @throws {RangeError} when shorter than 32 bytes */
export function decodeVqConfig(bytes: Uint8Array): VduseVqConfig {
  const dv = need(bytes, VDUSE_VQ_CONFIG_SIZE, "vduse_vq_config");
  return {
    index: dv.getUint32(0, true),
    maxSize: dv.getUint16(4, true),
    reserved1: dv.getUint16(6, true),
    group: dv.getUint32(8, true),
    reserved2: u16s(dv, 12, 10),
  };
}

/** `struct vduse_vq_state_split`. */
export interface VduseVqStateSplit {
  /** Available index. */
  availIndex: number;
}

/** `struct vduse_vq_state_packed`. */
export interface VduseVqStatePacked {
  /** Last driver ring wrap counter the device saw. */
  lastAvailCounter: number;
  /** Device's available index. */
  lastAvailIdx: number;
  /** Device ring wrap counter. */
  lastUsedCounter: number;
  /** Used index. */
  lastUsedIdx: number;
}

/**
 * The `union { split; packed; }` of a virtqueue state. On encode `packed`
 * wins when both are given; on decode both views of the same bytes are
 * returned (split's avail_index aliases packed's last_avail_counter).
 */
export interface VduseVqStateUnion {
  /** Split view. */
  split?: VduseVqStateSplit;
  /** Packed view. */
  packed?: VduseVqStatePacked;
}

function putState(dv: DataView, offset: number, s: VduseVqStateUnion): void {
  if (s.packed !== undefined) {
    dv.setUint16(offset, s.packed.lastAvailCounter & 0xffff, true);
    dv.setUint16(offset + 2, s.packed.lastAvailIdx & 0xffff, true);
    dv.setUint16(offset + 4, s.packed.lastUsedCounter & 0xffff, true);
    dv.setUint16(offset + 6, s.packed.lastUsedIdx & 0xffff, true);
  } else if (s.split !== undefined) {
    dv.setUint16(offset, s.split.availIndex & 0xffff, true);
  }
}

function getState(dv: DataView, offset: number): Required<VduseVqStateUnion> {
  return {
    split: { availIndex: dv.getUint16(offset, true) },
    packed: {
      lastAvailCounter: dv.getUint16(offset, true),
      lastAvailIdx: dv.getUint16(offset + 2, true),
      lastUsedCounter: dv.getUint16(offset + 4, true),
      lastUsedIdx: dv.getUint16(offset + 6, true),
    },
  };
}

/** `struct vduse_vq_info` (VDUSE_VQ_GET_INFO). */
export interface VduseVqInfo extends VduseVqStateUnion {
  /** Queue index (in). */
  index: number;
  /** Ring size the driver set (0 if never set). */
  num: number;
  /** IOVA of the descriptor area. */
  descAddr: bigint;
  /** IOVA of the driver area. */
  driverAddr: bigint;
  /** IOVA of the device area. */
  deviceAddr: bigint;
  /** The driver made the queue ready. */
  ready: boolean;
}

/** Encodes `struct vduse_vq_info` (48 bytes). */
export function encodeVqInfo(info: VduseVqInfo): Uint8Array {
  const out = new Uint8Array(VDUSE_VQ_INFO_SIZE);
  const dv = dataView(out);
  dv.setUint32(0, info.index >>> 0, true);
  dv.setUint32(4, info.num >>> 0, true);
  dv.setBigUint64(8, u64(info.descAddr), true);
  dv.setBigUint64(16, u64(info.driverAddr), true);
  dv.setBigUint64(24, u64(info.deviceAddr), true);
  putState(dv, 32, info);
  out[40] = info.ready ? 1 : 0;
  return out;
}

/** Decodes `struct vduse_vq_info`. @throws {RangeError} when shorter than 48 bytes */
export function decodeVqInfo(bytes: Uint8Array): Required<VduseVqInfo> {
  const dv = need(bytes, VDUSE_VQ_INFO_SIZE, "vduse_vq_info");
  return {
    index: dv.getUint32(0, true),
    num: dv.getUint32(4, true),
    descAddr: dv.getBigUint64(8, true),
    driverAddr: dv.getBigUint64(16, true),
    deviceAddr: dv.getBigUint64(24, true),
    ...getState(dv, 32),
    ready: bytes[40] !== 0,
  };
}

/** `struct vduse_vq_eventfd` (VDUSE_VQ_SETUP_KICKFD). */
export interface VduseVqEventfd {
  /** Queue index. */
  index: number;
  /** Eventfd, or {@linkcode VDUSE_EVENTFD_DEASSIGN}. */
  fd: number;
}

/** Encodes `struct vduse_vq_eventfd` (8 bytes). */
export function encodeVqEventfd(e: VduseVqEventfd): Uint8Array {
  const out = new Uint8Array(VDUSE_VQ_EVENTFD_SIZE);
  const dv = dataView(out);
  dv.setUint32(0, e.index >>> 0, true);
  dv.setInt32(4, e.fd | 0, true);
  return out;
}

/** Decodes `struct vduse_vq_eventfd`. @throws {RangeError} when shorter than 8 bytes */
export function decodeVqEventfd(bytes: Uint8Array): VduseVqEventfd {
  const dv = need(bytes, VDUSE_VQ_EVENTFD_SIZE, "vduse_vq_eventfd");
  return { index: dv.getUint32(0, true), fd: dv.getInt32(4, true) };
}

/** `struct vduse_iotlb_entry` (VDUSE_IOTLB_GET_FD), and the first part of the v2 entry. */
export interface VduseIotlbEntry {
  /** Out: mmap offset into the returned fd. */
  offset: bigint;
  /** In: range start; out: region start. */
  start: bigint;
  /** In: range last (inclusive); out: region last. */
  last: bigint;
  /** Out: {@linkcode VduseAccess} bits. */
  perm: number;
}

function putEntry(dv: DataView, e: VduseIotlbEntry): void {
  dv.setBigUint64(0, u64(e.offset), true);
  dv.setBigUint64(8, u64(e.start), true);
  dv.setBigUint64(16, u64(e.last), true);
  dv.setUint8(24, e.perm & 0xff);
}

function getEntry(dv: DataView): VduseIotlbEntry {
  return {
    offset: dv.getBigUint64(0, true),
    start: dv.getBigUint64(8, true),
    last: dv.getBigUint64(16, true),
    perm: dv.getUint8(24),
  };
}

/** Encodes `struct vduse_iotlb_entry` (32 bytes LP64, implicit padding zero). */
export function encodeIotlbEntry(e: VduseIotlbEntry): Uint8Array {
  const out = new Uint8Array(VDUSE_IOTLB_ENTRY_SIZE);
  putEntry(dataView(out), e);
  return out;
}

/** Decodes `struct vduse_iotlb_entry`. @throws {RangeError} when shorter than 32 bytes */
export function decodeIotlbEntry(bytes: Uint8Array): VduseIotlbEntry {
  return getEntry(need(bytes, VDUSE_IOTLB_ENTRY_SIZE, "vduse_iotlb_entry"));
}

/** `struct vduse_iotlb_entry_v2` (VDUSE_IOTLB_GET_FD2, API v1), 80-byte layout. */
export interface VduseIotlbEntryV2 extends VduseIotlbEntry {
  /** In: the address space to look in. */
  asid: number;
  /** `reserved[11]` (must be zero). */
  reserved?: readonly number[];
}

/** Encodes `struct vduse_iotlb_entry_v2` (80 bytes: entry, padding[7], asid @32, reserved[11] @36). */
export function encodeIotlbEntryV2(e: VduseIotlbEntryV2): Uint8Array {
  const out = new Uint8Array(VDUSE_IOTLB_ENTRY_V2_SIZE);
  const dv = dataView(out);
  putEntry(dv, e);
  dv.setUint32(32, e.asid >>> 0, true);
  putU32s(dv, 36, e.reserved?.slice(0, 11));
  return out;
}

/** Decodes `struct vduse_iotlb_entry_v2`. @throws {RangeError} when shorter than 80 bytes */
export function decodeIotlbEntryV2(bytes: Uint8Array): VduseIotlbEntryV2 {
  const dv = need(bytes, VDUSE_IOTLB_ENTRY_V2_SIZE, "vduse_iotlb_entry_v2");
  return { ...getEntry(dv), asid: dv.getUint32(32, true), reserved: u32s(dv, 36, 11) };
}

/** `struct vduse_config_data` plus its buffer (VDUSE_DEV_SET_CONFIG). */
export interface VduseConfigData {
  /** Offset into the config space. */
  offset: number;
  /** Bytes to write; `buffer.length` when omitted on encode. */
  length?: number;
  /** The bytes. */
  buffer: Uint8Array;
}

/** Encodes `struct vduse_config_data` followed by the buffer. */
export function encodeConfigData(d: VduseConfigData): Uint8Array {
  const out = new Uint8Array(VDUSE_CONFIG_DATA_SIZE + d.buffer.length);
  const dv = dataView(out);
  dv.setUint32(0, d.offset >>> 0, true);
  dv.setUint32(4, (d.length ?? d.buffer.length) >>> 0, true);
  out.set(d.buffer, VDUSE_CONFIG_DATA_SIZE);
  return out;
}

/**
 * Decodes `struct vduse_config_data`; `buffer` holds at most `length` bytes
 * that follow the header (fewer when `bytes` is short).
 *
 * @throws {RangeError} when shorter than 8 bytes
 */
export function decodeConfigData(bytes: Uint8Array): Required<VduseConfigData> {
  const dv = need(bytes, VDUSE_CONFIG_DATA_SIZE, "vduse_config_data");
  const length = dv.getUint32(4, true);
  const end = Math.min(bytes.byteLength, VDUSE_CONFIG_DATA_SIZE + length);
  return { offset: dv.getUint32(0, true), length, buffer: bytes.slice(8, end) };
}

/** `struct vduse_iova_umem` (VDUSE_IOTLB_REG_UMEM / DEREG_UMEM). */
export interface VduseIovaUmem {
  /** User address of the memory (page aligned). */
  uaddr: bigint;
  /** Start of the IOVA region (must be 0: the bounce region). */
  iova: bigint;
  /** Size (must equal the bounce size). */
  size: bigint;
  /** API v1: the address space (0 for v0). */
  asid: number;
  /** `reserved[5]` (u32s at 28; must be zero). */
  reserved?: readonly number[];
}

/** Encodes `struct vduse_iova_umem` (48 bytes). */
export function encodeIovaUmem(u: VduseIovaUmem): Uint8Array {
  const out = new Uint8Array(VDUSE_IOVA_UMEM_SIZE);
  const dv = dataView(out);
  dv.setBigUint64(0, u64(u.uaddr), true);
  dv.setBigUint64(8, u64(u.iova), true);
  dv.setBigUint64(16, u64(u.size), true);
  dv.setUint32(24, u.asid >>> 0, true);
  putU32s(dv, 28, u.reserved?.slice(0, 5));
  return out;
}

/** Decodes `struct vduse_iova_umem`. @throws {RangeError} when shorter than 48 bytes */
export function decodeIovaUmem(bytes: Uint8Array): VduseIovaUmem {
  const dv = need(bytes, VDUSE_IOVA_UMEM_SIZE, "vduse_iova_umem");
  return {
    uaddr: dv.getBigUint64(0, true),
    iova: dv.getBigUint64(8, true),
    size: dv.getBigUint64(16, true),
    asid: dv.getUint32(24, true),
    reserved: u32s(dv, 28, 5),
  };
}

/** `struct vduse_iova_info` (VDUSE_IOTLB_GET_INFO). */
export interface VduseIovaInfo {
  /** In: range start; out: region start. */
  start: bigint;
  /** In: range last; out: region last. */
  last: bigint;
  /** Out: {@linkcode VDUSE_IOVA_CAP_UMEM} when the region is the bounce region. */
  capability: bigint;
  /** API v1: the address space (0 for v0). */
  asid: number;
  /** `reserved[5]` (u32s at 28; must be zero). */
  reserved?: readonly number[];
}

/** Encodes `struct vduse_iova_info` (48 bytes). */
export function encodeIovaInfo(i: VduseIovaInfo): Uint8Array {
  const out = new Uint8Array(VDUSE_IOVA_INFO_SIZE);
  const dv = dataView(out);
  dv.setBigUint64(0, u64(i.start), true);
  dv.setBigUint64(8, u64(i.last), true);
  dv.setBigUint64(16, u64(i.capability), true);
  dv.setUint32(24, i.asid >>> 0, true);
  putU32s(dv, 28, i.reserved?.slice(0, 5));
  return out;
}

/** Decodes `struct vduse_iova_info`. @throws {RangeError} when shorter than 48 bytes */
export function decodeIovaInfo(bytes: Uint8Array): VduseIovaInfo {
  const dv = need(bytes, VDUSE_IOVA_INFO_SIZE, "vduse_iova_info");
  return {
    start: dv.getBigUint64(0, true),
    last: dv.getBigUint64(8, true),
    capability: dv.getBigUint64(16, true),
    asid: dv.getUint32(24, true),
    reserved: u32s(dv, 28, 5),
  };
}

/** `struct vduse_vq_state`: a queue index and its state union (12 bytes). */
export interface VduseVqState extends VduseVqStateUnion {
  /** Queue index. */
  index: number;
}

/** Encodes `struct vduse_vq_state` (12 bytes). */
export function encodeVqState(s: VduseVqState): Uint8Array {
  const out = new Uint8Array(VDUSE_VQ_STATE_SIZE);
  const dv = dataView(out);
  dv.setUint32(0, s.index >>> 0, true);
  putState(dv, 4, s);
  return out;
}

/** Decodes `struct vduse_vq_state`. @throws {RangeError} when shorter than 12 bytes */
export function decodeVqState(bytes: Uint8Array): Required<VduseVqState> {
  const dv = need(bytes, VDUSE_VQ_STATE_SIZE, "vduse_vq_state");
  return { index: dv.getUint32(0, true), ...getState(dv, 4) };
}

/** `struct vduse_iova_range_v2` as carried by UPDATE_IOTLB (`asid` is 0 under API v0). */
export interface VduseIovaRange {
  /** First IOVA. */
  start: bigint;
  /** Last IOVA (inclusive). */
  last: bigint;
  /** Address space (API v1 `iova_v2`; absent from API v0's `iova`). */
  asid: number;
}

/** `struct vduse_vq_group_asid`. */
export interface VduseVqGroupAsid {
  /** Virtqueue group. */
  group: number;
  /** Address space id. */
  asid: number;
}

/**
 * `struct vduse_dev_request`: what `read()` on a device fd returns. The union
 * member matching `type` is set: `vqState` (GET_VQ_STATE, only the index is
 * meaningful), `status` (SET_STATUS), `iova` (UPDATE_IOTLB) or `vqGroupAsid`
 * (SET_VQ_GROUP_ASID). Unknown types keep only the raw union in `padding`.
 */
export interface VduseDevRequest {
  /** {@linkcode VduseReqType} value. */
  type: number;
  /** Kernel-chosen id to echo in the response. */
  requestId: number;
  /** `reserved[4]`. */
  reserved?: readonly number[];
  /** GET_VQ_STATE: the queue. */
  vqState?: { index: number };
  /** SET_STATUS: the new status byte. */
  status?: number;
  /** UPDATE_IOTLB: the range to drop. */
  iova?: VduseIovaRange;
  /** SET_VQ_GROUP_ASID: the group and its new address space. */
  vqGroupAsid?: VduseVqGroupAsid;
  /** The raw 128-byte union (decode only). */
  padding?: Uint8Array;
}

/**
 * Encodes `struct vduse_dev_request` (152 bytes) into `out` or a new array.
 *
 * @param r the request; the member matching `type` is written
 * @param out optional 152-byte destination (zeroed first)
 * @returns the bytes
 */
export function encodeDevRequest(r: VduseDevRequest, out?: Uint8Array): Uint8Array {
  const bytes = out ?? new Uint8Array(VDUSE_MSG_SIZE);
  bytes.fill(0, 0, VDUSE_MSG_SIZE);
  const dv = dataView(bytes);
  dv.setUint32(0, r.type >>> 0, true);
  dv.setUint32(4, r.requestId >>> 0, true);
  putU32s(dv, 8, r.reserved?.slice(0, 4));
  const u = VDUSE_MSG_UNION_OFFSET;
  if (r.padding !== undefined) bytes.set(r.padding.subarray(0, 128), u);
  switch (r.type) {
    case VduseReqType.GET_VQ_STATE:
      dv.setUint32(u, (r.vqState?.index ?? 0) >>> 0, true);
      break;
    case VduseReqType.SET_STATUS:
      dv.setUint8(u, (r.status ?? 0) & 0xff);
      break;
    case VduseReqType.UPDATE_IOTLB:
      dv.setBigUint64(u, u64(r.iova?.start ?? 0n), true);
      dv.setBigUint64(u + 8, u64(r.iova?.last ?? 0n), true);
      dv.setUint32(u + 16, (r.iova?.asid ?? 0) >>> 0, true);
      break;
    case VduseReqType.SET_VQ_GROUP_ASID:
      dv.setUint32(u, (r.vqGroupAsid?.group ?? 0) >>> 0, true);
      dv.setUint32(u + 4, (r.vqGroupAsid?.asid ?? 0) >>> 0, true);
      break;
  }
  return bytes;
}

/**
 * Decodes `struct vduse_dev_request`, filling the union member of its type.
 *
 * @throws {RangeError} when shorter than 152 bytes
 */
export function decodeDevRequest(bytes: Uint8Array): VduseDevRequest {
  const dv = need(bytes, VDUSE_MSG_SIZE, "vduse_dev_request");
  const u = VDUSE_MSG_UNION_OFFSET;
  const r: VduseDevRequest = {
    type: dv.getUint32(0, true),
    requestId: dv.getUint32(4, true),
    reserved: u32s(dv, 8, 4),
  };
  switch (r.type) {
    case VduseReqType.GET_VQ_STATE:
      r.vqState = { index: dv.getUint32(u, true) };
      break;
    case VduseReqType.SET_STATUS:
      r.status = dv.getUint8(u);
      break;
    case VduseReqType.UPDATE_IOTLB:
      r.iova = {
        start: dv.getBigUint64(u, true),
        last: dv.getBigUint64(u + 8, true),
        asid: dv.getUint32(u + 16, true),
      };
      break;
    case VduseReqType.SET_VQ_GROUP_ASID:
      r.vqGroupAsid = { group: dv.getUint32(u, true), asid: dv.getUint32(u + 4, true) };
      break;
    default:
      r.padding = bytes.slice(u, u + 128);
  }
  return r;
}

/** `struct vduse_dev_response`: what userspace `write()`s back. */
export interface VduseDevResponse {
  /** The request's id. */
  requestId: number;
  /** {@linkcode VduseReqResult} value (non-zero is failure). */
  result: number;
  /** `reserved[4]` (must be zero or the write fails with -EINVAL). */
  reserved?: readonly number[];
  /** GET_VQ_STATE reply. */
  vqState?: VduseVqState;
}

/**
 * Encodes `struct vduse_dev_response` (152 bytes) into `out` or a new array.
 *
 * @param r the response
 * @param out optional 152-byte destination (zeroed first)
 * @returns the bytes
 */
export function encodeDevResponse(r: VduseDevResponse, out?: Uint8Array): Uint8Array {
  const bytes = out ?? new Uint8Array(VDUSE_MSG_SIZE);
  bytes.fill(0, 0, VDUSE_MSG_SIZE);
  const dv = dataView(bytes);
  dv.setUint32(0, r.requestId >>> 0, true);
  dv.setUint32(4, r.result >>> 0, true);
  putU32s(dv, 8, r.reserved?.slice(0, 4));
  if (r.vqState !== undefined) {
    dv.setUint32(VDUSE_MSG_UNION_OFFSET, r.vqState.index >>> 0, true);
    putState(dv, VDUSE_MSG_UNION_OFFSET + 4, r.vqState);
  }
  return bytes;
}

/**
 * Decodes `struct vduse_dev_response`; `vqState` is always decoded (the
 * caller knows whether the request was GET_VQ_STATE).
 *
 * @throws {RangeError} when shorter than 152 bytes
 */
export function decodeDevResponse(bytes: Uint8Array): Required<VduseDevResponse> {
  const dv = need(bytes, VDUSE_MSG_SIZE, "vduse_dev_response");
  return {
    requestId: dv.getUint32(0, true),
    result: dv.getUint32(4, true),
    reserved: u32s(dv, 8, 4),
    vqState: {
      index: dv.getUint32(VDUSE_MSG_UNION_OFFSET, true),
      ...getState(dv, VDUSE_MSG_UNION_OFFSET + 4),
    },
  };
}
