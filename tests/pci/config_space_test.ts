import { assertEquals, assertThrows } from "@std/assert";
import {
  PciCapabilityId,
  PciCommand,
  PciConfigSpace,
  PciFunction,
  PciStatus,
} from "../../src/pci/mod.ts";
import { cfg, testFunction, walkCapabilities } from "./_helpers.ts";

Deno.test("PciFunction config header reads the identity it was built with", () => {
  const { fn } = testFunction();
  assertEquals(cfg.r32(fn, 0x00), 0x5678_1234);
  assertEquals(cfg.r16(fn, 0x00), 0x1234);
  assertEquals(cfg.r16(fn, 0x02), 0x5678);
  assertEquals(cfg.r8(fn, 0x08), 2);
  assertEquals(cfg.r32(fn, 0x08), 0x0200_0002);
  assertEquals(cfg.r8(fn, 0x0e), 0, "header type 0, single function");
  assertEquals(cfg.r32(fn, 0x2c), 0x1100_1af4);
  assertEquals(cfg.r8(fn, 0x3d), 1, "INTA#");
  assertEquals(cfg.r32(fn, 0x30), 0, "no expansion ROM");
  // unaligned within a dword is fine
  assertEquals(cfg.r16(fn, 0x01), 0x7812);
  assertEquals(cfg.r8(fn, 0x03), 0x56);
});

Deno.test("PciFunction config read-only fields ignore writes", async (t) => {
  const { fn } = testFunction();
  await t.step("IDs, revision, class, subsystem, pin, cap pointer", () => {
    const before = Array.from({ length: 0x40 }, (_, i) => cfg.r8(fn, i));
    for (const off of [0x00, 0x08, 0x2c, 0x30, 0x34, 0x3c]) cfg.w32(fn, off, 0xdead_beef);
    cfg.w8(fn, 0x3d, 3);
    cfg.w8(fn, 0x0e, 0x80);
    const after = Array.from({ length: 0x40 }, (_, i) => cfg.r8(fn, i));
    for (let i = 0; i < 0x40; i++) {
      if (i === 0x3c || (i >= 0x10 && i < 0x28) || i === 0x0c || i === 0x04) continue;
      assertEquals(after[i], before[i], `byte 0x${i.toString(16)}`);
    }
  });
  await t.step("interrupt line and cache line size are read-write scratch", () => {
    cfg.w8(fn, 0x3c, 11);
    assertEquals(cfg.r8(fn, 0x3c), 11);
    cfg.w8(fn, 0x0c, 0x10);
    assertEquals(cfg.r8(fn, 0x0c), 0x10);
    assertEquals(cfg.r8(fn, 0x0d), 0, "latency timer hard-wired 0");
  });
  await t.step("capability bytes are read-only", () => {
    const caps = walkCapabilities(fn);
    const [, msix] = caps[0];
    cfg.w32(fn, msix, 0xffff_ffff);
    cfg.w32(fn, msix + 4, 0xffff_ffff);
    assertEquals(cfg.r8(fn, msix), PciCapabilityId.MSIX);
    assertEquals(cfg.r8(fn, msix + 1), 0);
    assertEquals(cfg.r32(fn, msix + 4), 0x0000_0001, "table offset 0, BIR 1");
  });
});

Deno.test("PciFunction command register keeps only its writable bits", () => {
  const { fn } = testFunction();
  cfg.w16(fn, 0x04, 0xffff);
  assertEquals(cfg.r16(fn, 0x04), 0x0547);
  assertEquals(fn.command, 0x0547);
  assertEquals([fn.ioEnabled, fn.memoryEnabled, fn.busMaster, fn.intxDisabled], [
    true,
    true,
    true,
    true,
  ]);
  cfg.w8(fn, 0x05, 0);
  assertEquals(cfg.r16(fn, 0x04), 0x0047);
  assertEquals(fn.intxDisabled, false);
});

Deno.test("PciFunction status error bits are write-1-to-clear", async (t) => {
  const { fn } = testFunction();
  await t.step("the device sets them; writing 0 keeps them", () => {
    fn.setStatusBits(PciStatus.REC_MASTER_ABORT | PciStatus.DETECTED_PARITY | PciStatus.CAP_LIST);
    assertEquals(cfg.r16(fn, 0x06), 0xa010);
    cfg.w16(fn, 0x06, 0);
    assertEquals(cfg.r16(fn, 0x06), 0xa010);
  });
  await t.step("writing 1 clears only that bit; RO bits ignore the write", () => {
    cfg.w16(fn, 0x06, PciStatus.REC_MASTER_ABORT | PciStatus.CAP_LIST | PciStatus.INTERRUPT);
    assertEquals(cfg.r16(fn, 0x06), 0x8010);
    cfg.w8(fn, 0x07, 0x80);
    assertEquals(cfg.r16(fn, 0x06), 0x0010);
  });
  await t.step("a dword write to command+status writes command and clears status bits", () => {
    fn.setStatusBits(PciStatus.SIG_TARGET_ABORT);
    cfg.w32(fn, 0x04, (PciStatus.SIG_TARGET_ABORT << 16) | PciCommand.MEMORY);
    assertEquals(cfg.r32(fn, 0x04), 0x0010_0002);
  });
});

Deno.test("PciConfigSpace capability list is walkable from 0x34", async (t) => {
  const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041 });
  await t.step("no capabilities: status bit 4 clear, pointer 0", () => {
    assertEquals(cfg.r16(fn, 0x06) & 0x10, 0);
    assertEquals(cfg.r8(fn, 0x34), 0);
    assertEquals(walkCapabilities(fn), []);
  });
  await t.step("capabilities are dword aligned from 0x40 and linked in order", () => {
    assertEquals(fn.addCapability(PciCapabilityId.VENDOR, 16), 0x40);
    assertEquals(fn.addCapability(PciCapabilityId.PM, 8), 0x50);
    assertEquals(fn.addCapability(PciCapabilityId.VENDOR, 5), 0x58);
    assertEquals(fn.addCapability(PciCapabilityId.VENDOR, 20), 0x60);
    assertEquals(cfg.r16(fn, 0x06) & 0x10, 0x10);
    assertEquals(walkCapabilities(fn), [[9, 0x40], [1, 0x50], [9, 0x58], [9, 0x60]]);
    assertEquals(fn.config.findCapability(PciCapabilityId.PM), 0x50);
    assertEquals(fn.config.findCapability(PciCapabilityId.MSIX), 0);
  });
  await t.step("a capability that does not fit below 0x100 is refused", () => {
    const e = assertThrows(() => fn.addCapability(9, 0x90), RangeError);
    assertEquals(
      e.message,
      "Cannot add capability 0x9: 144 bytes do not fit at offset 0x74 below 0x100",
    );
    assertEquals(fn.addCapability(9, 0x8c), 0x74);
  });
  await t.step("the walk survives reset", () => {
    fn.reset();
    assertEquals(walkCapabilities(fn).length, 5);
  });
});

Deno.test("PciConfigSpace hooks own their bytes", async (t) => {
  const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041 });
  const calls: string[] = [];
  let counter = 0;
  const cap = fn.addCapability(PciCapabilityId.VENDOR, 12, {
    beforeRead: (offset, length) => {
      calls.push(`r ${offset} ${length}`);
      fn.config.set32(cap + 8, ++counter);
    },
    afterWrite: (offset, length, value) =>
      calls.push(`w ${offset} ${length} ${value.toString(16)}`),
    reset: () => calls.push("reset"),
  });
  fn.config.define32(cap + 4, 0, 0x0000_ffff);
  await t.step("reads refresh mirrored bytes first", () => {
    assertEquals(cfg.r32(fn, cap + 8), 1);
    assertEquals(cfg.r8(fn, cap + 9), 0);
    assertEquals(calls, ["r 8 4", "r 9 1"]);
  });
  await t.step("writes are stored through masks, then reported with the raw value", () => {
    calls.length = 0;
    cfg.w32(fn, cap + 4, 0xaabb_ccdd);
    assertEquals(cfg.r32(fn, cap + 4), 0xccdd);
    assertEquals(calls, ["w 4 4 aabbccdd", "r 4 4"]);
  });
  await t.step("an access straddling the hook's start only reports its part", () => {
    calls.length = 0;
    cfg.w16(fn, 0x3e, 0x1234); // Min_Gnt/Max_Lat: not hooked, RO
    cfg.w32(fn, cap, 0x1122_3344);
    assertEquals(calls, ["w 0 4 11223344"]);
  });
  await t.step("reset calls the hook", () => {
    calls.length = 0;
    fn.reset();
    assertEquals(calls, ["reset"]);
    assertEquals(fn.config.get32(cap + 4), 0);
  });
  await t.step("overlapping hooks are refused", () => {
    assertThrows(() => fn.config.hook(cap + 8, 8, {}), RangeError);
  });
});

Deno.test("PciConfigSpace extended capabilities live from 0x100 in a 4 KiB space", () => {
  const fn = new PciFunction({ vendorId: 0x8086, deviceId: 0x1234, configSize: 4096 });
  assertEquals(cfg.r32(fn, 0x100), 0, "no extended capabilities: header 0");
  const a = fn.config.addExtendedCapability(0x0001, 1, 0x40); // AER
  const b = fn.config.addExtendedCapability(0x000b, 1, 8);
  assertEquals([a, b], [0x100, 0x140]);
  assertEquals(cfg.r32(fn, 0x100), 0x1401_0001);
  assertEquals(cfg.r32(fn, 0x140), 0x0001_000b);
  assertEquals(cfg.r32(fn, 0xffc), 0);
  assertEquals(fn.diagnostics.total, 0);
  const small = new PciConfigSpace();
  assertThrows(() => small.addExtendedCapability(1, 1, 8), RangeError);
});

Deno.test("PciFunction config accesses that are malformed read all-ones and are counted", async (t) => {
  const { fn } = testFunction();
  const d = fn.diagnostics;
  await t.step("crossing a dword boundary", () => {
    assertEquals(fn.configRead(0x03, 2), 0xffff);
    assertEquals(fn.configRead(0x02, 4), 0xffff_ffff);
    fn.configWrite(0x03, 2, 0);
    assertEquals(d.invalidConfigAccesses, 3);
  });
  await t.step("bad sizes and offsets", () => {
    for (
      const [off, size] of [[0, 3], [0, 8], [0, 0], [-1, 1], [1.5, 1], [NaN, 4], [0x100, 4], [
        1e12,
        1,
      ]]
    ) {
      assertEquals(
        fn.configRead(off, size) >>> 0,
        size === 1 ? 0xff : size === 2 ? 0xffff : 0xffff_ffff,
      );
      fn.configWrite(off, size, 0xffff_ffff);
    }
    assertEquals(d.invalidConfigAccesses, 3 + 16);
    assertEquals(d.lastMessage, "1234:5678: config write of 1 bytes at 0xe8d4a51000 ignored");
  });
  await t.step("nothing changed", () => {
    assertEquals(cfg.r32(fn, 0), 0x5678_1234);
    assertEquals(cfg.r16(fn, 4), 0);
  });
});

Deno.test("PciConfigSpace rejects host misuse with RangeError", () => {
  assertThrows(() => new PciConfigSpace(512), RangeError, "use 256 or 4096");
  const c = new PciConfigSpace();
  assertThrows(() => c.define32(0xfe, 0), RangeError);
  assertThrows(() => c.read(0x03, 2), RangeError);
  assertThrows(() => c.addCapability(0x100, 4), RangeError);
  assertThrows(() => c.restore([1, 2, 3]), RangeError);
  assertThrows(
    () => new PciFunction({ vendorId: 0x10000, deviceId: 1 }),
    RangeError,
    "vendorId 65536 does not fit in 16 bits",
  );
  assertThrows(() => new PciFunction({ vendorId: 1, deviceId: 1, interruptPin: 5 }), RangeError);
  // deno-lint-ignore no-explicit-any
  assertThrows(() => new PciFunction(null as any), TypeError);
});
