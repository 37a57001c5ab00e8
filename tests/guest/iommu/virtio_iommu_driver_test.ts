import { assert, assertEquals, assertInstanceOf, assertThrows } from "@std/assert";
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { DmaFault } from "../../../src/dma/dma_fault.ts";
import { Iommu } from "../../../src/iommu/iommu.ts";
import { IommuMapFlag, IommuStatus } from "../../../src/iommu/iommu_status.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { DeviceStatus } from "../../../src/virtio/status.ts";
import { featureMask, VirtioFeature } from "../../../src/virtio/features.ts";
import { PageAllocator } from "../../../src/guest/page_allocator.ts";
import { VirtioDriverError } from "../../../src/guest/virtio/virtio_guest_device.ts";
import { DmaDirect } from "../../../src/guest/dma/dma_direct.ts";
import { DmaIommu, IommuErrno, IommuProt } from "../../../src/guest/dma/dma_iommu.ts";
import {
  VIOMMU_DRIVER_FEATURES,
  VIOMMU_SW_MSI_BASE,
  ViommuEndpoint,
  ViommuFeature,
  ViommuRequestType,
  viommuStatusToErrno,
  VirtioIommuDriver,
} from "../../../src/guest/iommu/virtio_iommu_driver.ts";
import { VirtioIommu } from "../../../devices/iommu/virtio_iommu.ts";
import { LoopbackGuestDevice, makeViommuMachine, settle } from "./viommu_harness.ts";

const E = IommuErrno;
const RW = IommuProt.READ | IommuProt.WRITE;

function endpoint(m: ReturnType<typeof makeViommuMachine>, id: number): ViommuEndpoint {
  const ep = m.viommu.probeDevice(id);
  if (!(ep instanceof ViommuEndpoint)) throw new Error(`probe of ${id} failed: ${ep}`);
  return ep;
}

Deno.test("VirtioIommuDriver.probe", async (t) => {
  await t.step("negotiates the driver's features and reads the config", () => {
    const { viommu, vdev, device } = makeViommuMachine();
    for (const bit of VIOMMU_DRIVER_FEATURES) assert(vdev.hasFeature(bit), `feature ${bit}`);
    assert(!vdev.hasFeature(ViommuFeature.BYPASS));
    assert(vdev.hasFeature(VirtioFeature.VERSION_1));
    assertEquals(viommu.pageSizeMask, 0xffff_ffff_ffff_f000n);
    assertEquals(viommu.pageSizes[0], 4096);
    assertEquals(viommu.pageSizes.at(-1), 2 ** 52, "bits above 52 are not representable");
    assertEquals(viommu.geometry, {
      apertureStart: 0,
      apertureEnd: Number.MAX_SAFE_INTEGER,
      forceAperture: true,
    });
    assertEquals([viommu.firstDomain, viommu.lastDomain], [0, 0xffff_ffff]);
    assertEquals(viommu.probeSize, 512);
    assertEquals(viommu.mapFlags, IommuMapFlag.READ | IommuMapFlag.WRITE | IommuMapFlag.MMIO);
    assert(vdev.getStatus() & DeviceStatus.DRIVER_OK);
    assertEquals(device.stats.requests, 0, "probe sends no request");
  });

  await t.step("fills the event queue with one 24-byte buffer per entry, without a kick", () => {
    const { vdev } = makeViommuMachine();
    assertEquals(vdev.vqs[1].numFree, 0);
    assertEquals(vdev.notifies, []);
  });

  await t.step("without MAP_UNMAP the probe fails with -ENODEV and FAILED", () => {
    const features = VIOMMU_DRIVER_FEATURES.filter((b) => b !== ViommuFeature.MAP_UNMAP);
    const err = assertThrows(() => makeViommuMachine({ driver: { features } }), VirtioDriverError);
    assertEquals(err.errno, -E.ENODEV);
  });

  await t.step("without VERSION_1 the probe fails with -ENODEV", () => {
    const err = assertThrows(
      () => makeViommuMachine({ transportBits: featureMask(VirtioFeature.EVENT_IDX) }),
      VirtioDriverError,
    );
    assertEquals(err.errno, -E.ENODEV);
  });

  await t.step("an empty page_size_mask fails with -EINVAL and frees the queues", () => {
    const memory = new GuestMemory([{ base: 0, size: 4 << 20 }]);
    const pages = new PageAllocator(memory, { base: 0x10_0000, size: 3 << 20 });
    const device = new VirtioIommu(new Iommu({ memory }));
    device.config.fill(0, 0, 8);
    const vdev = new LoopbackGuestDevice(device, { pages }, new DirectDmaSpace(memory));
    const free = pages.freeCount;
    const err = assertThrows(() => VirtioIommuDriver.probe(vdev), VirtioDriverError);
    assertEquals(err.errno, -E.EINVAL);
    assert(vdev.getStatus() & DeviceStatus.FAILED);
    assertEquals(pages.freeCount, free, "rings freed");
  });

  await t.step("optional config fields keep their defaults when not negotiated", () => {
    const { viommu } = makeViommuMachine({
      driver: { features: [ViommuFeature.MAP_UNMAP] },
      iommu: { inputRange: [0x1000, 0xffff_ffff], domainRange: [5, 9] },
    });
    assertEquals(viommu.geometry.apertureEnd, Number.MAX_SAFE_INTEGER);
    assertEquals([viommu.firstDomain, viommu.probeSize], [0, 0]);
    assertEquals(viommu.mapFlags, IommuMapFlag.READ | IommuMapFlag.WRITE, "no MMIO flag");
  });

  await t.step("input and domain ranges are honoured when negotiated", () => {
    const m = makeViommuMachine({
      iommu: { inputRange: [0x1000, 0xffff_ffff], domainRange: [5, 9] },
    });
    assertEquals(m.viommu.geometry.apertureStart, 0x1000);
    assertEquals(m.viommu.geometry.apertureEnd, 0xffff_ffff);
    const d = m.viommu.allocDomain();
    assertEquals(m.viommu.attachDev(d, endpoint(m, 8)), 0);
    assertEquals(d.id, 5, "the first free id of the range");
  });
});

Deno.test("VirtioIommuDriver requests", async (t) => {
  await t.step(
    "PROBE reads RESV_MEM regions; the MSI doorbell makes a software MSI window unnecessary",
    () => {
      const m = makeViommuMachine();
      const ep = endpoint(m, 8);
      assertEquals(m.viommu.stats.probe, 1);
      assertEquals(m.device.stats.requests, 1);
      assertEquals(ep.resvRegions, [{ start: 0xfee0_0000, end: 0xfeef_ffff, type: "msi" }]);
      assertEquals(m.viommu.getResvRegions(ep).length, 1);
      assertEquals(m.viommu.probeDevice(8), ep, "probed once");
      assertEquals(m.viommu.stats.probe, 1);
    },
  );

  await t.step("without an MSI region the driver adds its software MSI window", () => {
    const m = makeViommuMachine({
      iommu: { reservedRegions: [{ start: 0x1000, end: 0x1fff, subtype: 0 }] },
    });
    const ep = endpoint(m, 8);
    assertEquals(ep.resvRegions, [{ start: 0x1000, end: 0x1fff, type: "reserved" }]);
    const all = m.viommu.getResvRegions(ep);
    assertEquals(all[1], {
      start: VIOMMU_SW_MSI_BASE,
      end: VIOMMU_SW_MSI_BASE + 0xfffff,
      type: "sw-msi",
    });
  });

  await t.step("PROBE of an unknown endpoint returns -ENOENT (status NOENT)", () => {
    const m = makeViommuMachine();
    assertEquals(m.viommu.probeDevice(99), -E.ENOENT);
    assertEquals(m.viommu.endpoints.has(99), false);
  });

  await t.step("without F_PROBE no PROBE is sent", () => {
    const m = makeViommuMachine({ driver: { features: [ViommuFeature.MAP_UNMAP] } });
    const ep = endpoint(m, 8);
    assertEquals(ep.resvRegions, []);
    assertEquals(m.device.stats.requests, 0);
  });

  await t.step("ATTACH puts the endpoint in the domain; DETACH takes it out", () => {
    const m = makeViommuMachine();
    const ep = endpoint(m, 8);
    const d = m.viommu.allocDomain();
    assertEquals(m.viommu.attachDev(d, ep), 0);
    assertEquals(m.ep8.domain?.id, d.id);
    assertEquals([d.nrEndpoints, ep.domain], [1, d]);
    assertEquals(m.viommu.detachDev(ep), 0);
    assertEquals(m.ep8.domain, null);
    assertEquals([d.nrEndpoints, ep.domain], [0, null]);
    assertEquals([m.viommu.stats.attach, m.viommu.stats.detach], [1, 1]);
  });

  await t.step("a failed ATTACH returns the status as an errno", () => {
    const m = makeViommuMachine({ driver: { features: [ViommuFeature.MAP_UNMAP] } });
    const ghost = endpoint(m, 77); // no PROBE: the driver cannot know it is unknown
    const d = m.viommu.allocDomain();
    assertEquals(m.viommu.attachDev(d, ghost), -E.ENOENT);
    assertEquals(ghost.domain, null);
  });

  await t.step("MAP and UNMAP are queued, not sent, until a sync point", () => {
    const m = makeViommuMachine();
    const d = m.viommu.allocDomain();
    m.viommu.attachDev(d, endpoint(m, 8));
    const before = m.device.stats.requests;
    assertEquals(d.mapPages(0x10000, 0x3000, 4096, 2, RW), 8192);
    assertEquals(m.viommu.pendingRequests, 1);
    assertEquals(m.device.stats.requests, before, "nothing reached the device");
    assertEquals(m.iommu.domain(d.id)!.size, 0);
    assertEquals(d.iotlbSyncMap(0x10000, 8192), 0);
    assertEquals(m.viommu.pendingRequests, 0);
    assertEquals(m.iommu.domain(d.id)!.starts, [0x10000]);
    assertEquals(m.iommu.domain(d.id)!.flags, [IommuMapFlag.READ | IommuMapFlag.WRITE]);
    assertEquals(d.iovaToPhys(0x11004), 0x4004);
    const gather = { start: 0, end: 0, queued: false };
    assertEquals(d.unmapPages(0x10000, 8192, 1, gather), 8192);
    assertEquals(m.iommu.domain(d.id)!.size, 1, "UNMAP queued");
    d.iotlbSync(gather);
    assertEquals(m.iommu.domain(d.id)!.size, 0);
    assertEquals(d.iovaToPhys(0x11004), null);
  });

  await t.step("a MAP the device refuses is invisible to the driver (counted as unseen)", () => {
    const m = makeViommuMachine();
    const d = m.viommu.allocDomain();
    m.viommu.attachDev(d, endpoint(m, 8));
    d.mapPages(0x10000, 0x3000, 4096, 1, RW);
    assertEquals(d.mapPages(0x10000, 0x5000, 4096, 1, RW), 4096, "overlap accepted by the driver");
    assertEquals(d.iotlbSyncMap(0x10000, 4096), 0);
    assertEquals(m.viommu.stats.unseenErrors, 1);
    assertEquals(m.device.stats.errors, 1);
  });

  await t.step("MAP flags the domain does not allow are refused with -EINVAL", () => {
    const m = makeViommuMachine({
      driver: { features: [ViommuFeature.MAP_UNMAP, ViommuFeature.PROBE] },
    });
    const d = m.viommu.allocDomain();
    m.viommu.attachDev(d, endpoint(m, 8));
    assertEquals(d.mapPages(0x10000, 0x3000, 4096, 1, IommuProt.READ | IommuProt.MMIO), -E.EINVAL);
    assertEquals(d.mappingCount, 0);
  });

  await t.step("unmapping part of one mapping removes nothing and returns 0", () => {
    const m = makeViommuMachine();
    const d = m.viommu.allocDomain();
    m.viommu.attachDev(d, endpoint(m, 8));
    d.mapPages(0x10000, 0x3000, 4096, 4, RW);
    d.iotlbSyncMap(0, 0);
    const gather = { start: 0, end: 0, queued: false };
    assertEquals(d.unmapPages(0x11000, 4096, 1, gather), 0, "starts inside a mapping");
    assertEquals(d.mappingCount, 1);
    // A range that ends inside a mapping removes the whole mapping (no split).
    assertEquals(d.unmapPages(0x10000, 4096, 2, gather), 0x4000);
    d.iotlbSync(gather);
    assertEquals(m.iommu.domain(d.id)!.size, 0);
    // Linux's quirk: a range spilling over unmapped space drops the shadow
    // mapping but reports 0 and sends no UNMAP, so the device keeps it.
    d.mapPages(0x10000, 0x3000, 4096, 4, RW);
    d.iotlbSyncMap(0, 0);
    assertEquals(d.unmapPages(0x10000, 4096, 8, gather), 0);
    assertEquals(d.mappingCount, 0);
    d.iotlbSync(gather);
    assertEquals(m.iommu.domain(d.id)!.size, 1);
  });

  await t.step("mappings are replayed when a domain gets its first endpoint again", () => {
    const m = makeViommuMachine();
    const ep = endpoint(m, 8);
    const d = m.viommu.allocDomain();
    m.viommu.attachDev(d, ep);
    d.mapPages(0x10000, 0x3000, 4096, 1, RW);
    d.mapPages(0x20000, 0x4000, 4096, 1, IommuProt.READ);
    d.iotlbSyncMap(0, 0);
    m.viommu.detachDev(ep);
    assertEquals(m.iommu.domain(d.id), undefined, "the device dropped the domain and its mappings");
    assertEquals(d.mappingCount, 2, "the shadow keeps them");
    const maps = m.viommu.stats.map;
    assertEquals(m.viommu.attachDev(d, ep), 0);
    assertEquals(m.viommu.stats.map, maps + 2, "replayed synchronously");
    assertEquals(m.iommu.domain(d.id)!.starts, [0x10000, 0x20000]);
    m.memory.write32(0x3008, 5);
    assertEquals(m.ep8.read32(0x10008), 5);
  });

  await t.step("maps into a domain without endpoints only update the shadow", () => {
    const m = makeViommuMachine();
    const d = m.viommu.allocDomain();
    const ep = endpoint(m, 16);
    m.viommu.attachDev(d, ep);
    m.viommu.detachDev(ep);
    const requests = m.viommu.stats.requests;
    assertEquals(d.mapPages(0x10000, 0x3000, 4096, 1, RW), 4096);
    assertEquals(d.iotlbSyncMap(0x10000, 4096), 0);
    assertEquals(m.viommu.stats.requests, requests);
  });

  await t.step("moving an endpoint to another domain keeps the old domain's shadow", () => {
    const m = makeViommuMachine();
    const ep = endpoint(m, 8);
    const a = m.viommu.allocDomain();
    const b = m.viommu.allocDomain();
    m.viommu.attachDev(a, ep);
    a.mapPages(0x10000, 0x3000, 4096, 1, RW);
    a.iotlbSyncMap(0, 0);
    assertEquals(m.viommu.attachDev(b, ep), 0);
    assertEquals([a.nrEndpoints, b.nrEndpoints], [0, 1]);
    assertEquals(m.ep8.domain?.id, b.id);
    assertEquals(a.mappingCount, 1);
    m.viommu.freeDomain(a);
    assertEquals(m.viommu.domainCount, 1);
  });

  await t.step("a full request queue is synced before the next request is added", () => {
    const m = makeViommuMachine();
    const d = m.viommu.allocDomain();
    m.viommu.attachDev(d, endpoint(m, 8));
    const kicks = m.viommu.stats.kicks;
    const size = m.vdev.vqs[0].size;
    for (let i = 0; i < size + 10; i++) {
      assertEquals(d.mapPages(0x100000 + i * 4096, 0x3000, 4096, 1, RW), 4096);
    }
    assertEquals(m.viommu.stats.kicks, kicks + 1, "one sync when the queue filled");
    assertEquals(m.viommu.pendingRequests, 10);
    d.iotlbSyncMap(0, 0);
    assertEquals(m.iommu.domain(d.id)!.size, size + 10);
  });

  await t.step("each device status becomes the kernel's errno", () => {
    const table: [number, number][] = [
      [IommuStatus.OK, 0],
      [IommuStatus.IOERR, -E.EIO],
      [IommuStatus.UNSUPP, -E.ENOSYS],
      [IommuStatus.DEVERR, -E.EIO],
      [IommuStatus.INVAL, -E.EINVAL],
      [IommuStatus.RANGE, -E.ERANGE],
      [IommuStatus.NOENT, -E.ENOENT],
      [IommuStatus.FAULT, -E.EFAULT],
      [IommuStatus.NOMEM, -E.ENOMEM],
      [42, -E.EIO],
    ];
    for (const [status, errno] of table) {
      assertEquals(viommuStatusToErrno(status), errno, `${status}`);
    }
  });

  await t.step("synchronous requests return the device's status on the wire", () => {
    const m = makeViommuMachine();
    const d = m.viommu.allocDomain();
    m.viommu.attachDev(d, endpoint(m, 8));
    const misaligned = m.viommu.addMap(d.id, 0x10, 0xfff, 0, IommuMapFlag.READ, true);
    assertEquals(misaligned, -E.ERANGE);
    assertEquals(m.viommu.addMap(d.id + 1, 0, 0xfff, 0, IommuMapFlag.READ, true), -E.ENOENT);
    assertEquals(m.viommu.addMap(d.id, 0, 0xfff, 0, 0x10, true), -E.EINVAL);
    const unknownType = new Uint8Array(12);
    unknownType[0] = 9;
    assertEquals(m.viommu.sendReqSync(unknownType), -E.ENOSYS);
    // Too short for a MAP: the device cannot find the tail and uses 0 bytes.
    const short = new Uint8Array(12);
    short[0] = ViommuRequestType.MAP;
    assertEquals(m.viommu.sendReqSync(short), -E.EIO);
    assertEquals(m.viommu.sendReqSync(new Uint8Array(4)), -E.EINVAL, "no room for a tail");
  });

  await t.step("a device that never answers makes the sync give up; a later sync completes", () => {
    const m = makeViommuMachine();
    const ep = endpoint(m, 8);
    const d = m.viommu.allocDomain();
    m.vdev.hold = true;
    assertEquals(m.viommu.attachDev(d, ep), -E.ETIMEDOUT);
    assertEquals(m.viommu.stats.timeouts, 1);
    assertEquals(m.viommu.pendingRequests, 1);
    m.vdev.release();
    assertEquals(m.viommu.syncReq(), 0);
    assertEquals(m.viommu.pendingRequests, 0);
    assertEquals(m.ep8.domain?.id, d.id, "the device did attach, late");
  });

  await t.step("an identity domain uses ATTACH_F_BYPASS when BYPASS_CONFIG is negotiated", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { domainType: "identity" });
    assertInstanceOf(dma, DmaDirect);
    assertEquals(m.iommu.domain(0)!.bypass, true);
    m.memory.write32(0x5000, 0x1234);
    assertEquals(m.ep8.read32(dma.mapPage(0x5000, 4, 1)), 0x1234);
  });

  await t.step(
    "without BYPASS_CONFIG an identity domain is mapped 1:1 around reserved regions",
    () => {
      const features = VIOMMU_DRIVER_FEATURES.filter((b) => b !== ViommuFeature.BYPASS_CONFIG);
      const m = makeViommuMachine({ driver: { features } });
      m.viommu.setupDma(8, { domainType: "identity" });
      const dom = m.iommu.domain(0)!;
      assertEquals(dom.bypass, false);
      assertEquals(dom.starts, [0, 0xfef0_0000]);
      assertEquals(dom.ends, [0xfedf_ffff, Number.MAX_SAFE_INTEGER]);
      m.memory.write32(0x5000, 0x4321);
      assertEquals(m.ep8.read32(0x5000), 0x4321);
    },
  );

  await t.step("setupDma returns dma-iommu with the reserved regions out of the IOVA space", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, {
      reservedRegions: [{ start: 0xc000_0000, end: 0xc0ff_ffff }],
    });
    assertInstanceOf(dma, DmaIommu);
    assertEquals(dma.iovad.ranges(), [
      { pfnLo: 0xc0000, pfnHi: 0xc0fff },
      { pfnLo: 0xfee00, pfnHi: 0xfeeff },
    ]);
    const err = assertThrows(() => m.viommu.setupDma(99), VirtioDriverError);
    assertEquals(err.errno, -E.ENOENT);
  });

  await t.step("remove() resets the device", () => {
    const m = makeViommuMachine();
    m.viommu.setupDma(8);
    m.viommu.remove();
    assertEquals(m.vdev.getStatus(), 0);
    assertEquals(m.iommu.domainCount, 0);
    assertEquals(m.viommu.syncReq(), -E.EIO);
  });
});

Deno.test("VirtioIommuDriver fault events", async (t) => {
  await t.step("a DMA from an unattached endpoint arrives as a DOMAIN fault event", async () => {
    const m = makeViommuMachine();
    assertThrows(() => m.ep16.read32(0x4000), DmaFault);
    await settle();
    assertEquals(m.viommu.faults, [{ reason: 1, flags: 0x101, endpoint: 16, address: 0x4000 }]);
    assert(m.viommu.log.at(-1)!.includes("domain fault from EP 16 at 0x4000 [R]"));
    assertEquals(m.vdev.vqs[1].numFree, 0, "the buffer went back to the device");
  });

  await t.step("a write through a read-only mapping arrives as a MAPPING fault", async () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const iova = dma.mapPage(0x6000, 64, 1); // TO_DEVICE: READ only
    assertThrows(() => m.ep8.write32(iova, 1), DmaFault);
    await settle();
    assertEquals(m.viommu.faults.at(-1), { reason: 2, flags: 0x102, endpoint: 8, address: iova });
    assertEquals(m.viommu.stats.faultEvents, 1);
  });

  await t.step("events with reserved bits set are ignored; the fault list is bounded", async () => {
    const m = makeViommuMachine();
    for (let i = 0; i < 100; i++) {
      assertThrows(() => m.ep16.read8(i * 4096), DmaFault);
      await settle();
    }
    assertEquals(m.viommu.stats.faultEvents, 100);
    assertEquals(m.viommu.faults.length, 64);
    assertEquals(m.viommu.faults.at(-1)!.address, 99 * 4096);
  });
});
