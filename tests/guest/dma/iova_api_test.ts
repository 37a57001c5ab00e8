import { assert, assertEquals, assertThrows } from "@std/assert";
import { DmaFault } from "../../../src/dma/dma_fault.ts";
import { IommuMapFlag } from "../../../src/iommu/iommu_status.ts";
import { DmaDirection, Errno } from "../../../src/guest/dma/dma_api.ts";
import { DmaDirect } from "../../../src/guest/dma/dma_direct.ts";
import { DMA_ATTR_MMIO, IommuErrno } from "../../../src/guest/dma/dma_iommu.ts";
import {
  dmaIovaSize,
  dmaUseIova,
  getMergeBoundary,
  iovaDestroy,
  iovaFree,
  iovaLink,
  iovaSync,
  iovaTryAlloc,
  iovaUnlink,
  newIovaState,
} from "../../../src/guest/dma/iova_api.ts";
import {
  VIOMMU_DRIVER_FEATURES,
  ViommuFeature,
} from "../../../src/guest/iommu/virtio_iommu_driver.ts";
import { makeViommuMachine, settle } from "../iommu/viommu_harness.ts";

const TO = DmaDirection.TO_DEVICE;
const FROM = DmaDirection.FROM_DEVICE;
const BI = DmaDirection.BIDIRECTIONAL;
const K = 1024;

Deno.test("iovaTryAlloc", async (t) => {
  await t.step("is false without an IOMMU, and zeroes the state first", () => {
    const m = makeViommuMachine();
    const state = { addr: 123, size: 456 };
    assertEquals(iovaTryAlloc(new DmaDirect({ pages: m.pages }), state, 0x1000, 4096), false);
    assertEquals(state, { addr: 0, size: 0 });
    assertEquals(dmaUseIova(state), false);
  });

  await t.step("is false for size 0 or an unrepresentable size, with a WARN", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const state = { addr: 1, size: 1 };
    assertEquals(iovaTryAlloc(dma, state, 0x1000, 0), false);
    assertEquals(state, { addr: 0, size: 0 });
    assertEquals(iovaTryAlloc(dma, state, 0x1000, 2 ** 64), false);
    assertEquals(iovaTryAlloc(dma, state, 0x1000, 1.5), false);
    assertEquals(dma.warnings.length, 3);
  });

  await t.step("is false when the IOVA space under the mask is exhausted", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { mask: 0x7fff });
    const state = newIovaState();
    assertEquals(iovaTryAlloc(dma, state, 0, 16 * K), true);
    assertEquals(iovaTryAlloc(dma, state, 0, 16 * K), false);
    assertEquals(dmaUseIova(state), false);
  });

  await t.step(
    "reserves align_up(size + offset) granules, size-aligned; addr keeps the offset",
    () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8);
      const before = m.device.stats.requests;
      const state = newIovaState();
      assert(iovaTryAlloc(dma, state, 0x1_0200, 10 * K));
      assertEquals(m.device.stats.requests, before, "no request: nothing is mapped yet");
      assertEquals(state.addr % (16 * K), 0x200, "12 KiB rounded to 16 KiB, 16 KiB aligned");
      assertEquals(state.addr, 0xffff_c200);
      assertEquals(dmaIovaSize(state), 10 * K);
      const base = (state.addr - 0x200) / 4096;
      assertEquals(dma.iovad.findIova(base), { pfnLo: base, pfnHi: base + 3 });
    },
  );
});

Deno.test("iovaLink and iovaSync", async (t) => {
  await t.step(
    "the worked example: the first link may start mid-granule and must end on one",
    () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8);
      const state = newIovaState();
      assert(iovaTryAlloc(dma, state, 0x1_0200, 10 * K));
      const b = state.addr - 0x200;
      assertEquals(iovaLink(dma, state, 0x1_0200, 0, 7.5 * K, TO), 0);
      assertEquals(iovaLink(dma, state, 0x2_0000, 7.5 * K, 2.5 * K, TO), 0);
      assertEquals(m.viommu.pendingRequests, 2, "two MAPs queued, none sent");
      assertEquals(iovaSync(dma, state, 0, 10 * K), 0);
      const dom = m.iommu.domain(0)!;
      assertEquals(dom.starts, [b, b + 8 * K]);
      assertEquals(dom.ends, [b + 8 * K - 1, b + 12 * K - 1]);
      assertEquals(dom.phys, [0x1_0000, 0x2_0000]);
      m.memory.write8(0x2_0000 + 2.5 * K - 1, 0x77);
      assertEquals(m.ep8.read8(state.addr + 10 * K - 1), 0x77, "the last byte of the request");
    },
  );

  await t.step("a later link starting mid-granule fails with -EIO", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const state = newIovaState();
    assert(iovaTryAlloc(dma, state, 0x1_0200, 10 * K));
    assertEquals(iovaLink(dma, state, 0x1_0200, 0, 7.5 * K, TO), 0);
    assertEquals(iovaLink(dma, state, 0x3_0100, 7.5 * K, 2 * K, TO), -Errno.EIO);
    assert(dma.warnings.at(-1)!.includes("only the first link may start mid-granule"));
  });

  await t.step("a link after one that did not end on a granule fails with -EINVAL", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const state = newIovaState();
    assert(iovaTryAlloc(dma, state, 0, 12 * K));
    assertEquals(iovaLink(dma, state, 0x1_0000, 0, 6000, TO), 0, "maps 8 KiB");
    assertEquals(iovaLink(dma, state, 0x2_0000, 6000, 4096, TO), -Errno.EINVAL);
    assert(dma.warnings.at(-1)!.includes("unaligned"));
    assertEquals(iovaLink(dma, state, 0x2_0000, 8192, 4096, TO), 0, "an aligned offset works");
  });

  await t.step("a link past the reservation, or without one, is refused with -EINVAL", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const state = newIovaState();
    assertEquals(iovaLink(dma, state, 0x1_0000, 0, 4096, TO), -Errno.EINVAL);
    assertEquals(iovaSync(dma, state, 0, 4096), -Errno.EINVAL);
    assert(iovaTryAlloc(dma, state, 0, 8 * K));
    assertEquals(iovaLink(dma, state, 0x1_0000, 4096, 8192, TO), -Errno.EINVAL);
    assert(dma.warnings.at(-1)!.includes("past the 8192-byte reservation"));
    assertEquals(iovaLink(dma, state, 0x1_0000, 0, 0, TO), -Errno.EINVAL, "0 bytes");
    assertEquals(m.viommu.pendingRequests, 0);
  });

  await t.step("without an IOMMU link and sync fail with -EOPNOTSUPP", () => {
    const m = makeViommuMachine();
    const direct = new DmaDirect({ pages: m.pages });
    const state = { addr: 0x1000, size: 4096 };
    assertEquals(iovaLink(direct, state, 0x1000, 0, 4096, TO), -IommuErrno.EOPNOTSUPP);
    assertEquals(iovaSync(direct, state, 0, 4096), -IommuErrno.EOPNOTSUPP);
    iovaUnlink(direct, state, 0, 4096, TO);
    iovaDestroy(direct, state, 4096, TO);
    iovaFree(direct, state);
    assertEquals(getMergeBoundary(direct), 0);
    assertEquals(getMergeBoundary(m.viommu.setupDma(8)), 4095);
  });

  await t.step(
    "a skipped iovaSync: the device faults and the fault event arrives; the sync fixes it",
    async () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8);
      const state = newIovaState();
      assert(iovaTryAlloc(dma, state, 0, 16 * K));
      for (let i = 0; i < 4; i++) {
        assertEquals(iovaLink(dma, state, 0x4_0000 + i * 0x2000, i * 4096, 4096, FROM), 0);
      }
      assertEquals(m.viommu.pendingRequests, 4);
      const fault = assertThrows(() => m.ep8.write32(state.addr + 4096, 1), DmaFault);
      assertEquals([fault.address, fault.reason], [state.addr + 4096, "unmapped"]);
      await settle();
      assertEquals(m.viommu.faults.at(-1), {
        reason: 2,
        flags: 0x102,
        endpoint: 8,
        address: state.addr + 4096,
      });
      const kicks = m.viommu.stats.kicks;
      assertEquals(iovaSync(dma, state, 0, 16 * K), 0);
      assertEquals(m.viommu.stats.kicks, kicks + 1, "one kick for four MAPs");
      m.ep8.write32(state.addr + 4096, 0xbeef);
      assertEquals(m.memory.read32(0x4_2000), 0xbeef);
      assertThrows(
        () => m.ep8.read32(state.addr),
        DmaFault,
        undefined,
        "FROM_DEVICE is write-only",
      );
    },
  );

  await t.step("iovaSync returns the IOMMU driver's error: a device that does not answer", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const state = newIovaState();
    assert(iovaTryAlloc(dma, state, 0, 4096));
    assertEquals(iovaLink(dma, state, 0x1_0000, 0, 4096, TO), 0);
    m.vdev.hold = true;
    assertEquals(iovaSync(dma, state, 0, 4096), -IommuErrno.ETIMEDOUT);
    m.vdev.release();
    assertEquals(iovaSync(dma, state, 0, 4096), 0);
    m.ep8.read8(state.addr);
  });

  await t.step(
    "DMA_ATTR_MMIO links make MMIO mappings; without F_MMIO they fail with -EINVAL",
    () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8);
      const state = newIovaState();
      assert(iovaTryAlloc(dma, state, 0, 4096));
      assertEquals(iovaLink(dma, state, 0x1_0000, 0, 4096, BI, DMA_ATTR_MMIO), 0);
      iovaSync(dma, state, 0, 4096);
      assertEquals(m.iommu.domain(0)!.flags, [
        IommuMapFlag.READ | IommuMapFlag.WRITE | IommuMapFlag.MMIO,
      ]);
      const features = VIOMMU_DRIVER_FEATURES.filter((b) => b !== ViommuFeature.MMIO);
      const n = makeViommuMachine({ driver: { features } });
      const plain = n.viommu.setupDma(8);
      assert(iovaTryAlloc(plain, state, 0, 4096));
      assertEquals(iovaLink(plain, state, 0x1_0000, 0, 4096, BI, DMA_ATTR_MMIO), -Errno.EINVAL);
    },
  );

  await t.step("an invalid direction throws RangeError", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const state = newIovaState();
    iovaTryAlloc(dma, state, 0, 4096);
    assertThrows(() => iovaLink(dma, state, 0, 0, 4096, DmaDirection.NONE), RangeError);
    assertThrows(() => iovaDestroy(dma, state, 4096, DmaDirection.NONE), RangeError);
  });
});

Deno.test("iovaUnlink, iovaDestroy and iovaFree", async (t) => {
  /** A reservation of `pages` pages with every page linked and synced. */
  function linked(strict: boolean, pages = 4) {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { strict });
    const state = newIovaState();
    assert(iovaTryAlloc(dma, state, 0, pages * 4096));
    for (let i = 0; i < pages; i++) iovaLink(dma, state, 0x5_0000 + i * 4096, i * 4096, 4096, BI);
    iovaSync(dma, state, 0, pages * 4096);
    return { m, dma, state, pfn: state.addr / 4096 };
  }

  await t.step(
    "iovaUnlink invalidates synchronously even in lazy mode; the IOVA stays reserved",
    () => {
      const { m, dma, state, pfn } = linked(false);
      const kicks = m.viommu.stats.kicks;
      iovaUnlink(dma, state, 4096, 4096, BI);
      assertEquals(m.viommu.stats.kicks, kicks + 1);
      assertThrows(() => m.ep8.read8(state.addr + 4096), DmaFault);
      m.ep8.read8(state.addr + 8192);
      assertEquals(dma.flushQueueLength, 0);
      assertEquals(dma.iovad.findIova(pfn), { pfnLo: pfn, pfnHi: pfn + 3 });
      assertEquals(dma.iovad.cachedCount, 0);
    },
  );

  await t.step(
    "unlinking part of one link removes the whole link (virtio-iommu cannot split)",
    () => {
      const m = makeViommuMachine();
      const dma = m.viommu.setupDma(8);
      const state = newIovaState();
      assert(iovaTryAlloc(dma, state, 0, 8192));
      iovaLink(dma, state, 0x5_0000, 0, 8192, BI);
      iovaSync(dma, state, 0, 8192);
      iovaUnlink(dma, state, 0, 4096, BI);
      assertThrows(() => m.ep8.read8(state.addr + 4096), DmaFault);
      assert(dma.warnings.at(-1)!.includes("8192 of 4096 bytes unmapped"), "the kernel's WARN");
    },
  );

  await t.step("strict iovaDestroy: one UNMAP, one kick, the IOVA freed for reuse", () => {
    const { m, dma, state, pfn } = linked(true);
    const before = { unmaps: m.viommu.stats.unmap, kicks: m.viommu.stats.kicks };
    iovaDestroy(dma, state, 4 * 4096, BI);
    assertEquals(m.viommu.stats.unmap - before.unmaps, 1, "one UNMAP covers the four links");
    assertEquals(m.viommu.stats.kicks - before.kicks, 1);
    assertThrows(() => m.ep8.read8(state.addr), DmaFault);
    assertEquals(dma.iovad.cachedPfns(4), [pfn]);
    const again = newIovaState();
    assert(iovaTryAlloc(dma, again, 0, 16 * K));
    assertEquals(again.addr, state.addr, "LIFO reuse");
  });

  await t.step("lazy iovaDestroy: the UNMAP and the IOVA release wait for the flush", () => {
    const { m, dma, state, pfn } = linked(false);
    const kicks = m.viommu.stats.kicks;
    iovaDestroy(dma, state, 4 * 4096, BI);
    assertEquals(m.viommu.stats.kicks, kicks, "no kick");
    m.memory.write8(0x5_3000, 0x42);
    assertEquals(m.ep8.read8(state.addr + 0x3000), 0x42, "use after destroy works until the flush");
    assertEquals(dma.flushQueueLength, 1);
    assertEquals(dma.iovad.cachedCount, 0);
    dma.flushQueue();
    assertThrows(() => m.ep8.read8(state.addr), DmaFault);
    assertEquals(dma.iovad.cachedPfns(4), [pfn]);
  });

  await t.step("iovaDestroy with nothing mapped only frees the IOVA", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8, { strict: false });
    const state = newIovaState();
    assert(iovaTryAlloc(dma, state, 0, 8192));
    const requests = m.viommu.stats.requests;
    iovaDestroy(dma, state, 0, BI);
    assertEquals(m.viommu.stats.requests, requests);
    assertEquals(dma.iovad.cachedPfns(2), [state.addr / 4096], "freed at once, even in lazy mode");
  });

  await t.step("iovaFree returns the reservation after the links are unlinked", () => {
    const { dma, state, pfn } = linked(true, 2);
    iovaUnlink(dma, state, 0, 8192, BI);
    iovaFree(dma, state);
    assertEquals(dma.iovad.cachedPfns(2), [pfn]);
  });

  await t.step("a destroy that frees another size class than was reserved is a WARN", () => {
    const { dma, state } = linked(true, 4);
    iovaDestroy(dma, state, 4096, BI); // unmaps the first link only, frees 1 granule of 4
    assert(dma.warnings.at(-1)!.includes("frees 1 granules of a 4-granule reservation"));
  });

  await t.step("operations on a state without a reservation are WARNs", () => {
    const m = makeViommuMachine();
    const dma = m.viommu.setupDma(8);
    const state = newIovaState();
    iovaUnlink(dma, state, 0, 4096, BI);
    iovaDestroy(dma, state, 4096, BI);
    iovaFree(dma, state);
    assertEquals(dma.warnings.length, 3);
    assertEquals(m.viommu.stats.unmap, 0);
  });
});
