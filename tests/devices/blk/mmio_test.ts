import { assertEquals } from "@std/assert";
import { DirectDmaSpace } from "../../../src/dma/direct_dma_space.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { DeviceStatus as S } from "../../../src/virtio/status.ts";
import { MmioRegister as R, VirtioMmio } from "../../../transports/mmio/virtio_mmio.ts";
import { VirtioBlk } from "../../../devices/blk/device.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { IN, OK, OUT, pattern, Ring } from "./helpers/harness.ts";

/** A virtio-blk device behind virtio-mmio, driven through registers only. */
function setup(options: { packed?: boolean; queues?: number } = {}) {
  const mem = new GuestMemory([{ base: 0, size: 8 << 20 }]);
  const disk = new MemoryBackend(1 << 20);
  const device = new VirtioBlk({
    backend: disk,
    serial: "mmio-disk",
    numQueues: options.queues ?? 1,
  });
  const irq: boolean[] = [];
  const mmio = new VirtioMmio(device, {
    dma: new DirectDmaSpace(mem),
    packed: false,
    setIrq: (level) => irq.push(level),
  });
  const r = (off: number) => mmio.read(off, 4);
  const w = (off: number, v: number) => mmio.write(off, 4, v);
  return { mem, disk, device, mmio, irq, r, w };
}

function bringUp(s: ReturnType<typeof setup>, featuresLo: number): Ring[] {
  const { r, w, mem } = s;
  w(R.STATUS, 0);
  w(R.STATUS, S.ACKNOWLEDGE);
  w(R.STATUS, S.ACKNOWLEDGE | S.DRIVER);
  w(R.DEVICE_FEATURES_SEL, 0);
  const offered = r(R.DEVICE_FEATURES);
  w(R.DRIVER_FEATURES_SEL, 0);
  w(R.DRIVER_FEATURES, offered & featuresLo);
  w(R.DRIVER_FEATURES_SEL, 1);
  w(R.DRIVER_FEATURES, 1); // VERSION_1
  w(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
  assertEquals(r(R.STATUS) & S.FEATURES_OK, S.FEATURES_OK);
  const rings: Ring[] = [];
  const n = s.device.numQueues;
  for (let q = 0; q < n; q++) {
    const ring = new Ring(mem, 64, 0x10000 + q * 0x4000);
    w(R.QUEUE_SEL, q);
    w(R.QUEUE_NUM, 64);
    w(R.QUEUE_DESC_LOW, ring.desc);
    w(R.QUEUE_DRIVER_LOW, ring.avail);
    w(R.QUEUE_DEVICE_LOW, ring.used);
    w(R.QUEUE_READY, 1);
    rings.push(ring);
  }
  w(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
  return rings;
}

Deno.test("VirtioBlk behind virtio-mmio", async (t) => {
  await t.step("identifies as device 2 with the blk config in the window", () => {
    const s = setup();
    assertEquals(s.r(R.DEVICE_ID), 2);
    assertEquals(s.mmio.size, 0x100 + 96);
    assertEquals(s.r(R.CONFIG), 2048, "capacity low");
    assertEquals(s.r(R.CONFIG + 4), 0, "capacity high");
    assertEquals(s.mmio.read(R.CONFIG + 0x14, 4), 512, "blk_size");
  });
  await t.step("a write and a read through registers, rings and the interrupt line", () => {
    const s = setup();
    const [ring] = bringUp(s, 0xffffffff);
    const hdr = 0x100000;
    s.mem.write32(hdr, OUT);
    s.mem.write64(hdr + 8, 4);
    s.mem.write(0x101000, pattern(1024, 5));
    ring.add([
      { addr: hdr, len: 16 },
      { addr: 0x101000, len: 1024 },
      { addr: 0x102000, len: 1, write: true },
    ]);
    s.w(R.QUEUE_NOTIFY, 0);
    assertEquals(s.mem.read8(0x102000), OK);
    assertEquals(s.r(R.INTERRUPT_STATUS), 1);
    assertEquals(s.irq, [true]);
    s.w(R.INTERRUPT_ACK, 1);
    assertEquals(s.disk.bytes.slice(2048, 3072), pattern(1024, 5));
    s.mem.write32(hdr + 16, IN);
    s.mem.write64(hdr + 24, 4);
    ring.add([
      { addr: hdr + 16, len: 16 },
      { addr: 0x103000, len: 1024, write: true },
      { addr: 0x102001, len: 1, write: true },
    ]);
    s.w(R.QUEUE_NOTIFY, 0);
    assertEquals(s.mem.view(0x103000, 1024).slice(), pattern(1024, 5));
    assertEquals(ring.takeUsed().map((u) => u.len), [1, 1025]);
  });
  await t.step("the driver toggles writeback through the config window", () => {
    const s = setup();
    bringUp(s, 0xffffffff);
    assertEquals(s.mmio.read(R.CONFIG + 0x20, 1), 1);
    s.mmio.write(R.CONFIG + 0x20, 1, 0);
    assertEquals(s.mmio.read(R.CONFIG + 0x20, 1), 0);
    assertEquals(s.device.writethrough, true);
  });
  await t.step("a malformed request sets DEVICE_NEEDS_RESET and raises a config interrupt", () => {
    const s = setup();
    const [ring] = bringUp(s, 0xffffffff);
    ring.add([{ addr: 0x100000, len: 8 }, { addr: 0x102000, len: 1, write: true }]);
    s.w(R.QUEUE_NOTIFY, 0);
    assertEquals(s.r(R.STATUS) & S.DEVICE_NEEDS_RESET, S.DEVICE_NEEDS_RESET);
    assertEquals(s.r(R.INTERRUPT_STATUS) & 2, 2);
    assertEquals(s.mmio.diagnostics.lastError.includes("8-byte header"), true);
    // A reset brings it back.
    const [ring2] = bringUp(s, 0xffffffff);
    s.mem.write32(0x100000, IN);
    s.mem.write64(0x100008, 0);
    ring2.add([
      { addr: 0x100000, len: 16 },
      { addr: 0x103000, len: 512, write: true },
      { addr: 0x102000, len: 1, write: true },
    ]);
    s.w(R.QUEUE_NOTIFY, 0);
    assertEquals(s.mem.read8(0x102000), OK);
  });
  await t.step("a capacity change raises a config interrupt and bumps the generation", () => {
    let size = 1 << 20;
    const inner = new MemoryBackend(4 << 20);
    const mem = new GuestMemory([{ base: 0, size: 1 << 20 }]);
    const device = new VirtioBlk({
      backend: {
        get size() {
          return size;
        },
        readOnly: false,
        read: (o, d) => inner.read(o, d),
        write: (o, b) => inner.write(o, b),
        flush: () => {},
        discard: () => {},
        writeZeroes: () => {},
      },
    });
    const mmio = new VirtioMmio(device, { dma: new DirectDmaSpace(mem), setIrq: () => {} });
    const s = {
      mem,
      disk: inner,
      device,
      mmio,
      irq: [],
      r: (o: number) => mmio.read(o, 4),
      w: (o: number, v: number) => mmio.write(o, 4, v),
    };
    bringUp(s, 0xffffffff);
    const gen = s.r(R.CONFIG_GENERATION);
    size = 2 << 20;
    device.updateCapacity();
    assertEquals(s.r(R.CONFIG), 4096);
    assertEquals(s.r(R.CONFIG_GENERATION), gen + 1);
    assertEquals(s.r(R.INTERRUPT_STATUS) & 2, 2);
  });
});
