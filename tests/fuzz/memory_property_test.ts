import fc from "fast-check";
import { GuestMemory, MemoryFault } from "../../src/memory/mod.ts";
import { DirectDmaSpace, DmaAccess, DmaFault, DmaTranslation } from "../../src/dma/mod.ts";
import { fuzzRuns, fuzzSeed } from "./fuzz_config.ts";

const mem = new GuestMemory([
  { base: 0x1000, size: 0x4000 },
  { base: 0x5000, size: 0x1000, shared: true },
  { base: 0x100000, size: 0x2000 },
]);
const dma = new DirectDmaSpace(mem);
const t = new DmaTranslation();

/** Addresses near region edges, anywhere, and not valid at all. */
const address = fc.oneof(
  fc.integer({ min: 0, max: 0x110000 }),
  fc.constantFrom(0xfff, 0x1000, 0x4fff, 0x5000, 0x5ffc, 0x6000, 0x101ff8, 0x102000),
  fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  fc.double(),
  fc.constantFrom(-1, 2 ** 53, 2 ** 64, NaN, Infinity, -Infinity, -0),
);
const length = fc.oneof(
  fc.integer({ min: 0, max: 0x3000 }),
  fc.constantFrom(-1, 0.5, NaN, 2 ** 53, Infinity),
);

function only(kind: typeof MemoryFault | typeof DmaFault, f: () => unknown): boolean {
  try {
    f();
  } catch (e) {
    if (!(e instanceof kind)) throw e;
  }
  return true;
}

Deno.test("GuestMemory throws nothing but MemoryFault for any address and length", () => {
  fc.assert(
    fc.property(address, length, fc.integer({ min: 0, max: 8 }), (a, len, op) => {
      return only(MemoryFault, () => {
        switch (op) {
          case 0:
            return mem.view(a, len);
          case 1:
            return mem.read8(a) + mem.read16(a) + mem.read32(a) + mem.read64(a);
          case 2:
            mem.write8(a, 1), mem.write16(a, 2), mem.write32(a, 3), mem.write64(a, 4);
            return;
          case 3:
            return mem.read(a, new Uint8Array(Number.isSafeInteger(len) && len >= 0 ? len : 1));
          case 4:
            return mem.write(a, new Uint8Array(Number.isSafeInteger(len) && len >= 0 ? len : 1));
          case 5:
            return mem.fill(a, len, 0);
          case 6:
            return mem.readBigUint64(a);
          case 7:
            return mem.isRam(a, len);
          default:
            return mem.regionOf(a, len);
        }
      });
    }),
    { seed: fuzzSeed(), numRuns: fuzzRuns(2000) },
  );
});

Deno.test("DirectDmaSpace throws nothing but DmaFault for any address and length", () => {
  fc.assert(
    fc.property(address, length, fc.integer({ min: 0, max: 6 }), (a, len, op) => {
      return only(DmaFault, () => {
        const size = Number.isSafeInteger(len) && len >= 0 ? len : 1;
        switch (op) {
          case 0:
            return dma.view(a, len, DmaAccess.Read);
          case 1:
            return dma.translate(a, len, DmaAccess.Write, t);
          case 2:
            return dma.read8(a) + dma.read16(a) + dma.read32(a) + dma.read64(a);
          case 3:
            dma.write8(a, 1), dma.write16(a, 2), dma.write32(a, 3);
            return;
          case 4:
            return dma.read(a, new Uint8Array(size));
          case 5:
            return dma.write(a, new Uint8Array(size));
          default:
            return dma.fill(a, len, 0);
        }
      });
    }),
    { seed: fuzzSeed(), numRuns: fuzzRuns(2000) },
  );
});
