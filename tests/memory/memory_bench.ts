/**
 * Guest memory views and accessors, next to a plain `Uint8Array.set` copy of
 * the same bytes: the floor every data path is compared to.
 */
import { GuestMemory } from "../../src/memory/mod.ts";
import { DirectDmaSpace, DmaAccess, DmaTranslation } from "../../src/dma/mod.ts";

const SIZE = 1 << 24;
const mem = new GuestMemory([{ base: 0, size: SIZE }, { base: 0x1_0000_0000, size: 1 << 20 }]);
const dma = new DirectDmaSpace(mem);
const plain = new Uint8Array(SIZE);
const frame = new Uint8Array(1500).fill(0x5a);
const page = new Uint8Array(4096);
const t = new DmaTranslation();
let sink = 0;

Deno.bench(
  "baseline: Uint8Array.set of 1500 bytes",
  { group: "copy 1500 B", baseline: true },
  () => {
    plain.set(frame, 0x2000);
  },
);
Deno.bench("GuestMemory.write of 1500 bytes", { group: "copy 1500 B" }, () => {
  mem.write(0x2000, frame);
});
Deno.bench("DirectDmaSpace.write of 1500 bytes", { group: "copy 1500 B" }, () => {
  dma.write(0x2000, frame);
});
Deno.bench("DirectDmaSpace.translate + set of 1500 bytes", { group: "copy 1500 B" }, () => {
  dma.translate(0x2000, 1500, DmaAccess.Write, t);
  t.bytes.set(frame, t.offset);
});

Deno.bench(
  "baseline: Uint8Array.set of 4096 bytes",
  { group: "copy 4 KiB", baseline: true },
  () => {
    page.set(plain.subarray(0x4000, 0x5000));
  },
);
Deno.bench("GuestMemory.read of 4096 bytes", { group: "copy 4 KiB" }, () => {
  mem.read(0x4000, page);
});
Deno.bench("GuestMemory.view + set of 4096 bytes", { group: "copy 4 KiB" }, () => {
  page.set(mem.view(0x4000, 4096));
});

Deno.bench("1000 read32 from a plain DataView", { group: "read32 x1000", baseline: true }, () => {
  const dv = mem.regions[0].data;
  for (let i = 0; i < 4000; i += 4) sink += dv.getUint32(i, true);
});
Deno.bench("1000 GuestMemory.read32", { group: "read32 x1000" }, () => {
  for (let i = 0; i < 4000; i += 4) sink += mem.read32(i);
});
Deno.bench("1000 GuestMemory.read32 alternating two regions", { group: "read32 x1000" }, () => {
  for (let i = 0; i < 4000; i += 8) sink += mem.read32(i) + mem.read32(0x1_0000_0000 + i);
});
Deno.bench("1000 DirectDmaSpace.read32", { group: "read32 x1000" }, () => {
  for (let i = 0; i < 4000; i += 4) sink += dma.read32(i);
});
Deno.bench("1000 GuestMemory.read64", { group: "read32 x1000" }, () => {
  for (let i = 0; i < 8000; i += 8) sink += mem.read64(i);
});

globalThis.addEventListener("unload", () => {
  if (sink === -1) console.log(sink);
});
