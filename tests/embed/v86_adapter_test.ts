/**
 * The v86 adapter against a stand-in for v86's CPU object: the same property
 * names and behaviour the adapter relies on (v86 0.5.462), no emulator. Runs in
 * milliseconds and needs no assets; v86_test.ts checks the real thing.
 *
 * @module
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  V86DmaSpace,
  type V86IoPort,
  type V86MmioRead,
  type V86MmioWrite,
  V86PciBus,
} from "../../src/embed/v86.ts";
import { PciFunction } from "../../src/pci/pci_function.ts";
import { DmaAccess } from "../../src/dma/dma_access.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { DmaTranslation } from "../../src/dma/dma_space.ts";

const RAM = 1 << 20;
const BLOCKS = 1 << 15;

/** A minimal imitation of v86's CPU, PCI bus and I/O tables. */
function fakeCpu() {
  const calls: string[] = [];
  let buffer = new ArrayBuffer(RAM + 4096);
  const pci = {
    pci_addr: new Uint8Array(4),
    pci_response32: new Int32Array(1),
    pci_status32: new Int32Array(1),
    devices: [] as unknown[],
    device_spaces: [] as unknown[],
    isa_bridge_space8: new Uint8Array(256),
    register_device(d: { pci_id: number; name: string }): Int32Array {
      this.devices[d.pci_id] = d;
      this.device_spaces[d.pci_id] = new Int32Array(64);
      return this.device_spaces[d.pci_id] as Int32Array;
    },
    pci_query(): void {
      calls.push("query:v86");
      this.pci_response32[0] = -1;
      this.pci_status32[0] = 0;
    },
    pci_write8(a: number, v: number): void {
      calls.push(`cfg8:v86:${(a >>> 0).toString(16)}=${v}`);
    },
    pci_write16(a: number, v: number): void {
      calls.push(`cfg16:v86:${(a >>> 0).toString(16)}=${v}`);
    },
    pci_write32(a: number, v: number): void {
      calls.push(`cfg32:v86:${(a >>> 0).toString(16)}=${v}`);
    },
  };
  pci.isa_bridge_space8.set([10, 10, 11, 11], 0x60);
  const empty = (): V86IoPort => ({
    read8: () => 0xff,
    read16: () => 0xffff,
    read32: () => -1,
    write8: () => {},
    write16: () => {},
    write32: () => {},
    device: undefined,
  });
  const read8: V86MmioRead = () => 0xff;
  const read32: V86MmioRead = () => -1;
  const write8: V86MmioWrite = (a, v) => {
    calls.push(`v86:w8:${(a >>> 0).toString(16)}=${v}`);
  };
  const write32: V86MmioWrite = () => {};
  const cpu = {
    devices: { pci },
    io: { ports: Array.from({ length: 0x10000 }, empty), create_empty_entry: empty },
    memory_size: [RAM],
    mem8: new Uint8Array(buffer, 4096, RAM),
    wasm_memory: { buffer: buffer as ArrayBufferLike },
    memory_map_read8: new Array<V86MmioRead | undefined>(BLOCKS).fill(read8),
    memory_map_write8: new Array<V86MmioWrite | undefined>(BLOCKS).fill(write8),
    memory_map_read32: new Array<V86MmioRead | undefined>(BLOCKS).fill(read32),
    memory_map_write32: new Array<V86MmioWrite | undefined>(BLOCKS).fill(write32),
    mmap_write16(a: number, v: number): void {
      const h = this.memory_map_write8[a >>> 17]!;
      h(a, v & 0xff);
      h(a + 1, v >> 8);
    },
    guest: (): void => {},
    main_loop(): number {
      this.guest();
      return 100;
    },
    jit_dirty_cache(start: number, end: number): void {
      calls.push(`jit:${start.toString(16)}-${end.toString(16)}`);
    },
    device_raise_irq(n: number): void {
      calls.push(`raise:${n}`);
    },
    device_lower_irq(n: number): void {
      calls.push(`lower:${n}`);
    },
    /** Replaces the wasm memory's buffer, as memory.grow does (the old one detaches). */
    grow(): void {
      const bigger = buffer.transfer(buffer.byteLength + 65536);
      buffer = bigger;
      this.wasm_memory.buffer = bigger;
      this.mem8 = new Uint8Array(bigger, 4096, RAM);
    },
  };
  return { cpu, pci, calls };
}

/** A function with a 4 KiB memory BAR 0 whose accesses are logged. */
function loggedFunction(log: string[], pin = 1): PciFunction {
  const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041, interruptPin: pin });
  fn.defineBar(0, { kind: "mem32", size: 0x1000 });
  fn.mapRegion(0, 0, 0x1000, {
    read: (offset, size) => {
      log.push(`read${size}@${offset.toString(16)}`);
      return 0x1234_5678 >>> (32 - 8 * size);
    },
    write: (offset, size, value) => {
      log.push(`write${size}@${offset.toString(16)}=${value.toString(16)}`);
    },
  });
  return fn;
}

/** A config-space access through 0xCF8/0xCFC as v86 performs it. */
function cf8(pci: ReturnType<typeof fakeCpu>["pci"], slot: number, reg: number): void {
  pci.pci_addr.set([reg & 0xfc, slot << 3, 0, 0x80]);
  pci.pci_query();
}

function address(slot: number, reg: number): number {
  return (0x8000_0000 | (slot << 11) | reg) | 0;
}

Deno.test("V86PciBus.install() refuses an emulator without a machine", () => {
  assertThrows(() => V86PciBus.install({} as never), TypeError, "emulator-loaded");
  assertThrows(
    () => V86PciBus.install({ v86: { cpu: { devices: {} } } } as never),
    TypeError,
    "lacks devices.pci",
  );
});

Deno.test("V86PciBus.attach() answers its slot's config space and leaves the others to v86", () => {
  const { cpu, pci, calls } = fakeCpu();
  const bus = V86PciBus.install({ v86: { cpu } });
  assertEquals(V86PciBus.install({ v86: { cpu } }), bus);
  const fn = loggedFunction([]);
  const at = bus.attach(fn);
  assertEquals(at.slot, 5);
  assert(pci.devices[5 << 3] !== undefined, "the slot is registered with v86");
  cf8(pci, 5, 0);
  assertEquals(pci.pci_response32[0] >>> 0, 0x1041_1af4);
  assertEquals(pci.pci_status32[0] >>> 0, 0x8000_0000);
  cf8(pci, 7, 0);
  assertEquals(calls.at(-1), "query:v86");
  pci.pci_write8(address(7, 0x3c), 3);
  assertEquals(calls.at(-1), "cfg8:v86:8000383c=3");
  pci.pci_write8(address(5, 0x3c), 9);
  assertEquals(fn.config.get8(0x3c), 9);
  assertThrows(() => bus.attach(fn), TypeError, "already attached");
  assertThrows(() => bus.attach(loggedFunction([]), { slot: 5 }), RangeError, "taken");
});

Deno.test("V86PciBus maps a memory BAR where the guest puts it and moves it", () => {
  const { cpu, pci } = fakeCpu();
  const bus = V86PciBus.install({ v86: { cpu } });
  const log: string[] = [];
  const fn = loggedFunction(log);
  bus.attach(fn, { slot: 3 });
  const original = cpu.memory_map_read32[0xfebf_0000 >>> 17];
  pci.pci_write32(address(3, 0x10), 0xfebf_0000 | 0);
  pci.pci_write16(address(3, 0x04), 0x0002); // memory space on
  assert(fn.bar(0)!.decoding);
  assert(cpu.memory_map_read32[0xfebf_0000 >>> 17] !== original, "the block is hooked");
  // Addresses arrive as signed 32-bit numbers from the wasm core.
  assertEquals(cpu.memory_map_read32[0xfebf_0000 >>> 17]!(0xfebf_0010 | 0), 0x1234_5678);
  cpu.memory_map_write8[0xfebf_0000 >>> 17]!(0xfebf_0003 | 0, 7);
  cpu.mmap_write16(0xfebf_0020 | 0, 0xbeef);
  assertEquals(log, ["read4@10", "write1@3=7", "write2@20=beef"]);
  // Outside the window, in the same 128 KiB block: v86's own handler.
  assertEquals(cpu.memory_map_read8[0xfebf_0000 >>> 17]!(0xfebe_0000 | 0), 0xff);
  // The guest moves the BAR: the old block is given back.
  pci.pci_write32(address(3, 0x10), 0xfe00_0000 | 0);
  assertEquals(cpu.memory_map_read32[0xfebf_0000 >>> 17], original);
  assertEquals(cpu.memory_map_read32[0xfe00_0000 >>> 17]!(0xfe00_0000 | 0), 0x1234_5678);
  // A BAR over guest RAM is refused and counted.
  pci.pci_write32(address(3, 0x10), 0x0008_0000);
  assertEquals(bus.diagnostics.unmappedBars, 1);
  assertEquals(cpu.memory_map_read32[0xfe00_0000 >>> 17], original);
});

Deno.test("V86PciBus routes INTx through PIIX3 and defers raises made while the CPU runs", () => {
  const { cpu, calls } = fakeCpu();
  const bus = V86PciBus.install({ v86: { cpu } });
  const a = loggedFunction([]);
  const b = loggedFunction([]);
  bus.attach(a, { slot: 5 }); // pin A + slot 5 -> PIRQA -> IRQ 10
  bus.attach(b, { slot: 9 }); // pin A + slot 9 -> PIRQA -> IRQ 10
  calls.length = 0;
  a.setIntx(true); // outside the CPU: at once
  assertEquals(calls, ["raise:10"]);
  cpu.guest = () => b.setIntx(true); // a register access that completes work synchronously
  assertEquals(cpu.main_loop(), 0, "the CPU runs again at once to take the interrupt");
  assertEquals(calls, ["raise:10", "raise:10"], "raised after the slice, not inside it");
  a.setIntx(false); // b still asserts: requested again, not lowered
  assertEquals(calls.at(-1), "raise:10");
  b.setIntx(false);
  assertEquals(calls.at(-1), "lower:10");
  assertEquals(bus.attachments.map((x) => x.irq), [10, 10]);
  cpu.guest = () => {
    a.setIntx(true);
    a.setIntx(false); // asserted and cleared within the slice: nothing to deliver
  };
  calls.length = 0;
  assertEquals(cpu.main_loop(), 100);
  assertEquals(calls, ["lower:10"]);
});

Deno.test("V86DmaSpace gives zero-copy views of RAM and tells the JIT about writes", () => {
  const { cpu, calls } = fakeCpu();
  const dma = new V86DmaSpace(cpu);
  assertEquals(dma.size, RAM);
  dma.write32(0x2000, 0xdead_beef);
  assertEquals(cpu.mem8[0x2000], 0xef);
  assertEquals(calls.at(-1), "jit:2000-2004");
  calls.length = 0;
  assertEquals(dma.read32(0x2000), 0xdead_beef);
  const view = dma.view(0x2000, 4, DmaAccess.Read)!;
  assertEquals(view.buffer, cpu.wasm_memory.buffer);
  assertEquals(calls, [], "reads leave the JIT alone");
  const t = new DmaTranslation();
  dma.translate(0x9_ff00, 0x1000, DmaAccess.Write, t);
  assertEquals(t.length, 0x100, "a translation stops at the VGA hole");
  assertThrows(() => dma.read8(0xa_0000), DmaFault, "unmapped");
  assertThrows(() => dma.read8(RAM), DmaFault, "unmapped");
  assertThrows(() => dma.read8(-1), DmaFault, "invalid");
});

Deno.test("V86DmaSpace.checkGrowth() invalidates cached translations when v86's memory grows", () => {
  const { cpu } = fakeCpu();
  const bus = V86PciBus.install({ v86: { cpu } });
  const invalidated: [number, number][] = [];
  bus.dma.addInvalidationListener((address, length) => invalidated.push([address, length]));
  const before = bus.dma.view(0x1000, 16, DmaAccess.Read)!;
  assertEquals(bus.dma.checkGrowth(), false);
  cpu.grow();
  assertEquals(before.byteLength, 0, "the old view is detached");
  cpu.main_loop(); // the bus checks after every slice of CPU time
  assertEquals(invalidated, [[0, RAM]]);
  bus.dma.write8(0x1000, 5);
  assertEquals(cpu.mem8[0x1000], 5);
});
