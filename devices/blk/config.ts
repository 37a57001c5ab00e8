/**
 * The options of a virtio-blk device, their validation, and how they are laid
 * out in `struct virtio_blk_config`.
 *
 * @module
 */
import type { BlockBackend } from "./backends/block_backend.ts";
import {
  VIRTIO_BLK_CONFIG_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_SECTOR_SIZE,
  VirtioBlkConfigOffset as O,
  VirtioBlkFeature as F,
} from "./constants.ts";

/** Legacy CHS geometry reported with VIRTIO_BLK_F_GEOMETRY. */
export interface VirtioBlkGeometry {
  /** Cylinders, 0..65535. */
  cylinders: number;
  /** Heads, 0..255. */
  heads: number;
  /** Sectors per track, 0..255. */
  sectors: number;
}

/** DISCARD limits (VIRTIO_BLK_F_DISCARD). */
export interface VirtioBlkDiscardOptions {
  /** Largest sector count of one segment (default 4194303, just under 2 GiB). */
  maxSectors?: number;
  /** Most segments per request (default 32; Linux uses at most 256). */
  maxSegments?: number;
  /** Alignment hint in sectors (default: the logical block size in sectors). */
  sectorAlignment?: number;
}

/** WRITE_ZEROES limits (VIRTIO_BLK_F_WRITE_ZEROES). */
export interface VirtioBlkWriteZeroesOptions {
  /** Largest sector count of one segment (default 4194303). */
  maxSectors?: number;
  /** Most segments per request (default 32). */
  maxSegments?: number;
  /** Advertise that write zeroes may deallocate (`write_zeroes_may_unmap`, default true). */
  mayUnmap?: boolean;
}

/** Options of a {@linkcode VirtioBlk} device. */
export interface VirtioBlkOptions {
  /** The storage. */
  backend: BlockBackend;
  /** The device id returned by GET_ID: at most 20 ASCII bytes (default empty). */
  serial?: string;
  /** Request queues (default 1); VIRTIO_BLK_F_MQ is offered when more than 1. */
  numQueues?: number;
  /** The largest ring size per queue (default 256). */
  queueSize?: number;
  /**
   * Most requests in flight per queue (default: `queueSize`). Once reached the
   * device stops popping that queue until a request completes.
   */
  queueDepth?: number;
  /** Report a read-only disk even if the backend is writable (default: the backend's flag). */
  readOnly?: boolean;
  /** Logical block size in bytes: a power of two in 512..65536 (default 512). */
  blockSize?: number;
  /** Physical block size in bytes: a power-of-two multiple of `blockSize` (default `blockSize`). */
  physicalBlockSize?: number;
  /** Alignment offset in logical blocks (TOPOLOGY, default 0). */
  alignmentOffset?: number;
  /** Minimum I/O size in logical blocks (TOPOLOGY, default 0 = unset). */
  minIoSize?: number;
  /** Optimal I/O size in logical blocks (TOPOLOGY, default 0 = unset). */
  optIoSize?: number;
  /** Largest segment size in bytes; SIZE_MAX is offered only when given. */
  sizeMax?: number;
  /** Most data segments per request (default `queueSize - 2`). */
  segMax?: number;
  /** CHS geometry; GEOMETRY is offered only when given. */
  geometry?: VirtioBlkGeometry;
  /** Offer VIRTIO_BLK_F_FLUSH (default true). Without it every write is made durable before it completes. */
  flush?: boolean;
  /** Offer VIRTIO_BLK_F_CONFIG_WCE (default true; needs `flush`). */
  configWce?: boolean;
  /** Initial cache mode: writeback (true, the default) or writethrough. */
  writeback?: boolean;
  /** DISCARD limits, or false not to offer DISCARD (default: offered with default limits). */
  discard?: false | VirtioBlkDiscardOptions;
  /** WRITE_ZEROES limits, or false not to offer WRITE_ZEROES (default: offered). */
  writeZeroes?: false | VirtioBlkWriteZeroesOptions;
}

/** {@linkcode VirtioBlkOptions} checked and with every default filled in. */
export interface ResolvedBlkOptions {
  /** The storage. */
  readonly backend: BlockBackend;
  /** The GET_ID reply: the serial NUL-padded to 20 bytes. */
  readonly id: Uint8Array;
  /** The serial as given. */
  readonly serial: string;
  /** Request queues. */
  readonly numQueues: number;
  /** Largest ring size. */
  readonly queueSize: number;
  /** Most requests in flight per queue. */
  readonly queueDepth: number;
  /** The disk is reported read-only. */
  readonly readOnly: boolean;
  /** Logical block size in bytes. */
  readonly blockSize: number;
  /** log2(physical / logical block size). */
  readonly physicalBlockExp: number;
  /** TOPOLOGY alignment offset. */
  readonly alignmentOffset: number;
  /** TOPOLOGY minimum I/O size. */
  readonly minIoSize: number;
  /** TOPOLOGY optimal I/O size. */
  readonly optIoSize: number;
  /** SIZE_MAX value, or 0 when not offered. */
  readonly sizeMax: number;
  /** SEG_MAX value. */
  readonly segMax: number;
  /** Geometry, or null when not offered. */
  readonly geometry: VirtioBlkGeometry | null;
  /** FLUSH offered. */
  readonly flush: boolean;
  /** CONFIG_WCE offered. */
  readonly configWce: boolean;
  /** Initial `writeback` value (0 or 1). */
  readonly writeback: number;
  /** DISCARD limits, or null when not offered. */
  readonly discard: Required<VirtioBlkDiscardOptions> | null;
  /** WRITE_ZEROES limits, or null when not offered. */
  readonly writeZeroes: Required<VirtioBlkWriteZeroesOptions> | null;
  /** The feature bits the device offers. */
  readonly features: bigint;
}

const DEFAULT_MAX_SECTORS = 0x3f_ffff;

/**
 * Checks `options` and fills in the defaults.
 *
 * @throws {TypeError} when an option has the wrong type
 * @throws {RangeError} when an option is out of range
 */
export function resolveBlkOptions(options: VirtioBlkOptions): ResolvedBlkOptions {
  if (typeof options !== "object" || options === null) {
    throw new TypeError("Cannot create a virtio-blk device: expected an options object");
  }
  const backend = options.backend;
  if (
    typeof backend !== "object" || backend === null ||
    !["read", "write", "flush", "discard", "writeZeroes"].every((m) =>
      typeof (backend as unknown as Record<string, unknown>)[m] === "function"
    )
  ) {
    throw new TypeError(
      "Cannot create a virtio-blk device: options.backend must implement BlockBackend " +
        "(read, write, flush, discard, writeZeroes)",
    );
  }
  if (!Number.isSafeInteger(backend.size) || backend.size < 0) {
    throw new RangeError(
      `Cannot create a virtio-blk device: backend size ${backend.size} is not a byte count`,
    );
  }
  const serial = options.serial ?? "";
  if (typeof serial !== "string") {
    throw new TypeError("Cannot create a virtio-blk device: options.serial must be a string");
  }
  // deno-lint-ignore no-control-regex
  if (!/^[\x00-\x7f]*$/.test(serial) || serial.length > VIRTIO_BLK_ID_BYTES) {
    throw new RangeError(
      `Cannot create a virtio-blk device: serial "${serial}" is not at most 20 ASCII characters`,
    );
  }
  const id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  for (let i = 0; i < serial.length; i++) id[i] = serial.charCodeAt(i);

  const numQueues = int(options.numQueues, "numQueues", 1, 1, 0xffff);
  const queueSize = int(options.queueSize, "queueSize", 256, 1, 0x8000);
  const queueDepth = int(options.queueDepth, "queueDepth", queueSize, 1, 0x8000);
  const blockSize = int(options.blockSize, "blockSize", 512, 512, 65536);
  if ((blockSize & (blockSize - 1)) !== 0) {
    throw new RangeError(
      `Cannot create a virtio-blk device: blockSize ${blockSize} is not a power of two`,
    );
  }
  const physical = int(
    options.physicalBlockSize,
    "physicalBlockSize",
    blockSize,
    blockSize,
    2 ** 30,
  );
  const ratio = physical / blockSize;
  if (!Number.isInteger(ratio) || (ratio & (ratio - 1)) !== 0) {
    throw new RangeError(
      `Cannot create a virtio-blk device: physicalBlockSize ${physical} is not a power-of-two multiple of blockSize ${blockSize}`,
    );
  }
  const segMax = int(options.segMax, "segMax", Math.max(queueSize - 2, 1), 1, 0xffff);
  const sizeMax = int(options.sizeMax, "sizeMax", 0, 1, 0xffff_ffff);
  let geometry: VirtioBlkGeometry | null = null;
  if (options.geometry !== undefined) {
    const g = options.geometry;
    if (typeof g !== "object" || g === null) {
      throw new TypeError("Cannot create a virtio-blk device: options.geometry must be an object");
    }
    geometry = {
      cylinders: int(g.cylinders, "geometry.cylinders", 0, 0, 0xffff),
      heads: int(g.heads, "geometry.heads", 0, 0, 0xff),
      sectors: int(g.sectors, "geometry.sectors", 0, 0, 0xff),
    };
  }
  const flush = bool(options.flush, "flush", true);
  const configWce = bool(options.configWce, "configWce", true);
  if (configWce && !flush) {
    throw new RangeError(
      "Cannot create a virtio-blk device: configWce needs flush (VIRTIO_BLK_F_CONFIG_WCE requires VIRTIO_BLK_F_FLUSH)",
    );
  }
  const writeback = bool(options.writeback, "writeback", true) && flush ? 1 : 0;
  const blockSectors = blockSize / VIRTIO_BLK_SECTOR_SIZE;
  let discard: Required<VirtioBlkDiscardOptions> | null = null;
  if (options.discard !== false) {
    const d = options.discard ?? {};
    discard = {
      maxSectors: int(d.maxSectors, "discard.maxSectors", DEFAULT_MAX_SECTORS, 1, 0xffff_ffff),
      maxSegments: int(d.maxSegments, "discard.maxSegments", 32, 1, 0xffff),
      sectorAlignment: int(
        d.sectorAlignment,
        "discard.sectorAlignment",
        blockSectors,
        1,
        0xffff_ffff,
      ),
    };
  }
  let writeZeroes: Required<VirtioBlkWriteZeroesOptions> | null = null;
  if (options.writeZeroes !== false) {
    const z = options.writeZeroes ?? {};
    writeZeroes = {
      maxSectors: int(z.maxSectors, "writeZeroes.maxSectors", DEFAULT_MAX_SECTORS, 1, 0xffff_ffff),
      maxSegments: int(z.maxSegments, "writeZeroes.maxSegments", 32, 1, 0xffff),
      mayUnmap: bool(z.mayUnmap, "writeZeroes.mayUnmap", true),
    };
  }
  const readOnly = bool(options.readOnly, "readOnly", false) || backend.readOnly === true;

  let features = bit(F.SEG_MAX) | bit(F.BLK_SIZE) | bit(F.TOPOLOGY);
  if (sizeMax > 0) features |= bit(F.SIZE_MAX);
  if (geometry !== null) features |= bit(F.GEOMETRY);
  if (readOnly) features |= bit(F.RO);
  if (flush) features |= bit(F.FLUSH);
  if (configWce) features |= bit(F.CONFIG_WCE);
  if (numQueues > 1) features |= bit(F.MQ);
  if (discard !== null) features |= bit(F.DISCARD);
  if (writeZeroes !== null) features |= bit(F.WRITE_ZEROES);

  return {
    backend,
    id,
    serial,
    numQueues,
    queueSize,
    queueDepth,
    readOnly,
    blockSize,
    physicalBlockExp: Math.log2(ratio),
    alignmentOffset: int(options.alignmentOffset, "alignmentOffset", 0, 0, 0xff),
    minIoSize: int(options.minIoSize, "minIoSize", 0, 0, 0xffff),
    optIoSize: int(options.optIoSize, "optIoSize", 0, 0, 0xffff_ffff),
    sizeMax,
    segMax,
    geometry,
    flush,
    configWce,
    writeback,
    discard,
    writeZeroes,
    features,
  };
}

/**
 * Fills a 96-byte `struct virtio_blk_config` from resolved options. Fields of
 * features not offered, and every unused byte, are 0.
 *
 * @param config the 96 bytes to fill
 * @param o resolved options
 * @param capacity capacity in 512-byte sectors
 */
export function writeBlkConfig(config: Uint8Array, o: ResolvedBlkOptions, capacity: number): void {
  if (config.length !== VIRTIO_BLK_CONFIG_SIZE) {
    throw new RangeError(`Cannot fill virtio-blk config: ${config.length} bytes instead of 96`);
  }
  config.fill(0);
  const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
  setCapacity(config, capacity);
  v.setUint32(O.SIZE_MAX, o.sizeMax, true);
  v.setUint32(O.SEG_MAX, o.segMax, true);
  if (o.geometry !== null) {
    v.setUint16(O.GEOMETRY_CYLINDERS, o.geometry.cylinders, true);
    v.setUint8(O.GEOMETRY_HEADS, o.geometry.heads);
    v.setUint8(O.GEOMETRY_SECTORS, o.geometry.sectors);
  }
  v.setUint32(O.BLK_SIZE, o.blockSize, true);
  v.setUint8(O.PHYSICAL_BLOCK_EXP, o.physicalBlockExp);
  v.setUint8(O.ALIGNMENT_OFFSET, o.alignmentOffset);
  v.setUint16(O.MIN_IO_SIZE, o.minIoSize, true);
  v.setUint32(O.OPT_IO_SIZE, o.optIoSize, true);
  v.setUint8(O.WRITEBACK, o.writeback);
  v.setUint16(O.NUM_QUEUES, o.numQueues, true);
  if (o.discard !== null) {
    v.setUint32(O.MAX_DISCARD_SECTORS, o.discard.maxSectors, true);
    v.setUint32(O.MAX_DISCARD_SEG, o.discard.maxSegments, true);
    v.setUint32(O.DISCARD_SECTOR_ALIGNMENT, o.discard.sectorAlignment, true);
  }
  if (o.writeZeroes !== null) {
    v.setUint32(O.MAX_WRITE_ZEROES_SECTORS, o.writeZeroes.maxSectors, true);
    v.setUint32(O.MAX_WRITE_ZEROES_SEG, o.writeZeroes.maxSegments, true);
    v.setUint8(O.WRITE_ZEROES_MAY_UNMAP, o.writeZeroes.mayUnmap ? 1 : 0);
  }
}

/** Stores `capacity` (sectors, below 2^53) as the le64 `capacity` field. */
export function setCapacity(config: Uint8Array, capacity: number): void {
  const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
  v.setUint32(O.CAPACITY, capacity >>> 0, true);
  v.setUint32(O.CAPACITY + 4, Math.floor(capacity / 0x1_0000_0000), true);
}

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

function int(value: unknown, name: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number") {
    throw new TypeError(`Cannot create a virtio-blk device: ${name} must be a number`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(
      `Cannot create a virtio-blk device: ${name} ${value} is not an integer in ${min}..${max}`,
    );
  }
  return value;
}

function bool(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") {
    throw new TypeError(`Cannot create a virtio-blk device: ${name} must be a boolean`);
  }
  return value;
}
