import { assertEquals, assertRejects, assertThrows } from "@std/assert";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { ErrorInjectingBackend } from "../../../devices/blk/backends/error_injecting.ts";
import { DeviceStatus } from "../../../src/virtio/status.ts";
import { VirtioFeature } from "../../../src/virtio/features.ts";
import { BlockError } from "../../../src/guest/blk/block_error.ts";
import { VirtioBlkDriver } from "../../../src/guest/blk/virtio_blk_driver.ts";
import { DeferredBackend } from "../../devices/blk/helpers/test_backends.ts";
import { blkMachine, coreOf, guestFor, pattern, RING_MATRIX } from "./helpers/blk_machine.ts";
import { VirtioBlk } from "../../../devices/blk/device.ts";
import { VirtioDriverError } from "../../../src/guest/virtio/virtio_guest_device.ts";

const F_DISCARD = 13;
const F_WRITE_ZEROES = 14;

Deno.test("VirtioBlkDriver.probe() negotiates, reads the config and starts the queues", async (t) => {
  await t.step("features, limits, capacity and DRIVER_OK", () => {
    const { driver, guest } = blkMachine({
      device: {
        numQueues: 2,
        blockSize: 4096,
        segMax: 64,
        sizeMax: 65536,
        discard: { maxSectors: 256, maxSegments: 4 },
      },
    });
    assertEquals(guest.getStatus() & DeviceStatus.DRIVER_OK, DeviceStatus.DRIVER_OK);
    assertEquals(driver.capacity, 8192);
    assertEquals(driver.queues.length, 2);
    assertEquals(driver.queues.map((q) => q.name), ["req.0", "req.1"]);
    assertEquals(driver.limits.logicalBlockSize, 4096);
    assertEquals(driver.limits.maxSegments, 64);
    assertEquals(driver.limits.maxSegmentSize, 65536);
    assertEquals(driver.limits.maxDiscardSectors, 256);
    assertEquals(driver.limits.maxDiscardSegments, 4);
    assertEquals(driver.readOnly, false);
    assertEquals(driver.cacheMode, "write back");
    assertEquals(driver.hasFeature(VirtioFeature.VERSION_1), true);
  });
  await t.step("maxQueues caps the queues used on an MQ device", () => {
    const { driver } = blkMachine({ device: { numQueues: 8 }, driver: { maxQueues: 3 } });
    assertEquals(driver.queues.length, 3);
  });
  await t.step("a device that is not virtio-blk is refused with TypeError", () => {
    const { guest } = guestFor(new VirtioBlk({ backend: new MemoryBackend(1 << 20) }));
    const other = Object.create(guest, { deviceId: { value: 1 } });
    assertThrows(() => VirtioBlkDriver.probe(other), TypeError, "is not 2");
  });
  await t.step("a device that refuses FEATURES_OK leaves FAILED set", () => {
    const device = new VirtioBlk({ backend: new MemoryBackend(1 << 20) });
    device.validateFeatures = () => "no";
    const { guest } = guestFor(device);
    const e = assertThrows(() => VirtioBlkDriver.probe(guest), VirtioDriverError);
    assertEquals(e.errno, -19);
    assertEquals(guest.getStatus() & DeviceStatus.FAILED, DeviceStatus.FAILED);
  });
  await t.step("an invalid block size fails the probe with EINVAL", () => {
    const device = new VirtioBlk({ backend: new MemoryBackend(1 << 20) });
    device.config[0x15] = 0x03; // blk_size 0x300: not a power of two
    const { guest } = guestFor(device);
    const e = assertThrows(() => VirtioBlkDriver.probe(guest), BlockError, "invalid block size");
    assertEquals(e.errno, 22);
    assertEquals(guest.getStatus() & DeviceStatus.FAILED, DeviceStatus.FAILED);
  });
});

for (const { name, transport, ring, msi } of RING_MATRIX) {
  Deno.test(`VirtioBlkDriver I/O over ${name} rings`, async (t) => {
    await t.step("write then read back, one block and many", async () => {
      const { driver, backend } = blkMachine({ transport, ring, msi });
      await driver.write(8, pattern(4096, 1));
      assertEquals(await driver.read(8, 4096), pattern(4096, 1));
      assertEquals((backend as MemoryBackend).bytes.slice(4096, 8192), pattern(4096, 1));
      await driver.write(100, pattern(300 * 512, 2));
      assertEquals(await driver.read(100, 300 * 512), pattern(300 * 512, 2));
    });
    await t.step("large transfers are split into requests of many segments", async () => {
      const { driver, device } = blkMachine({
        transport,
        ring,
        msi,
        device: { segMax: 8 },
        driver: { segmentSize: 4096 },
      });
      const data = pattern(1 << 20, 3);
      await driver.write(0, data);
      assertEquals(device.stats.writeRequests, (1 << 20) / (8 * 4096));
      assertEquals(await driver.read(0, 1 << 20), data);
    });
    await t.step("flush, GET_ID, discard and write zeroes", async () => {
      const disk = new MemoryBackend(4 << 20);
      disk.bytes.fill(0x77);
      const { driver, device } = blkMachine({
        transport,
        ring,
        msi,
        device: { backend: disk, serial: "vireo-disk-7" },
      });
      await driver.flush();
      assertEquals(device.stats.flushRequests, 1);
      assertEquals(await driver.getId(), "vireo-disk-7");
      await driver.writeZeroes(16, 8);
      await driver.writeZeroes(40, 8, { unmap: false });
      await driver.discard(64, 8);
      const back = await driver.read(16, 56 * 512);
      const sectors = (from: number, to: number) => back.slice((from - 16) * 512, (to - 16) * 512);
      assertEquals(sectors(16, 24), new Uint8Array(8 * 512));
      assertEquals(sectors(24, 40), new Uint8Array(16 * 512).fill(0x77));
      assertEquals(sectors(40, 48), new Uint8Array(8 * 512));
      assertEquals(sectors(48, 64), new Uint8Array(16 * 512).fill(0x77));
      assertEquals(device.stats.writeZeroesRequests, 2);
      assertEquals(device.stats.discardRequests, 1);
    });
    await t.step("many concurrent requests on a small ring all complete", async () => {
      const { driver } = blkMachine({ transport, ring, msi, device: { queueSize: 8 } });
      const writes = Array.from({ length: 40 }, (_, i) => driver.write(i * 8, pattern(4096, i)));
      await Promise.all(writes);
      const reads = await Promise.all(
        Array.from({ length: 40 }, (_, i) => driver.read(i * 8, 4096)),
      );
      reads.forEach((r, i) => assertEquals(r, pattern(4096, i)));
      assertEquals(driver.inFlight, 0);
    });
    await t.step("out-of-order completion from an asynchronous backend", async () => {
      const disk = new DeferredBackend(4 << 20);
      const { driver } = blkMachine({ transport, ring, msi, device: { backend: disk } });
      disk.inner.bytes.set(pattern(8 * 4096, 5));
      const reads = Array.from({ length: 8 }, (_, i) => driver.read(i * 8, 4096));
      while (disk.held.length < 8) await new Promise((r) => setTimeout(r, 0));
      await disk.completeAll("reverse");
      const got = await Promise.all(reads);
      got.forEach((r, i) => assertEquals(r, pattern(8 * 4096, 5).slice(i * 4096, (i + 1) * 4096)));
    });
  });
}

Deno.test("VirtioBlkDriver reports device errors as the block layer does", async (t) => {
  await t.step("IOERR from a backend failure rejects with EIO and status 1", async () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(1 << 20));
    disk.inject({ ops: ["read"], count: 1 });
    const { driver } = blkMachine({ device: { backend: disk } });
    const e = await assertRejects(() => driver.read(0, 512), BlockError);
    assertEquals([e.errno, e.status], [5, 1]);
    assertEquals(await driver.read(0, 512), new Uint8Array(512));
  });
  await t.step("an unknown request type completes with UNSUPP (driver-level submit)", async () => {
    const { driver } = blkMachine();
    assertEquals((await driver.submit({ type: 99 })).status, 2);
  });
  await t.step(
    "a read past the capacity at the driver level is IOERR from the device",
    async () => {
      const { driver } = blkMachine();
      const page = driver.dev.pages.allocPages(1)!;
      const c = await driver.submit({
        type: 0,
        sector: driver.capacity,
        data: [{ addr: page, length: 512 }],
      });
      assertEquals(c, { status: 1, len: 1 });
      await assertRejects(
        () => driver.read(driver.capacity - 1, 1024),
        BlockError,
        "beyond end of device",
      );
    },
  );
  await t.step("discard and write zeroes without the feature reject EOPNOTSUPP", async () => {
    const { driver } = blkMachine({ device: { discard: false, writeZeroes: false } });
    assertEquals((await assertRejects(() => driver.discard(0, 8), BlockError)).errno, 95);
    assertEquals((await assertRejects(() => driver.writeZeroes(0, 8), BlockError)).errno, 95);
  });
  await t.step("a read-only disk: writes reject EROFS; a raw OUT gets IOERR", async () => {
    const { driver } = blkMachine({
      device: { backend: new MemoryBackend(1 << 20, { readOnly: true }) },
    });
    assertEquals(driver.readOnly, true);
    assertEquals(
      (await assertRejects(() => driver.write(0, new Uint8Array(512)), BlockError)).errno,
      30,
    );
    const page = driver.dev.pages.allocPages(1)!;
    assertEquals((await driver.submit({ type: 1, data: [{ addr: page, length: 512 }] })).status, 1);
  });
  await t.step("GET_ID on a device without a serial is the empty string", async () => {
    const { driver } = blkMachine();
    assertEquals(await driver.getId(), "");
  });
  await t.step("misaligned block-layer requests throw RangeError", () => {
    const { driver } = blkMachine({ device: { blockSize: 4096 } });
    assertThrows(() => driver.read(1, 4096), RangeError);
    assertThrows(() => driver.read(0, 512), RangeError);
  });
});

Deno.test("VirtioBlkDriver cache mode and flush", async (t) => {
  await t.step(
    "switching to write through makes the device flush every write and skips FLUSH",
    async () => {
      const { driver, device } = blkMachine();
      driver.setCacheMode("write through");
      assertEquals(driver.cacheMode, "write through");
      assertEquals(device.writethrough, true);
      await driver.flush();
      assertEquals(device.stats.flushRequests, 0);
      driver.setCacheMode("write back");
      await driver.flush();
      assertEquals(device.stats.flushRequests, 1);
    },
  );
  await t.step("without CONFIG_WCE the mode is fixed", () => {
    const { driver } = blkMachine({ device: { configWce: false } });
    assertEquals(driver.cacheMode, "write back");
    assertThrows(() => driver.setCacheMode("write through"), BlockError);
  });
});

Deno.test("VirtioBlkDriver multi-queue", async () => {
  const { driver, device, guest } = blkMachine({ device: { numQueues: 4 } });
  await Promise.all(Array.from({ length: 16 }, (_, i) => driver.write(i * 8, pattern(4096, i))));
  for (let q = 0; q < 4; q++) {
    assertEquals(await driver.read(q * 8, 4096, { queue: q }), pattern(4096, q));
  }
  assertEquals(device.stats.writeRequests, 16);
  assertEquals(guest.diagnostics.interrupts > 0, true);
});

Deno.test("VirtioBlkDriver reacts to config changes", async (t) => {
  await t.step("a capacity change is reported as the new size", async () => {
    let size = 1 << 20;
    const inner = new MemoryBackend(4 << 20);
    const sizes: number[] = [];
    const { driver, device } = blkMachine({
      device: {
        backend: {
          get size() {
            return size;
          },
          readOnly: false,
          read: (o, d) => inner.read(o, d),
          write: (o, s) => inner.write(o, s),
          flush: () => {},
          discard: () => {},
          writeZeroes: () => {},
        },
      },
      driver: { onCapacityChange: (s) => sizes.push(s) },
    });
    size = 2 << 20;
    device.updateCapacity();
    await new Promise((r) => setTimeout(r, 0));
    assertEquals(sizes, [4096]);
    assertEquals(driver.capacity, 4096);
    await driver.write(3000, pattern(512, 1));
  });
  await t.step("DEVICE_NEEDS_RESET fails every outstanding request with EIO", async () => {
    const disk = new DeferredBackend(1 << 20);
    const { driver, machine } = blkMachine({ device: { backend: disk } });
    const pending = [driver.read(0, 512), driver.write(8, pattern(512, 1))];
    await new Promise((r) => setTimeout(r, 0));
    coreOf(machine).fail("test: device broken");
    for (const p of pending) assertEquals((await assertRejects(() => p, BlockError)).errno, 5);
    assertEquals(driver.brokenReason, "the device needs a reset");
    await assertRejects(() => driver.read(0, 512), BlockError, "needs a reset");
    await disk.completeAll();
  });
  await t.step("remove() resets the device and fails new requests", async () => {
    const { driver, guest, device } = blkMachine();
    await driver.write(0, pattern(512, 1));
    driver.remove();
    assertEquals(guest.getStatus(), 0);
    assertEquals(device.inFlight, 0);
    await assertRejects(() => driver.read(0, 512), BlockError, "removed");
  });
});

Deno.test("VirtioBlkDriver mapping seam", async (t) => {
  await t.step("the default mapper lets the virtqueue map (no premapping)", async () => {
    const { driver } = blkMachine();
    await driver.write(0, pattern(512, 1));
    assertEquals(
      driver.mapper.mapRequest({
        header: { addr: 0, length: 16 },
        data: [],
        dataDirection: 1,
        status: { addr: 16, length: 1 },
      }),
      {
        out: [{ addr: 0, length: 16 }],
        in: [{ addr: 16, length: 1 }],
        premapped: false,
      },
    );
  });
  await t.step("unused feature constants stay referenced", () => {
    assertEquals([F_DISCARD, F_WRITE_ZEROES], [13, 14]);
  });
});
