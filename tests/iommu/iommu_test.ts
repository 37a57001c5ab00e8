import { assertEquals, assertThrows } from "@std/assert";
import { GuestMemory } from "../../src/memory/mod.ts";
import { DmaAccess, DmaFault, DmaTranslation } from "../../src/dma/mod.ts";
import {
  Iommu,
  type IommuFault,
  IommuFaultReason,
  IommuMapFlag as F,
  IommuStatus as S,
} from "../../src/iommu/mod.ts";

const RW = F.READ | F.WRITE;
const PAGE = 4096;

function setup(options: { bypass?: boolean } = {}) {
  const memory = new GuestMemory([{ base: 0, size: 1 << 20 }, { base: 1 << 24, size: 1 << 16 }]);
  const faults: IommuFault[] = [];
  const iommu = new Iommu({ memory, bypass: options.bypass, onFault: (f) => faults.push(f) });
  const ep = iommu.addEndpoint(0x10);
  return { memory, iommu, ep, faults };
}

Deno.test("Iommu ATTACH and DETACH", async (t) => {
  await t.step("attach creates the domain; an unknown endpoint is NOENT", () => {
    const { iommu } = setup();
    assertEquals(iommu.attach(0x10, 7), S.OK);
    assertEquals(iommu.domain(7)?.endpoints.has(0x10), true);
    assertEquals(iommu.attach(0x99, 7), S.NOENT);
  });
  await t.step("attaching to another domain leaves the first, which then ceases to exist", () => {
    const { iommu, ep } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, PAGE - 1, 0, RW);
    assertEquals(iommu.attach(0x10, 2), S.OK);
    assertEquals(iommu.domain(1), undefined);
    assertEquals(ep.domain?.id, 2);
  });
  await t.step("detach checks the pairing and deletes the domain with its mappings", () => {
    const { iommu } = setup();
    iommu.addEndpoint(0x11);
    iommu.attach(0x10, 1);
    iommu.attach(0x11, 1);
    iommu.map(1, 0, PAGE - 1, 0, RW);
    assertEquals(iommu.detach(0x10, 2), S.NOENT);
    assertEquals(iommu.detach(0x11, 1), S.OK);
    assertEquals(iommu.detach(0x11, 1), S.INVAL, "no longer attached");
    assertEquals(iommu.domain(1)?.size, 1, "one endpoint still attached");
    assertEquals(iommu.detach(0x10, 1), S.OK);
    assertEquals(iommu.domain(1), undefined);
    assertEquals(iommu.attach(0x10, 1), S.OK);
    assertEquals(iommu.domain(1)?.size, 0, "a re-created domain starts empty");
  });
  await t.step("domain ids outside the range are RANGE; bypass mismatch is INVAL", () => {
    const memory = new GuestMemory([{ base: 0, size: PAGE }]);
    const iommu = new Iommu({ memory, domainRange: [1, 10] });
    iommu.addEndpoint(1);
    iommu.addEndpoint(2);
    assertEquals(iommu.attach(1, 11), S.RANGE);
    assertEquals(iommu.attach(1, 5, true), S.OK);
    assertEquals(iommu.attach(2, 5, false), S.INVAL);
    assertEquals(iommu.map(5, 0, PAGE - 1, 0, RW), S.INVAL, "no MAP into a bypass domain");
  });
});

Deno.test("Iommu MAP and UNMAP status rules", async (t) => {
  await t.step(
    "misaligned start, end or phys is RANGE; unknown flags INVAL; no domain NOENT",
    () => {
      const { iommu } = setup();
      iommu.attach(0x10, 1);
      assertEquals(iommu.map(1, 1, PAGE - 1, 0, RW), S.RANGE);
      assertEquals(iommu.map(1, 0, PAGE - 2, 0, RW), S.RANGE);
      assertEquals(iommu.map(1, 0, PAGE - 1, 0x800, RW), S.RANGE);
      assertEquals(iommu.map(1, PAGE, PAGE - 1, 0, RW), S.RANGE, "end before start");
      assertEquals(iommu.map(1, 0, PAGE - 1, 0, 8), S.INVAL);
      assertEquals(iommu.map(9, 0, PAGE - 1, 0, RW), S.NOENT);
      assertEquals(iommu.map(1, 2 ** 53, 2 ** 53 + PAGE - 1, 0, RW), S.RANGE);
    },
  );
  await t.step("an overlap with an existing mapping is INVAL", () => {
    const { iommu } = setup();
    iommu.attach(0x10, 1);
    assertEquals(iommu.map(1, 2 * PAGE, 4 * PAGE - 1, 0, RW), S.OK);
    assertEquals(iommu.map(1, 3 * PAGE, 5 * PAGE - 1, 0, RW), S.INVAL);
    assertEquals(iommu.map(1, PAGE, 3 * PAGE - 1, 0, RW), S.INVAL);
    assertEquals(iommu.map(1, 4 * PAGE, 5 * PAGE - 1, 0, RW), S.OK, "adjacent is fine");
  });
  await t.step("the reserved MSI window cannot be mapped", () => {
    const { iommu } = setup();
    iommu.attach(0x10, 1);
    assertEquals(iommu.map(1, 0xfee0_0000, 0xfee0_0fff, 0, RW), S.INVAL);
    assertEquals(iommu.probe(0x10)?.[0], { start: 0xfee0_0000, end: 0xfeef_ffff, subtype: 1 });
    assertEquals(iommu.probe(0x77), null);
  });
  await t.step("the spec's UNMAP examples", () => {
    const { iommu } = setup();
    iommu.attach(0x10, 1);
    const d = iommu.domain(1)!;
    // Unmap over nothing succeeds.
    assertEquals(iommu.unmap(1, 0, 10 * PAGE - 1), S.OK);
    // map(0-9), unmap(0-4): would split, fails and removes nothing.
    iommu.map(1, 0, 10 * PAGE - 1, 0, RW);
    assertEquals(iommu.unmap(1, 0, 5 * PAGE - 1), S.RANGE);
    assertEquals(d.size, 1);
    assertEquals(iommu.unmap(1, 0, 10 * PAGE - 1), S.OK);
    // map(0-4) + map(5-9), unmap(0-9): both removed.
    iommu.map(1, 0, 5 * PAGE - 1, 0, RW);
    iommu.map(1, 5 * PAGE, 10 * PAGE - 1, 0, RW);
    assertEquals(iommu.unmap(1, 0, 10 * PAGE - 1), S.OK);
    assertEquals(d.size, 0);
    // Ranges may spill over unmapped space.
    iommu.map(1, 4 * PAGE, 5 * PAGE - 1, 0, RW);
    assertEquals(iommu.unmap(1, 0, 100 * PAGE - 1), S.OK);
    assertEquals(d.size, 0);
    assertEquals(iommu.unmap(1, 1, PAGE), S.RANGE, "misaligned unmap");
    assertEquals(iommu.unmap(5, 0, PAGE - 1), S.NOENT);
  });
});

Deno.test("IommuDmaSpace translation", async (t) => {
  await t.step("reads and writes go through the mapping to guest memory", () => {
    const { iommu, ep, memory } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0x4000_0000, 0x4000_1fff, 0x3000, RW);
    ep.write32(0x4000_0ffe, 0xaabbccdd);
    assertEquals(memory.read32(0x3ffe), 0xaabbccdd);
    assertEquals(ep.read16(0x4000_1000), 0xaabb);
    const tr = new DmaTranslation();
    ep.translate(0x4000_1800, 0x2000, DmaAccess.Read, tr);
    assertEquals([tr.offset, tr.length], [0x4800, 0x800], "cut at the mapping's end");
  });
  await t.step("discontiguous pages: copies split, view is null", () => {
    const { iommu, ep, memory } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, PAGE - 1, 0x9000, RW);
    iommu.map(1, PAGE, 2 * PAGE - 1, 0x2000, RW);
    const data = Uint8Array.from({ length: 32 }, (_, i) => i);
    ep.write(PAGE - 16, data);
    assertEquals(memory.read8(0x9000 + PAGE - 16), 0);
    assertEquals(memory.read8(0x2000), 16);
    assertEquals(ep.view(PAGE - 16, 32, DmaAccess.Read), null);
    assertEquals(ep.view(0, 16, DmaAccess.Read)?.length, 16);
  });
  await t.step("permissions follow the MAP flags; faults carry reason and access", () => {
    const { iommu, ep, faults } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, PAGE - 1, 0, F.READ);
    iommu.map(1, PAGE, 2 * PAGE - 1, 0, F.WRITE);
    assertEquals(ep.read8(0), 0);
    const e = assertThrows(() => ep.write8(0, 1), DmaFault);
    assertEquals([e.reason, e.access], ["permission", DmaAccess.Write]);
    ep.write8(PAGE, 1);
    assertThrows(() => ep.read8(PAGE), DmaFault);
    assertThrows(() => ep.read8(5 * PAGE), DmaFault);
    assertEquals(faults, [
      { reason: IommuFaultReason.MAPPING, endpoint: 0x10, address: 0, access: DmaAccess.Write },
      { reason: IommuFaultReason.MAPPING, endpoint: 0x10, address: PAGE, access: DmaAccess.Read },
      { reason: IommuFaultReason.MAPPING, endpoint: 0x10, address: 5 * PAGE, access: 1 },
    ]);
    assertEquals(ep.stats.faults, 3);
  });
  await t.step("a write that faults part-way writes nothing", () => {
    const { iommu, ep, memory } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, PAGE - 1, 0, RW);
    assertThrows(() => ep.write(PAGE - 4, new Uint8Array(8).fill(9)), DmaFault);
    assertEquals(memory.read32(PAGE - 4), 0);
  });
  await t.step("an unattached endpoint faults with DOMAIN, or bypasses when enabled", () => {
    const a = setup();
    assertThrows(() => a.ep.read8(0x100), DmaFault);
    assertEquals(a.faults[0].reason, IommuFaultReason.DOMAIN);
    const b = setup({ bypass: true });
    b.memory.write8(0x100, 5);
    assertEquals(b.ep.read8(0x100), 5);
    b.iommu.attach(0x10, 1);
    assertThrows(() => b.ep.read8(0x100), DmaFault, undefined, "attached: translation applies");
  });
  await t.step("a mapping to a physical hole faults instead of reaching host memory", () => {
    const { iommu, ep } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, PAGE - 1, 0x800000, RW);
    assertThrows(() => ep.read32(0), DmaFault);
  });
});

Deno.test("IommuDmaSpace translation cache", async (t) => {
  await t.step("repeated translations hit the cache", () => {
    const { iommu, ep } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, 16 * PAGE - 1, 0, RW);
    for (let i = 0; i < 100; i++) ep.read32(i * 64);
    assertEquals(ep.stats.misses, 2, "one miss per cache slot touched");
    assertEquals(ep.stats.hits, 98);
  });
  await t.step("UNMAP drops exactly the stale entries and tells listeners", () => {
    const { iommu, ep } = setup();
    const heard: number[][] = [];
    ep.addInvalidationListener((a, l) => heard.push([a, l]));
    iommu.attach(0x10, 1);
    heard.length = 0;
    iommu.map(1, 0, PAGE - 1, 0, RW);
    iommu.map(1, PAGE, 2 * PAGE - 1, PAGE, RW);
    ep.read8(0);
    ep.read8(PAGE);
    const before = ep.stats.invalidations;
    assertEquals(iommu.unmap(1, PAGE, 2 * PAGE - 1), S.OK);
    assertEquals(ep.stats.invalidations - before, 1);
    assertEquals(heard, [[PAGE, PAGE]]);
    ep.read8(0);
    assertThrows(() => ep.read8(PAGE), DmaFault, undefined, "the stale translation is gone");
  });
  await t.step("a failed (split) UNMAP drops nothing", () => {
    const { iommu, ep } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, 2 * PAGE - 1, 0, RW);
    ep.read8(0);
    const heard: number[] = [];
    ep.addInvalidationListener((a) => heard.push(a));
    assertEquals(iommu.unmap(1, 0, PAGE - 1), S.RANGE);
    assertEquals(heard, []);
    assertEquals(ep.read8(PAGE + 5), 0);
  });
  await t.step("DETACH drops every entry", () => {
    const { iommu, ep } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, PAGE - 1, 0, RW);
    ep.read8(0);
    iommu.detach(0x10, 1);
    assertThrows(() => ep.read8(0), DmaFault);
  });
  await t.step("reset removes every domain", () => {
    const { iommu, ep } = setup();
    iommu.attach(0x10, 1);
    iommu.map(1, 0, PAGE - 1, 0, RW);
    iommu.reset();
    assertEquals(iommu.domainCount, 0);
    assertEquals(ep.domain, null);
  });
});

Deno.test("Iommu rejects bad options", () => {
  const memory = new GuestMemory([{ base: 0, size: PAGE }]);
  assertThrows(() => new Iommu({ memory, granule: 3000 }), RangeError);
  assertThrows(() => new Iommu({ memory, inputRange: [10, 0] }), RangeError);
  const iommu = new Iommu({ memory });
  iommu.addEndpoint(1);
  assertThrows(() => iommu.addEndpoint(1), RangeError);
  assertThrows(() => iommu.addEndpoint(-1), RangeError);
});
