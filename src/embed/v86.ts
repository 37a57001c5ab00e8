/**
 * Attaches vireo PCI functions (a {@linkcode VirtioPci}'s `pci`, or any
 * {@linkcode PciFunction}) to a running [v86](https://github.com/copy/v86)
 * machine, so a stock Linux guest inside v86 drives vireo's devices.
 *
 * The adapter never imports v86: it takes the emulator object (`new V86(...)`)
 * and works on the internals listed in {@linkcode V86Cpu}, which are stable
 * property names of the published bundle but not a public v86 API. It was
 * written against v86 0.5.462 (pin that version; the end-to-end tests are the
 * canary). It runs wherever v86 runs: Deno, browsers, Node.
 *
 * What it does:
 * - claims a slot on v86's PCI bus 0 and answers that slot's config reads and
 *   writes (ports 0xCF8/0xCFC) from the function's config space;
 * - maps memory BARs wherever the firmware or the guest puts them, and moves
 *   them after every config write that changes a BAR or the command register;
 *   I/O BARs become port handlers;
 * - delivers 16-bit MMIO writes whole (v86 would split them into two byte
 *   writes); 16-bit MMIO reads reach the function as two byte reads, which
 *   {@linkcode VirtioPci} answers per byte;
 * - routes INTx through the PIIX3 PIRQ registers to the guest's PIC
 *   (v86 delivers no MSI: boot Linux with `pci=nomsi`). Interrupts a device
 *   raises while the guest's CPU runs (work done synchronously in a register
 *   access) are raised when v86's time slice ends, between instructions;
 * - gives devices a {@linkcode V86DmaSpace} over guest RAM that keeps v86's
 *   JIT coherent and survives v86 growing its wasm memory.
 *
 * Wiring the backends: a disk image is any `BlockBackend`; the simplest is a
 * `MemoryBackend` over the image's bytes (write them back when you save).
 * Prefer backends that complete synchronously: v86 grows its wasm memory a
 * few dozen times per boot, which detaches every view of guest RAM, and a
 * backend that keeps a view across an `await` then finds it empty. A network
 * backend is any `NetBackend`: `createPair()` gives a cable whose other end a
 * second VirtioNet, or any host-side `NetPort` (a switch, a TAP bridge, a
 * WebSocket relay), plugs into.
 *
 * @example Boot Linux with a vireo disk and NIC (assets from tests/e2e/fetch_assets.sh)
 * ```ts ignore
 * import { V86 } from "./libv86.mjs";
 * import { V86PciBus } from "@vireo/vireo/embed/v86";
 * import { VirtioPci } from "@vireo/vireo";
 * import { MemoryBackend, VirtioBlk } from "@vireo/vireo/blk";
 * import { createPair, VirtioNet } from "@vireo/vireo/net";
 *
 * const emulator = new V86({
 *   wasm_path: "v86.wasm", bios: { buffer: bios }, vga_bios: { buffer: vgaBios },
 *   bzimage: { buffer: kernel }, initrd: { buffer: initrd }, memory_size: 128 << 20,
 *   cmdline: "console=ttyS0 pci=nomsi acpi=off rdinit=/init",
 *   autostart: false, net_device: { type: "none" },
 * });
 * const disk = new MemoryBackend(imageBytes);          // a disk image, in memory
 * const [guestSide, hostSide] = createPair();           // a cable; hostSide is the host's end
 * emulator.add_listener("emulator-loaded", () => {
 *   const bus = V86PciBus.install(emulator);
 *   const blk = new VirtioPci(new VirtioBlk({ backend: disk, serial: "vireo0" }), { dma: bus.dma });
 *   const net = new VirtioPci(new VirtioNet({ mac: "52:54:00:12:34:56", backend: guestSide }), {
 *     dma: bus.dma,
 *   });
 *   bus.attach(blk.pci);
 *   bus.attach(net.pci);
 *   emulator.run();
 * });
 * ```
 *
 * @module
 */
import { hex } from "../guest_fault.ts";
import { DmaAccess } from "../dma/dma_access.ts";
import { DmaFault } from "../dma/dma_fault.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "../dma/dma_space.ts";
import type { PciBar } from "../pci/bar.ts";
import type { PciFunction } from "../pci/pci_function.ts";

/** A v86 memory-mapped read handler (address as v86 passes it: possibly negative). */
export type V86MmioRead = (address: number) => number;
/** A v86 memory-mapped write handler. */
export type V86MmioWrite = (address: number, value: number) => void;

/** One entry of v86's I/O port table (`cpu.io.ports[port]`). */
export interface V86IoPort {
  /** 8-bit read. */
  read8: () => number;
  /** 16-bit read. */
  read16: () => number;
  /** 32-bit read. */
  read32: () => number;
  /** 8-bit write. */
  write8: (value: number) => void;
  /** 16-bit write. */
  write16: (value: number) => void;
  /** 32-bit write. */
  write32: (value: number) => void;
  /** The owner (v86 calls the handlers with it as `this`). */
  device: unknown;
}

/** v86's PCI bus (`cpu.devices.pci`): the internals the adapter hooks. */
export interface V86Pci {
  /** The CF8 address register's bytes. */
  pci_addr: Uint8Array;
  /** The CFC data register's bytes, computed by `pci_query`. */
  pci_response32: Int32Array;
  /** Bit 31 set when a device answered the last query. */
  pci_status32: Int32Array;
  /** Registered devices, indexed by bus << 8 | devfn. */
  devices: unknown[];
  /** Their config spaces (64 dwords), same index. */
  device_spaces: unknown[];
  /** The PIIX3 ISA bridge's config bytes; 0x60..0x63 are the PIRQA..D routing registers. */
  isa_bridge_space8: Uint8Array;
  /** Registers a device; returns its config dwords. */
  register_device(device: {
    pci_id: number;
    pci_space: number[];
    pci_bars: unknown[];
    name: string;
  }): Int32Array;
  /** Runs when the last byte of CF8 is written: fills `pci_response32` and `pci_status32`. */
  pci_query(): void;
  /** Config write of a byte; `address` is the CF8 value plus the byte offset. */
  pci_write8(address: number, value: number): void;
  /** Config write of a word. */
  pci_write16(address: number, value: number): void;
  /** Config write of a dword. */
  pci_write32(address: number, value: number): void;
}

/** The parts of v86's CPU object (`emulator.v86.cpu`) the adapter uses. */
export interface V86Cpu {
  /** Devices; `pci` is the bus. */
  devices: { pci: V86Pci };
  /** The I/O port table. */
  io: { ports: V86IoPort[]; create_empty_entry(): V86IoPort };
  /** Guest RAM size in bytes (`memory_size[0]`). */
  memory_size: ArrayLike<number>;
  /** Guest RAM (in v86 a proxy that rebuilds the view on each access; only its offset is used). */
  mem8: Uint8Array;
  /** The wasm memory holding guest RAM. */
  wasm_memory: { buffer: ArrayBufferLike };
  /** MMIO byte read handlers per 128 KiB block (`address >>> 17`). */
  memory_map_read8: (V86MmioRead | undefined)[];
  /** MMIO byte write handlers per 128 KiB block. */
  memory_map_write8: (V86MmioWrite | undefined)[];
  /** MMIO dword read handlers per 128 KiB block. */
  memory_map_read32: (V86MmioRead | undefined)[];
  /** MMIO dword write handlers per 128 KiB block. */
  memory_map_write32: (V86MmioWrite | undefined)[];
  /** 16-bit MMIO write (stock: two byte writes); the adapter overrides it. */
  mmap_write16(address: number, value: number): void;
  /** Runs the CPU for a slice of time; returns how long to sleep. */
  main_loop(): number;
  /** Drops JIT-compiled code for guest physical `[start, end)`. */
  jit_dirty_cache(start: number, end: number): void;
  /** Raises an ISA IRQ line. */
  device_raise_irq(irq: number): void;
  /** Lowers an ISA IRQ line. */
  device_lower_irq(irq: number): void;
}

/** A v86 emulator object (`new V86(...)`), once it sent `"emulator-loaded"`. */
export interface V86Emulator {
  /** The machine. */
  v86: { cpu: V86Cpu };
}

/** Options of {@linkcode V86PciBus.attach}. */
export interface V86AttachOptions {
  /** PCI slot (device number) on bus 0: 1..31; default the first free one from 5. */
  slot?: number;
}

/** One function attached to v86 ({@linkcode V86PciBus.attach}). */
export interface V86Attachment {
  /** The function. */
  readonly fn: PciFunction;
  /** Its slot on bus 0. */
  readonly slot: number;
  /** The IRQ line its INTx was last delivered on (from the PIIX3 PIRQ registers), or -1. */
  readonly irq: number;
}

/** Counters of what the adapter refused or dropped. */
export interface V86BusDiagnostics {
  /** BAR placements not mapped: above 4 GiB, over guest RAM, or over another vireo BAR. */
  unmappedBars: number;
  /** MSI messages dropped (v86 has no MSI delivery; boot with `pci=nomsi`). */
  droppedMsis: number;
  /** INTx assertions not delivered because the PIRQ line is disabled. */
  droppedIntx: number;
  /** The last thing refused, for a human. */
  last: string;
}

interface Window {
  base: number;
  end: number;
  fn: PciFunction;
  bar: number;
}

interface BlockHandlers {
  read8: V86MmioRead | undefined;
  write8: V86MmioWrite | undefined;
  read32: V86MmioRead | undefined;
  write32: V86MmioWrite | undefined;
}

interface AttachmentState extends V86Attachment {
  irq: number;
  asserted: boolean;
  /** I/O ports this function's I/O BARs own, with the entries they replaced. */
  ports: Map<number, V86IoPort>;
}

const BLOCK_SHIFT = 17;
const TWO_32 = 0x1_0000_0000;
const VGA_START = 0xa_0000;
const VGA_END = 0xc_0000;
const BUSES = new WeakMap<V86Cpu, V86PciBus>();

/**
 * Guest RAM of a v86 machine as a {@linkcode DmaSpace}: addresses are guest
 * physical, every RAM byte is readable and writable, the VGA hole
 * (0xA0000..0xBFFFF) and everything above RAM fault.
 *
 * Views are zero-copy over v86's wasm memory. Every translation for writing
 * first tells v86's JIT that the range changes (`jit_dirty_cache`, what v86's
 * own `write_blob` does), so code the guest later runs from a page a device
 * wrote is recompiled. A device writes right after translating, before the
 * guest runs again, so this keeps the JIT coherent for zero-copy writes too.
 *
 * v86 grows its wasm memory now and then (the JIT allocates), which detaches
 * every view of guest RAM. {@linkcode V86DmaSpace.checkGrowth} notices it and
 * invalidates all cached translations; a backend that keeps a view across an
 * `await` (an asynchronous block backend) can still find it detached, so with
 * v86 prefer synchronous backends or re-translate after awaiting.
 */
export class V86DmaSpace extends TranslatingDmaSpace {
  readonly #cpu: V86Cpu;
  #bytes: Uint8Array = new Uint8Array(0);
  #size = 0;
  #growths = 0;

  /** Creates the space over `cpu`'s RAM (after `"emulator-loaded"`). */
  constructor(cpu: V86Cpu) {
    super();
    if (cpu === null || typeof cpu !== "object" || typeof cpu.jit_dirty_cache !== "function") {
      throw new TypeError("Cannot create a v86 DMA space: cpu is not a v86 CPU object");
    }
    this.#cpu = cpu;
    this.#refresh();
  }

  /** Guest RAM size in bytes. */
  get size(): number {
    return this.#size;
  }

  /** How many times v86's wasm memory grew under this space (each one invalidated every cached translation). */
  get growths(): number {
    return this.#growths;
  }

  /** See {@linkcode DmaSpace.translate}. */
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    const size = this.#size;
    if (
      !Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 ||
      length < 0
    ) {
      throw new DmaFault(address, length, access, "invalid");
    }
    if (address >= size || (address >= VGA_START && address < VGA_END)) {
      throw new DmaFault(address, length, access, "unmapped");
    }
    const limit = address < VGA_START ? VGA_START : size;
    const run = Math.min(length, limit - address);
    if (this.#bytes.byteLength === 0) this.checkGrowth();
    const bytes = this.#bytes;
    if ((access & DmaAccess.Write) !== 0 && run > 0) {
      this.#cpu.jit_dirty_cache(address, address + run);
    }
    out.bytes = bytes;
    out.offset = address;
    out.length = run;
  }

  /**
   * Notices that v86's wasm memory grew (which detaches every view of it) and
   * then drops all cached translations through the invalidation listeners, so
   * queues translate their rings again. {@linkcode V86PciBus} calls it on
   * every access from the guest and after every slice of CPU time; call it
   * yourself before device work that starts outside those paths.
   *
   * @returns true when the memory had grown
   */
  checkGrowth(): boolean {
    if (this.#bytes.byteLength !== 0) return false;
    this.#growths++;
    this.#refresh();
    this.invalidate(0, this.#size);
    return true;
  }

  #refresh(): Uint8Array {
    const cpu = this.#cpu;
    const size = cpu.memory_size[0] >>> 0;
    // cpu.mem8 is a proxy over the wasm memory; its byteOffset is where RAM starts.
    this.#bytes = new Uint8Array(cpu.wasm_memory.buffer, cpu.mem8.byteOffset, size);
    this.#size = size;
    return this.#bytes;
  }
}

/**
 * vireo's PCI functions on a v86 machine's PCI bus 0: config space, BARs,
 * INTx, and the {@linkcode V86DmaSpace} devices use.
 *
 * Get it with {@linkcode V86PciBus.install} once v86 sent `"emulator-loaded"`
 * (with `autostart: false`), attach functions, then `emulator.run()` so that
 * the firmware sees them. See the module documentation for a full example.
 */
export class V86PciBus {
  /** DMA over the machine's RAM: pass it as `dma` to {@linkcode VirtioPci}. */
  readonly dma: V86DmaSpace;
  /** What the adapter refused or dropped. */
  readonly diagnostics: V86BusDiagnostics = {
    unmappedBars: 0,
    droppedMsis: 0,
    droppedIntx: 0,
    last: "",
  };
  readonly #cpu: V86Cpu;
  readonly #pci: V86Pci;
  /** Attachments by devfn (slot << 3). */
  readonly #byDevfn = new Map<number, AttachmentState>();
  readonly #byFn = new Map<PciFunction, AttachmentState>();
  #windows: Window[] = [];
  #lastWindow: Window | null = null;
  /** The handlers each 128 KiB block had before the adapter took it. */
  readonly #blocks = new Map<number, BlockHandlers>();
  /** How many attached functions assert each IRQ line. */
  readonly #irqLevels = new Map<number, number>();
  /** True while v86 executes guest instructions (inside `cpu.main_loop`). */
  #inCpu = false;
  /** IRQ lines to raise once the CPU is between instructions again. */
  readonly #deferred = new Set<number>();
  readonly #read8: V86MmioRead;
  readonly #write8: V86MmioWrite;
  readonly #read32: V86MmioRead;
  readonly #write32: V86MmioWrite;

  /**
   * The bus adapter of `emulator`, installed on first use (the PCI and MMIO
   * hooks go in once per machine).
   *
   * @throws {TypeError} when `emulator` has no loaded v86 machine (call it from
   *   the `"emulator-loaded"` listener), or lacks the v86 0.5.x internals
   */
  static install(emulator: V86Emulator): V86PciBus {
    const cpu = emulator?.v86?.cpu;
    if (cpu === undefined || cpu === null || typeof cpu !== "object") {
      throw new TypeError(
        'Cannot attach to v86: the emulator has no machine yet (wait for "emulator-loaded")',
      );
    }
    const existing = BUSES.get(cpu);
    if (existing !== undefined) return existing;
    const bus = new V86PciBus(cpu);
    BUSES.set(cpu, bus);
    return bus;
  }

  private constructor(cpu: V86Cpu) {
    const pci = cpu.devices?.pci;
    const missing = [
      ["devices.pci", pci],
      ["devices.pci.pci_query", pci?.pci_query],
      ["devices.pci.isa_bridge_space8", pci?.isa_bridge_space8],
      ["memory_map_read8", cpu.memory_map_read8],
      ["mmap_write16", cpu.mmap_write16],
      ["jit_dirty_cache", cpu.jit_dirty_cache],
      ["main_loop", cpu.main_loop],
      ["device_raise_irq", cpu.device_raise_irq],
      ["io.ports", cpu.io?.ports],
    ].filter(([, v]) => v === undefined || v === null).map(([name]) => name);
    if (missing.length > 0) {
      throw new TypeError(
        `Cannot attach to v86: the CPU object lacks ${
          missing.join(", ")
        } (vireo's adapter targets v86 0.5.462)`,
      );
    }
    this.#cpu = cpu;
    this.#pci = pci;
    this.dma = new V86DmaSpace(cpu);
    this.#read8 = (address) => this.#mmioRead(address >>> 0, 1);
    this.#read32 = (address) => this.#mmioRead(address >>> 0, 4);
    this.#write8 = (address, value) => this.#mmioWrite(address >>> 0, 1, value);
    this.#write32 = (address, value) => this.#mmioWrite(address >>> 0, 4, value);
    this.#hookConfig();
    this.#hookWrite16();
    const mainLoop = cpu.main_loop.bind(cpu);
    cpu.main_loop = (): number => {
      this.#inCpu = true;
      let sleep: number;
      try {
        sleep = mainLoop();
      } finally {
        this.#inCpu = false;
      }
      this.dma.checkGrowth();
      // Interrupts raised while the CPU ran go in now, between instructions.
      return this.#raiseDeferred() ? 0 : sleep;
    };
  }

  /** The attached functions. */
  get attachments(): V86Attachment[] {
    return [...this.#byFn.values()];
  }

  /**
   * Puts `fn` on bus 0: the guest finds it when it scans (attach before
   * `emulator.run()` so that the firmware assigns its BARs, or rescan in Linux).
   *
   * @throws {TypeError} when `fn` is already attached
   * @throws {RangeError} when the slot is not 1..31, is taken, or no slot is free
   */
  attach(fn: PciFunction, options: V86AttachOptions = {}): V86Attachment {
    if (fn === null || typeof fn !== "object" || typeof fn.configRead !== "function") {
      throw new TypeError("Cannot attach to v86: fn is not a PciFunction (pass a VirtioPci's pci)");
    }
    if (this.#byFn.has(fn)) {
      throw new TypeError(`Cannot attach ${fn.name} to v86: it is already attached`);
    }
    const pci = this.#pci;
    const free = (s: number): boolean =>
      pci.devices[s << 3] === undefined && !this.#byDevfn.has(s << 3);
    let slot = options.slot;
    if (slot === undefined) {
      slot = 5;
      while (slot < 32 && !free(slot)) slot++;
      if (slot === 32) throw new RangeError(`Cannot attach ${fn.name} to v86: no free PCI slot`);
    } else if (!Number.isInteger(slot) || slot < 1 || slot > 31) {
      throw new RangeError(`Cannot attach ${fn.name} to v86: slot ${slot} is outside 1..31`);
    } else if (!free(slot)) {
      throw new RangeError(`Cannot attach ${fn.name} to v86: slot ${slot} is taken`);
    }
    const devfn = slot << 3;
    const space: number[] = [];
    for (let i = 0; i < 256; i++) space.push(fn.config.get8(i));
    // Registered so v86 sees the slot as taken; the hooks answer all of its accesses.
    pci.register_device({ pci_id: devfn, pci_space: space, pci_bars: [], name: fn.name });
    const state: AttachmentState = { fn, slot, irq: -1, asserted: false, ports: new Map() };
    this.#byDevfn.set(devfn, state);
    this.#byFn.set(fn, state);
    fn.bind({
      barChanged: (source, bar, previous) => this.#barChanged(source, bar, previous),
      intx: (_source, asserted) => this.#intx(state, asserted),
      msi: (source, address, data) => {
        this.diagnostics.droppedMsis++;
        this.diagnostics.last = `${source.name}: MSI ${hex(data)} to ${
          hex(address)
        } dropped: v86 has no MSI delivery (boot with pci=nomsi)`;
      },
    });
    for (const bar of fn.bars) if (bar.decoding) this.#barChanged(fn, bar, null);
    if (fn.intxAsserted) this.#intx(state, true);
    return state;
  }

  /** Takes `fn` off the bus: unmaps its BARs, lowers its interrupt, frees its slot. */
  detach(fn: PciFunction): void {
    const state = this.#byFn.get(fn);
    if (state === undefined) return;
    this.#intx(state, false);
    for (const w of this.#windows.filter((w) => w.fn === fn)) this.#unmapWindow(w);
    for (const [port, previous] of state.ports) this.#cpu.io.ports[port] = previous;
    state.ports.clear();
    fn.bind(null);
    const devfn = state.slot << 3;
    this.#byDevfn.delete(devfn);
    this.#byFn.delete(fn);
    this.#pci.devices[devfn] = undefined;
    this.#pci.device_spaces[devfn] = undefined;
  }

  // ---- config space -------------------------------------------------------------

  #hookConfig(): void {
    const pci = this.#pci;
    const query = pci.pci_query.bind(pci);
    const write8 = pci.pci_write8.bind(pci);
    const write16 = pci.pci_write16.bind(pci);
    const write32 = pci.pci_write32.bind(pci);
    pci.pci_query = () => {
      const addr = pci.pci_addr;
      const state = addr[2] === 0 ? this.#byDevfn.get(addr[1]) : undefined;
      if (state === undefined) return query();
      this.dma.checkGrowth();
      pci.pci_status32[0] = -0x8000_0000;
      pci.pci_response32[0] = state.fn.configRead(addr[0] & 0xfc, 4) | 0;
    };
    const writer = (size: number, original: (a: number, v: number) => void) => {
      return (address: number, value: number): void => {
        const bdf = (address >> 8) & 0xffff;
        const state = bdf < 0x100 ? this.#byDevfn.get(bdf) : undefined;
        if (state === undefined) return original(address, value);
        this.dma.checkGrowth();
        const offset = address & 0xff;
        if (state.fn.config.isValidAccess(offset, size)) {
          state.fn.configWrite(offset, size, value & (size === 4 ? -1 : (1 << (size * 8)) - 1));
        }
      };
    };
    pci.pci_write8 = writer(1, write8);
    pci.pci_write16 = writer(2, write16);
    pci.pci_write32 = writer(4, write32);
  }

  // ---- BARs ---------------------------------------------------------------------

  #barChanged(fn: PciFunction, bar: PciBar, previous: number | null): void {
    const state = this.#byFn.get(fn);
    if (state === undefined) return;
    if (bar.kind === "io") {
      this.#remapPorts(state, bar);
      return;
    }
    if (previous !== null) {
      const old = this.#windows.find((w) => w.fn === fn && w.bar === bar.index);
      if (old !== undefined) this.#unmapWindow(old);
    }
    if (!bar.decoding) return;
    const base = bar.address;
    const end = base + bar.size;
    const ram = this.#cpu.memory_size[0] >>> 0;
    let why: string | null = null;
    if (end > TWO_32) why = "it is above 4 GiB, out of v86's reach";
    else if (base < ram || (base < VGA_END && end > VGA_START)) why = "it overlaps guest RAM";
    else if (this.#windows.some((w) => base < w.end && w.base < end)) {
      why = "it overlaps another vireo BAR";
    }
    if (why !== null) {
      this.diagnostics.unmappedBars++;
      this.diagnostics.last = `${fn.name}: BAR ${bar.index} at ${hex(base)} not mapped: ${why}`;
      return;
    }
    this.#mapWindow({ base, end, fn, bar: bar.index });
  }

  #mapWindow(w: Window): void {
    this.#windows = [...this.#windows, w];
    const cpu = this.#cpu;
    for (let block = w.base >>> BLOCK_SHIFT; block <= (w.end - 1) >>> BLOCK_SHIFT; block++) {
      if (this.#blocks.has(block)) continue;
      this.#blocks.set(block, {
        read8: cpu.memory_map_read8[block],
        write8: cpu.memory_map_write8[block],
        read32: cpu.memory_map_read32[block],
        write32: cpu.memory_map_write32[block],
      });
      cpu.memory_map_read8[block] = this.#read8;
      cpu.memory_map_write8[block] = this.#write8;
      cpu.memory_map_read32[block] = this.#read32;
      cpu.memory_map_write32[block] = this.#write32;
    }
  }

  #unmapWindow(w: Window): void {
    this.#windows = this.#windows.filter((x) => x !== w);
    this.#lastWindow = null;
    const cpu = this.#cpu;
    for (let block = w.base >>> BLOCK_SHIFT; block <= (w.end - 1) >>> BLOCK_SHIFT; block++) {
      const still = this.#windows.some((x) =>
        x.base >>> BLOCK_SHIFT <= block && (x.end - 1) >>> BLOCK_SHIFT >= block
      );
      const saved = this.#blocks.get(block);
      if (still || saved === undefined) continue;
      this.#blocks.delete(block);
      if (cpu.memory_map_read8[block] === this.#read8) cpu.memory_map_read8[block] = saved.read8;
      if (cpu.memory_map_write8[block] === this.#write8) {
        cpu.memory_map_write8[block] = saved.write8;
      }
      if (cpu.memory_map_read32[block] === this.#read32) {
        cpu.memory_map_read32[block] = saved.read32;
      }
      if (cpu.memory_map_write32[block] === this.#write32) {
        cpu.memory_map_write32[block] = saved.write32;
      }
    }
  }

  /** The window holding all of `[address, address + size)`, null when none, undefined when one holds part. */
  #find(address: number, size: number): Window | null | undefined {
    const last = this.#lastWindow;
    if (last !== null && address >= last.base && address + size <= last.end) return last;
    for (const w of this.#windows) {
      if (address >= w.base && address + size <= w.end) {
        this.#lastWindow = w;
        return w;
      }
      if (address < w.end && w.base < address + size) return undefined;
    }
    return null;
  }

  #mmioRead(address: number, size: number): number {
    this.dma.checkGrowth();
    const w = this.#find(address, size);
    if (w) return w.fn.barRead(w.bar, address - w.base, size);
    if (w === undefined) { // a dword straddling a window edge: byte by byte
      let value = 0;
      for (let i = 0; i < size; i++) value |= this.#mmioRead(address + i, 1) << (8 * i);
      return value;
    }
    const saved = this.#blocks.get(address >>> BLOCK_SHIFT);
    const handler = size === 1 ? saved?.read8 : saved?.read32;
    return handler === undefined ? (size === 1 ? 0xff : -1) : handler(address | 0);
  }

  #mmioWrite(address: number, size: number, value: number): void {
    this.dma.checkGrowth();
    const w = this.#find(address, size);
    if (w) return w.fn.barWrite(w.bar, address - w.base, size, size === 4 ? value >>> 0 : value);
    if (w === undefined) {
      for (let i = 0; i < size; i++) this.#mmioWrite(address + i, 1, (value >>> (8 * i)) & 0xff);
      return;
    }
    const saved = this.#blocks.get(address >>> BLOCK_SHIFT);
    const handler = size === 1 ? saved?.write8 : saved?.write32;
    handler?.(address | 0, value);
  }

  /** v86 splits 16-bit MMIO writes into two byte writes; virtio notify registers need them whole. */
  #hookWrite16(): void {
    const cpu = this.#cpu;
    const original = cpu.mmap_write16.bind(cpu);
    cpu.mmap_write16 = (address: number, value: number): void => {
      const a = address >>> 0;
      const w = this.#find(a, 2);
      if (w) {
        this.dma.checkGrowth();
        w.fn.barWrite(w.bar, a - w.base, 2, value & 0xffff);
      } else original(address, value);
    };
  }

  #remapPorts(state: AttachmentState, bar: PciBar): void {
    const ports = this.#cpu.io.ports;
    const fn = state.fn;
    for (const [port, previous] of state.ports) {
      const entry = ports[port] as V86IoPort & { vireoBar?: number };
      if (entry.vireoBar === bar.index) {
        ports[port] = previous;
        state.ports.delete(port);
      }
    }
    if (!bar.decoding) return;
    if (bar.address + bar.size > 0x1_0000) {
      this.diagnostics.unmappedBars++;
      this.diagnostics.last = `${fn.name}: I/O BAR ${bar.index} at ${hex(bar.address)} not mapped`;
      return;
    }
    const index = bar.index;
    for (let i = 0; i < bar.size; i++) {
      const port = bar.address + i;
      const read = (size: number): number => {
        this.dma.checkGrowth();
        return fn.barRead(index, i, size);
      };
      const write = (size: number, value: number): void => {
        this.dma.checkGrowth();
        fn.barWrite(index, i, size, value);
      };
      const entry: V86IoPort & { vireoBar: number } = {
        read8: () => read(1),
        read16: () => read(2),
        read32: () => read(4),
        write8: (v) => write(1, v & 0xff),
        write16: (v) => write(2, v & 0xffff),
        write32: (v) => write(4, v >>> 0),
        device: fn,
        vireoBar: index,
      };
      if (!state.ports.has(port)) state.ports.set(port, ports[port]);
      ports[port] = entry;
    }
  }

  // ---- INTx -----------------------------------------------------------------------

  #intx(state: AttachmentState, asserted: boolean): void {
    if (asserted === state.asserted) return;
    const cpu = this.#cpu;
    if (asserted) {
      const pin = state.fn.interruptPin;
      const route = pin === 0
        ? 0x80
        : this.#pci.isa_bridge_space8[0x60 + ((pin - 1 + state.slot - 1) & 3)];
      if ((route & 0x80) !== 0 || route >= 16) {
        this.diagnostics.droppedIntx++;
        this.diagnostics.last = `${state.fn.name}: INTx dropped: PIRQ routing ${
          hex(route)
        } is disabled`;
        return;
      }
      state.asserted = true;
      state.irq = route;
      this.#irqLevels.set(route, (this.#irqLevels.get(route) ?? 0) + 1);
      // Raised even when another function already holds the line: v86's PIC
      // latches a level-triggered request per raise and never re-samples the
      // line at EOI, so an assertion hidden behind another one would be lost.
      this.#raise(route);
    } else {
      state.asserted = false;
      const irq = state.irq;
      const level = (this.#irqLevels.get(irq) ?? 1) - 1;
      this.#irqLevels.set(irq, level);
      // The others still assert: request again, as a re-sampled level line would.
      if (level === 0) cpu.device_lower_irq(irq);
      else this.#raise(irq);
    }
  }

  /**
   * Raises `irq` now, or at the end of the CPU's time slice when called from
   * inside it (a guest register access that completed work synchronously):
   * v86 delivers the interrupt at once, and doing that in the middle of an
   * instruction (a JIT-compiled block, in particular) leaves the PIC with the
   * IRQ in service while the guest never runs its handler, so the line and
   * everything of lower priority (the serial port) stay dead.
   */
  #raise(irq: number): void {
    if (this.#inCpu) this.#deferred.add(irq);
    else this.#cpu.device_raise_irq(irq);
  }

  #raiseDeferred(): boolean {
    if (this.#deferred.size === 0) return false;
    let raised = false;
    for (const irq of this.#deferred) {
      if ((this.#irqLevels.get(irq) ?? 0) > 0) {
        this.#cpu.device_raise_irq(irq);
        raised = true;
      }
    }
    this.#deferred.clear();
    return raised;
  }
}
