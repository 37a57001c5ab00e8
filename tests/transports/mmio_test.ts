import { assertEquals, assertThrows } from "@std/assert";
import { GuestMemory } from "../../src/memory/mod.ts";
import { DirectDmaSpace } from "../../src/dma/mod.ts";
import { DeviceStatus, VirtioFeature } from "../../src/virtio/mod.ts";
import { MMIO_MAGIC, MmioRegister as R, VirtioMmio } from "../../transports/mmio/virtio_mmio.ts";
import { ECHO_DEVICE_ID, ECHO_MAGIC, EchoDevice } from "../helpers/echo_device.ts";

const S = DeviceStatus;

function setup(options: { queues?: number; packed?: boolean } = {}) {
  const mem = new GuestMemory([{ base: 0, size: 0x100000 }]);
  const dma = new DirectDmaSpace(mem);
  const device = new EchoDevice(options.queues ?? 2, 64);
  const irq: boolean[] = [];
  const mmio = new VirtioMmio(device, {
    dma,
    packed: options.packed,
    setIrq: (level) => irq.push(level),
  });
  const r = (off: number) => mmio.read(off, 4);
  const w = (off: number, v: number) => mmio.write(off, 4, v);
  return { mem, dma, device, mmio, irq, r, w };
}

/** Negotiates features `lo`/`hi` and returns the status read back. */
function negotiate(
  w: (o: number, v: number) => void,
  r: (o: number) => number,
  lo: number,
  hi: number,
) {
  w(R.STATUS, S.ACKNOWLEDGE);
  w(R.STATUS, S.ACKNOWLEDGE | S.DRIVER);
  w(R.DRIVER_FEATURES_SEL, 0);
  w(R.DRIVER_FEATURES, lo);
  w(R.DRIVER_FEATURES_SEL, 1);
  w(R.DRIVER_FEATURES, hi);
  w(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
  return r(R.STATUS);
}

Deno.test("virtio-mmio identification registers", async (t) => {
  const { r, mmio } = setup();
  await t.step("magic, version 2, device id and vendor", () => {
    assertEquals(r(R.MAGIC_VALUE), MMIO_MAGIC);
    assertEquals(r(R.VERSION), 2);
    assertEquals(r(R.DEVICE_ID), ECHO_DEVICE_ID);
    assertEquals(mmio.size, 0x108);
  });
  await t.step("device features show the device bits and the transport bits by window", () => {
    const { r, w } = setup();
    w(R.DEVICE_FEATURES_SEL, 0);
    const low = r(R.DEVICE_FEATURES);
    assertEquals(low & 3, 3, "echo bits 0 and 1");
    assertEquals((low >>> VirtioFeature.EVENT_IDX) & 1, 1);
    assertEquals((low >>> VirtioFeature.INDIRECT_DESC) & 1, 1);
    w(R.DEVICE_FEATURES_SEL, 1);
    const high = r(R.DEVICE_FEATURES);
    assertEquals(high & 1, 1, "VERSION_1");
    assertEquals((high >>> 1) & 1, 0, "no ACCESS_PLATFORM without an IOMMU space");
    assertEquals((high >>> 2) & 1, 1, "RING_PACKED");
    w(R.DEVICE_FEATURES_SEL, 2);
    assertEquals(r(R.DEVICE_FEATURES), 0);
    w(R.DEVICE_FEATURES_SEL, 0xffffffff);
    assertEquals(r(R.DEVICE_FEATURES), 0);
  });
  await t.step("no shared memory regions: lengths and bases read all-ones", () => {
    assertEquals(r(R.SHM_LEN_LOW), 0xffffffff);
    assertEquals(r(R.SHM_BASE_HIGH), 0xffffffff);
  });
});

Deno.test("virtio-mmio status and feature negotiation", async (t) => {
  await t.step("an acceptable feature set keeps FEATURES_OK", () => {
    const { r, w, mmio } = setup();
    assertEquals(negotiate(w, r, 1, 1), S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
    assertEquals(mmio.core.features, (1n << 32n) | 1n);
  });
  await t.step("FEATURES_OK does not stick without VERSION_1", () => {
    const { r, w, mmio } = setup();
    assertEquals(negotiate(w, r, 1, 0), S.ACKNOWLEDGE | S.DRIVER);
    assertEquals(
      mmio.diagnostics.lastError,
      "FEATURES_OK refused: the driver did not accept VIRTIO_F_VERSION_1",
    );
  });
  await t.step(
    "FEATURES_OK does not stick for features not offered, or refused by the device",
    () => {
      const { r, w } = setup();
      assertEquals(negotiate(w, r, 1 << 5, 1) & S.FEATURES_OK, 0);
      const b = setup();
      assertEquals(negotiate(b.w, b.r, 2, 1) & S.FEATURES_OK, 0);
      assertEquals(b.mmio.diagnostics.lastError, "FEATURES_OK refused: echo refuses feature 1");
    },
  );
  await t.step("feature writes after FEATURES_OK are ignored", () => {
    const { r, w, mmio } = setup();
    negotiate(w, r, 1, 1);
    w(R.DRIVER_FEATURES_SEL, 0);
    w(R.DRIVER_FEATURES, 0);
    assertEquals(mmio.core.features, (1n << 32n) | 1n);
  });
  await t.step("DRIVER_OK without FEATURES_OK is refused", () => {
    const { r, w, device } = setup();
    w(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK);
    assertEquals(r(R.STATUS), S.ACKNOWLEDGE | S.DRIVER);
    assertEquals(device.activations.length, 0);
  });
  await t.step("a write that clears bits is ignored; writing 0 resets", () => {
    const { r, w, device } = setup();
    negotiate(w, r, 1, 1);
    w(R.STATUS, S.ACKNOWLEDGE);
    assertEquals(r(R.STATUS), S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
    w(R.STATUS, 0);
    assertEquals(r(R.STATUS), 0);
    assertEquals(device.resets, 1);
  });
});

Deno.test("virtio-mmio queue registers", async (t) => {
  await t.step("QueueNumMax is the device maximum, 0 for absent queues", () => {
    const { r, w } = setup();
    w(R.QUEUE_SEL, 1);
    assertEquals(r(R.QUEUE_NUM_MAX), 64);
    w(R.QUEUE_SEL, 2);
    assertEquals(r(R.QUEUE_NUM_MAX), 0);
    w(R.QUEUE_READY, 1);
    assertEquals(r(R.QUEUE_READY), 0);
  });
  await t.step("addresses are two 32-bit halves, ignored while the queue is ready", () => {
    const { w, mmio } = setup();
    w(R.QUEUE_SEL, 0);
    w(R.QUEUE_DESC_HIGH, 0x1);
    w(R.QUEUE_DESC_LOW, 0x2000);
    w(R.QUEUE_DRIVER_LOW, 0x3000);
    w(R.QUEUE_DEVICE_LOW, 0x4000);
    w(R.QUEUE_DEVICE_HIGH, 0x2);
    const q = mmio.core.queues[0];
    assertEquals([q.address(0), q.address(1), q.address(2)], [
      0x1_0000_2000,
      0x3000,
      0x2_0000_4000,
    ]);
    w(R.QUEUE_READY, 1);
    w(R.QUEUE_DESC_LOW, 0x9000);
    assertEquals(q.address(0), 0x1_0000_2000);
  });
  await t.step("an address at or above 2^53 is kept unrepresentable, not rounded", () => {
    const { w, mmio } = setup();
    w(R.QUEUE_DESC_HIGH, 0x0020_0000);
    assertEquals(mmio.core.queues[0].address(0), NaN);
  });
});

Deno.test("virtio-mmio config space and bad accesses", async (t) => {
  await t.step("config reads at every width, writes go through the device", () => {
    const { mmio } = setup();
    assertEquals(mmio.read(R.CONFIG, 4), ECHO_MAGIC);
    assertEquals(mmio.read(R.CONFIG + 2, 2), ECHO_MAGIC >>> 16);
    assertEquals(mmio.read(R.CONFIG + 3, 1), ECHO_MAGIC >>> 24);
    mmio.write(R.CONFIG + 4, 4, 0x11223344);
    assertEquals(mmio.read(R.CONFIG + 4, 4), 0x11223344);
    mmio.write(R.CONFIG, 4, 0);
    assertEquals(mmio.read(R.CONFIG, 4), ECHO_MAGIC, "magic is read-only");
  });
  await t.step(
    "a device config change bumps ConfigGeneration and interrupts only a live driver",
    () => {
      const { r, w, device, irq } = setup();
      const before = r(R.CONFIG_GENERATION);
      device.changeConfig(5);
      assertEquals(r(R.CONFIG_GENERATION), before + 1);
      assertEquals(irq, []);
      negotiate(w, r, 1, 1);
      w(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
      device.changeConfig(6);
      assertEquals(r(R.INTERRUPT_STATUS), 2);
      assertEquals(irq, [true]);
      w(R.INTERRUPT_ACK, 2);
      assertEquals(r(R.INTERRUPT_STATUS), 0);
      assertEquals(irq, [true, false]);
    },
  );
  await t.step("narrow, unaligned or unknown register accesses read 0 and are counted", () => {
    const { mmio } = setup();
    assertEquals(mmio.read(R.MAGIC_VALUE, 2), 0);
    assertEquals(mmio.read(R.VERSION + 1, 4), 0);
    assertEquals(mmio.read(0x0f0, 4), 0);
    mmio.write(R.STATUS, 1, 1);
    assertEquals(mmio.read(R.STATUS, 4), 0);
    assertEquals(mmio.read(R.CONFIG + 6, 4), 0, "straddles the end of config");
    mmio.write(R.CONFIG + 8, 1, 0);
    assertEquals(mmio.diagnostics.badAccesses, 6);
  });
  await t.step("the transport refuses a missing interrupt callback", () => {
    const mem = new GuestMemory([{ base: 0, size: 0x1000 }]);
    assertThrows(
      // deno-lint-ignore no-explicit-any
      () => new VirtioMmio(new EchoDevice(), { dma: new DirectDmaSpace(mem) } as any),
      TypeError,
    );
  });
});
