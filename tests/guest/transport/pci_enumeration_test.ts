import { assertEquals } from "@std/assert";
import { PciHostBridge } from "../../../src/pci/host_bridge.ts";
import { PciFunction } from "../../../src/pci/pci_function.ts";
import { PciCapabilityId, PciCommand } from "../../../src/pci/registers.ts";
import { enumeratePciBus, GuestPciDevice } from "../../../src/guest/pci/pci_enumeration.ts";
import { TraceBus } from "./_rig.ts";

function fnWith(name: string, bars: [number, "mem32" | "mem64" | "io", number][]): PciFunction {
  const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041, name });
  for (const [i, kind, size] of bars) {
    fn.defineBar(i, { kind, size, prefetchable: kind === "mem64" });
  }
  return fn;
}

Deno.test("enumeratePciBus() scans, sizes and places BARs through config accesses", async (t) => {
  await t.step("finds functions in slot order and reads their identity", () => {
    const bridge = new PciHostBridge();
    bridge.attach(
      new PciFunction({
        vendorId: 0x1af4,
        deviceId: 0x1042,
        classCode: 0x010000,
        subsystemId: 0x1100,
        subsystemVendorId: 0x1af4,
      }),
      5,
    );
    bridge.attach(new PciFunction({ vendorId: 0x8086, deviceId: 0x100e, revisionId: 3 }), 2);
    const devs = enumeratePciBus(bridge);
    assertEquals(devs.map((d) => d.slotName), ["00:02.0", "00:05.0"]);
    assertEquals([devs[0].vendorId, devs[0].deviceId, devs[0].revision], [0x8086, 0x100e, 3]);
    assertEquals([devs[1].classCode, devs[1].subsystemId, devs[1].subsystemVendorId], [
      0x010000,
      0x1100,
      0x1af4,
    ]);
  });
  await t.step("functions 1..7 are scanned only behind a multi-function function 0", () => {
    const bridge = new PciHostBridge();
    bridge.attach(fnWith("f0", []), 3, 0);
    bridge.attach(fnWith("f3", []), 3, 3);
    assertEquals(enumeratePciBus(bridge).map((d) => d.slotName), ["00:03.0", "00:03.3"]);
    const lone = new PciHostBridge();
    const f0 = fnWith("f0", []);
    lone.attach(f0, 3, 0);
    // A function 1 behind a single-function function 0 is not looked for.
    assertEquals(enumeratePciBus(lone).length, 1);
  });
  await t.step("each BAR is sized by the all-ones protocol and restored", () => {
    const bridge = new PciHostBridge();
    bridge.attach(fnWith("a", [[0, "io", 0x20], [1, "mem32", 0x1000], [2, "mem64", 0x4000]]), 1);
    const trace = new TraceBus(bridge);
    const [dev] = enumeratePciBus(trace);
    assertEquals(dev.resources.map((r) => r && [r.kind, r.size]), [
      ["io", 0x20],
      ["mem32", 0x1000],
      ["mem64", 0x4000],
      undefined,
      undefined,
      undefined,
    ]);
    // Save, write all-ones, read, restore, for BAR 0.
    const bar0 = trace.log.filter((a) => a.address === 0x10);
    assertEquals(bar0.slice(0, 4).map((a) => [a.op, a.value]), [
      ["configRead", 1],
      ["configWrite", 0xffff_ffff],
      ["configRead", 0xffff_ffe1],
      ["configWrite", 1],
    ]);
    // The high half of the 64-bit BAR is sized too.
    assertEquals(
      trace.log.some((a) =>
        a.op === "configWrite" && a.address === 0x1c && a.value === 0xffff_ffff
      ),
      true,
    );
  });
  await t.step("decoding is off while sizing and restored after", () => {
    const bridge = new PciHostBridge();
    const fn = fnWith("a", [[1, "mem32", 0x1000]]);
    bridge.attach(fn, 1);
    bridge.configWrite(0, 1, 0, 0x10 + 4, 4, 0xd000_0000);
    bridge.configWrite(0, 1, 0, 4, 2, PciCommand.MEMORY);
    const trace = new TraceBus(bridge);
    const dev = new GuestPciDevice(trace, 0, 1, 0);
    const commands = trace.log.filter((a) => a.op === "configWrite" && a.address === 4).map((a) =>
      a.value
    );
    assertEquals(commands, [0, PciCommand.MEMORY]);
    assertEquals(dev.resources[1]!.start, 0xd000_0000, "the firmware's address is read");
    assertEquals(fn.command, PciCommand.MEMORY);
  });
  await t.step("addresses are naturally aligned, largest first, in their windows", () => {
    const bridge = new PciHostBridge();
    bridge.attach(fnWith("a", [[0, "mem32", 0x1000], [2, "mem64", 0x10000], [4, "io", 0x40]]), 1);
    bridge.attach(fnWith("b", [[0, "mem32", 0x2000], [1, "io", 0x100]]), 2);
    const [a, b] = enumeratePciBus(bridge, {
      memWindow: { base: 0xe000_1000, size: 0x10_0000 },
      ioWindow: { base: 0xc010, size: 0x1000 },
    });
    assertEquals(a.resourceStart(2), 0xe001_0000, "64 KiB aligned");
    assertEquals(b.resourceStart(0), 0xe002_0000);
    assertEquals(a.resourceStart(0), 0xe002_2000);
    assertEquals(b.resourceStart(1), 0xc100);
    assertEquals(a.resourceStart(4), 0xc200);
    for (const d of [a, b]) {
      for (const r of d.resources) if (r) assertEquals(r.start % r.size, 0);
    }
    // The registers hold what the guest wrote.
    assertEquals((bridge.configRead(0, 1, 0, 0x18, 4) & ~0xf) >>> 0, 0xe001_0000);
    assertEquals(bridge.configRead(0, 1, 0, 0x1c, 4), 0);
  });
  await t.step("a 64-bit window takes 64-bit BARs above 4 GiB", () => {
    const bridge = new PciHostBridge();
    const fn = fnWith("a", [[2, "mem64", 0x4000]]);
    bridge.attach(fn, 1);
    const [dev] = enumeratePciBus(bridge, { mem64Window: { base: 0x8_0000_0000, size: 1 << 30 } });
    assertEquals(dev.resourceStart(2), 0x8_0000_0000);
    assertEquals(bridge.configRead(0, 1, 0, 0x1c, 4), 8);
    assertEquals(dev.enable(), 0);
    assertEquals(fn.bar(2)!.decoding, true);
    assertEquals(fn.bar(2)!.address, 0x8_0000_0000);
  });
  await t.step("a BAR that does not fit stays unassigned and the device cannot be enabled", () => {
    const bridge = new PciHostBridge();
    bridge.attach(fnWith("a", [[0, "mem32", 0x10000], [1, "mem32", 0x1000]]), 1);
    const [dev] = enumeratePciBus(bridge, { memWindow: { base: 0xe000_0000, size: 0x8000 } });
    assertEquals(dev.resources[0]!.assigned, false);
    assertEquals(dev.resources[1]!.assigned, true);
    assertEquals(dev.enable(), -22);
  });
  await t.step("INTx routing is written to the Interrupt Line register", () => {
    const bridge = new PciHostBridge();
    bridge.attach(new PciFunction({ vendorId: 1, deviceId: 2, interruptPin: 2 }), 6);
    bridge.attach(new PciFunction({ vendorId: 1, deviceId: 3, interruptPin: 0 }), 7);
    const [a, b] = enumeratePciBus(bridge, {
      routeIntx: (slot, pin) => 16 + ((slot + pin - 1) & 3),
    });
    assertEquals(a.irq, 16 + 3);
    assertEquals(b.irq, 0, "no pin, no INTx");
  });
});

Deno.test("GuestPciDevice enable, bus master, capabilities and MSI-X", async (t) => {
  const make = () => {
    const bridge = new PciHostBridge();
    const fn = fnWith("m", [[1, "mem32", 0x1000], [0, "io", 0x20]]);
    fn.addCapability(PciCapabilityId.VENDOR, 16);
    const msix = fn.addMsix({ vectors: 3, tableBar: 1, pbaOffset: 0x800 });
    fn.addCapability(PciCapabilityId.VENDOR, 16);
    bridge.attach(fn, 1);
    const [dev] = enumeratePciBus(bridge);
    return { bridge, fn, msix, dev };
  };
  await t.step("enable() turns on IO and MEM decoding; setMaster() adds Bus Master", () => {
    const { fn, dev } = make();
    assertEquals(fn.command, 0);
    assertEquals(dev.enable(), 0);
    assertEquals(fn.command, PciCommand.IO | PciCommand.MEMORY);
    dev.setMaster();
    assertEquals(fn.busMaster, true);
    dev.clearMaster();
    assertEquals(fn.busMaster, false);
  });
  await t.step("the capability list is walked like pci_find_capability", () => {
    const { dev } = make();
    assertEquals(dev.capabilities.map((c) => c.id), [0x09, 0x11, 0x09]);
    const first = dev.findCapability(PciCapabilityId.VENDOR);
    assertEquals(first, dev.capabilities[0].offset);
    assertEquals(dev.findNextCapability(first, PciCapabilityId.VENDOR), dev.capabilities[2].offset);
    assertEquals(dev.findNextCapability(dev.capabilities[2].offset, PciCapabilityId.VENDOR), 0);
    assertEquals(dev.findCapability(PciCapabilityId.EXP), 0);
  });
  await t.step("a looping capability list ends after 48 entries", () => {
    const bridge = new PciHostBridge();
    const fn = new PciFunction({ vendorId: 1, deviceId: 2 });
    const at = fn.addCapability(PciCapabilityId.VENDOR, 4);
    fn.config.define8(at + 1, at); // next points at itself
    bridge.attach(fn, 1);
    const [dev] = enumeratePciBus(bridge);
    assertEquals(dev.capabilities.length, 48);
    assertEquals(dev.findCapability(PciCapabilityId.MSIX), 0);
  });
  await t.step("iomap() reaches a BAR through memory or port accesses", () => {
    const { fn, dev } = make();
    let last = -1;
    fn.mapRegion(0, 0, 0x20, {
      read: () => 0x5a,
      write: (_o, _s, v) => {
        last = v;
      },
    });
    dev.enable();
    const io = dev.iomap(0, 0)!;
    assertEquals([io.io, io.length], [true, 0x20]);
    assertEquals(io.read8(3), 0x5a);
    io.write16(2, 0x1234);
    assertEquals(last, 0x1234);
    assertEquals(dev.iomap(0, 0x20), null, "offset past the BAR");
    assertEquals(dev.iomap(3, 0), null, "no BAR");
    assertEquals(dev.iomap(1, 0x10, 8)!.length, 8);
  });
  await t.step("enableMsix() programs the table, disables INTx and unmasks", () => {
    const { fn, msix, dev } = make();
    dev.enable();
    dev.setMaster();
    assertEquals(dev.msixVectorCount(), 3);
    assertEquals(
      dev.enableMsix([{ address: 0xfee0_0000, data: 0x41 }, { address: 0xfee0_0000, data: 0x42 }]),
      0,
    );
    assertEquals(msix.enabled, true);
    assertEquals(fn.intxDisabled, true);
    const seen: number[] = [];
    fn.bind({ msi: (_f, _a, d) => seen.push(d) });
    msix.notify(1);
    msix.notify(2); // not programmed: still masked
    assertEquals(seen, [0x42]);
    dev.disableMsix();
    assertEquals(msix.enabled, false);
    assertEquals(fn.intxDisabled, false);
  });
  await t.step("enableMsix() refuses more vectors than the table has", () => {
    const { dev } = make();
    dev.enable();
    const four = [1, 2, 3, 4].map((d) => ({ address: 0xfee0_0000, data: d }));
    assertEquals(dev.enableMsix(four), -28);
    assertEquals(dev.msixEnabled, false);
  });
});
