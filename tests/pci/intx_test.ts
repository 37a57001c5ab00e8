import { assertEquals } from "@std/assert";
import { PciCommand, PciFunction } from "../../src/pci/mod.ts";
import { cfg, recordingHost, testFunction } from "./_helpers.ts";

Deno.test("PciFunction.setIntx() drives the pin and Status bit 3", async (t) => {
  const { fn } = testFunction();
  const { host, log } = recordingHost();
  fn.bind(host);
  await t.step("asserting sets status bit 3 and the pin", () => {
    fn.setIntx(true);
    assertEquals(cfg.r16(fn, 0x06) & 0x08, 0x08);
    assertEquals(log.intx, [true]);
    fn.setIntx(true);
    assertEquals(log.intx, [true], "no repeat for the same level");
  });
  await t.step("INTx Disable drops the pin but Status bit 3 stays", () => {
    cfg.w16(fn, 0x04, PciCommand.INTX_DISABLE);
    assertEquals(log.intx, [true, false]);
    assertEquals(cfg.r16(fn, 0x06) & 0x08, 0x08);
    assertEquals([fn.intxLevel, fn.intxAsserted], [true, false]);
  });
  await t.step("clearing INTx Disable re-asserts a pending request", () => {
    cfg.w16(fn, 0x04, 0);
    assertEquals(log.intx, [true, false, true]);
  });
  await t.step("deasserting clears both", () => {
    fn.setIntx(false);
    assertEquals(log.intx, [true, false, true, false]);
    assertEquals(cfg.r16(fn, 0x06) & 0x08, 0);
  });
  await t.step("a request while disabled shows only in Status", () => {
    cfg.w16(fn, 0x04, PciCommand.INTX_DISABLE);
    fn.setIntx(true);
    assertEquals(cfg.r16(fn, 0x06) & 0x08, 0x08);
    assertEquals(log.intx.length, 4);
  });
  await t.step("Status bit 3 is read-only to the guest", () => {
    cfg.w16(fn, 0x06, 0xffff);
    assertEquals(cfg.r16(fn, 0x06) & 0x08, 0x08);
  });
  await t.step("reset deasserts", () => {
    cfg.w16(fn, 0x04, 0);
    assertEquals(log.intx.at(-1), true);
    fn.reset();
    assertEquals(log.intx.at(-1), false);
    assertEquals(cfg.r16(fn, 0x06) & 0x08, 0);
  });
});

Deno.test("PciFunction without an interrupt pin never drives INTx", () => {
  const fn = new PciFunction({ vendorId: 1, deviceId: 2, interruptPin: 0 });
  const { host, log } = recordingHost();
  fn.bind(host);
  fn.setIntx(true);
  assertEquals(log.intx, []);
  assertEquals(cfg.r8(fn, 0x3d), 0);
  assertEquals(cfg.r16(fn, 0x06) & 0x08, 0x08);
});

Deno.test("PciFunction.addCommandListener() hears guest command changes", () => {
  const { fn } = testFunction();
  const heard: [number, number][] = [];
  const off = fn.addCommandListener((c, p) => heard.push([c, p]));
  cfg.w16(fn, 0x04, PciCommand.MASTER);
  cfg.w16(fn, 0x04, PciCommand.MASTER);
  cfg.w8(fn, 0x04, 0);
  off();
  cfg.w8(fn, 0x04, PciCommand.MEMORY);
  assertEquals(heard, [[4, 0], [0, 4]]);
});

Deno.test("PciFunction.saveState() round-trips through restoreState()", () => {
  const a = testFunction().fn;
  cfg.w32(a, 0x14, 0xfebf_0000);
  cfg.w8(a, 0x3c, 10);
  cfg.w16(a, 0x04, PciCommand.MEMORY | PciCommand.MASTER);
  a.barWrite(1, 0x10, 4, 0xfee0_0000);
  a.barWrite(1, 0x1c, 4, 0);
  a.configWrite(a.msix!.offset + 2, 2, 0xc000);
  a.msix!.notify(1);
  a.setIntx(true);
  const state = JSON.parse(JSON.stringify(a.saveState()));

  const b = testFunction().fn;
  const { host, log } = recordingHost();
  b.bind(host);
  b.restoreState(state);
  assertEquals(log.bars, [{ index: 1, decoding: true, address: 0xfebf_0000, previous: null }]);
  assertEquals(log.intx, [], "MSI-X is enabled, so the pin stays low");
  assertEquals(b.intxLevel, true);
  for (let off = 0; off < 256; off += 4) assertEquals(cfg.r32(b, off), cfg.r32(a, off));
  assertEquals(b.msix!.isPending(1), true);
  b.configWrite(b.msix!.offset + 2, 2, 0x8000);
  assertEquals(log.msi, [[0xfee0_0000, 0]]);
});
