import { assertEquals, assertThrows } from "@std/assert";
import { assignBars, PciCommand, PciFunction, PciHostBridge } from "../../src/pci/mod.ts";
import { recordingHost, testFunction } from "./_helpers.ts";

/** A bus with the test function at 00:04.0, BARs assigned, MEM + Bus Master on. */
function machine() {
  const { host, log } = recordingHost();
  const bridge = new PciHostBridge({ host });
  const { fn } = testFunction();
  bridge.attach(fn, 4);
  assignBars(bridge, 0xfe00_0000, 0xc000);
  const table = fn.bar(1)!.address;
  const pba = table + 0x800;
  const msix = fn.msix!;
  const cap = msix.offset;
  const cw = (off: number, size: number, v: number) => bridge.configWrite(0, 4, 0, off, size, v);
  const cr = (off: number, size: number) => bridge.configRead(0, 4, 0, off, size);
  cw(0x04, 2, cr(0x04, 2) | PciCommand.MASTER);
  const control = (v: number) => cw(cap + 2, 2, v);
  const program = (v: number, address: number, data: number) => {
    bridge.memWrite(table + 16 * v, 4, address);
    bridge.memWrite(table + 16 * v + 4, 4, 0);
    bridge.memWrite(table + 16 * v + 8, 4, data);
  };
  const unmask = (v: number) => bridge.memWrite(table + 16 * v + 12, 4, 0);
  const mask = (v: number) => bridge.memWrite(table + 16 * v + 12, 4, 1);
  return { bridge, fn, msix, cap, table, pba, log, cw, cr, control, program, unmask, mask };
}

Deno.test("MsixCapability is described in config space", () => {
  const { cr, cap } = machine();
  assertEquals(cr(cap, 1), 0x11);
  assertEquals(cr(cap + 2, 2), 3, "table size N-1, disabled, not masked");
  assertEquals(cr(cap + 4, 4), 0x0000_0001, "table at 0x0 of BAR 1");
  assertEquals(cr(cap + 8, 4), 0x0000_0801, "PBA at 0x800 of BAR 1");
});

Deno.test("MsixCapability table starts masked and is read and written through the BAR", async (t) => {
  const { bridge, table, pba, fn } = machine();
  await t.step("reset values: address 0, data 0, mask set", () => {
    for (let v = 0; v < 4; v++) {
      assertEquals(bridge.memRead(table + 16 * v, 4), 0);
      assertEquals(bridge.memRead(table + 16 * v + 12, 4), 1);
    }
    assertEquals(bridge.memRead64(pba), 0n);
  });
  await t.step("vector control keeps only the mask bit", () => {
    bridge.memWrite(table + 12, 4, 0xffff_fffe);
    assertEquals(bridge.memRead(table + 12, 4), 0);
    bridge.memWrite(table + 12, 4, 0xffff_ffff);
    assertEquals(bridge.memRead(table + 12, 4), 1);
  });
  await t.step("QWORD write to the address and to data + control", () => {
    bridge.memWrite64(table + 16, 0x0000_0001_fee0_1000n);
    assertEquals(bridge.memRead(table + 16, 4), 0xfee0_1000);
    assertEquals(bridge.memRead(table + 20, 4), 1);
    assertEquals(bridge.memRead64(table + 16), 0x0000_0001_fee0_1000n);
    bridge.memWrite64(table + 24, 0x0000_0000_0000_0033n);
    assertEquals(fn.msix!.messageData(1), 0x33);
    assertEquals(fn.msix!.isMasked(1), false);
  });
  await t.step("misaligned table accesses and PBA writes are ignored and counted", () => {
    const before = fn.diagnostics.invalidBarAccesses;
    bridge.memWrite(table + 2, 4, 0x1234_5678);
    assertEquals(bridge.memRead(table + 1, 2), 0);
    bridge.memWrite(pba, 4, 0xffff_ffff);
    assertEquals(bridge.memRead(pba, 4), 0);
    assertEquals(fn.diagnostics.invalidBarAccesses, before + 3);
    assertEquals(bridge.memRead(table, 4), 0);
  });
  await t.step("holes after the table and after the PBA read 0", () => {
    assertEquals(bridge.memRead(table + 0x40, 4), 0);
    assertEquals(bridge.memRead(pba + 8, 4), 0);
  });
});

Deno.test("MsixCapability.notify() returns false while MSI-X is disabled", () => {
  const { msix, log, program, unmask, pba, bridge } = machine();
  program(0, 0xfee0_0000, 0x41);
  unmask(0);
  assertEquals(msix.notify(0), false);
  assertEquals(log.msi, []);
  assertEquals(bridge.memRead(pba, 4), 0, "no pending bit either");
});

Deno.test("MsixCapability delivers unmasked vectors and holds masked ones pending", async (t) => {
  const { msix, log, program, unmask, mask, control, pba, bridge } = machine();
  program(0, 0xfee0_0000, 0x40);
  program(2, 0xfee0_1000, 0x42);
  control(0x8000);
  await t.step("an entry-masked vector sets its PBA bit and delivers nothing", () => {
    assertEquals(msix.notify(2), true);
    assertEquals(log.msi, []);
    assertEquals(bridge.memRead(pba, 4), 0b100);
    assertEquals(msix.isPending(2), true);
  });
  await t.step("unmasking the entry delivers it and clears the bit", () => {
    unmask(2);
    assertEquals(log.msi, [[0xfee0_1000, 0x42]]);
    assertEquals(bridge.memRead(pba, 4), 0);
  });
  await t.step("an unmasked vector is delivered at once", () => {
    assertEquals(msix.notify(2), true);
    assertEquals(log.msi.length, 2);
  });
  await t.step("the function mask holds every vector pending", () => {
    log.msi.length = 0;
    unmask(0);
    control(0xc000);
    msix.notify(0);
    msix.notify(2);
    msix.notify(2);
    assertEquals(log.msi, []);
    assertEquals(bridge.memRead64(pba), 0b101n);
  });
  await t.step("masking an entry while the function is masked keeps it pending after", () => {
    mask(2);
    control(0x8000);
    assertEquals(log.msi, [[0xfee0_0000, 0x40]], "vector 0 once; vector 2 still entry-masked");
    assertEquals(bridge.memRead(pba, 1), 0b100);
    unmask(2);
    assertEquals(log.msi, [[0xfee0_0000, 0x40], [0xfee0_1000, 0x42]]);
    assertEquals(bridge.memRead(pba, 1), 0);
  });
  await t.step("pending survives disable and is delivered on re-enable", () => {
    log.msi.length = 0;
    mask(0);
    msix.notify(0);
    control(0);
    unmask(0);
    assertEquals(log.msi, []);
    assertEquals(msix.notify(0), false);
    control(0x8000);
    assertEquals(log.msi, [[0xfee0_0000, 0x40]]);
  });
  await t.step("a bad vector is host misuse", () => {
    assertThrows(
      () => msix.notify(4),
      RangeError,
      "Cannot signal MSI-X vector 4: the table has 4 entries",
    );
  });
});

Deno.test("MsixCapability messages need Bus Master and a representable address", () => {
  const { fn, msix, log, program, unmask, control, cw, cr, bridge, table } = machine();
  program(1, 0xfee0_0000, 7);
  unmask(1);
  control(0x8000);
  cw(0x04, 2, cr(0x04, 2) & ~PciCommand.MASTER);
  assertEquals(msix.notify(1), true);
  assertEquals(log.msi, []);
  assertEquals(fn.diagnostics.droppedInterrupts, 1);
  assertEquals(
    fn.diagnostics.lastMessage,
    "1234:5678: MSI message 0x7 to 0xfee00000 dropped: bus mastering is disabled",
  );
  cw(0x04, 2, cr(0x04, 2) | PciCommand.MASTER);
  bridge.memWrite(table + 16 + 4, 4, 0xffff_ffff);
  msix.notify(1);
  assertEquals(log.msi, []);
  assertEquals(fn.diagnostics.droppedInterrupts, 2);
});

Deno.test("MsixCapability enable keeps INTx deasserted", () => {
  const { fn, log, control } = machine();
  control(0x8000);
  fn.setIntx(true);
  assertEquals(log.intx, []);
  assertEquals(fn.intxAsserted, false);
  control(0);
  assertEquals(log.intx, [true]);
  control(0x8000);
  assertEquals(log.intx, [true, false]);
});

Deno.test("MsixCapability state is reset with the function", () => {
  const { fn, msix, control, program, unmask, bridge, table, cap, cr } = machine();
  program(3, 0xfee0_0000, 3);
  unmask(3);
  control(0xc000);
  msix.notify(3);
  fn.reset();
  assertEquals(cr(cap + 2, 2), 3);
  assertEquals([msix.enabled, msix.functionMasked, msix.isMasked(3), msix.isPending(3)], [
    false,
    false,
    true,
    false,
  ]);
  assertEquals(msix.messageAddress(3), 0);
  assertEquals(bridge.memRead(table + 48, 4), 0xffff_ffff, "BARs are unassigned after reset");
});

Deno.test("PciFunction.addMsix() rejects host misuse", () => {
  const fn = new PciFunction({ vendorId: 1, deviceId: 2 });
  fn.defineBar(0, { kind: "io", size: 256 });
  fn.defineBar(1, { kind: "mem32", size: 0x100 });
  assertThrows(
    () => fn.addMsix({ vectors: 4, tableBar: 0 }),
    RangeError,
    "table BAR 0 is not a memory BAR",
  );
  assertThrows(() => fn.addMsix({ vectors: 4, tableBar: 2 }), RangeError);
  assertThrows(() => fn.addMsix({ vectors: 0, tableBar: 1 }), RangeError);
  assertThrows(() => fn.addMsix({ vectors: 16, tableBar: 1 }), RangeError, "ends beyond");
  assertThrows(
    () => fn.addMsix({ vectors: 4, tableBar: 1, pbaOffset: 0x20 }),
    RangeError,
    "overlaps the table",
  );
  assertThrows(() => fn.addMsix({ vectors: 4, tableBar: 1, tableOffset: 4 }), RangeError);
  assertEquals(fn.config.findCapability(0x11), 0, "nothing was added by the failures");
  const msix = fn.addMsix({ vectors: 4, tableBar: 1 });
  assertEquals(msix.pbaOffset, 0x40);
  assertThrows(() => fn.addMsix({ vectors: 1, tableBar: 1 }), TypeError);
});
