/**
 * Embedding a vireo virtio-pci function in an emulator that has its OWN PCI
 * bus, memory map and interrupt controller (as v86 or any JS PC emulator
 * does). The emulator:
 *
 * 1. plugs `vp.pci` (a {@linkcode PciFunction}) into a slot and forwards that
 *    slot's config reads and writes to `configRead` / `configWrite`;
 * 2. binds a {@linkcode PciFunctionHost}: MSI messages go to its interrupt
 *    controller, INTx levels to its interrupt lines, and `barChanged` tells it
 *    where the guest placed (or removed) each BAR, so it can route memory
 *    accesses in that window to `barRead` / `barWrite`.
 *
 * Here vireo's own guest model plays the operating system (enumerating the
 * bus, binding virtio-pci, sending buffers), so the example runs alone:
 *
 *     deno run examples/embed.ts
 *
 * @module
 */
import { DirectDmaSpace } from "../src/dma/direct_dma_space.ts";
import { DmaDirect } from "../src/guest/dma/dma_direct.ts";
import { PageAllocator } from "../src/guest/page_allocator.ts";
import { enumeratePciBus, type GuestPciBus } from "../src/guest/pci/pci_enumeration.ts";
import {
  probeVirtioPciModern,
  type VirtioPciModernDriver,
} from "../src/guest/pci/virtio_pci_modern.ts";
import type { GuestIrqHost, MsiMessage } from "../src/guest/virtio/virtio_guest_device.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import type { PciBar } from "../src/pci/bar.ts";
import type { PciFunction, PciFunctionHost } from "../src/pci/pci_function.ts";
import { VirtioPci } from "../transports/pci/virtio_pci.ts";
import { ECHO_MAGIC, EchoDevice } from "./_echo_device.ts";

/** A window of the toy emulator's memory map that a BAR decodes. */
interface Window {
  fn: PciFunction;
  bar: number;
  base: number;
  end: number;
}

/**
 * A toy PC emulator: RAM, a PCI bus of its own (slots → functions), a memory
 * map for device windows, interrupt lines and a local APIC taking MSI
 * writes at 0xFEE00000. It knows nothing about virtio.
 */
class ToyEmulator {
  readonly memory: GuestMemory = new GuestMemory([{ base: 0, size: 8 << 20 }]);
  readonly #slots = new Map<number, PciFunction>();
  #windows: Window[] = [];
  /** CPU vector → handler: what the OS installed in its interrupt table. */
  readonly #vectors = new Map<number, () => void>();
  /** Interrupt line → handlers (shared, level-triggered). */
  readonly #lines = new Map<number, (() => boolean)[]>();
  readonly #lineLevel = new Map<number, boolean>();
  #nextVector = 0x30;
  /** Interrupts wait while the CPU is inside an instruction (a device access). */
  #busy = 0;
  readonly #pending: (() => void)[] = [];

  constructor(readonly say: (line: string) => void) {}

  /** Puts a PCI function in a slot and connects its MSI, INTx and BAR moves. */
  plugIn(fn: PciFunction, slot: number): void {
    this.#slots.set(slot, fn);
    const host: PciFunctionHost = {
      msi: (_fn, address, data) => this.#interrupt(() => this.#msi(address, data)),
      intx: (_fn, asserted) => this.#setLine(this.lineOf(slot), asserted),
      barChanged: (source, bar, previous) => this.#barChanged(source, bar, previous),
    };
    fn.bind(host);
    this.say(
      `emulator: plugged "${fn.name}" into PCI slot ${slot} (INTx line ${this.lineOf(slot)})`,
    );
  }

  /** The emulator's interrupt routing: one line per slot. */
  lineOf(slot: number): number {
    return 10 + (slot & 3);
  }

  // ---- what the emulator's CPU does on config, memory and I/O accesses ----

  configRead(slot: number, register: number, size: number): number {
    const fn = this.#slots.get(slot);
    return fn === undefined
      ? (size === 4 ? 0xffff_ffff : (1 << (8 * size)) - 1)
      : fn.configRead(register, size);
  }

  configWrite(slot: number, register: number, size: number, value: number): void {
    this.#slots.get(slot)?.configWrite(register, size, value);
  }

  mmioRead(address: number, size: number): number {
    return this.#access(() => {
      const w = this.#windows.find((w) => address >= w.base && address < w.end);
      return w === undefined
        ? 0xffff_ffff >>> (32 - 8 * size)
        : w.fn.barRead(w.bar, address - w.base, size);
    });
  }

  mmioWrite(address: number, size: number, value: number): void {
    this.#access(() => {
      const w = this.#windows.find((w) => address >= w.base && address < w.end);
      if (w !== undefined) w.fn.barWrite(w.bar, address - w.base, size, value);
      return 0;
    });
  }

  // ---- what the OS asks of the platform (its irq layer) ----

  /** The OS's interrupt services on this machine; `msi: false` is booting with `pci=nomsi`. */
  irqHost(msi: boolean): GuestIrqHost {
    const host: GuestIrqHost = {
      requestIrq: (line, handler) => {
        this.#lines.set(line, [...(this.#lines.get(line) ?? []), handler]);
        if (this.#lineLevel.get(line)) this.#interrupt(() => this.#runLine(line));
      },
      freeIrq: (line, handler) => {
        this.#lines.set(line, (this.#lines.get(line) ?? []).filter((h) => h !== handler));
      },
    };
    if (msi) {
      host.allocMsi = (count, handler) => {
        const out: MsiMessage[] = [];
        for (let i = 0; i < count; i++) {
          const m = { address: 0xfee0_0000, data: this.#nextVector++ };
          this.#vectors.set(m.data, () => handler(m.address, m.data));
          out.push(m);
        }
        return out;
      };
      host.freeMsi = (messages) => messages.forEach((m) => this.#vectors.delete(m.data));
    }
    return host;
  }

  // ---- internals ----

  #barChanged(fn: PciFunction, bar: PciBar, previous: number | null): void {
    this.#windows = this.#windows.filter((w) => !(w.fn === fn && w.bar === bar.index));
    if (bar.decoding) {
      this.#windows.push({ fn, bar: bar.index, base: bar.address, end: bar.address + bar.size });
      const from = previous === null ? "" : ` (moved from 0x${previous.toString(16)})`;
      this.say(
        `emulator: BAR ${bar.index} of "${fn.name}" now decodes ${bar.size} bytes at 0x${
          bar.address.toString(16)
        }${from}: memory accesses there go to the function`,
      );
    } else if (previous !== null) {
      this.say(
        `emulator: BAR ${bar.index} of "${fn.name}" stopped decoding at 0x${previous.toString(16)}`,
      );
    }
  }

  #msi(address: number, data: number): void {
    this.say(`emulator: MSI write of vector 0x${data.toString(16)} to 0x${address.toString(16)}`);
    this.#vectors.get(data)?.();
  }

  #setLine(line: number, level: boolean): void {
    if (this.#lineLevel.get(line) === level) return;
    this.#lineLevel.set(line, level);
    this.say(`emulator: INTx line ${line} ${level ? "asserted" : "deasserted"}`);
    if (level) this.#interrupt(() => this.#runLine(line));
  }

  #runLine(line: number): void {
    for (let n = 0; n < 8 && this.#lineLevel.get(line); n++) {
      for (const h of this.#lines.get(line) ?? []) h();
    }
  }

  #interrupt(deliver: () => void): void {
    this.#pending.push(deliver);
    if (this.#busy === 0) this.#drain();
  }

  #access<T>(run: () => T): T {
    this.#busy++;
    try {
      return run();
    } finally {
      if (--this.#busy === 0) this.#drain();
    }
  }

  #drain(): void {
    this.#busy++;
    try {
      while (this.#pending.length > 0) this.#pending.shift()!();
    } finally {
      this.#busy--;
    }
  }
}

/** What {@linkcode runEmbedExample} observed. */
export interface EmbedSummary {
  /** Text echoed back through the MSI-X device. */
  echoedMsix: string;
  /** Text echoed back through the INTx device. */
  echoedIntx: string;
  /** Interrupt mode of each device's driver. */
  modes: string[];
  /** Config changes the drivers saw. */
  configChanges: number;
  /** The echo device's magic as the guest read it. */
  magic: number;
}

/**
 * Runs the example, reporting each step through `say`.
 *
 * @returns what the guest saw, for tests
 */
export function runEmbedExample(say: (line: string) => void = console.log): EmbedSummary {
  const emu = new ToyEmulator(say);
  const dma = new DirectDmaSpace(emu.memory);

  // The embedding: two echo devices on vireo's virtio-pci, plugged into the emulator's bus.
  const echoA = new EchoDevice(1, 64);
  const echoB = new EchoDevice(1, 64);
  const vpA = new VirtioPci(echoA, { dma, name: "echo A" });
  const vpB = new VirtioPci(echoB, { dma, name: "echo B" });
  emu.plugIn(vpA.pci, 3);
  emu.plugIn(vpB.pci, 4);

  // The OS side: vireo's guest model reaching the devices only through the emulator.
  const bus: GuestPciBus = {
    busNumber: 0,
    configRead: (b, d, f, reg, size) =>
      b === 0 && f === 0 ? emu.configRead(d, reg, size) : (size === 4 ? 0xffff_ffff : 0xffff),
    configWrite: (b, d, f, reg, size, v) => {
      if (b === 0 && f === 0) emu.configWrite(d, reg, size, v);
    },
    memRead: (a, size) => emu.mmioRead(a, size),
    memWrite: (a, size, v) => emu.mmioWrite(a, size, v),
    ioRead: () => 0xffff_ffff,
    ioWrite: () => {},
  };
  say("guest: enumerating PCI bus 0 and placing BARs");
  const found = enumeratePciBus(bus, {
    memWindow: { base: 0xfe00_0000, size: 0x0100_0000 },
    routeIntx: (slot) => emu.lineOf(slot),
  });
  say(
    `guest: found ${
      found.map((d) => `${d.slotName} ${d.vendorId.toString(16)}:${d.deviceId.toString(16)}`).join(
        ", ",
      )
    }`,
  );

  const pages = new PageAllocator(emu.memory, { base: 1 << 20, size: 7 << 20 });
  const results: string[] = [];
  const modes: string[] = [];
  let configChanges = 0;
  let magic = 0;
  found.forEach((pci, i) => {
    const msi = i === 0; // the second device runs as if the OS booted with pci=nomsi
    const drv: VirtioPciModernDriver = probeVirtioPciModern({
      pci,
      pages,
      dma: new DmaDirect({ pages }),
      irq: emu.irqHost(msi),
    });
    say(
      `guest: virtio-pci bound to ${pci.slotName} (virtio device type 0x${
        drv.deviceId.toString(16)
      }), bus mastering on`,
    );
    drv.negotiate(0n);
    magic = drv.readConfig32(0);
    drv.onConfigChange((d) => {
      configChanges++;
      say(`guest: config changed, scratch word is now ${d.readConfig32(4)}`);
    });
    let echoed = "";
    const [vq] = drv.setupQueues<string>([{
      name: "echo",
      callback: (q) => {
        for (let b = q.getBuf(); b !== null; b = q.getBuf()) {
          echoed = new TextDecoder().decode(emu.memory.view(0x2000 + i * 0x100, b.len));
          say(
            `guest: interrupt for queue "${q.name}": buffer "${b.token}" came back with ${b.len} bytes: "${echoed}"`,
          );
        }
      },
    }]);
    drv.setDriverOk();
    modes.push(drv.irqMode);
    say(`guest: DRIVER_OK; interrupts via ${drv.irqMode}, ${vq.layout} ring of ${vq.size}`);
    const text = `hello from guest ${i}`;
    const bytes = new TextEncoder().encode(text);
    emu.memory.write(0x1000 + i * 0x100, bytes);
    vq.addSgs([{ addr: 0x1000 + i * 0x100, length: bytes.length }], [{
      addr: 0x2000 + i * 0x100,
      length: 64,
    }], `msg${i}`);
    say(`guest: kick queue 0 with "${text}"`);
    vq.kick();
    results.push(echoed);
  });

  say("device: echo A changes its scratch word to 7 (a config change)");
  echoA.changeScratch(7);
  say("device: echo B changes its scratch word to 9 (a config change)");
  echoB.changeScratch(9);

  say(
    "guest: turns memory decoding of echo B off and on again (its BARs leave and re-enter the map)",
  );
  const cmd = found[1].readConfig16(4);
  found[1].writeConfig16(4, cmd & ~0x2);
  found[1].writeConfig16(4, cmd);
  return {
    echoedMsix: results[0],
    echoedIntx: results[1],
    modes,
    configChanges,
    magic: magic >>> 0,
  };
}

if (import.meta.main) {
  const s = runEmbedExample();
  const ok = s.echoedMsix === "hello from guest 0" && s.echoedIntx === "hello from guest 1" &&
    s.magic === ECHO_MAGIC && s.configChanges === 2;
  console.log(ok ? "done: both devices echoed and reported their config changes" : "FAILED");
  if (!ok) throw new Error("The embedding example did not behave as expected");
}
