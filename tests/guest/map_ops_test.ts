import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  createVirtqueue,
  type Virtqueue,
  type VirtqueueLayout,
} from "../../src/guest/virtio/virtqueue.ts";
import { VirtqueueMapper } from "../../src/guest/virtio/map_ops.ts";
import { DmaDirect } from "../../src/guest/dma/dma_direct.ts";
import {
  DMA_MAPPING_ERROR,
  DMA_SIZE_MAX,
  DmaDirection,
  Errno,
} from "../../src/guest/dma/dma_api.ts";
import type { GuestMemory } from "../../src/memory/guest_memory.ts";
import type { PageAllocator } from "../../src/guest/page_allocator.ts";
import {
  IOVA_OFFSET,
  makeGuest,
  MockMapOps,
  packedDesc,
  PackedDevice,
  read64,
  splitDesc,
  SplitDevice,
} from "./guest_helpers.ts";

const TO = DmaDirection.TO_DEVICE;
const FROM = DmaDirection.FROM_DEVICE;
const TOKEN = { group: 7 };

Deno.test("VirtqueueMapper path selection", async (t) => {
  await t.step("without ACCESS_PLATFORM nothing is mapped, even when map ops are set", () => {
    const { pages } = makeGuest();
    const ops = new MockMapOps(pages);
    const mapper = new VirtqueueMapper({ pages, accessPlatform: false, mapOps: ops, map: TOKEN });
    assertEquals(mapper.path, "none");
    assertEquals(mapper.useMapApi, false);
    assertEquals(mapper.mapPage(0x1234, 10, TO), 0x1234);
    assertEquals(mapper.mappingError(0x1234), 0);
    assertEquals(mapper.needSync(0x1234), false);
    mapper.unmapPage(0x1234, 10, TO);
    mapper.syncSingleRangeForCpu(0x1234, 0, 10, FROM);
    assertEquals(mapper.maxMappingSize(), DMA_SIZE_MAX);
    const ring = mapper.allocCoherent(100)!;
    assertEquals(ring.cpuAddr, ring.dmaAddr);
    assert(pages.contains(ring.cpuAddr));
    mapper.freeCoherent(100, ring);
    assertEquals(ops.calls, []);
  });

  await t.step("with ACCESS_PLATFORM and no map ops the DMA API is used", () => {
    const { pages } = makeGuest();
    const dma = new DmaDirect({ pages, mask: 0xf_ffff });
    const mapper = new VirtqueueMapper({ pages, accessPlatform: true, dma });
    assertEquals(mapper.path, "dma-api");
    assertEquals(mapper.mapPage(0x2000, 16, TO), 0x2000);
    // dma-direct fails a buffer beyond the device's mask.
    const bad = mapper.mapPage(0xf_fff0, 0x20, FROM);
    assertEquals(bad, DMA_MAPPING_ERROR);
    assertEquals(mapper.mappingError(bad), -Errno.ENOMEM);
    assertEquals(mapper.maxMappingSize(), DMA_SIZE_MAX);
    const ring = mapper.allocCoherent(4096)!;
    assertEquals(ring.cpuAddr, ring.dmaAddr);
    assertThrows(() => dma.mapPage(0x2000, 1, DmaDirection.NONE), RangeError);
  });

  await t.step("with ACCESS_PLATFORM and map ops every call goes to the ops with the token", () => {
    const { pages } = makeGuest();
    const ops = new MockMapOps(pages, 0x10000);
    const mapper = new VirtqueueMapper({ pages, accessPlatform: true, mapOps: ops, map: TOKEN });
    assertEquals(mapper.path, "map-ops");
    const a = mapper.mapPage(0x3000, 64, FROM, 0);
    assertEquals(a, 0x3000 + IOVA_OFFSET);
    assertEquals(mapper.needSync(a), true);
    mapper.syncSingleRangeForCpu(a, 16, 8, FROM);
    mapper.syncSingleRangeForDevice(a, 32, 4, FROM);
    mapper.unmapPage(a, 64, FROM, 0);
    assertEquals(mapper.maxMappingSize(), 0x10000);
    const ring = mapper.allocCoherent(300)!;
    assertEquals(ring.dmaAddr, ring.cpuAddr + IOVA_OFFSET);
    mapper.freeCoherent(300, ring);
    assertEquals(ops.calls.map((c) => c.op), [
      "map",
      "needSync",
      "syncForCpu",
      "syncForDevice",
      "unmap",
      "maxMappingSize",
      "alloc",
      "free",
    ]);
    assert(ops.calls.every((c) => c.map === TOKEN));
    assertEquals(ops.of("syncForCpu")[0].addr, a + 16); // the op gets addr + offset
    assertEquals(ops.of("syncForDevice")[0].addr, a + 32);
    assertEquals(ops.errors, []);
  });

  await t.step("ACCESS_PLATFORM without ops or a DMA API is a TypeError", () => {
    const { pages } = makeGuest();
    assertThrows(() => new VirtqueueMapper({ pages, accessPlatform: true }), TypeError);
  });
});

interface OpsFixture {
  memory: GuestMemory;
  pages: PageAllocator;
  ops: MockMapOps;
  vq: Virtqueue<string>;
}

function withOps(layout: VirtqueueLayout, indirect = false): OpsFixture {
  const { memory, pages } = makeGuest();
  const ops = new MockMapOps(pages);
  const mapper = new VirtqueueMapper({ pages, accessPlatform: true, mapOps: ops, map: TOKEN });
  const vq = createVirtqueue<string>({
    index: 0,
    size: 8,
    layout,
    eventIdx: true,
    indirect,
    mapper,
    notify: () => {},
  })!;
  return { memory, pages, ops, vq };
}

/** Guest physical address of a ring given its device address. */
const cpu = (iova: number): number => iova - IOVA_OFFSET;

/** Completes every available buffer (identity of ids) with `len` written. */
function completeAll(memory: GuestMemory, vq: Virtqueue<string>, len = 0): void {
  if (vq.layout === "split") {
    const dev = new SplitDevice(
      memory,
      vq.size,
      cpu(vq.descAddr),
      cpu(vq.driverAddr),
      cpu(vq.deviceAddr),
    );
    dev.usedIdx = memory.read16(cpu(vq.deviceAddr) + 2);
    dev.lastAvail = dev.usedIdx;
    for (const head of dev.popHeads()) dev.writeUsed(head, len);
    dev.publish();
  } else {
    const dev = new PackedDevice(
      memory,
      vq.size,
      cpu(vq.descAddr),
      cpu(vq.driverAddr),
      cpu(vq.deviceAddr),
    );
    for (let c = dev.pop(); c !== null; c = dev.pop()) dev.pushUsed(c.id, len, c.slots);
  }
}

for (const layout of ["split", "packed"] as const) {
  Deno.test(`${layout} virtqueue over map ops`, async (t) => {
    await t.step("rings come from the ops' coherent allocator and carry device addresses", () => {
      const { ops, vq } = withOps(layout);
      const allocs = ops.of("alloc");
      assertEquals(allocs.length, layout === "split" ? 1 : 3);
      assert(allocs.every((c) => c.map === TOKEN));
      assert(
        vq.descAddr >= IOVA_OFFSET && vq.driverAddr >= IOVA_OFFSET && vq.deviceAddr >= IOVA_OFFSET,
      );
    });

    await t.step(
      "every buffer is mapped with its direction and the token; descriptors hold the device addresses",
      () => {
        const { memory, ops, vq } = withOps(layout);
        assertEquals(
          vq.addSgs([{ addr: 0x1000, length: 16 }], [{ addr: 0x2000, length: 512 }, {
            addr: 0x3000,
            length: 1,
          }], "req"),
          0,
        );
        const maps = ops.of("map");
        assertEquals(maps.map((c) => [c.addr, c.size, c.dir, c.map]), [
          [0x1000, 16, TO, TOKEN],
          [0x2000, 512, FROM, TOKEN],
          [0x3000, 1, FROM, TOKEN],
        ]);
        const read = layout === "split" ? splitDesc : packedDesc;
        for (let i = 0; i < 3; i++) {
          assertEquals(read(memory, cpu(vq.descAddr), i).addr, maps[i].addr + IOVA_OFFSET);
        }
        completeAll(memory, vq, 513);
        assertEquals(vq.getBuf(), { token: "req", len: 513 });
        const unmaps = ops.of("unmap");
        assertEquals(unmaps.map((c) => [c.addr, c.size, c.dir, c.map]), [
          [0x1000 + IOVA_OFFSET, 16, TO, TOKEN],
          [0x2000 + IOVA_OFFSET, 512, FROM, TOKEN],
          [0x3000 + IOVA_OFFSET, 1, FROM, TOKEN],
        ]);
        assertEquals(ops.live.size, 0);
        assertEquals(ops.errors, []);
      },
    );

    await t.step(
      "indirect tables are mapped TO_DEVICE after their entries, and unmapped with them",
      () => {
        const { memory, ops, vq } = withOps(layout, true);
        vq.addSgs([{ addr: 0x1000, length: 16 }], [{ addr: 0x2000, length: 8 }], "ind");
        const maps = ops.of("map");
        assertEquals(maps.length, 3);
        const table = maps[2];
        assertEquals([table.size, table.dir], [32, TO]);
        const read = layout === "split" ? splitDesc : packedDesc;
        const head = read(memory, cpu(vq.descAddr), 0);
        assertEquals(head.addr, table.addr + IOVA_OFFSET);
        // The table, read at its guest physical address, holds device addresses.
        assertEquals(read64(memory, table.addr), 0x1000 + IOVA_OFFSET);
        assertEquals(read64(memory, table.addr + 16), 0x2000 + IOVA_OFFSET);
        completeAll(memory, vq, 8);
        assertEquals(vq.getBuf()?.token, "ind");
        assertEquals(ops.live.size, 0);
        assertEquals(ops.of("unmap").length, 3);
        assertEquals(ops.errors, []);
      },
    );

    await t.step("a mapping error fails the add cleanly: nothing mapped, nothing published", () => {
      const { memory, ops, vq } = withOps(layout);
      ops.failIn = 2; // the third map fails
      const r = vq.addSgs([{ addr: 0x1000, length: 16 }], [{ addr: 0x2000, length: 8 }, {
        addr: 0x3000,
        length: 1,
      }], "x");
      // Linux returns -ENOMEM from the split path and -EIO from the packed one.
      assertEquals(r, layout === "split" ? -Errno.ENOMEM : -Errno.EIO);
      assertEquals(ops.live.size, 0);
      assertEquals(ops.of("unmap").length, 2);
      assertEquals(vq.numFree, 8);
      if (layout === "split") assertEquals(memory.read16(cpu(vq.driverAddr) + 2), 0);
      else {
        // Neither the head nor the descriptor written after it looks available.
        assertEquals(packedDesc(memory, cpu(vq.descAddr), 0).flags & 0x80, 0);
        assertEquals(packedDesc(memory, cpu(vq.descAddr), 1).flags & 0x80, 0);
      }
      assertEquals(vq.getBuf(), null);
      assertEquals(vq.detachUnusedBuf(), null);
      // The queue still works.
      assertEquals(vq.addOutbuf([{ addr: 0x4000, length: 4 }], "y"), 0);
      completeAll(memory, vq);
      assertEquals(vq.getBuf()?.token, "y");
      assertEquals(ops.live.size, 0);
      assertEquals(ops.errors, []);
    });

    await t.step("a failing indirect entry or table mapping unmaps what was mapped", () => {
      const { memory, ops, pages, vq } = withOps(layout, true);
      const freeBefore = pages.freeCount;
      ops.failIn = 2; // the table itself
      const r = vq.addSgs([{ addr: 0x1000, length: 16 }], [{ addr: 0x2000, length: 8 }], "x");
      if (layout === "split") {
        assertEquals(r, -Errno.ENOMEM);
        assertEquals(ops.live.size, 0);
        assertEquals(vq.numFree, 8);
      } else {
        // virtqueue_add_packed falls back on direct descriptors after -ENOMEM.
        assertEquals(r, 0);
        assertEquals(vq.numFree, 6);
        assertEquals(packedDesc(memory, cpu(vq.descAddr), 0).flags & 4, 0);
        assertEquals(ops.live.size, 2);
        completeAll(memory, vq);
        vq.getBuf();
        assertEquals(ops.live.size, 0);
      }
      // The table's slab page was taken once; nothing else leaked.
      assertEquals(pages.freeCount, freeBefore - 1);
      assertEquals(ops.errors, []);
    });

    await t.step(
      "premapped buffers are neither mapped nor unmapped; their addresses land verbatim",
      () => {
        const { memory, ops, vq } = withOps(layout);
        assertEquals(vq.addInbufPremapped([{ addr: 0x7_0000_1000, length: 1500 }], "rx"), 0);
        assertEquals(vq.addSgs([{ addr: 0x7_0000_2000, length: 10 }], [], "tx", true), 0);
        assertEquals(ops.of("map").length, 0);
        const read = layout === "split" ? splitDesc : packedDesc;
        assertEquals(read(memory, cpu(vq.descAddr), 0).addr, 0x7_0000_1000);
        assertEquals(read(memory, cpu(vq.descAddr), 1).addr, 0x7_0000_2000);
        completeAll(memory, vq);
        assertEquals(vq.getBuf()?.token, "rx");
        assertEquals(vq.getBuf()?.token, "tx");
        assertEquals(ops.of("unmap").length, 0);
      },
    );

    await t.step("premapped indirect buffers still get their table mapped by the ring", () => {
      const { memory, ops, vq } = withOps(layout, true);
      vq.addOutbufPremapped([{ addr: 0x9000, length: 4 }, { addr: 0xa000, length: 4 }], "p");
      const maps = ops.of("map");
      assertEquals(maps.length, 1);
      assertEquals(maps[0].dir, TO);
      completeAll(memory, vq);
      vq.getBuf();
      assertEquals(ops.of("unmap").length, 1);
      assertEquals(ops.live.size, 0);
    });

    await t.step("setPremapped() makes the whole queue premapped, only while empty", () => {
      const { ops, vq } = withOps(layout);
      vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
      assertEquals(vq.setPremapped(), -Errno.EINVAL);
      vq.detachUnusedBuf();
      assertEquals(vq.setPremapped(), 0);
      const before = ops.of("map").length;
      vq.addOutbuf([{ addr: 0x5_0000_0000, length: 1 }], "b");
      assertEquals(ops.of("map").length, before);
    });

    await t.step("detachUnusedBuf() unmaps every outstanding buffer", () => {
      const { ops, vq } = withOps(layout, true);
      vq.addOutbuf([{ addr: 0x1000, length: 1 }], "a");
      vq.addSgs([{ addr: 0x2000, length: 1 }], [{ addr: 0x3000, length: 2 }], "b");
      vq.addInbuf([{ addr: 0x4000, length: 4 }], "c");
      assertEquals(ops.live.size, 5);
      const got: string[] = [];
      for (let tok = vq.detachUnusedBuf(); tok !== null; tok = vq.detachUnusedBuf()) got.push(tok);
      assertEquals(got.sort(), ["a", "b", "c"]);
      assertEquals(ops.live.size, 0);
      assertEquals(ops.errors, []);
    });

    await t.step("destroy() frees the rings through the ops", () => {
      const { ops, vq } = withOps(layout);
      assert(ops.coherent.size > 0);
      vq.destroy();
      assertEquals(ops.coherent.size, 0);
      assert(ops.of("free").every((c) => c.map === TOKEN));
      assertEquals(ops.errors, []);
    });

    await t.step("createVirtqueue() returns null when the ops cannot allocate ring memory", () => {
      const { pages } = makeGuest();
      const ops = new MockMapOps(pages);
      ops.failAlloc = true;
      const mapper = new VirtqueueMapper({ pages, accessPlatform: true, mapOps: ops, map: TOKEN });
      const vq = createVirtqueue({
        index: 0,
        size: 8,
        layout,
        eventIdx: false,
        indirect: false,
        mapper,
        notify: () => {},
      });
      assertEquals(vq, null);
    });
  });
}

Deno.test("virtqueue over dma-direct with a narrow mask", async (t) => {
  await t.step("a buffer beyond the mask fails the add with nothing published", () => {
    const { memory, pages } = makeGuest();
    const dma = new DmaDirect({ pages, mask: 0xf_ffff });
    const mapper = new VirtqueueMapper({ pages, accessPlatform: true, dma });
    const vq = createVirtqueue<string>({
      index: 0,
      size: 4,
      layout: "split",
      eventIdx: false,
      indirect: false,
      mapper,
      notify: () => {},
    })!;
    assertEquals(
      vq.addOutbuf([{ addr: 0x1000, length: 1 }, { addr: 0x10_0000, length: 1 }], "x"),
      -Errno.ENOMEM,
    );
    assertEquals(memory.read16(vq.driverAddr + 2), 0);
    assertEquals(vq.addOutbuf([{ addr: 0x1000, length: 1 }], "y"), 0);
    assertEquals(splitDesc(memory, vq.descAddr, 0).addr, 0x1000);
  });
});

Deno.test("packed virtqueue withdraws a failed chain that crossed the wrap", async (t) => {
  await t.step("slots written on the next lap go back to the previous lap's used state", () => {
    const { memory, pages } = makeGuest();
    const ops = new MockMapOps(pages);
    const mapper = new VirtqueueMapper({ pages, accessPlatform: true, mapOps: ops, map: TOKEN });
    const vq = createVirtqueue<string>({
      index: 0,
      size: 4,
      layout: "packed",
      eventIdx: false,
      indirect: false,
      mapper,
      notify: () => {},
    })!;
    const dev = new PackedDevice(
      memory,
      4,
      cpu(vq.descAddr),
      cpu(vq.driverAddr),
      cpu(vq.deviceAddr),
    );
    for (let i = 0; i < 3; i++) {
      vq.addOutbuf([{ addr: 0x1000, length: 1 }], `t${i}`);
      const c = dev.pop()!;
      dev.pushUsed(c.id, 0, 1);
      vq.getBuf();
    }
    ops.failIn = 2;
    const sgs = [{ addr: 0x1000, length: 1 }, { addr: 0x2000, length: 1 }, {
      addr: 0x3000,
      length: 1,
    }];
    assertEquals(vq.addOutbuf(sgs, "x"), -Errno.EIO);
    assertEquals(packedDesc(memory, cpu(vq.descAddr), 0).flags, 0x8080); // used, wrap 1
    assertEquals(vq.addOutbuf([{ addr: 0x4000, length: 1 }], "y"), 0); // slot 3
    const c = dev.pop()!;
    assertEquals(c.slots, 1);
    assertEquals(dev.pop(), null);
    dev.pushUsed(c.id, 0, 1);
    assertEquals(vq.getBuf()?.token, "y");
    assertEquals(vq.getBuf(), null);
    assertEquals(ops.live.size, 0);
  });
});
