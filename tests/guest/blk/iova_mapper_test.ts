/**
 * The IOVA request mapper on a whole machine: a virtio-iommu on virtio-pci
 * (slot 1) and a virtio-blk on virtio-pci (slot 2) behind it, driven by the
 * guest VirtioIommuDriver and VirtioBlkDriver.
 */
import { assert, assertEquals } from "@std/assert";
import { createMachine, type Machine } from "../../../src/machine.ts";
import { Iommu } from "../../../src/iommu/iommu.ts";
import type { IommuDmaSpace } from "../../../src/iommu/iommu_dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { DeferredDmaApi } from "../../../src/guest/dma/deferred_dma.ts";
import type { DmaIommu } from "../../../src/guest/dma/dma_iommu.ts";
import { DmaDirection } from "../../../src/guest/dma/dma_api.ts";
import { VirtioIommuDriver } from "../../../src/guest/iommu/virtio_iommu_driver.ts";
import { VirtioBlkDriver } from "../../../src/guest/blk/virtio_blk_driver.ts";
import { IovaRequestMapper } from "../../../src/guest/blk/iova_request_mapper.ts";
import { DmaApiRequestMapper } from "../../../src/guest/blk/request_mapper.ts";
import { VIRTIO_BLK_S, VIRTIO_BLK_T } from "../../../src/guest/blk/virtio_blk_uapi.ts";
import { VirtioFeature } from "../../../src/virtio/features.ts";
import { VirtioIommu } from "../../../devices/iommu/virtio_iommu.ts";
import { VirtioBlk } from "../../../devices/blk/device.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { pattern } from "./helpers/blk_machine.ts";

const ENDPOINT = 2 << 3; // the blk device's requester id: bus 0, slot 2

interface Rig {
  machine: Machine;
  device: VirtioBlk;
  backend: MemoryBackend;
  driver: VirtioBlkDriver;
  mapper: IovaRequestMapper;
  viommu: VirtioIommuDriver | null;
  dma: DmaIommu | null;
  endpoint: IommuDmaSpace | null;
}

/** virtio-iommu + virtio-blk behind it (or the blk device alone), the IOVA mapper in the driver. */
function rig(
  options: {
    iommu?: boolean;
    headerInRange?: boolean;
    strict?: boolean;
    sizeMax?: number;
    /** Offer indirect descriptors (default true); each indirect table is one more streaming mapping. */
    indirect?: boolean;
    /** Give the driver a plain streaming mapper instead (for comparison). */
    streaming?: boolean;
  } = {},
): Rig {
  const ring = { packed: false, eventIdx: true, indirect: options.indirect ?? true };
  const backend = new MemoryBackend(4 << 20);
  const device = new VirtioBlk({ backend, sizeMax: options.sizeMax });
  if (options.iommu === false) {
    const machine = createMachine({
      memorySize: 32 << 20,
      devices: [{ device, transport: "pci" }],
    });
    const guest = machine.guest(0);
    const mapper = new IovaRequestMapper(guest.dma!);
    const driver = VirtioBlkDriver.probe(guest, { mapper });
    return { machine, device, backend, driver, mapper, viommu: null, dma: null, endpoint: null };
  }
  const memory = new GuestMemory([{ base: 0, size: 32 << 20 }]);
  const iommu = new Iommu({ memory });
  const endpoint = iommu.addEndpoint(ENDPOINT);
  const deferred = new DeferredDmaApi();
  const machine = createMachine({
    memory,
    devices: [
      { device: new VirtioIommu(iommu), transport: "pci" },
      { device, transport: "pci", ring },
    ],
    iommu: {
      deviceDma: (i) => (i === 1 ? endpoint : undefined),
      guestDma: (i) => (i === 1 ? deferred : undefined),
    },
  });
  const viommu = VirtioIommuDriver.probe(machine.guest(0));
  const dma = viommu.setupDma(ENDPOINT, { name: "blk", strict: options.strict });
  deferred.target = dma;
  const guest = machine.guest(1);
  const mapper = new IovaRequestMapper(guest.dma!, {
    headerInRange: options.headerInRange,
    maxSegmentSize: options.sizeMax,
  });
  const driver = VirtioBlkDriver.probe(guest, {
    mapper: options.streaming ? new DmaApiRequestMapper(guest.dma!) : mapper,
  });
  assert(driver.hasFeature(VirtioFeature.ACCESS_PLATFORM));
  return { machine, device, backend, driver, mapper, viommu, dma, endpoint };
}

/** Request counters of the virtio-iommu driver. */
function counts(v: VirtioIommuDriver): { map: number; unmap: number; kicks: number } {
  return { map: v.stats.map, unmap: v.stats.unmap, kicks: v.stats.kicks };
}

Deno.test("IovaRequestMapper behind virtio-iommu on virtio-pci", async (t) => {
  await t.step(
    "multi-segment writes and reads are correct, one IOVA range per request",
    async () => {
      const r = rig();
      const data = pattern(256 * 1024, 7); // 4 segments of 64 KiB in one request
      await r.driver.write(64, data);
      assertEquals(r.backend.bytes.subarray(64 * 512, 64 * 512 + data.length), data);
      assertEquals(await r.driver.read(64, data.length), data);
      assertEquals(r.mapper.stats.iovaRequests, 2);
      assertEquals(r.mapper.stats.links, 2 * (4 + 1), "4 data segments + the header granule");
      assertEquals(r.mapper.stats.syncs, 2);
      assertEquals(r.mapper.stats.destroys, 2);
      assertEquals(r.mapper.live, 0);
      assertEquals(r.mapper.fallback.live, 0);
      assertEquals(r.device.stats.dataDmaFaults, 0);
      assertEquals(r.dma!.warnings, []);
    },
  );

  await t.step("virtio-iommu requests: one sync and one destroy per request", async () => {
    const n = 8;
    const run = async (indirect: boolean) => {
      const r = rig({ indirect });
      const v = r.viommu!;
      await r.driver.read(0, 4096); // warm up
      const before = counts(v);
      const dmaBefore = r.dma!.stats.iovaAllocs;
      for (let i = 0; i < n; i++) await r.driver.read(8 * i, 128 * 1024);
      const after = counts(v);
      assertEquals(r.dma!.stats.iovaAllocs - dmaBefore, n, "one IOVA reservation per request");
      assertEquals(r.mapper.stats.fallbackNoIova + r.mapper.stats.fallbackUnaligned, 0);
      return {
        map: (after.map - before.map) / n,
        unmap: (after.unmap - before.unmap) / n,
        kicks: (after.kicks - before.kicks) / n,
      };
    };
    // Without indirect descriptors: 2 MAPs for the two 64 KiB data segments
    // and 1 for the header granule, all sent by the one sync kick; the
    // destroy unmaps the 132 KiB range as 128 KiB + 4 KiB (virtio-iommu
    // takes any power-of-two page size; the core splits by page size, as
    // Linux's __iommu_unmap does), sent by one kick.
    assertEquals(await run(false), { map: 3, unmap: 2, kicks: 2 });
    // With them, the virtqueue streams each indirect table: 1 MAP, 1 UNMAP, 2 kicks more.
    assertEquals(await run(true), { map: 4, unmap: 3, kicks: 4 });
  });

  await t.step(
    "streaming every buffer instead costs a MAP, an UNMAP and two kicks each",
    async () => {
      const r = rig({ indirect: false, streaming: true });
      const streaming = r.driver.mapper as DmaApiRequestMapper;
      const driver = r.driver;
      const v = r.viommu!;
      const before = counts(v);
      const n = 4;
      for (let i = 0; i < n; i++) await driver.read(8 * i, 128 * 1024);
      const after = counts(v);
      // Header, two data segments, status: 4 streaming mappings per request.
      assertEquals((after.map - before.map) / n, 4);
      assertEquals((after.unmap - before.unmap) / n, 4);
      assertEquals((after.kicks - before.kicks) / n, 8);
      assertEquals(streaming.live, 0);
    },
  );

  await t.step("streamed header and status: still one range for the data", async () => {
    const r = rig({ headerInRange: false, indirect: false });
    const v = r.viommu!;
    const data = pattern(128 * 1024, 3);
    const before = counts(v);
    await r.driver.write(0, data);
    const after = counts(v);
    assertEquals(after.unmap - before.unmap, 3, "the data range, the header and the status");
    assertEquals(await r.driver.read(0, data.length), data);
    assertEquals(r.mapper.fallback.live, 0);
    assertEquals(r.mapper.live, 0);
  });

  await t.step("lazy invalidation defers the UNMAP to the flush queue", async () => {
    const r = rig({ strict: false });
    const data = pattern(64 * 1024, 5);
    await r.driver.write(0, data);
    assertEquals(await r.driver.read(0, data.length), data);
    assertEquals(r.mapper.stats.iovaRequests, 2);
    r.dma!.flushQueue();
    assertEquals(r.dma!.warnings, []);
  });

  await t.step("size_max splits the range into descriptors of one mapping", async () => {
    const r = rig({ sizeMax: 16 * 1024 });
    const data = pattern(64 * 1024, 9);
    await r.driver.write(0, data);
    assertEquals(await r.driver.read(0, data.length), data);
    assertEquals(r.mapper.stats.iovaRequests, 2);
    assertEquals(r.device.stats.dataDmaFaults, 0);
  });

  await t.step("flush and GET_ID work; a flush has no data and is streamed", async () => {
    const r = rig();
    await r.driver.write(0, pattern(4096, 1));
    await r.driver.flush();
    assertEquals(typeof await r.driver.getId(), "string");
    assertEquals(r.mapper.stats.fallbackNoData, 1);
    assertEquals(r.mapper.fallback.live, 0);
  });

  await t.step(
    "a first segment starting mid-granule is fine when the gaps are aligned",
    async () => {
      const r = rig();
      const pages = r.machine.pages;
      const a = pages.allocPagesExact(8192)!;
      const b = pages.allocPagesExact(4096)!;
      r.backend.bytes.set(pattern(8192, 11), 0);
      // 3584 bytes from a+512 end at a+4096 (aligned), then a whole page at b.
      const c = await r.driver.submit({
        type: VIRTIO_BLK_T.IN,
        sector: 0,
        data: [{ addr: a + 512, length: 3584 }, { addr: b, length: 4096 }],
      });
      assertEquals(c.status, VIRTIO_BLK_S.OK);
      const got = new Uint8Array(7680);
      r.machine.memory.read(a + 512, got.subarray(0, 3584));
      r.machine.memory.read(b, got.subarray(3584));
      assertEquals(got, pattern(8192, 11).subarray(0, 7680));
      assertEquals(r.mapper.stats.iovaRequests, 1);
      assertEquals(r.mapper.stats.fallbackUnaligned, 0);
    },
  );

  await t.step("segments whose gaps are not granule aligned fall back to streaming", async () => {
    const r = rig({ indirect: false });
    const v = r.viommu!;
    const pages = r.machine.pages;
    const a = pages.allocPagesExact(8192)!;
    const b = pages.allocPagesExact(4096)!;
    const disk = pattern(8192, 13);
    r.backend.bytes.set(disk, 0);
    const before = counts(v);
    // The first segment ends mid-granule (a+1536): not linkable into one range.
    const c = await r.driver.submit({
      type: VIRTIO_BLK_T.IN,
      sector: 0,
      data: [{ addr: a + 512, length: 1024 }, { addr: b + 512, length: 512 }],
      dataDirection: DmaDirection.FROM_DEVICE,
    });
    assertEquals(c.status, VIRTIO_BLK_S.OK);
    const got = new Uint8Array(1536);
    r.machine.memory.read(a + 512, got.subarray(0, 1024));
    r.machine.memory.read(b + 512, got.subarray(1024));
    assertEquals(got, disk.subarray(0, 1536));
    assertEquals(r.mapper.stats.fallbackUnaligned, 1);
    assertEquals(r.mapper.stats.iovaRequests, 0);
    const after = counts(v);
    assertEquals(after.unmap - before.unmap, 4, "header, two segments and status, each streamed");
    assertEquals(r.mapper.fallback.live, 0);
  });
});

Deno.test("IovaRequestMapper without an IOMMU falls back to streaming (dma-direct)", async () => {
  const r = rig({ iommu: false });
  const data = pattern(192 * 1024, 21);
  await r.driver.write(8, data);
  assertEquals(await r.driver.read(8, data.length), data);
  await r.driver.flush();
  assertEquals(r.mapper.stats.iovaRequests, 0);
  assertEquals(r.mapper.stats.fallbackNoIova, 2);
  assertEquals(r.mapper.fallback.live, 0);
  assertEquals(r.device.stats.dataDmaFaults, 0);
});
