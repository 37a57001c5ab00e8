import { assertEquals, assertRejects } from "@std/assert";
import type { DmaAccess } from "../../../src/dma/dma_access.ts";
import { DmaFault } from "../../../src/dma/dma_fault.ts";
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "../../../src/dma/dma_space.ts";
import type { PageAllocator } from "../../../src/guest/page_allocator.ts";
import {
  checkDmaDirection,
  type CoherentAllocation,
  DMA_SIZE_MAX,
  type DmaApi,
  type DmaDirection,
} from "../../../src/guest/dma/dma_api.ts";
import {
  type BlkRequestMapper,
  DmaApiRequestMapper,
} from "../../../src/guest/blk/request_mapper.ts";
import { BlockError } from "../../../src/guest/blk/block_error.ts";
import { VirtioFeature } from "../../../src/virtio/features.ts";
import { blkMachine, coreOf, pattern } from "./helpers/blk_machine.ts";
import type { Machine, MachineIommuHook } from "../../../src/machine.ts";

/** Device addresses are guest physical + this; only live mappings translate. */
const OFFSET = 0x10_0000_0000;

/** A DMA API whose mappings live at phys + OFFSET, tracked so the device side can check them. */
class OffsetDmaApi implements DmaApi {
  /** Live mappings: device address -> length. */
  readonly live = new Map<number, number>();
  streaming = 0;
  pages: PageAllocator | null = null;
  mapPage(phys: number, size: number, dir: DmaDirection): number {
    checkDmaDirection(dir);
    if (this.live.has(phys + OFFSET)) throw new Error(`double map of ${phys.toString(16)}`);
    this.streaming++;
    this.live.set(phys + OFFSET, size);
    return phys + OFFSET;
  }
  unmapPage(dmaAddr: number, size: number, dir: DmaDirection): void {
    checkDmaDirection(dir);
    if (this.live.get(dmaAddr) !== size) throw new Error(`bad unmap of ${dmaAddr.toString(16)}`);
    this.streaming--;
    this.live.delete(dmaAddr);
  }
  syncSingleForCpu(): void {}
  syncSingleForDevice(): void {}
  allocCoherent(size: number): CoherentAllocation | null {
    const phys = this.pages!.allocPagesExact(size, { zero: true });
    if (phys === null) return null;
    this.live.set(phys + OFFSET, size);
    return { cpuAddr: phys, dmaAddr: phys + OFFSET };
  }
  freeCoherent(size: number, cpuAddr: number, dmaAddr: number): void {
    this.live.delete(dmaAddr);
    this.pages!.freePagesExact(cpuAddr, size);
  }
  mappingError(dmaAddr: number): number {
    return dmaAddr === -1 ? -12 : 0;
  }
  needSync(): boolean {
    return false;
  }
  maxMappingSize(): number {
    return DMA_SIZE_MAX;
  }
}

/** The device side: translates only addresses inside a live mapping of the API. */
class OffsetDmaSpace extends TranslatingDmaSpace {
  direct: DirectDmaSpace | null = null;
  constructor(readonly api: OffsetDmaApi) {
    super();
  }
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    for (const [base, size] of this.api.live) {
      if (address >= base && address < base + size) {
        const n = Math.min(length, base + size - address);
        this.direct!.translate(address - OFFSET, n, access, out);
        return;
      }
    }
    throw new DmaFault(address, length, access, "unmapped");
  }
}

/** An "IOMMU" that offsets addresses, for the machine's IOMMU hook. */
function offsetIommu(): {
  api: OffsetDmaApi;
  iommu: MachineIommuHook;
  beforeProbe: (machine: Machine) => void;
} {
  const api = new OffsetDmaApi();
  const space = new OffsetDmaSpace(api);
  return {
    api,
    iommu: { deviceDma: () => space, guestDma: () => api },
    beforeProbe: (machine) => {
      api.pages = machine.pages;
      space.direct = new DirectDmaSpace(machine.memory);
    },
  };
}

Deno.test("VirtioBlkDriver behind VIRTIO_F_ACCESS_PLATFORM", async (t) => {
  await t.step(
    "the default mapper lets the virtqueue map every buffer through the DMA API",
    async () => {
      const { api, iommu, beforeProbe } = offsetIommu();
      const { driver, device } = blkMachine({
        device: { serial: "behind-iommu" },
        iommu,
        beforeProbe,
      });
      assertEquals(driver.hasFeature(VirtioFeature.ACCESS_PLATFORM), true);
      await driver.write(0, pattern(64 * 1024, 1));
      assertEquals(await driver.read(0, 64 * 1024), pattern(64 * 1024, 1));
      assertEquals(await driver.getId(), "behind-iommu");
      await driver.flush();
      assertEquals(api.streaming, 0, "every streaming mapping was undone");
      assertEquals(device.stats.dataDmaFaults, 0);
    },
  );
  await t.step(
    "the DMA API request mapper premaps the request and unmaps it on completion",
    async () => {
      const { api, iommu, beforeProbe } = offsetIommu();
      const mapper = new DmaApiRequestMapper(api);
      const { driver, device } = blkMachine({
        transport: "mmio",
        iommu,
        beforeProbe,
        driver: { mapper },
      });
      assertEquals(driver.mapper, mapper);
      await Promise.all([
        driver.write(0, pattern(128 * 1024, 2)),
        driver.write(512, pattern(4096, 3)),
      ]);
      assertEquals(await driver.read(0, 128 * 1024), pattern(128 * 1024, 2));
      await driver.writeZeroes(8, 8);
      assertEquals(await driver.read(8, 4096), new Uint8Array(4096));
      assertEquals(mapper.live, 0);
      assertEquals(api.streaming, 0);
      assertEquals(device.stats.dataDmaFaults, 0);
    },
  );
  await t.step("a data buffer the guest forgot to map is IOERR for that request only", async () => {
    const { api, iommu, beforeProbe } = offsetIommu();
    // A buggy mapper: maps header and status, passes the data's guest physical address.
    const forgetful: BlkRequestMapper = {
      mapRequest(b) {
        const header = { addr: api.mapPage(b.header.addr, 16, 1), length: 16 };
        const status = { addr: api.mapPage(b.status.addr, 1, 2), length: 1 };
        const toDevice = b.dataDirection === 1;
        return {
          out: toDevice ? [header, ...b.data] : [header],
          in: toDevice ? [status] : [...b.data, status],
          premapped: true,
          state: [header.addr, status.addr],
        };
      },
      unmapRequest(m) {
        const [h, st] = m.state as number[];
        api.unmapPage(h, 16, 1);
        api.unmapPage(st, 1, 2);
      },
    };
    const { driver, device, machine } = blkMachine({
      iommu,
      beforeProbe,
      driver: { mapper: forgetful },
    });
    const e = await assertRejects(() => driver.read(0, 4096), BlockError);
    assertEquals([e.errno, e.status], [5, 1]);
    assertEquals(device.stats.dataDmaFaults, 1);
    assertEquals(device.broken, false);
    assertEquals(coreOf(machine).diagnostics.needsResetCount, 0);
    await driver.flush();
    assertEquals(api.streaming, 0);
  });
});
