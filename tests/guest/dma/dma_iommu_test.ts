import { assert, assertEquals, assertInstanceOf, assertThrows } from "@std/assert";
import { DmaFault } from "../../../src/dma/dma_fault.ts";
import {
  DMA_MAPPING_ERROR,
  DMA_SIZE_MAX,
  DmaDirection,
  Errno,
} from "../../../src/guest/dma/dma_api.ts";
import {
  DMA_ATTR_MMIO,
  dmaInfoToProt,
  DmaIommu,
  IommuErrno,
  iommuMapNosync,
  type IommuPagingDomain,
  iommuPgsize,
  IommuProt,
  iommuUnmap,
  type IotlbGather,
} from "../../../src/guest/dma/dma_iommu.ts";
import { IommuMapFlag } from "../../../src/iommu/iommu_status.ts";
import { EchoDevice } from "../../helpers/echo_device.ts";
import {
  behindIommu,
  makeViommuMachine,
  settle,
  type ViommuMachine,
} from "../iommu/viommu_harness.ts";
import { iovaLink, iovaSync, iovaTryAlloc, newIovaState } from "../../../src/guest/dma/iova_api.ts";

const TO = DmaDirection.TO_DEVICE;
const FROM = DmaDirection.FROM_DEVICE;
const BI = DmaDirection.BIDIRECTIONAL;

/** Requests the device processed and kicks the driver made so far. */
function counts(
  m: ViommuMachine,
): { requests: number; kicks: number; maps: number; unmaps: number } {
  return {
    requests: m.device.stats.requests,
    kicks: m.viommu.stats.kicks,
    maps: m.viommu.stats.map,
    unmaps: m.viommu.stats.unmap,
  };
}

function delta(m: ViommuMachine, before: ReturnType<typeof counts>): ReturnType<typeof counts> {
  const now = counts(m);
  return {
    requests: now.requests - before.requests,
    kicks: now.kicks - before.kicks,
    maps: now.maps - before.maps,
    unmaps: now.unmaps - before.unmaps,
  };
}

Deno.test("DmaIommu streaming mappings", async (t) => {
  await t.step("mapPage: an IOVA just under 4 GiB plus the offset, one MAP, one kick", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const before = counts(m);
    const iova = dma.mapPage(0x12345, 100, TO);
    assertEquals(iova, 0xffff_f345);
    assertEquals(delta(m, before), { requests: 1, kicks: 1, maps: 1, unmaps: 0 });
    m.memory.write32(0x12348, 0xcafe);
    assertEquals(m.ep8.read32(iova + 3), 0xcafe);
    assertEquals(dma.stats.maps, 1);
  });

  await t.step("directions become MAP permissions", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const to = dma.mapPage(0x10000, 64, TO);
    const from = dma.mapPage(0x11000, 64, FROM);
    const bi = dma.mapPage(0x12000, 64, BI);
    const dom = m.iommu.domain(0)!;
    const flagsAt = (iova: number) => dom.flags[dom.find(iova)];
    assertEquals(flagsAt(to), IommuMapFlag.READ);
    assertEquals(flagsAt(from), IommuMapFlag.WRITE);
    assertEquals(flagsAt(bi), IommuMapFlag.READ | IommuMapFlag.WRITE);
    m.ep8.read32(to);
    assertEquals(assertThrows(() => m.ep8.write32(to, 1), DmaFault).reason, "permission");
    m.ep8.write32(from, 1);
    assertEquals(assertThrows(() => m.ep8.read32(from), DmaFault).reason, "permission");
    m.ep8.write32(bi, 7);
    assertEquals(m.ep8.read32(bi), 7);
  });

  await t.step("a buffer crossing a granule maps both granules at a size-aligned IOVA", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    dma.mapPage(0x20000, 1, TO);
    const iova = dma.mapPage(0x12f00, 0x200, BI);
    assertEquals(iova % 0x2000, 0xf00, "two granules: 8 KiB aligned, offset kept");
    assertEquals(dma.iovad.findIova((iova - 0xf00) / 4096), {
      pfnLo: (iova - 0xf00) / 4096,
      pfnHi: (iova - 0xf00) / 4096 + 1,
    });
    m.memory.write8(0x13050, 9);
    assertEquals(m.ep8.read8(iova + 0x150), 9);
  });

  await t.step("strict unmapPage: UNMAP and a kick before the IOVA is freed; reused LIFO", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const iova = dma.mapPage(0x12000, 4096, TO);
    const before = counts(m);
    dma.unmapPage(iova, 4096, TO);
    assertEquals(delta(m, before), { requests: 1, kicks: 1, maps: 0, unmaps: 1 });
    assertThrows(() => m.ep8.read32(iova), DmaFault);
    assertEquals(dma.iovad.cachedPfns(1), [iova / 4096]);
    assertEquals(dma.mapPage(0x30000, 10, FROM), iova, "the freed IOVA comes back first");
  });

  await t.step("unmapping what is not mapped is a WARN and sends nothing", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const iova = dma.mapPage(0x12000, 64, TO);
    dma.unmapPage(iova, 64, TO);
    const before = counts(m);
    dma.unmapPage(iova, 64, TO);
    assertEquals(delta(m, before), { requests: 0, kicks: 0, maps: 0, unmaps: 0 });
    assert(dma.warnings.at(-1)!.includes("nothing is mapped there"));
  });

  await t.step("unmapping with another size is a WARN", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const iova = dma.mapPage(0x12000, 64, TO);
    dma.unmapPage(iova, 32, TO);
    assert(dma.warnings.at(-1)!.includes("64 bytes were mapped"));
  });

  await t.step("the DMA mask bounds IOVAs; running out is DMA_MAPPING_ERROR", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { mask: 0x7fff });
    const got = Array.from({ length: 7 }, (_, i) => dma.mapPage(0x10000 + i * 4096, 4096, TO));
    assertEquals(got, [7, 6, 5, 4, 3, 2, 1].map((p) => p * 4096), "never IOVA 0");
    const fail = dma.mapPage(0x20000, 4096, TO);
    assertEquals(fail, DMA_MAPPING_ERROR);
    assertEquals(dma.mappingError(fail), -Errno.ENOMEM);
    assertEquals(dma.mappingError(got[0]), 0);
    assertEquals(dma.stats.mapErrors, 1);
  });

  await t.step("a PCI device gets 32-bit IOVAs until they run out once, then the full mask", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    assert(dma.pci32BitWorkaround);
    // 2 GiB cannot fit below 4 GiB: the top half holds the MSI window and IOVA 0 is never used.
    const big = dma.mapPage(0, 2 ** 31, BI);
    assertEquals(big, 2 ** 53 - 2 ** 31);
    assertEquals(dma.pci32BitWorkaround, false);
    assertEquals(dma.log, ["endpoint 8: Using 53-bit DMA addresses"]);
    const small = dma.mapPage(0x12000, 64, TO);
    assert(small > 2 ** 32, "permanently above 4 GiB");
    const forced = m.viommu.setupDma(16, { forceDac: true });
    assert(forced.mapPage(0x12000, 64, TO) > 2 ** 32);
    assertEquals(forced.log, []);
  });

  await t.step("a non-PCI device allocates from its full mask at once", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { pci: false, mask: 2 ** 40 - 1 });
    assertEquals(dma.mapPage(0x12000, 64, TO), 2 ** 40 - 4096);
  });

  await t.step("the endpoint's MSI window is reserved in the allocator", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { mask: 0xfeef_ffff });
    assertEquals(dma.iovad.findIova(0xfee00), { pfnLo: 0xfee00, pfnHi: 0xfeeff });
    assertEquals(dma.mapPage(0x12000, 64, TO), 0xfedf_f000, "the first IOVA below the window");
  });

  await t.step(
    "bad arguments: RangeError for direction and size, an error for 0 bytes or MMIO",
    () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8);
      assertThrows(() => dma.mapPage(0x1000, 4, DmaDirection.NONE), RangeError);
      assertThrows(() => dma.mapPage(0x1000, -1, TO), RangeError);
      assertThrows(() => dma.unmapPage(0x1000, 4, 7 as DmaDirection), RangeError);
      assertEquals(dma.mapPage(0x1000, 0, TO), DMA_MAPPING_ERROR);
      assertEquals(dma.mapPage(0x1000, 4, TO, DMA_ATTR_MMIO), DMA_MAPPING_ERROR);
      assertEquals(dma.mapPage(-5, 4, TO), DMA_MAPPING_ERROR);
      assertEquals(dma.warnings.length, 2);
    },
  );

  await t.step("mapSingle and the constant answers of the API", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const iova = dma.mapSingle(0x12000, 64, TO);
    dma.syncSingleForCpu(iova, 64, TO);
    dma.syncSingleForDevice(iova, 64, TO);
    assertEquals(dma.needSync(iova), false);
    assertEquals(dma.needUnmap(), true);
    assertEquals(dma.maxMappingSize(), DMA_SIZE_MAX);
    assertEquals(dma.optMappingSize(), 128 * 1024);
    assertEquals(dma.getMergeBoundary(), 4095);
    dma.unmapSingle(iova, 64, TO);
    assertEquals(dma.stats.unmaps, 1);
  });
});

Deno.test("DmaIommu coherent memory", async (t) => {
  await t.step("allocCoherent maps zeroed pages both ways; freeCoherent unmaps and frees", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const ring = dma.allocCoherent(5000)!;
    assertEquals(m.pages.allocationPages(ring.cpuAddr), 2);
    assertEquals(ring.dmaAddr % 0x2000, 0);
    assertEquals(m.memory.read32(ring.cpuAddr + 4996), 0);
    m.ep8.write32(ring.dmaAddr + 4096, 0x55aa);
    assertEquals(m.memory.read32(ring.cpuAddr + 4096), 0x55aa);
    const dom = m.iommu.domain(0)!;
    assertEquals(dom.flags[dom.find(ring.dmaAddr)], IommuMapFlag.READ | IommuMapFlag.WRITE);
    dma.freeCoherent(5000, ring.cpuAddr, ring.dmaAddr);
    assertEquals(m.pages.allocationPages(ring.cpuAddr), 0);
    assertThrows(() => m.ep8.read32(ring.dmaAddr), DmaFault);
  });

  await t.step("the coherent mask bounds coherent IOVAs", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { coherentMask: 0xff_ffff });
    const ring = dma.allocCoherent(4096)!;
    assertEquals(ring.dmaAddr, 0xfff000, "top-down from the coherent mask");
    // Streaming maps use the full mask but, like Linux, continue below the
    // last allocation under 4 GiB (one cached search position for both).
    assertEquals(dma.mapPage(0x12000, 4, TO), 0xffe000);
  });

  await t.step("out of pages or IOVA is null, with nothing leaked", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { coherentMask: 0x1fff });
    assert(dma.allocCoherent(4096) !== null);
    const free = m.pages.freeCount;
    assertEquals(dma.allocCoherent(4096), null, "IOVA exhausted");
    assertEquals(m.pages.freeCount, free);
    assertEquals(dma.allocCoherent(64 << 20), null, "pages exhausted");
  });
});

Deno.test("DmaIommu strict and lazy invalidation", async (t) => {
  await t.step("strict: a use after unmap faults at once and is reported", async () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const iova = dma.mapPage(0x12000, 64, BI);
    dma.unmapPage(iova, 64, BI);
    assertThrows(() => m.ep8.read32(iova), DmaFault);
    await settle();
    assertEquals(m.viommu.faults.at(-1)!.address, iova);
  });

  await t.step(
    "lazy: the UNMAP waits and the device still reaches the buffer until the flush",
    () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8, { strict: false });
      assertEquals(dma.strict, false);
      const iova = dma.mapPage(0x12000, 64, BI);
      const before = counts(m);
      dma.unmapPage(iova, 64, BI);
      assertEquals(delta(m, before), { requests: 0, kicks: 0, maps: 0, unmaps: 1 });
      assertEquals(m.viommu.pendingRequests, 1);
      m.memory.write32(0x12000, 31);
      assertEquals(m.ep8.read32(iova), 31, "use after unmap still works");
      assertEquals(dma.flushQueueLength, 1);
      assertEquals(dma.iovad.cachedCount, 0, "the IOVA is not free yet");
      assertEquals(dma.flushQueue(), 1);
      assertThrows(() => m.ep8.read32(iova), DmaFault);
      assertEquals(dma.iovad.cachedPfns(1), [iova / 4096]);
      assertEquals(dma.stats.fqFlushes, 1);
    },
  );

  await t.step("lazy: the next sync point sends queued UNMAPs too, but keeps the IOVA", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { strict: false });
    const a = dma.mapPage(0x12000, 64, BI);
    dma.unmapPage(a, 64, BI);
    const b = dma.mapPage(0x13000, 64, BI);
    assert(b !== a, "a is still in the flush queue");
    assertThrows(() => m.ep8.read32(a), DmaFault, undefined, "the MAP's kick carried the UNMAP");
    assertEquals(dma.flushQueueLength, 1);
  });

  await t.step("lazy: a full flush queue flushes before queueing more", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { strict: false, fqSize: 4 });
    const iovas = Array.from({ length: 5 }, (_, i) => dma.mapPage(0x10000 + i * 4096, 64, TO));
    for (const iova of iovas) dma.unmapPage(iova, 64, TO);
    assertEquals(dma.stats.fqFlushes, 1);
    assertEquals(dma.flushQueueLength, 1);
    assertEquals(dma.stats.fqFreed, 4);
  });

  await t.step("lazy: the flush timer is armed once per batch and flushes when it fires", () => {
    const m = makeViommuMachine();
    const timers: [() => void, number][] = [];
    const dma = m.viommu.setupDma(8, {
      strict: false,
      setTimer: (cb, ms) => timers.push([cb, ms]),
    });
    const a = dma.mapPage(0x10000, 64, TO);
    const b = dma.mapPage(0x11000, 64, TO);
    dma.unmapPage(a, 64, TO);
    dma.unmapPage(b, 64, TO);
    assertEquals(timers.length, 1);
    assertEquals(timers[0][1], 10);
    timers[0][0]();
    assertEquals(dma.flushQueueLength, 0);
    assertEquals(dma.stats.fqFreed, 2);
  });

  await t.step("lazy mode falls back to strict when the domain cannot flush lazily", () => {
    const m = makeViommuMachine();
    const domain = new FakeDomain();
    (domain as { deferredFlush: boolean }).deferredFlush = false;
    const dma = new DmaIommu({ domain, pages: m.pages, strict: false });
    assertEquals(dma.strict, true);
    assert(dma.log[0].includes("using strict"));
    assertEquals(dma.flushQueue(), 0);
  });
});

/** A paging domain in memory that records what the IOMMU core asks of it. */
class FakeDomain implements IommuPagingDomain {
  readonly type = "paging" as const;
  readonly pageSizes: readonly number[] = [4096, 2 ** 21, 2 ** 30];
  readonly geometry = { apertureStart: 0, apertureEnd: 2 ** 48 - 1, forceAperture: true };
  readonly deferredFlush: boolean = true;
  readonly calls: string[] = [];
  readonly live = new Map<number, [number, number]>();
  failAt = -1;
  mapPages(iova: number, paddr: number, pgsize: number, pgcount: number, _prot: number): number {
    this.calls.push(`map ${iova.toString(16)} ${pgsize.toString(16)}x${pgcount}`);
    if (iova === this.failAt) return -IommuErrno.ENOMEM;
    this.live.set(iova, [paddr, pgsize * pgcount]);
    return pgsize * pgcount;
  }
  unmapPages(iova: number, pgsize: number, pgcount: number, _gather: IotlbGather): number {
    this.calls.push(`unmap ${iova.toString(16)} ${pgsize.toString(16)}x${pgcount}`);
    const m = this.live.get(iova);
    if (m === undefined) return 0;
    this.live.delete(iova);
    return m[1];
  }
  iotlbSync(_gather: IotlbGather): void {
    this.calls.push("sync");
  }
  iotlbSyncMap(_iova: number, _size: number): number {
    this.calls.push("sync_map");
    return 0;
  }
  flushIotlbAll(): void {
    this.calls.push("flush");
  }
  iovaToPhys(iova: number): number | null {
    for (const [start, [paddr, size]] of this.live) {
      if (iova >= start && iova < start + size) return paddr + iova - start;
    }
    return null;
  }
}

Deno.test("IOMMU core map and unmap", async (t) => {
  await t.step("iommuPgsize picks the largest page size the alignment and size allow", () => {
    const all = Array.from({ length: 41 }, (_, i) => 2 ** (12 + i)); // virtio-iommu: every size >= 4 KiB
    assertEquals(iommuPgsize(all, 0x1_0000, 0x4_0000, 0x4000), [0x4000, 1]);
    assertEquals(iommuPgsize(all, 0x1000, 0x4_1000, 0x3000), [0x1000, 1], "stops at 8 KiB");
    assertEquals(iommuPgsize(all, 0x2000, 0x4_2000, 0x2000), [0x2000, 1]);
    assertEquals(
      iommuPgsize(all, 0x1_0000, 0x4_1000, 0x4000),
      [0x1000, 4],
      "offsets differ: 4 KiB pages",
    );
    const lpae = [4096, 2 ** 21, 2 ** 30];
    assertEquals(iommuPgsize(lpae, 0x1f_f000, 0x1f_f000, 0x40_1000), [0x1000, 1]);
    assertEquals(iommuPgsize(lpae, 0x20_0000, 0x20_0000, 0x40_1000), [0x20_0000, 2]);
    assertEquals(iommuPgsize(lpae, 0x1000, 0x1000, 0x800), [0, 0]);
  });

  await t.step("iommuMapNosync splits a range into chunks and never syncs", () => {
    const d = new FakeDomain();
    assertEquals(iommuMapNosync(d, 0x1f_f000, 0x1f_f000, 0x40_2000, 3), 0);
    assertEquals(d.calls, ["map 1ff000 1000x1", "map 200000 200000x2", "map 600000 1000x1"]);
  });

  await t.step(
    "iommuMapNosync refuses misaligned ranges and non-paging domains with -EINVAL",
    () => {
      const d = new FakeDomain();
      assertEquals(iommuMapNosync(d, 0x1800, 0x2000, 0x1000, 3), -IommuErrno.EINVAL);
      assertEquals(iommuMapNosync(d, 0x1000, 0x2800, 0x1000, 3), -IommuErrno.EINVAL);
      assertEquals(iommuMapNosync(d, 0x1000, 0x2000, 0x1800, 3), -IommuErrno.EINVAL);
      (d as { type: string }).type = "identity";
      assertEquals(iommuMapNosync(d, 0x1000, 0x2000, 0x1000, 3), -IommuErrno.EINVAL);
      assertEquals(d.calls, []);
    },
  );

  await t.step("a failed chunk unwinds what was mapped and syncs the unmap", () => {
    const d = new FakeDomain();
    d.failAt = 0x20_0000;
    assertEquals(iommuMapNosync(d, 0x1f_f000, 0x1f_f000, 0x40_2000, 3), -IommuErrno.ENOMEM);
    assertEquals(d.calls.slice(2), ["unmap 1ff000 1000x1", "sync"]);
    assertEquals(d.live.size, 0);
  });

  await t.step("iommuUnmap stops at a hole", () => {
    const d = new FakeDomain();
    iommuMapNosync(d, 0x1000, 0x1000, 0x1000, 3);
    assertEquals(iommuUnmap(d, 0x1000, 0x3000), 0x1000);
  });

  await t.step("dmaInfoToProt", () => {
    assertEquals(dmaInfoToProt(TO, true, 0), IommuProt.READ | IommuProt.CACHE);
    assertEquals(dmaInfoToProt(FROM, false, 0), IommuProt.WRITE);
    assertEquals(dmaInfoToProt(BI, false, DMA_ATTR_MMIO), 3 | IommuProt.MMIO);
    assertEquals(dmaInfoToProt(DmaDirection.NONE, true, 0), 0);
  });

  await t.step(
    "dma-iommu refuses a domain that does not translate or a granule above the page size",
    () => {
      const m = makeViommuMachine();
      const identity = new FakeDomain();
      (identity as { type: string }).type = "identity";
      assertThrows(() => new DmaIommu({ domain: identity, pages: m.pages }), TypeError);
      const huge = new FakeDomain();
      (huge as unknown as { pageSizes: number[] }).pageSizes = [65536];
      assertThrows(() => new DmaIommu({ domain: huge, pages: m.pages }), RangeError);
    },
  );
});

Deno.test("DmaIommu for a virtio device behind the IOMMU", async (t) => {
  await t.step("rings and buffers are mapped through dma-iommu and the device works", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const before = counts(m);
    const echo = new EchoDevice(1);
    const { vqs: [vq] } = behindIommu<string>(m, echo, m.ep8, dma);
    assertEquals(delta(m, before).maps, 1, "the ring: one coherent MAP");
    assertEquals(vq.descAddr > 0xf000_0000, true, "the device sees IOVAs");
    m.memory.write(0x20000, new TextEncoder().encode("through the iommu"));
    const mid = counts(m);
    assertEquals(
      vq.addSgs([{ addr: 0x20000, length: 17 }], [{ addr: 0x21000, length: 64 }], "t"),
      0,
    );
    // Two buffers and the indirect table: one MAP and one kick each.
    assertEquals(delta(m, mid), { requests: 3, kicks: 3, maps: 3, unmaps: 0 });
    vq.kick();
    assertEquals(echo.echoed, 1);
    const used = vq.getBuf()!;
    assertEquals([used.token, used.len], ["t", 17]);
    assertEquals(delta(m, mid).unmaps, 3, "getBuf unmapped the buffers and the table");
    const out = new Uint8Array(17);
    m.memory.read(0x21000, out);
    assertEquals(new TextDecoder().decode(out), "through the iommu");
  });

  await t.step(
    "a device DMA that faults mid-chain: the device breaks, the fault is reported",
    async () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8);
      // No indirect descriptors: mapping a table would kick the virtio-iommu
      // queue and carry the unsynced MAP along.
      const { vdev, vqs: [vq] } = behindIommu<string>(m, new EchoDevice(1), m.ep8, dma, 1, false);
      // The writable buffer is mapped (and synced) first.
      const sink = dma.mapPage(0x40000, 8192, FROM);
      assertEquals(vq.setPremapped(), 0);
      // Two readable pages in one IOVA range; only the first is synced.
      const state = newIovaState();
      assert(iovaTryAlloc(dma, state, 0x30000, 8192));
      assertEquals(iovaLink(dma, state, 0x30000, 0, 4096, TO), 0);
      assertEquals(iovaSync(dma, state, 0, 4096), 0);
      assertEquals(iovaLink(dma, state, 0x38000, 4096, 4096, TO), 0); // never synced
      m.memory.fill(0x30000, 4096, 0xaa);
      const sgs = [{ addr: state.addr, length: 4096 }, { addr: state.addr + 4096, length: 4096 }];
      assertEquals(vq.addSgs(sgs, [{ addr: sink, length: 8192 }], "chain", true), 0);
      vq.kick();
      const fault = vdev.escaped[0];
      assertInstanceOf(fault, DmaFault);
      assertEquals((fault as DmaFault).address, state.addr + 4096, "the second descriptor faulted");
      assertEquals(m.memory.read8(0x40000 + 4095), 0xaa, "the first page was already copied");
      assert(vdev.getStatus() & 64, "DEVICE_NEEDS_RESET");
      await settle();
      assertEquals(m.viommu.faults.at(-1), {
        reason: 2,
        flags: 0x101,
        endpoint: 8,
        address: state.addr + 4096,
      });
    },
  );
});
