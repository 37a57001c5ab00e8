/**
 * The virtqueue round trip with direct DMA and through the IOMMU (ring and
 * buffers mapped once, so every buffer translation is a cache hit): the
 * issue's target is at most 1.3× the direct cost.
 *
 * One iteration = 64 one-descriptor chains: the driver makes them available,
 * the device pops each, reads its 64-byte buffer and pushes it, publishes, and
 * the driver collects the used entries.
 */
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import type { DmaSpace } from "../../src/dma/dma_space.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { Iommu, IommuMapFlag } from "../../src/iommu/mod.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import { SplitQueue } from "../../src/queue/split_queue.ts";

const SIZE = 256;
const BATCH = 64;
const DESC = 0x1000;
const AVAIL = DESC + 16 * SIZE;
const USED = 0x3000;
const BUFFERS = 0x10000;
/** Where the IOMMU maps guest physical 0..1 MiB: device addresses differ from physical ones. */
const IOVA_BASE = 0x4000_0000;

function setup(viaIommu: boolean) {
  const mem = new GuestMemory([{ base: 0, size: 0x100000 }]);
  let dma: DmaSpace = new DirectDmaSpace(mem);
  const base = viaIommu ? IOVA_BASE : 0;
  if (viaIommu) {
    const iommu = new Iommu({ memory: mem });
    dma = iommu.addEndpoint(8);
    iommu.attach(8, 1);
    // Ring pages RW; each buffer page mapped on its own, as a streaming mapping would be.
    iommu.map(1, IOVA_BASE, IOVA_BASE + BUFFERS - 1, 0, IommuMapFlag.READ | IommuMapFlag.WRITE);
    for (let p = BUFFERS; p < BUFFERS + 64 * SIZE; p += 4096) {
      iommu.map(1, IOVA_BASE + p, IOVA_BASE + p + 4095, p, IommuMapFlag.READ);
    }
  }
  const ram = mem.regions[0].data;
  for (let i = 0; i < SIZE; i++) {
    ram.setUint32(DESC + 16 * i, base + BUFFERS + 64 * i, true);
    ram.setUint32(DESC + 16 * i + 8, 64, true);
  }
  const q = new SplitQueue({
    index: 0,
    size: SIZE,
    descAddr: base + DESC,
    driverAddr: base + AVAIL,
    deviceAddr: base + USED,
    eventIdx: true,
    indirect: false,
    inOrder: false,
  }, dma);
  const chain = new DescriptorChain(dma, 8);
  const header = new Uint8Array(64);
  let availIdx = 0;
  let lastUsed = 0;
  return (): number => {
    for (let i = 0; i < BATCH; i++) {
      const slot = (availIdx + i) & (SIZE - 1);
      ram.setUint16(AVAIL + 4 + 2 * slot, slot, true);
    }
    availIdx = (availIdx + BATCH) & 0xffff;
    ram.setUint16(AVAIL + 2, availIdx, true);
    let sum = 0;
    while (q.pop(chain)) {
      chain.reader.read(header);
      sum += header[0];
      q.push(chain.token, 0);
    }
    q.publishUsed();
    const usedIdx = ram.getUint16(USED + 2, true);
    while (lastUsed !== usedIdx) {
      sum += ram.getUint32(USED + 4 + 8 * (lastUsed & (SIZE - 1)), true);
      lastUsed = (lastUsed + 1) & 0xffff;
    }
    return sum;
  };
}

const direct = setup(false);
const viaIommu = setup(true);
const plain = new Uint8Array(64 * BATCH);
const src = new Uint8Array(64 * BATCH);

Deno.bench("baseline: Uint8Array.set of 64 x 64 bytes", { group: "iommu", baseline: true }, () => {
  plain.set(src);
});
Deno.bench("64 round trips reading 64 B, direct DMA", { group: "iommu" }, () => {
  direct();
});
Deno.bench("64 round trips reading 64 B, through the IOMMU", { group: "iommu" }, () => {
  viaIommu();
});
