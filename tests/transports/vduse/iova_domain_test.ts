import { assert, assertEquals, assertNotEquals, assertThrows } from "@std/assert";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { PageAllocator } from "../../../src/guest/page_allocator.ts";
import {
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_MAPPING_ERROR,
  DmaDirection,
  Errno,
} from "../../../src/guest/dma/dma_api.ts";
import { VduseIovaDomain } from "../../../transports/vduse/kernel/iova_domain.ts";
import { VduseMapOps } from "../../../transports/vduse/kernel/map_ops.ts";

const TO = DmaDirection.TO_DEVICE;
const FROM = DmaDirection.FROM_DEVICE;
const BIDI = DmaDirection.BIDIRECTIONAL;
const MiB = 1 << 20;

function makeDomain(bounceSize = MiB) {
  const memory = new GuestMemory([{ base: 0, size: 4 * MiB }]);
  const pages = new PageAllocator(memory, { base: MiB, size: 3 * MiB });
  const domain = new VduseIovaDomain({ memory, pages, bounceSize });
  return { memory, pages, domain };
}

Deno.test("VduseIovaDomain streaming mappings", async (t) => {
  await t.step(
    "TO_DEVICE copies at map time; the IOVA is slot aligned and data starts there",
    () => {
      const { memory, domain } = makeDomain();
      memory.write(0x1234, new Uint8Array([1, 2, 3, 4]));
      const iova = domain.mapPage(0x1234, 4, TO, 0);
      assertEquals(iova % 4096, 0);
      assert(iova > 0 && iova < domain.bounceSize);
      assert(domain.bounceMapped);
      assertEquals(domain.mmap(iova, 4), new Uint8Array([1, 2, 3, 4]));
      // The device writes the bounce page: a TO_DEVICE mapping is never copied back.
      domain.mmap(iova, 4)!.fill(9);
      domain.unmapPage(iova, 4, TO, 0);
      assertEquals(memory.view(0x1234, 4), new Uint8Array([1, 2, 3, 4]));
      assertEquals(domain.stats.bytesToBounce, 4);
      assertEquals(domain.stats.bytesFromBounce, 0);
    },
  );

  await t.step("FROM_DEVICE is not pre-filled and is copied back at unmap and sync_for_cpu", () => {
    const { memory, domain } = makeDomain();
    memory.fill(0x2000, 8192, 0x55);
    const iova = domain.mapPage(0x2000, 8192, FROM, 0);
    const bounce = domain.mmap(iova, 8192)!;
    assertEquals(bounce[0], 0); // fresh bounce pages are zero, not the driver's bytes
    bounce.fill(0x77, 4090, 4100); // spans two slots
    domain.syncSingleForCpu(iova + 4090, 10, FROM);
    assertEquals(memory.view(0x2000 + 4090, 10), new Uint8Array(10).fill(0x77));
    assertEquals(memory.read8(0x2000 + 4089), 0x55);
    bounce[8191] = 0x11;
    domain.unmapPage(iova, 8192, FROM, 0);
    assertEquals(memory.read8(0x2000 + 8191), 0x11);
    assertEquals(domain.stats.bytesFromBounce, 10 + 8192);
  });

  await t.step("BIDIRECTIONAL copies both ways; sync_for_device re-copies", () => {
    const { memory, domain } = makeDomain();
    memory.write(0x3000, new Uint8Array([5, 6]));
    const iova = domain.mapPage(0x3000, 2, BIDI, 0);
    assertEquals(domain.mmap(iova, 2), new Uint8Array([5, 6]));
    memory.write8(0x3000, 7);
    domain.syncSingleForDevice(iova, 2, BIDI);
    assertEquals(domain.mmap(iova, 1)![0], 7);
    domain.syncSingleForDevice(iova, 2, FROM); // wrong direction: nothing
    domain.mmap(iova, 2)!.set([8, 9]);
    domain.unmapPage(iova, 2, BIDI, 0);
    assertEquals(memory.view(0x3000, 2), new Uint8Array([8, 9]));
  });

  await t.step("DMA_ATTR_SKIP_CPU_SYNC skips both copies", () => {
    const { memory, domain } = makeDomain();
    memory.write(0x4000, new Uint8Array([1, 1]));
    const iova = domain.mapPage(0x4000, 2, BIDI, DMA_ATTR_SKIP_CPU_SYNC);
    assertEquals(domain.mmap(iova, 2), new Uint8Array([0, 0]));
    domain.mmap(iova, 2)!.set([3, 3]);
    domain.unmapPage(iova, 2, BIDI, DMA_ATTR_SKIP_CPU_SYNC);
    assertEquals(memory.view(0x4000, 2), new Uint8Array([1, 1]));
    assertEquals(domain.stats.bytesToBounce + domain.stats.bytesFromBounce, 0);
  });

  await t.step("bounce exhaustion returns DMA_MAPPING_ERROR; unmapping frees space", () => {
    const { domain } = makeDomain(MiB);
    const ops = new VduseMapOps();
    const iovas: number[] = [];
    // 1 MiB = 256 slots, slot 0 is never used: 255 one-page mappings fit.
    for (let i = 0; i < 255; i++) {
      const a = domain.mapPage(0x1000 * (i % 200), 100, TO, 0);
      assertNotEquals(a, DMA_MAPPING_ERROR, `map ${i}`);
      iovas.push(a);
    }
    assertEquals(new Set(iovas).size, 255);
    const failed = domain.mapPage(0, 100, TO, 0);
    assertEquals(failed, DMA_MAPPING_ERROR);
    assertEquals(ops.mappingError(null, failed), -Errno.ENOMEM);
    assertEquals(domain.stats.mapFailures, 1);
    domain.unmapPage(iovas[7], 100, TO, 0);
    assertEquals(domain.mapPage(0, 100, TO, 0), iovas[7]);
    // Larger than the bounce window, or not RAM: error, no throw.
    assertEquals(makeDomain().domain.mapPage(0, MiB + 1, TO, 0), DMA_MAPPING_ERROR);
    assertEquals(makeDomain().domain.mapPage(4 * MiB - 2, 4, TO, 0), DMA_MAPPING_ERROR);
    assertThrows(() => domain.mapPage(0, 0, TO, 0), RangeError);
    assertThrows(() => domain.mapPage(0, 1, DmaDirection.NONE, 0), RangeError);
  });

  await t.step("reset with buffers mapped: window leaves the IOTLB, data and IOVAs stay", () => {
    const { memory, domain } = makeDomain();
    memory.fill(0x5000, 16, 0xab);
    const iova = domain.mapPage(0x5000, 16, BIDI, 0);
    assertEquals(domain.iotlb.first(iova, iova)?.start, 0);
    domain.resetBounceMap();
    assertEquals(domain.bounceMapped, false);
    assertEquals(domain.iotlb.first(iova, iova), undefined);
    // The driver still owns the mapping and can unmap it: data comes back.
    domain.mmap(iova, 1); // kernel pages still there
    domain.unmapPage(iova, 16, BIDI, 0);
    assertEquals(memory.read8(0x5000), 0xab);
    assertEquals(domain.stats.warnings, 0);
    // The next mapping re-creates the window.
    domain.mapPage(0x5000, 1, TO, 0);
    assert(domain.bounceMapped);
  });

  await t.step("a sync or unmap of an unmapped slot is a WARN, not a crash", () => {
    const { domain } = makeDomain();
    const iova = domain.mapPage(0x1000, 10, TO, 0);
    domain.unmapPage(iova, 10, TO, 0);
    domain.syncSingleForCpu(iova, 10, FROM);
    domain.unmapPage(iova, 10, FROM, 0);
    assertEquals(domain.stats.warnings, 2); // the sync, the unmap (nothing is freed twice)
    // The IOVA was not freed twice: two new mappings get two different IOVAs.
    assertNotEquals(domain.mapPage(0x1000, 10, TO, 0), domain.mapPage(0x2000, 10, TO, 0));
  });
});

Deno.test("VduseIovaDomain coherent allocations", async (t) => {
  await t.step("pages shared with userspace at offset == IOVA above the bounce window", () => {
    const { memory, pages, domain } = makeDomain();
    const free = pages.freeCount;
    const a = domain.allocCoherent(6000)!;
    assert(a.dmaAddr >= domain.bounceSize && a.dmaAddr <= 0x47ff_ffff);
    assertEquals(a.dmaAddr % 4096, 0);
    assertEquals(pages.freeCount, free - 2);
    const e = domain.iotlb.first(a.dmaAddr, a.dmaAddr)!;
    assertEquals([e.start, e.last, e.offset, e.perm], [a.dmaAddr, a.dmaAddr + 5999, a.dmaAddr, 3]);
    memory.write32(a.cpuAddr + 100, 0xdeadbeef);
    const view = domain.mmap(a.dmaAddr, 6000)!;
    assertEquals(new DataView(view.buffer, view.byteOffset).getUint32(100, true), 0xdeadbeef);
    assertEquals(domain.mmap(a.dmaAddr, 6001), null); // beyond the region
    assertEquals(domain.needSync(a.dmaAddr), false);
    domain.resetBounceMap(); // reset leaves coherent regions alone
    assert(domain.iotlb.first(a.dmaAddr, a.dmaAddr) !== undefined);
    domain.freeCoherent(6000, a.cpuAddr, a.dmaAddr);
    assertEquals(domain.iotlb.first(a.dmaAddr, a.dmaAddr), undefined);
    assertEquals(pages.freeCount, free);
    domain.freeCoherent(6000, a.cpuAddr, a.dmaAddr);
    assertEquals(domain.stats.warnings, 1);
  });
});

Deno.test("VduseIovaDomain user bounce pages", async (t) => {
  await t.step(
    "registering copies slots in use; the kernel view goes away until deregistered",
    () => {
      const { memory, domain } = makeDomain();
      const user = new Uint8Array(MiB);
      assertEquals(domain.registerUserBounce(user), -22); // no bounce window yet
      memory.write(0x1000, new Uint8Array([4, 2]));
      const iova = domain.mapPage(0x1000, 2, BIDI, 0);
      assertEquals(domain.registerUserBounce(new Uint8Array(4096)), -22);
      assertEquals(domain.registerUserBounce(user), 0);
      assertEquals(domain.registerUserBounce(user), -17);
      assertEquals(user.subarray(iova, iova + 2), new Uint8Array([4, 2]));
      assertEquals(domain.mmap(iova, 2), null);
      user[iova] = 6;
      domain.unmapPage(iova, 2, BIDI, 0);
      assertEquals(memory.read8(0x1000), 6);
      assertEquals(domain.deregisterUserBounce(), 0);
      assertEquals(domain.deregisterUserBounce(), -2);
    },
  );
});
