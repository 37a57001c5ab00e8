import { assertEquals, assertThrows } from "@std/assert";
import { PciCommand, PciFunction } from "../../src/pci/mod.ts";
import { cfg, recordingHost, RegisterFile, testFunction } from "./_helpers.ts";

/** Sizes a BAR the way a BIOS does: save, write all-ones, read, restore. */
function probe(fn: PciFunction, index: number): number {
  const reg = 0x10 + 4 * index;
  const saved = cfg.r32(fn, reg);
  cfg.w32(fn, reg, 0xffff_ffff);
  const value = cfg.r32(fn, reg);
  cfg.w32(fn, reg, saved);
  return value;
}

Deno.test("PciFunction BAR sizing follows the all-ones protocol", async (t) => {
  const { fn } = testFunction();
  await t.step("I/O BAR: ~(size-1) | 1", () => {
    assertEquals(cfg.r32(fn, 0x10), 0x1);
    assertEquals(probe(fn, 0), 0xffff_ffe1);
  });
  await t.step("32-bit memory BAR: ~(size-1) with type bits 0", () => {
    assertEquals(cfg.r32(fn, 0x14), 0);
    assertEquals(probe(fn, 1), 0xffff_f000);
  });
  await t.step("64-bit prefetchable BAR: type 0b10, prefetch bit, high dword all-ones", () => {
    assertEquals(cfg.r32(fn, 0x18), 0xc);
    assertEquals(probe(fn, 2), 0xffff_c00c);
    assertEquals(probe(fn, 3), 0xffff_ffff);
  });
  await t.step("unimplemented BARs are hard-wired 0", () => {
    assertEquals(probe(fn, 4), 0);
    assertEquals(probe(fn, 5), 0);
    cfg.w32(fn, 0x20, 0x1234_5678);
    assertEquals(cfg.r32(fn, 0x20), 0);
  });
  await t.step("sizing restores the registers", () => {
    for (let i = 0; i < 6; i++) assertEquals(probe(fn, i), probe(fn, i));
    assertEquals(cfg.r32(fn, 0x10), 0x1);
    assertEquals(cfg.r32(fn, 0x18), 0xc);
  });
  await t.step("a 64-bit BAR above 4 GiB sizes through the high dword", () => {
    const big = new PciFunction({ vendorId: 1, deviceId: 2 });
    big.defineBar(4, { kind: "mem64", size: 2 ** 34 });
    assertEquals(probe(big, 4), 0x4);
    assertEquals(probe(big, 5), 0xffff_fffc);
  });
  await t.step("a prefetchable 32-bit BAR keeps bit 3", () => {
    const f = new PciFunction({ vendorId: 1, deviceId: 2 });
    f.defineBar(0, { kind: "mem32", size: 16, prefetchable: true });
    assertEquals(probe(f, 0), 0xffff_fff8);
  });
});

Deno.test("PciFunction BAR addresses drop the bits below the size", () => {
  const { fn } = testFunction();
  cfg.w32(fn, 0x14, 0xfebf_1234);
  assertEquals(cfg.r32(fn, 0x14), 0xfebf_1000);
  cfg.w32(fn, 0x10, 0xc05f);
  assertEquals(cfg.r32(fn, 0x10), 0xc041);
  cfg.w16(fn, 0x1a, 0xfe00); // byte-lane writes into the high half of BAR2's low dword
  cfg.w8(fn, 0x19, 0x80);
  cfg.w32(fn, 0x1c, 0x1);
  assertEquals(cfg.r32(fn, 0x18), 0xfe00_800c);
  assertEquals(fn.bar(2)!.address, 0x1_fe00_8000);
  assertEquals(fn.bar(3), undefined, "the high half is not a BAR of its own");
});

Deno.test("PciFunction command enables gate BAR decoding", async (t) => {
  const { fn } = testFunction();
  const { host, log } = recordingHost();
  fn.bind(host);
  cfg.w32(fn, 0x10, 0xc000);
  cfg.w32(fn, 0x14, 0xfebf_0000);
  cfg.w32(fn, 0x18, 0xfe00_0000);
  await t.step("programming addresses with decoding off maps nothing", () => {
    assertEquals(log.bars, []);
    assertEquals(fn.bars.map((b) => b.decoding), [false, false, false]);
  });
  await t.step("MEM enable maps memory BARs only", () => {
    cfg.w16(fn, 0x04, PciCommand.MEMORY);
    assertEquals(log.bars, [
      { index: 1, decoding: true, address: 0xfebf_0000, previous: null },
      { index: 2, decoding: true, address: 0xfe00_0000, previous: null },
    ]);
  });
  await t.step("IO enable maps the I/O BAR", () => {
    log.bars.length = 0;
    cfg.w16(fn, 0x04, PciCommand.MEMORY | PciCommand.IO);
    assertEquals(log.bars, [{ index: 0, decoding: true, address: 0xc000, previous: null }]);
  });
  await t.step("relocating a decoding BAR reports the move", () => {
    log.bars.length = 0;
    cfg.w32(fn, 0x14, 0xfebe_0000);
    assertEquals(log.bars, [
      { index: 1, decoding: true, address: 0xfebe_0000, previous: 0xfebf_0000 },
    ]);
  });
  await t.step("sizing a decoding 32-bit BAR unmaps it (the window wraps) and restores it", () => {
    log.bars.length = 0;
    probe(fn, 1);
    assertEquals(log.bars, [
      { index: 1, decoding: false, address: 0xffff_f000, previous: 0xfebe_0000 },
      { index: 1, decoding: true, address: 0xfebe_0000, previous: null },
    ]);
  });
  await t.step("a 64-bit BAR moves with each dword written", () => {
    log.bars.length = 0;
    cfg.w32(fn, 0x1c, 0x2);
    assertEquals(log.bars, [
      { index: 2, decoding: true, address: 0x2_fe00_0000, previous: 0xfe00_0000 },
    ]);
    log.bars.length = 0;
    cfg.w32(fn, 0x1c, 0x20_0000); // above 2^53: not decodable
    assertEquals(log.bars.length, 1);
    assertEquals(log.bars[0].decoding, false);
    cfg.w32(fn, 0x1c, 0);
  });
  await t.step("address 0 never decodes", () => {
    log.bars.length = 0;
    cfg.w32(fn, 0x10, 0);
    assertEquals(log.bars, [{ index: 0, decoding: false, address: 0, previous: 0xc000 }]);
  });
  await t.step("clearing MEM unmaps memory BARs", () => {
    log.bars.length = 0;
    cfg.w16(fn, 0x04, PciCommand.IO);
    assertEquals(log.bars.map((b) => [b.index, b.decoding]), [[1, false], [2, false]]);
  });
  await t.step("reset unmaps everything and zeroes the BARs", () => {
    cfg.w32(fn, 0x10, 0xc000);
    log.bars.length = 0;
    fn.reset();
    assertEquals(log.bars.map((b) => [b.index, b.decoding]), [[0, false]]);
    assertEquals([cfg.r32(fn, 0x10), cfg.r32(fn, 0x14), cfg.r32(fn, 0x18)], [1, 0, 0xc]);
    assertEquals(fn.command, 0);
  });
});

Deno.test("PciFunction.barRead() dispatches by offset to the region handlers", async (t) => {
  const { fn, io, regs, regs2 } = testFunction();
  await t.step("1, 2 and 4 byte accesses reach the region with region-relative offsets", () => {
    fn.barWrite(2, 0x10, 4, 0x1122_3344);
    fn.barWrite(2, 0x2004, 2, 0xabcd);
    fn.barWrite(0, 3, 1, 0x7f);
    assertEquals(regs.log, ["w4@10=11223344"]);
    assertEquals(regs2.log, ["w2@4=abcd"]);
    assertEquals(io.log, ["w1@3=7f"]);
    assertEquals(fn.barRead(2, 0x12, 2), 0x1122);
    assertEquals(fn.barRead(2, 0x2004, 4), 0xabcd);
    assertEquals(fn.barRead(0, 3, 1), 0x7f);
  });
  await t.step("values are masked to the access size", () => {
    regs.log.length = 0;
    fn.barWrite(2, 0x20, 1, 0x1ff);
    fn.barWrite(2, 0x24, 4, -1);
    assertEquals(regs.log, ["w1@20=ff", "w4@24=ffffffff"]);
  });
  await t.step("8-byte accesses split into two dwords, low first", () => {
    regs.log.length = 0;
    fn.barWrite64(2, 0x100, 0x0102_0304_0506_0708n);
    assertEquals(regs.log, ["w4@100=5060708", "w4@104=1020304"]);
    assertEquals(fn.barRead64(2, 0x100), 0x0102_0304_0506_0708n);
  });
  await t.step("a region with read64/write64 gets the whole qword", () => {
    const f = new PciFunction({ vendorId: 1, deviceId: 2 });
    f.defineBar(0, { kind: "mem64", size: 0x100 });
    let q = 0n;
    f.mapRegion(0, 0, 0x100, {
      read: () => 0,
      write: () => {},
      read64: () => q,
      write64: (_o, v) => {
        q = v;
      },
    });
    f.barWrite64(0, 8, 0xffff_ffff_ffff_fffen);
    assertEquals(q, 0xffff_ffff_ffff_fffen);
    assertEquals(f.barRead64(0, 8), 0xffff_ffff_ffff_fffen);
    f.barWrite64(0, 8, -1n);
    assertEquals(q, 0xffff_ffff_ffff_ffffn);
  });
  await t.step("holes between regions read 0 and are counted", () => {
    const before = fn.diagnostics.unclaimedAccesses;
    assertEquals(fn.barRead(2, 0x1000, 4), 0);
    fn.barWrite(2, 0x3000, 4, 1);
    assertEquals(fn.barRead(2, 0x20fe, 4), 0, "straddles the region end");
    assertEquals(fn.diagnostics.unclaimedAccesses, before + 3);
  });
  await t.step("bad accesses read all-ones, write nothing and are counted", () => {
    regs.log.length = 0;
    const d = fn.diagnostics;
    const before = d.invalidBarAccesses;
    assertEquals(fn.barRead(2, 0x3ffe, 4), 0xffff_ffff, "straddles the BAR end");
    assertEquals(fn.barRead(2, 0x4000, 1), 0xff);
    assertEquals(fn.barRead(2, 1e15, 4), 0xffff_ffff);
    assertEquals(fn.barRead(2, -4, 4), 0xffff_ffff);
    assertEquals(fn.barRead(2, 0, 3), 0xffff_ffff);
    assertEquals(fn.barRead(3, 0, 4), 0xffff_ffff, "the high half of a 64-bit BAR");
    assertEquals(fn.barRead(4, 0, 4), 0xffff_ffff, "unimplemented");
    assertEquals(fn.barRead(9, 0, 4), 0xffff_ffff);
    assertEquals(fn.barRead64(2, 0x3ffc), 0xffff_ffff_ffff_ffffn);
    fn.barWrite(2, 0.5, 4, 1);
    fn.barWrite(2, NaN, 4, 1);
    // deno-lint-ignore no-explicit-any
    fn.barWrite64(2, 0, 5 as any);
    assertEquals(d.invalidBarAccesses, before + 12);
    assertEquals(regs.log, []);
    assertEquals(
      d.lastMessage,
      "1234:5678: BAR 2 write of 8 bytes at 0x0 ignored: the BAR has 0x4000 bytes",
    );
  });
});

Deno.test("PciFunction.defineBar() and mapRegion() reject host misuse", async (t) => {
  const fn = new PciFunction({ vendorId: 1, deviceId: 2 });
  await t.step("sizes", () => {
    assertThrows(
      () => fn.defineBar(2, { kind: "mem32", size: 3000 }),
      RangeError,
      "Cannot define BAR 2: size 3000 is not a power of two",
    );
    assertThrows(() => fn.defineBar(0, { kind: "mem32", size: 8 }), RangeError, "outside 16..");
    assertThrows(() => fn.defineBar(0, { kind: "io", size: 2 }), RangeError);
    assertThrows(() => fn.defineBar(0, { kind: "mem32", size: 2 ** 32 }), RangeError);
    assertThrows(() => fn.defineBar(0, { kind: "io", size: 16, prefetchable: true }), RangeError);
  });
  await t.step("slots", () => {
    assertThrows(() => fn.defineBar(6, { kind: "mem32", size: 16 }), RangeError, "outside 0..5");
    assertThrows(
      () => fn.defineBar(5, { kind: "mem64", size: 16 }),
      RangeError,
      "a 64-bit BAR needs the next slot too",
    );
    fn.defineBar(0, { kind: "mem64", size: 16 });
    assertThrows(
      () => fn.defineBar(1, { kind: "mem32", size: 16 }),
      RangeError,
      "Cannot define BAR 1: slot 1 is taken by BAR 0",
    );
    // deno-lint-ignore no-explicit-any
    assertThrows(() => fn.defineBar(2, { kind: "rom" } as any), TypeError);
  });
  await t.step("regions", () => {
    const h = new RegisterFile(16);
    assertThrows(
      () => fn.mapRegion(2, 0, 16, h),
      RangeError,
      "Cannot map region 0x0+0x10 in BAR 2: the BAR is not defined",
    );
    assertThrows(() => fn.mapRegion(0, 8, 16, h), RangeError, "ends beyond the BAR's 0x10 bytes");
    fn.mapRegion(0, 0, 8, h);
    assertThrows(() => fn.mapRegion(0, 4, 8, h), RangeError, "overlaps the region at 0x0");
    // deno-lint-ignore no-explicit-any
    assertThrows(() => fn.mapRegion(0, 8, 8, {} as any), TypeError);
  });
});
