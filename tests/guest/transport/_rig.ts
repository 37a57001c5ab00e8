/**
 * Fixtures for the guest transport-driver tests: a tracing bus, hand-built
 * (possibly broken) virtio-pci functions that forward their BARs to a real
 * VirtioPci, and a device whose config changes under the driver's reads.
 */
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { PciFunction } from "../../../src/pci/pci_function.ts";
import { PciCapabilityId, PciCommand } from "../../../src/pci/registers.ts";
import type { GuestPciBus } from "../../../src/guest/pci/pci_enumeration.ts";
import type { DeviceQueue } from "../../../src/queue/device_queue.ts";
import type {
  ActivateContext,
  VirtioDevice,
  VirtioDeviceHost,
} from "../../../src/virtio/device.ts";
import { VirtioPci, type VirtioPciOptions } from "../../../transports/pci/virtio_pci.ts";
import { EchoDevice } from "../../helpers/echo_device.ts";

/** One bus access seen by {@linkcode TraceBus}. */
export interface Access {
  op: "memRead" | "memWrite" | "configRead" | "configWrite";
  address: number;
  size: number;
  value: number;
}

/**
 * A bus that records memory and config accesses and can rewrite what a
 * memory read returns (`tamper`), in front of another bus.
 */
export class TraceBus implements GuestPciBus {
  readonly log: Access[] = [];
  tamper: ((address: number, size: number, value: number) => number) | null = null;
  recording = true;
  constructor(readonly inner: GuestPciBus) {}
  get busNumber(): number {
    return this.inner.busNumber ?? 0;
  }
  memRead(address: number, size: number): number {
    let value = this.inner.memRead(address, size);
    if (this.tamper !== null) value = this.tamper(address, size, value);
    if (this.recording) this.log.push({ op: "memRead", address, size, value });
    return value;
  }
  memWrite(address: number, size: number, value: number): void {
    if (this.recording) this.log.push({ op: "memWrite", address, size, value });
    this.inner.memWrite(address, size, value);
  }
  configRead(b: number, d: number, f: number, reg: number, size: number): number {
    const value = this.inner.configRead(b, d, f, reg, size);
    if (this.recording) this.log.push({ op: "configRead", address: reg, size, value });
    return value;
  }
  configWrite(b: number, d: number, f: number, reg: number, size: number, value: number): void {
    if (this.recording) this.log.push({ op: "configWrite", address: reg, size, value });
    this.inner.configWrite(b, d, f, reg, size, value);
  }
  ioRead(port: number, size: number): number {
    return this.inner.ioRead(port, size);
  }
  ioWrite(port: number, size: number, value: number): void {
    this.inner.ioWrite(port, size, value);
  }
  /** Writes to `[base, base + length)` in order, as offsets. */
  writesIn(base: number, length: number): { offset: number; size: number; value: number }[] {
    return this.log.filter((a) =>
      a.op === "memWrite" && a.address >= base && a.address < base + length
    ).map((a) => ({ offset: a.address - base, size: a.size, value: a.value }));
  }
}

/** One virtio capability of a hand-built function. */
export interface CapSpec {
  type: number;
  bar: number;
  offset: number;
  length: number;
  /** notify_off_multiplier (NOTIFY caps get cap_len 20 when given). */
  multiplier?: number;
  /** cap_len override. */
  capLen?: number;
}

/** The caps of a well-formed function, laid out like VirtioPci's BAR 4. */
export function goodCaps(): CapSpec[] {
  return [
    { type: 1, bar: 4, offset: 0x0000, length: 0x40 },
    { type: 3, bar: 4, offset: 0x1000, length: 1 },
    { type: 4, bar: 4, offset: 0x2000, length: 8 },
    { type: 2, bar: 4, offset: 0x3000, length: 0x1000, multiplier: 4 },
  ];
}

/**
 * A hand-built virtio-pci function: identity and capability list chosen by
 * the test, BAR 4 forwarded to a real {@linkcode VirtioPci} (whose own config
 * space the guest never sees), no MSI-X, INTx forwarded. Lets a test present
 * what a broken device would.
 */
export function handBuiltFunction(options: {
  caps: CapSpec[];
  /** Guest RAM the device uses (8 MiB at 0 by default). */
  memory?: GuestMemory;
  device?: VirtioDevice;
  deviceId?: number;
  vendorId?: number;
  /** INTx pin (default 1). */
  interruptPin?: number;
  /** Size of the proxy's BAR 4 (default: the real one's). */
  barSize?: number;
  /** Define BAR 4 as this kind instead of mem64. */
  barKind?: "mem32" | "mem64" | "io";
  /** Rewrite a value the device returns from BAR 4 (offset inside it). */
  tamper?: (offset: number, size: number, value: number) => number;
  pci?: Partial<VirtioPciOptions>;
}): { fn: PciFunction; vp: VirtioPci; memory: GuestMemory } {
  const memory = options.memory ?? new GuestMemory([{ base: 0, size: 8 << 20 }]);
  const device = options.device ?? new EchoDevice(2, 64);
  const vp = new VirtioPci(device, { dma: new DirectDmaSpace(memory), ...options.pci });
  const real = vp.pci;
  const fn = new PciFunction({
    vendorId: options.vendorId ?? 0x1af4,
    deviceId: options.deviceId ?? 0x1040 + device.deviceId,
    revisionId: 1,
    subsystemVendorId: 0x1af4,
    subsystemId: 0x1100,
    interruptPin: options.interruptPin ?? 1,
    name: "hand-built",
  });
  const size = options.barSize ?? real.bar(4)!.size;
  const kind = options.barKind ?? "mem64";
  fn.defineBar(4, { kind, size });
  const realSize = real.bar(4)!.size;
  fn.mapRegion(4, 0, size, {
    read: (off, s) => {
      const v = off + s <= realSize ? real.barRead(4, off, s) : 0;
      return options.tamper ? options.tamper(off, s, v) : v;
    },
    write: (off, s, v) => {
      if (off + s <= realSize) real.barWrite(4, off, s, v);
    },
  });
  for (const c of options.caps) {
    const capLen = c.capLen ?? (c.multiplier === undefined ? 16 : 20);
    const at = fn.addCapability(PciCapabilityId.VENDOR, Math.max(capLen, 16));
    fn.config.define8(at + 2, capLen);
    fn.config.define8(at + 3, c.type);
    fn.config.define8(at + 4, c.bar);
    fn.config.define32(at + 8, c.offset);
    fn.config.define32(at + 12, c.length);
    if (c.multiplier !== undefined) fn.config.define32(at + 16, c.multiplier);
  }
  // The real function stands behind the proxy: let it decode and master the bus.
  real.configWrite(4, 2, PciCommand.MEMORY | PciCommand.MASTER);
  real.bind({ intx: (_f, level) => fn.setIntx(level) });
  return { fn, vp, memory };
}

/**
 * A device whose config bytes change (with a config-change notification)
 * during the next `flips` config reads: the driver's generation loop must
 * read again.
 */
export class FlakyConfigDevice implements VirtioDevice {
  readonly deviceId = 0x3e;
  readonly deviceFeatures = 0n;
  readonly numQueues = 1;
  flips = 0;
  value = 0x1111_1111;
  #bytes = new Uint8Array(8);
  #host: VirtioDeviceHost | null = null;
  get config(): Uint8Array {
    if (this.flips > 0) {
      this.flips--;
      this.value = (this.value + 0x0101_0101) >>> 0;
      this.#host?.configChanged();
    }
    const dv = new DataView(this.#bytes.buffer);
    dv.setUint32(0, this.value, true);
    dv.setUint32(4, this.value, true);
    return this.#bytes;
  }
  queueMaxSize(): number {
    return 16;
  }
  writeConfig(): void {}
  bind(host: VirtioDeviceHost): void {
    this.#host = host;
  }
  validateFeatures(): string | null {
    return null;
  }
  activate(_c: ActivateContext): void {}
  notify(): void {}
  resetQueue(): void {}
  enableQueue(_i: number, _q: DeviceQueue): void {}
  reset(): void {}
  saveState(): Record<string, unknown> {
    return {};
  }
  restoreState(): void {}
}

/** Polls a guest callback queue: collects every used buffer's token and length. */
export function collector<T>(): {
  got: { token: T; len: number }[];
  callback: (vq: { getBuf(): { token: T; len: number } | null }) => void;
} {
  const got: { token: T; len: number }[] = [];
  return {
    got,
    callback: (vq) => {
      for (let b = vq.getBuf(); b !== null; b = vq.getBuf()) {
        got.push({ token: b.token, len: b.len });
      }
    },
  };
}
