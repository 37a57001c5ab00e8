import { assertEquals, assertThrows } from "@std/assert";
import {
  assignBars,
  cf8Address,
  ecamOffset,
  PciCommand,
  PciFunction,
  PciHostBridge,
} from "../../src/pci/mod.ts";
import { recordingHost, RegisterFile, testFunction } from "./_helpers.ts";

Deno.test("PciHostBridge config access by ECAM offset", async (t) => {
  const bridge = new PciHostBridge({ ecamBase: 0xb000_0000 });
  const { fn } = testFunction();
  bridge.attach(fn, 3, 0);
  await t.step("the offset encodes bus, device, function and register", () => {
    assertEquals(ecamOffset(0, 3, 0, 0), 0x18000);
    assertEquals(ecamOffset(1, 31, 7, 0xffc), 0x1f_fffc);
    assertEquals(bridge.ecamRead(ecamOffset(0, 3, 0, 0), 4), 0x5678_1234);
    assertEquals(bridge.ecamRead(ecamOffset(0, 3, 0, 0x0a), 2), 0x0200);
    bridge.ecamWrite(ecamOffset(0, 3, 0, 0x3c), 1, 9);
    assertEquals(bridge.ecamRead(ecamOffset(0, 3, 0, 0x3c), 1), 9);
  });
  await t.step("memory accesses inside the ECAM window are config accesses", () => {
    assertEquals(bridge.memRead(0xb000_0000 + 0x18000, 4), 0x5678_1234);
    bridge.memWrite(0xb000_0000 + 0x18000 + 0x3c, 1, 5);
    assertEquals(fn.configRead(0x3c, 1), 5);
  });
  await t.step(
    "absent functions, other buses and a conventional function's upper 3840 bytes read all-ones",
    () => {
      assertEquals(bridge.ecamRead(ecamOffset(0, 4, 0, 0), 4), 0xffff_ffff);
      assertEquals(bridge.ecamRead(ecamOffset(0, 3, 1, 0), 2), 0xffff);
      assertEquals(bridge.ecamRead(ecamOffset(1, 3, 0, 0), 4), 0xffff_ffff);
      assertEquals(bridge.ecamRead(ecamOffset(0, 3, 0, 0x100), 4), 0xffff_ffff);
      bridge.ecamWrite(ecamOffset(0, 4, 0, 4), 2, 0xffff);
      assertEquals(bridge.diagnostics.total, 0, "enumerating absent slots is normal");
    },
  );
  await t.step("offsets outside the window are counted", () => {
    assertEquals(bridge.ecamRead(0x1000_0000, 4), 0xffff_ffff);
    assertEquals(bridge.ecamRead(-1, 1), 0xff);
    assertEquals(bridge.diagnostics.invalidConfigAccesses, 2);
  });
  await t.step("a 4 KiB function serves the whole ECAM page", () => {
    const pcie = new PciFunction({ vendorId: 0x1b36, deviceId: 8, configSize: 4096 });
    bridge.attach(pcie, 5);
    assertEquals(bridge.ecamRead(ecamOffset(0, 5, 0, 0x100), 4), 0);
    assertEquals(bridge.ecamRead(ecamOffset(0, 5, 0, 0xffc), 4), 0);
  });
});

Deno.test("PciHostBridge configuration mechanism #1 through ports 0xCF8/0xCFC", async (t) => {
  const bridge = new PciHostBridge();
  const { fn } = testFunction();
  bridge.attach(fn, 2, 0);
  await t.step("the address register latches a dword-aligned register", () => {
    bridge.ioWrite(0xcf8, 4, cf8Address(0, 2, 0, 0x08));
    assertEquals(bridge.ioRead(0xcf8, 4), 0x8000_1008);
    assertEquals(bridge.configAddress, 0x8000_1008);
    bridge.ioWrite(0xcf8, 4, 0x8000_100b);
    assertEquals(bridge.ioRead(0xcf8, 4), 0x8000_1008, "low bits are dropped");
  });
  await t.step("0xCFC..0xCFF select the bytes of the dword", () => {
    assertEquals(bridge.ioRead(0xcfc, 4), 0x0200_0002);
    assertEquals(bridge.ioRead(0xcfe, 2), 0x0200);
    assertEquals(bridge.ioRead(0xcff, 1), 0x02);
    bridge.ioWrite(0xcf8, 4, cf8Address(0, 2, 0, 0x3c));
    bridge.ioWrite(0xcfc, 1, 0x0b);
    assertEquals(fn.configRead(0x3c, 1), 0x0b);
    bridge.ioWrite(0xcf8, 4, cf8Address(0, 2, 0, 0x04));
    bridge.ioWrite(0xcfc, 2, PciCommand.MASTER);
    assertEquals(fn.busMaster, true);
  });
  await t.step("without the enable bit, data ports read all-ones", () => {
    bridge.ioWrite(0xcf8, 4, 0x0000_1000);
    assertEquals(bridge.ioRead(0xcfc, 4), 0xffff_ffff);
    bridge.ioWrite(0xcfc, 4, 0);
    assertEquals(fn.busMaster, true);
  });
  await t.step("absent devices read vendor 0xFFFF", () => {
    bridge.ioWrite(0xcf8, 4, cf8Address(0, 7, 0, 0));
    assertEquals(bridge.ioRead(0xcfc, 4), 0xffff_ffff);
  });
  await t.step("a data access crossing the dword is counted by the function", () => {
    bridge.ioWrite(0xcf8, 4, cf8Address(0, 2, 0, 0));
    assertEquals(bridge.ioRead(0xcfe, 4), 0xffff_ffff);
    assertEquals(fn.diagnostics.invalidConfigAccesses, 1);
  });
  await t.step("helpers reject out-of-range numbers", () => {
    assertThrows(() => cf8Address(0, 32, 0, 0), RangeError);
    assertThrows(() => ecamOffset(0, 0, 8, 0), RangeError);
    assertThrows(() => ecamOffset(0, 0, 0, 0x1000), RangeError);
  });
});

Deno.test("PciHostBridge.attach() sets the multi-function bit and guards slots", () => {
  const bridge = new PciHostBridge();
  const f0 = new PciFunction({ vendorId: 1, deviceId: 1 });
  const f1 = new PciFunction({ vendorId: 1, deviceId: 2 });
  bridge.attach(f0, 1, 0);
  assertEquals(bridge.configRead(0, 1, 0, 0x0e, 1), 0x00);
  bridge.attach(f1, 1, 1);
  assertEquals(bridge.configRead(0, 1, 0, 0x0e, 1), 0x80);
  assertEquals(bridge.configRead(0, 1, 1, 0x02, 2), 2);
  assertEquals(bridge.slotOf(f1)?.function, 1);
  assertEquals(bridge.slots.map((s) => [s.device, s.function]), [[1, 0], [1, 1]]);
  const f2 = new PciFunction({ vendorId: 1, deviceId: 3 });
  assertThrows(
    () => bridge.attach(f2, 1, 1),
    RangeError,
    "Cannot attach 0001:0003 at 0:1.1: 0001:0002 is there",
  );
  assertThrows(() => bridge.attach(f2, 32), RangeError, "device is outside 0..31");
  assertThrows(() => bridge.attach(f1, 2), TypeError, "already bound to a host");
  assertEquals(bridge.detach(f1), true);
  assertEquals(bridge.configRead(0, 1, 0, 0x0e, 1), 0x00);
  assertEquals(bridge.configRead(0, 1, 1, 0, 2), 0xffff);
  assertEquals(f1.host, null);
  assertEquals(bridge.detach(f1), false);
});

Deno.test("assignBars() sizes and places BARs through config accesses only", () => {
  const bridge = new PciHostBridge();
  const a = testFunction();
  const b = testFunction({ deviceId: 0x9999 });
  bridge.attach(a.fn, 1);
  bridge.attach(b.fn, 2);
  const placed = assignBars(bridge, 0xfe00_0000, 0xc000);
  assertEquals(
    placed.map((p) => [p.device, p.bar, p.kind, p.size, p.address.toString(16)]),
    [
      [1, 0, "io", 32, "c000"],
      [1, 1, "mem32", 0x1000, "fe008000"],
      [1, 2, "mem64", 0x4000, "fe000000"],
      [2, 0, "io", 32, "c020"],
      [2, 1, "mem32", 0x1000, "fe009000"],
      [2, 2, "mem64", 0x4000, "fe004000"],
    ],
  );
  for (const fn of [a.fn, b.fn]) {
    assertEquals(fn.command, PciCommand.IO | PciCommand.MEMORY);
    assertEquals(fn.bars.every((bar) => bar.decoding), true);
  }
  assertThrows(() => assignBars(bridge, -1, 0), RangeError);
  assertThrows(() => assignBars(bridge, 0xffff_f000, 0), RangeError, "must end below 4 GiB");
});

Deno.test("PciHostBridge dispatches memory and I/O to the decoding BAR", async (t) => {
  const { host, log } = recordingHost();
  const bridge = new PciHostBridge({ host });
  const a = testFunction();
  const b = testFunction({ deviceId: 0x9999 });
  bridge.attach(a.fn, 1);
  bridge.attach(b.fn, 2);
  assignBars(bridge, 0xfe00_0000, 0xc000);
  await t.step("each function gets its own accesses", () => {
    bridge.memWrite(0xfe00_0010, 4, 0xaaaa);
    bridge.memWrite(0xfe00_4010, 4, 0xbbbb);
    bridge.memWrite(0xfe00_2004, 2, 0x1234);
    bridge.ioWrite(0xc021, 1, 0x55);
    assertEquals(a.regs.log, ["w4@10=aaaa"]);
    assertEquals(b.regs.log, ["w4@10=bbbb"]);
    assertEquals(a.regs2.log, ["w2@4=1234"]);
    assertEquals(b.io.log, ["w1@1=55"]);
    assertEquals(bridge.memRead(0xfe00_4010, 4), 0xbbbb);
    assertEquals(bridge.ioRead(0xc021, 1), 0x55);
  });
  await t.step("8-byte accesses reach the BAR", () => {
    bridge.memWrite64(0xfe00_0020, 0x1_0000_0002n);
    assertEquals(bridge.memRead64(0xfe00_0020), 0x1_0000_0002n);
  });
  await t.step("the host heard every BAR come up", () => {
    assertEquals(log.bars.filter((e) => e.decoding).length, 6);
  });
  await t.step("relocation moves decoding with it", () => {
    a.regs.log.length = 0;
    bridge.configWrite(0, 1, 0, 0x18, 4, 0xd000_0000);
    bridge.memWrite(0xd000_0010, 4, 1);
    assertEquals(a.regs.log, ["w4@10=1"]);
    assertEquals(bridge.memRead(0xfe00_0010, 4), 0xffff_ffff, "the old window is gone");
    assertEquals(log.bars.at(-1), {
      index: 2,
      decoding: true,
      address: 0xd000_0000,
      previous: 0xfe00_0000,
    });
  });
  await t.step("MEM enable gates memory BARs and IO enable gates I/O BARs", () => {
    bridge.configWrite(0, 1, 0, 0x04, 2, PciCommand.IO);
    assertEquals(bridge.memRead(0xd000_0010, 4), 0xffff_ffff);
    bridge.ioWrite(0xc000, 1, 0x66);
    assertEquals(a.io.log.at(-1), "w1@0=66");
    bridge.configWrite(0, 1, 0, 0x04, 2, PciCommand.MEMORY);
    assertEquals(bridge.ioRead(0xc000, 1), 0xff);
    assertEquals(bridge.memRead(0xd000_0010, 4), 1);
  });
  await t.step("unclaimed addresses read all-ones and are counted", () => {
    const before = bridge.diagnostics.unclaimedAccesses;
    assertEquals(bridge.memRead(0x1000, 2), 0xffff);
    bridge.memWrite(0x1000, 4, 0);
    assertEquals(bridge.memRead64(0x1000), 0xffff_ffff_ffff_ffffn);
    assertEquals(bridge.ioRead(0x60, 1), 0xff);
    assertEquals(bridge.memRead(NaN, 4), 0xffff_ffff);
    assertEquals(bridge.diagnostics.unclaimedAccesses, before + 5);
  });
  await t.step("an access straddling a BAR's end is counted by the function", () => {
    const before = b.fn.diagnostics.invalidBarAccesses;
    assertEquals(bridge.memRead(0xfe00_7ffe, 4), 0xffff_ffff);
    assertEquals(b.fn.diagnostics.invalidBarAccesses, before + 1);
  });
  await t.step("overlapping BARs: the lower window wins, nothing throws", () => {
    bridge.configWrite(0, 2, 0, 0x18, 4, 0xd000_0000);
    bridge.configWrite(0, 2, 0, 0x1c, 4, 0);
    b.regs.log.length = 0;
    bridge.memRead(0xd000_0010, 4);
    assertEquals(b.regs.log.length + a.regs.log.length > 0, true);
  });
  await t.step("detaching removes the function's windows", () => {
    bridge.detach(a.fn);
    bridge.detach(b.fn);
    assertEquals(bridge.memRead(0xd000_0010, 4), 0xffff_ffff);
  });
});

Deno.test("PciHostBridge forwards interrupts to its host", () => {
  const { host, log } = recordingHost();
  const bridge = new PciHostBridge({ host });
  const { fn } = testFunction();
  bridge.attach(fn, 6);
  fn.setIntx(true);
  assertEquals(log.intx, [true]);
  assignBars(bridge, 0xfe00_0000, 0xc000);
  const table = fn.bar(1)!.address;
  bridge.configWrite(0, 6, 0, 0x04, 2, fn.command | PciCommand.MASTER);
  bridge.configWrite(0, 6, 0, fn.msix!.offset + 2, 2, 0x8000);
  bridge.memWrite(table, 4, 0xfee0_0000);
  bridge.memWrite(table + 8, 4, 0x31);
  bridge.memWrite(table + 12, 4, 0);
  fn.msix!.notify(0);
  assertEquals(log.msi, [[0xfee0_0000, 0x31]]);
  assertEquals(log.intx, [true, false]);

  const quiet = new PciHostBridge();
  const other = testFunction().fn;
  quiet.attach(other, 0);
  other.configWrite(0x04, 2, PciCommand.MASTER);
  other.configWrite(other.msix!.offset + 2, 2, 0x8000);
  other.barWrite(1, 12, 4, 0);
  other.msix!.notify(0);
  assertEquals(quiet.diagnostics.droppedInterrupts, 1);
});

Deno.test("PciHostBridge options are checked", () => {
  assertThrows(() => new PciHostBridge({ busNumber: 256 }), RangeError);
  assertThrows(() => new PciHostBridge({ ecamBase: 0x1234 }), RangeError);
  // deno-lint-ignore no-explicit-any
  assertThrows(() => bridgeAttach(new PciHostBridge(), {} as any), TypeError);
  const legacyOff = new PciHostBridge({ legacyConfigPorts: false });
  legacyOff.ioWrite(0xcf8, 4, cf8Address(0, 0, 0, 0));
  assertEquals(legacyOff.configAddress, 0);
  assertEquals(legacyOff.diagnostics.unclaimedAccesses, 1);
  const f = new PciFunction({ vendorId: 1, deviceId: 2 });
  f.defineBar(0, { kind: "io", size: 4 });
  f.mapRegion(0, 0, 4, new RegisterFile(4));
  legacyOff.attach(f, 0);
  assertEquals(legacyOff.functionAt(0), f);
  assertEquals(legacyOff.functionAt(40), undefined);
});

function bridgeAttach(bridge: PciHostBridge, fn: PciFunction): void {
  bridge.attach(fn, 0);
}
