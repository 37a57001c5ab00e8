import {
  type PciBar,
  PciFunction,
  type PciFunctionHost,
  type PciFunctionOptions,
  type PciRegionHandler,
} from "../../src/pci/mod.ts";

/** Everything a host heard, in order. */
export interface HostLog {
  msi: [number, number][];
  intx: boolean[];
  bars: { index: number; decoding: boolean; address: number; previous: number | null }[];
}

/** A host that records what it hears. */
export function recordingHost(): { host: PciFunctionHost; log: HostLog } {
  const log: HostLog = { msi: [], intx: [], bars: [] };
  const host: PciFunctionHost = {
    msi: (_fn, address, data) => {
      log.msi.push([address, data]);
    },
    intx: (_fn, asserted) => {
      log.intx.push(asserted);
    },
    barChanged: (_fn, bar: PciBar, previous) => {
      log.bars.push({ index: bar.index, decoding: bar.decoding, address: bar.address, previous });
    },
  };
  return { host, log };
}

/** A register file: a region handler that stores what is written and logs every access. */
export class RegisterFile implements PciRegionHandler {
  readonly bytes: Uint8Array;
  readonly log: string[] = [];
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }
  read(offset: number, size: number): number {
    this.log.push(`r${size}@${offset.toString(16)}`);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.bytes[offset + i];
    return v;
  }
  write(offset: number, size: number, value: number): void {
    this.log.push(`w${size}@${offset.toString(16)}=${value.toString(16)}`);
    for (let i = 0; i < size; i++) this.bytes[offset + i] = (value >>> (8 * i)) & 0xff;
  }
}

/**
 * The test function: BAR0 I/O 32 bytes, BAR1 mem32 4 KiB (MSI-X: 4 vectors,
 * table at 0, PBA at 0x800), BAR2/3 mem64 prefetchable 16 KiB with a register
 * file at 0x0000..0x1000 and another at 0x2000..0x2100, BAR4/5 unimplemented.
 */
export function testFunction(options: Partial<PciFunctionOptions> = {}): {
  fn: PciFunction;
  io: RegisterFile;
  regs: RegisterFile;
  regs2: RegisterFile;
} {
  const fn = new PciFunction({
    vendorId: 0x1234,
    deviceId: 0x5678,
    revisionId: 2,
    classCode: 0x020000,
    subsystemVendorId: 0x1af4,
    subsystemId: 0x1100,
    ...options,
  });
  fn.defineBar(0, { kind: "io", size: 32 });
  fn.defineBar(1, { kind: "mem32", size: 0x1000 });
  fn.defineBar(2, { kind: "mem64", size: 0x4000, prefetchable: true });
  const io = new RegisterFile(32);
  const regs = new RegisterFile(0x1000);
  const regs2 = new RegisterFile(0x100);
  fn.mapRegion(0, 0, 32, io);
  fn.mapRegion(2, 0, 0x1000, regs);
  fn.mapRegion(2, 0x2000, 0x100, regs2);
  fn.addMsix({ vectors: 4, tableBar: 1, pbaOffset: 0x800 });
  return { fn, io, regs, regs2 };
}

/** Guest-style config helpers over a function. */
export const cfg = {
  r8: (fn: PciFunction, off: number): number => fn.configRead(off, 1),
  r16: (fn: PciFunction, off: number): number => fn.configRead(off, 2),
  r32: (fn: PciFunction, off: number): number => fn.configRead(off, 4),
  w8: (fn: PciFunction, off: number, v: number): void => fn.configWrite(off, 1, v),
  w16: (fn: PciFunction, off: number, v: number): void => fn.configWrite(off, 2, v),
  w32: (fn: PciFunction, off: number, v: number): void => fn.configWrite(off, 4, v),
};

/** Walks the capability list as Linux does; returns [id, offset] pairs. */
export function walkCapabilities(fn: PciFunction): [number, number][] {
  const out: [number, number][] = [];
  if ((fn.configRead(0x06, 2) & 0x10) === 0) return out;
  let at = fn.configRead(0x34, 1) & 0xfc;
  for (let n = 0; at >= 0x40 && n < 48; n++) {
    out.push([fn.configRead(at, 1), at]);
    at = fn.configRead(at + 1, 1) & 0xfc;
  }
  return out;
}
