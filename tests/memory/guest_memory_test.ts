import { assertEquals, assertInstanceOf, assertThrows } from "@std/assert";
import { GuestMemory, MemoryFault } from "../../src/memory/mod.ts";

/** Two regions with a hole: [0, 64 KiB) and [1 MiB, 1 MiB + 64 KiB), plus an adjacent third. */
function layout(shared = false): GuestMemory {
  return new GuestMemory([
    { base: 0, size: 0x10000, shared },
    { base: 0x100000, size: 0x10000, shared },
    { base: 0x110000, size: 0x1000, shared },
  ]);
}

Deno.test("GuestMemory constructor", async (t) => {
  await t.step("sorts regions and sums their sizes", () => {
    const mem = new GuestMemory([{ base: 0x2000, size: 0x1000 }, { base: 0, size: 0x1000 }]);
    assertEquals(mem.regions.map((r) => r.base), [0, 0x2000]);
    assertEquals(mem.ramSize, 0x2000);
  });

  await t.step("uses a caller buffer in place, at an offset", () => {
    const buffer = new ArrayBuffer(0x3000);
    const mem = new GuestMemory([{ base: 0x1000, buffer, offset: 0x1000, size: 0x1000 }]);
    mem.write32(0x1000, 0xaabbccdd);
    assertEquals(new DataView(buffer).getUint32(0x1000, true), 0xaabbccdd);
  });

  await t.step("rejects overlapping regions with a RangeError", () => {
    assertThrows(
      () => new GuestMemory([{ base: 0, size: 0x2000 }, { base: 0x1000, size: 0x1000 }]),
      RangeError,
      "overlaps",
    );
  });

  await t.step("rejects bad options with TypeError or RangeError", () => {
    assertThrows(() => new GuestMemory([]), TypeError);
    assertThrows(() => new GuestMemory([{ base: 0 }]), TypeError, "give a size or a buffer");
    assertThrows(() => new GuestMemory([{ base: -1, size: 1 }]), RangeError);
    assertThrows(() => new GuestMemory([{ base: 0.5, size: 1 }]), RangeError);
    assertThrows(() => new GuestMemory([{ base: 0, size: 0 }]), RangeError);
    assertThrows(() => new GuestMemory([{ base: 2 ** 53 - 1, size: 2 }]), RangeError, "2^53");
    assertThrows(
      () => new GuestMemory([{ base: 0, buffer: new ArrayBuffer(16), offset: 8, size: 16 }]),
      RangeError,
      "exceeds",
    );
    assertThrows(
      // deno-lint-ignore no-explicit-any
      () => new GuestMemory([{ base: 0, buffer: new Uint8Array(4) as any }]),
      TypeError,
    );
  });
});

for (const shared of [false, true]) {
  const kind = shared ? "SharedArrayBuffer" : "ArrayBuffer";

  Deno.test(`GuestMemory accessors over ${kind}`, async (t) => {
    await t.step("backs regions with the requested buffer kind", () => {
      const mem = layout(shared);
      assertEquals(mem.regions[0].bytes.buffer instanceof SharedArrayBuffer, shared);
    });

    await t.step("every width reads back what it wrote, little-endian", () => {
      const mem = layout(shared);
      mem.write8(0x10, 0x1ff);
      assertEquals(mem.read8(0x10), 0xff);
      mem.write16(0x20, 0x12345);
      assertEquals(mem.read16(0x20), 0x2345);
      assertEquals(mem.read8(0x20), 0x45);
      mem.write32(0x30, 0xdeadbeef);
      assertEquals(mem.read32(0x30), 0xdeadbeef);
      assertEquals(mem.read8(0x33), 0xde);
      mem.write64(0x40, 2 ** 53 - 1);
      assertEquals(mem.read64(0x40), 2 ** 53 - 1);
      assertEquals(mem.read32(0x44), 0x1fffff);
      mem.writeBigUint64(0x50, 0xffff_ffff_ffff_fffen);
      assertEquals(mem.readBigUint64(0x50), 0xffff_ffff_ffff_fffen);
      mem.writeBigUint64(0x58, -1n);
      assertEquals(mem.readBigUint64(0x58), 0xffff_ffff_ffff_ffffn);
    });

    await t.step("accesses work at the first and last bytes of each region", () => {
      const mem = layout(shared);
      for (const r of mem.regions) {
        mem.write32(r.base, 0x01020304);
        assertEquals(mem.read32(r.base), 0x01020304);
        mem.write32(r.end - 4, 0x0a0b0c0d);
        assertEquals(mem.read32(r.end - 4), 0x0a0b0c0d);
        mem.write64(r.end - 8, 0x1234_5678_9abc);
        assertEquals(mem.read64(r.end - 8), 0x1234_5678_9abc);
      }
    });

    await t.step("views are zero-copy in both directions", () => {
      const mem = layout(shared);
      const v = mem.view(0x100010, 16);
      v[0] = 0x7f;
      assertEquals(mem.read8(0x100010), 0x7f);
      mem.write8(0x10001f, 0x42);
      assertEquals(v[15], 0x42);
    });
  });
}

Deno.test("GuestMemory faults", async (t) => {
  const mem = layout();

  await t.step("accesses straddling the end of a region into a hole fault", () => {
    for (
      const [addr, read] of [
        [0xfffe, (a: number) => mem.read32(a)],
        [0xffff, (a: number) => mem.read16(a)],
        [0xfff9, (a: number) => mem.read64(a)],
        [0x10000, (a: number) => mem.read8(a)],
      ] as const
    ) {
      const e = assertThrows(() => read(addr), MemoryFault);
      assertEquals(e.address, addr);
      assertEquals(e.reason, "unmapped");
    }
    assertThrows(() => mem.write16(0xffff, 1), MemoryFault);
    assertThrows(() => mem.write64(0x110ffc, 1), MemoryFault);
  });

  await t.step("addresses in a hole or past the end fault with address and length", () => {
    const e = assertThrows(() => mem.view(0x80000, 0x10), MemoryFault);
    assertEquals([e.address, e.length], [0x80000, 0x10]);
    assertThrows(() => mem.read8(0x111000), MemoryFault);
    assertThrows(() => mem.read8(2 ** 60), MemoryFault);
  });

  await t.step("invalid addresses and lengths fault as invalid, never wrap", () => {
    for (const addr of [-1, 0.5, NaN, Infinity, 2 ** 53]) {
      assertEquals(assertThrows(() => mem.read8(addr), MemoryFault).reason, "invalid");
    }
    assertEquals(assertThrows(() => mem.view(0, -1), MemoryFault).reason, "invalid");
    assertEquals(assertThrows(() => mem.view(0, 1.5), MemoryFault).reason, "invalid");
  });

  await t.step("a 64-bit value at or above 2^53 is a fault, not a rounded number", () => {
    mem.writeBigUint64(0x100, 2n ** 53n);
    const e = assertThrows(() => mem.read64(0x100), MemoryFault);
    assertEquals(e.reason, "unrepresentable");
    mem.writeBigUint64(0x100, 2n ** 53n - 1n);
    assertEquals(mem.read64(0x100), 2 ** 53 - 1);
  });

  await t.step("write64 of a value that is not an integer in [0, 2^53) is a RangeError", () => {
    assertThrows(() => mem.write64(0, 2 ** 53), RangeError);
    assertThrows(() => mem.write64(0, -1), RangeError);
    assertThrows(() => mem.write64(0, 1.5), RangeError);
  });

  await t.step("faults are MemoryFault instances with a readable message", () => {
    const e = assertThrows(() => mem.read32(0x20000));
    assertInstanceOf(e, MemoryFault);
    assertEquals(e.message, "Cannot access 4 bytes at 0x20000: outside guest RAM");
  });
});

Deno.test("GuestMemory copies across regions", async (t) => {
  await t.step("read and write span adjacent regions", () => {
    const mem = layout();
    const src = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
    mem.write(0x10fff0, src);
    assertEquals(mem.read8(0x10ffff), 16);
    assertEquals(mem.read8(0x110000), 17);
    const dest = new Uint8Array(32);
    mem.read(0x10fff0, dest);
    assertEquals(dest, src);
    assertEquals(mem.isRam(0x10fff0, 32), true);
  });

  await t.step("scalars straddling two adjacent regions read and write both halves", () => {
    const mem = layout();
    mem.write32(0x10fffe, 0x11223344);
    assertEquals(mem.read16(0x10fffe), 0x3344);
    assertEquals(mem.read16(0x110000), 0x1122);
    assertEquals(mem.read32(0x10fffe), 0x11223344);
    mem.write64(0x10fffc, 2 ** 52 + 7);
    assertEquals(mem.read64(0x10fffc), 2 ** 52 + 7);
    mem.writeBigUint64(0x10fffb, 0x0102030405060708n);
    assertEquals(mem.readBigUint64(0x10fffb), 0x0102030405060708n);
    mem.write16(0x10ffff, 0xabcd);
    assertEquals(mem.read8(0x10ffff), 0xcd);
    assertEquals(mem.read8(0x110000), 0xab);
    assertThrows(() => mem.write8(0x111000, 1), MemoryFault);
  });

  await t.step("a copy over a hole writes nothing and faults", () => {
    const mem = layout();
    const src = new Uint8Array(32).fill(0xee);
    assertThrows(() => mem.write(0xfff0, src), MemoryFault);
    assertEquals(mem.read8(0xfff0), 0, "nothing written before the hole");
    assertThrows(() => mem.read(0xfff0, new Uint8Array(32)), MemoryFault);
    assertEquals(mem.isRam(0xfff0, 32), false);
  });

  await t.step("fill spans regions and faults over holes", () => {
    const mem = layout();
    mem.fill(0x10fffe, 4, 0xab);
    assertEquals(mem.read32(0x10fffe), 0xabababab);
    assertThrows(() => mem.fill(0xfffe, 4, 1), MemoryFault);
  });

  await t.step("zero-length accesses inside RAM succeed", () => {
    const mem = layout();
    assertEquals(mem.view(0x10, 0).length, 0);
    mem.read(0x10, new Uint8Array(0));
    mem.write(0x10, new Uint8Array(0));
  });
});
