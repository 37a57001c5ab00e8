import { assertEquals } from "@std/assert";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import {
  createMachine,
  type MachineDeviceSpec,
  PCI_MEM_WINDOW,
  pciIntxLine,
} from "../../../src/machine.ts";
import { DmaDirect } from "../../../src/guest/dma/dma_direct.ts";
import { enumeratePciBus } from "../../../src/guest/pci/pci_enumeration.ts";
import {
  probeVirtioPciModern,
  VIRTIO_MSI_NO_VECTOR,
  VirtioPciCommon as C,
  type VirtioPciModernDriver,
} from "../../../src/guest/pci/virtio_pci_modern.ts";
import { VirtioDriverError } from "../../../src/guest/virtio/virtio_guest_device.ts";
import { featureMask, VirtioFeature as F } from "../../../src/virtio/features.ts";
import { DeviceStatus as S } from "../../../src/virtio/status.ts";
import { ECHO_F_GOOD, ECHO_F_REFUSED, EchoDevice } from "../../helpers/echo_device.ts";
import { collector, goodCaps, handBuiltFunction, TraceBus } from "./_rig.ts";

/** A machine with one echo device whose guest side is probed through a tracing bus. */
function tracedPci(spec: Partial<MachineDeviceSpec> = {}, msi = true) {
  const device = new EchoDevice(2, 64);
  const m = createMachine({ probe: false, msi, devices: [{ device, ...spec }] });
  const trace = new TraceBus(m.bus);
  const [pci] = enumeratePciBus(trace, { memWindow: PCI_MEM_WINDOW, routeIntx: pciIntxLine });
  const drv = probeVirtioPciModern({
    pci,
    pages: m.pages,
    heap: m.heap,
    dma: new DmaDirect({ pages: m.pages }),
    irq: msi
      ? m.irq
      : { requestIrq: m.irq.requestIrq.bind(m.irq), freeIrq: m.irq.freeIrq.bind(m.irq) },
  });
  const common = pci.resourceStart(4); // VirtioPci puts common config at offset 0 of BAR 4
  return { device, m, trace, pci, drv, common, vp: m.entries[0].pci! };
}

function pciGuest(spec: Partial<MachineDeviceSpec> = {}, msi = true) {
  const device = new EchoDevice(2, 64);
  const m = createMachine({ msi, devices: [{ device, ...spec }] });
  return { device, m, drv: m.guest(0) as VirtioPciModernDriver, vp: m.entries[0].pci! };
}

function thrown(run: () => unknown): VirtioDriverError {
  try {
    run();
  } catch (e) {
    if (e instanceof VirtioDriverError) return e;
    throw e;
  }
  throw new Error("expected a VirtioDriverError");
}

Deno.test("virtio-pci driver: status sequence and feature negotiation", async (t) => {
  await t.step("status goes 0, ACK, DRIVER, FEATURES_OK, DRIVER_OK by read-modify-write", () => {
    const { drv, trace, common } = tracedPci();
    drv.negotiate(featureMask(ECHO_F_GOOD));
    drv.setupQueues([{ name: "q0", callback: () => {} }]);
    drv.setDriverOk();
    const status = trace.writesIn(common + C.STATUS, 1).map((w) => w.value);
    assertEquals(status, [0, 1, 3, 11, 15]);
  });
  await t.step("all four feature windows are read and written", () => {
    const { drv, trace, common } = tracedPci();
    const features = drv.negotiate(featureMask(ECHO_F_GOOD));
    assertEquals(trace.writesIn(common + C.DFSELECT, 4).map((w) => w.value), [3, 2, 1, 0]);
    const g = trace.log.filter((a) =>
      a.op === "memWrite" && (a.address === common + C.GFSELECT || a.address === common + C.GF)
    ).map((a) => a.value);
    assertEquals(g, [3, 0, 2, 0, 1, Number(features >> 32n), 0, Number(features & 0xffff_ffffn)]);
  });
  await t.step(
    "the driver's bits are kept only when offered; transport bits as Linux keeps them",
    () => {
      const { drv } = tracedPci({ ring: { inOrder: true, notificationData: false } });
      const f = drv.negotiate(featureMask(ECHO_F_GOOD, 5));
      assertEquals(
        f,
        featureMask(
          ECHO_F_GOOD,
          F.INDIRECT_DESC,
          F.EVENT_IDX,
          F.VERSION_1,
          F.RING_PACKED,
          F.RING_RESET,
        ),
      );
      assertEquals(drv.deviceFeatures & featureMask(F.IN_ORDER), featureMask(F.IN_ORDER));
      assertEquals(drv.hasFeature(F.IN_ORDER), false, "Linux clears IN_ORDER");
    },
  );
  await t.step("a device that refuses FEATURES_OK fails the negotiation with FAILED set", () => {
    const { drv } = tracedPci();
    const e = thrown(() => drv.negotiate(featureMask(ECHO_F_REFUSED)));
    assertEquals(e.errno, -19);
    assertEquals(e.message.includes("device refuses features"), true, e.message);
    assertEquals(drv.getStatus() & (S.FAILED | S.FEATURES_OK), S.FAILED);
  });
  await t.step("after a reset the driver can negotiate again from scratch", () => {
    const { drv, vp } = tracedPci();
    drv.negotiate(0n);
    drv.reset();
    assertEquals(drv.getStatus(), 0);
    drv.negotiate(featureMask(ECHO_F_GOOD));
    assertEquals(vp.core.status, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
  });
  await t.step("a guest feature filter turns packed rings off", () => {
    const { m } = pciGuest();
    const filtered = createMachine({
      devices: [new EchoDevice()],
      guestFilterFeatures: featureMask(F.RING_PACKED),
    });
    const drv = filtered.guest(0);
    drv.negotiate(0n);
    assertEquals(drv.hasFeature(F.RING_PACKED), false);
    assertEquals(drv.setupQueues([{ name: "q" }])[0].layout, "split");
    assertEquals(m.entries.length, 1);
  });
});

Deno.test("virtio-pci driver: queue setup as vp_modern_find_vqs does it", async (t) => {
  await t.step("per queue: select, size, addresses, vector; queue_enable only after all", () => {
    const { drv, trace, common } = tracedPci();
    drv.negotiate(0n);
    trace.log.length = 0;
    const [a, b] = drv.setupQueues([{ name: "a", callback: () => {} }, {
      name: "b",
      callback: () => {},
    }]);
    const writes = trace.writesIn(common, 0x40).map((w) => w.offset);
    const firstEnable = writes.indexOf(C.Q_ENABLE);
    assertEquals(writes.lastIndexOf(C.Q_MSIX) < firstEnable, true);
    assertEquals(writes.filter((o) => o === C.Q_ENABLE).length, 2);
    const queueWrites = trace.writesIn(common, 0x40).filter((w) =>
      w.offset >= C.Q_SIZE && w.offset < C.Q_ENABLE ||
      w.offset >= C.Q_DESCLO && w.offset < C.Q_NDATA
    );
    assertEquals(queueWrites.slice(0, 8).map((w) => [w.offset, w.value]), [
      [C.Q_SIZE, a.size],
      [C.Q_DESCLO, a.descAddr],
      [C.Q_DESCLO + 4, 0],
      [C.Q_AVAILLO, a.driverAddr],
      [C.Q_AVAILLO + 4, 0],
      [C.Q_USEDLO, a.deviceAddr],
      [C.Q_USEDLO + 4, 0],
      [C.Q_MSIX, 1],
    ]);
    assertEquals(b.index, 1);
  });
  await t.step("queues already enabled or absent are refused", () => {
    const { drv } = tracedPci();
    drv.negotiate(0n);
    const e = thrown(() => drv.setupQueues([{ name: "a" }, { name: "b" }, { name: "c" }]));
    assertEquals(e.errno, -22, e.message); // index 2 >= num_queues
    drv.setupQueues([{ name: "a" }]);
    drv.setDriverOk();
    let typeError = "";
    try {
      drv.setupQueues([{ name: "again" }]);
    } catch (err) {
      typeError = (err as Error).name;
    }
    assertEquals(typeError, "TypeError");
  });
  await t.step("the used ring is 64-byte aligned as SMP_CACHE_BYTES asks", () => {
    const { drv } = tracedPci();
    drv.negotiate(0n);
    const { m } = pciGuest();
    const split = createMachine({
      devices: [{ device: new EchoDevice(), ring: { packed: false } }],
    }).guest(0);
    split.negotiate(0n);
    const [vq] = split.setupQueues([{ name: "q" }]);
    assertEquals(vq.layout, "split");
    assertEquals(vq.deviceAddr % 64, 0);
    assertEquals(
      vq.deviceAddr - vq.descAddr,
      Math.ceil((16 * vq.size + 6 + 2 * vq.size) / 64) * 64,
    );
    assertEquals(m.entries.length, 1);
  });
  await t.step("deleteQueues() releases rings, vectors and MSI-X", () => {
    const { drv, m, pci, common, trace } = tracedPci();
    drv.negotiate(0n);
    const before = m.pages.freeCount;
    drv.setupQueues([{ name: "a", callback: () => {} }]);
    assertEquals(pci.msixEnabled, true);
    drv.deleteQueues();
    assertEquals(m.pages.freeCount, before);
    assertEquals(pci.msixEnabled, false);
    assertEquals(trace.memRead(common + C.MSIX, 2), VIRTIO_MSI_NO_VECTOR);
    // queue_enable stays 1 until a reset, as in Linux: reset, then set up again.
    assertEquals(thrown(() => drv.setupQueues([{ name: "a" }])).errno, -2);
    drv.reset();
    drv.negotiate(0n);
    drv.setupQueues([{ name: "a", callback: () => {} }]);
    assertEquals(drv.irqMode, "msix-per-vq");
  });
});

Deno.test("virtio-pci driver: MSI-X vectors in Linux's order, with fallbacks", async (t) => {
  await t.step("one vector for config and one per queue with a callback", () => {
    const { drv, pci } = tracedPci();
    drv.negotiate(0n);
    drv.setupQueues([{ name: "a", callback: () => {} }, { name: "b", callback: () => {} }]);
    assertEquals(drv.irqMode, "msix-per-vq");
    assertEquals(drv.queueVectors, [1, 2]);
    assertEquals(pci.msixMessages.length, 3);
  });
  await t.step("a queue without a callback gets no vector", () => {
    const { drv, pci } = tracedPci();
    drv.negotiate(0n);
    drv.setupQueues([{ name: "a" }, { name: "b", callback: () => {} }]);
    assertEquals(drv.queueVectors, [VIRTIO_MSI_NO_VECTOR, 1]);
    assertEquals(pci.msixMessages.length, 2);
  });
  await t.step("too few table entries: config vector plus one shared queue vector", () => {
    const { drv } = tracedPci({ msixVectors: 2 });
    drv.negotiate(0n);
    drv.setupQueues([{ name: "a", callback: () => {} }, { name: "b", callback: () => {} }]);
    assertEquals(drv.irqMode, "msix-shared");
    assertEquals(drv.queueVectors, [1, 1]);
  });
  await t.step("a single table entry: INTx", () => {
    const { drv, pci } = tracedPci({ msixVectors: 1 });
    drv.negotiate(0n);
    drv.setupQueues([{ name: "a", callback: () => {} }]);
    assertEquals(drv.irqMode, "intx");
    assertEquals(drv.queueVectors, [VIRTIO_MSI_NO_VECTOR]);
    assertEquals(pci.msixEnabled, false);
  });
  await t.step("a queue vector read back as 0xFFFF makes the driver fall back", () => {
    const { drv, trace, common, m } = tracedPci();
    drv.negotiate(0n);
    // The device pretends it cannot map vector 2.
    trace.tamper = (address, _size, value) =>
      address === common + C.Q_MSIX && value === 2 ? VIRTIO_MSI_NO_VECTOR : value;
    drv.setupQueues([{ name: "a", callback: () => {} }, { name: "b", callback: () => {} }]);
    assertEquals(drv.irqMode, "msix-shared");
    assertEquals(drv.queueVectors, [1, 1]);
    // The vectors of the failed attempts were given back.
    assertEquals(m.irq.allocMsi(206, () => true)?.length, 206);
  });
  await t.step("a refused config vector ends with INTx and MSI-X disabled", () => {
    const { drv, trace, common, pci } = tracedPci();
    drv.negotiate(0n);
    trace.tamper = (address, _size, value) =>
      address === common + C.MSIX ? VIRTIO_MSI_NO_VECTOR : value;
    drv.setupQueues([{ name: "a", callback: () => {} }]);
    assertEquals(drv.irqMode, "intx");
    assertEquals(pci.msixEnabled, false);
  });
  await t.step("a platform without MSI (pci=nomsi) uses INTx", () => {
    const { drv } = tracedPci({}, false);
    drv.negotiate(0n);
    drv.setupQueues([{ name: "a", callback: () => {} }]);
    assertEquals(drv.irqMode, "intx");
  });
  await t.step("no MSI-X capability and no INTx pin: setup fails", () => {
    const memory = new GuestMemory([{ base: 0, size: 8 << 20 }]);
    const { fn } = handBuiltFunction({ caps: goodCaps(), memory, interruptPin: 0 });
    const m = createMachine({ memory, pciFunctions: [fn] });
    const drv = m.guest(0);
    drv.negotiate(0n);
    const e = thrown(() => drv.setupQueues([{ name: "a", callback: () => {} }]));
    assertEquals(e.errno < 0, true);
    assertEquals(drv.vqs.length, 0);
  });
});

Deno.test("virtio-pci driver: interrupts reach the right handlers", async (t) => {
  await t.step("a per-queue vector runs only its queue's callback", () => {
    const { drv, m } = pciGuest();
    drv.negotiate(0n);
    const a = collector<string>();
    const b = collector<string>();
    const [, qb] = drv.setupQueues<string>([
      { name: "a", callback: a.callback },
      { name: "b", callback: b.callback },
    ]);
    drv.setDriverOk();
    m.memory.write(0x1000, new Uint8Array([9, 8, 7]));
    qb.addSgs([{ addr: 0x1000, length: 3 }], [{ addr: 0x2000, length: 3 }], "to-b");
    qb.kick();
    assertEquals(a.got, []);
    assertEquals(b.got, [{ token: "to-b", len: 3 }]);
    assertEquals(m.irq.stats.msi, 1);
    assertEquals([...m.memory.view(0x2000, 3)], [9, 8, 7]);
  });
  await t.step("config changes arrive on the config vector, after DRIVER_OK", () => {
    const { drv, device } = pciGuest();
    const seen: number[] = [];
    drv.onConfigChange((d) => seen.push(d.readConfig32(4)));
    drv.negotiate(0n);
    drv.setupQueues([{ name: "a", callback: () => {} }]);
    device.changeConfig(5); // before DRIVER_OK: the device does not interrupt
    drv.setDriverOk();
    device.changeConfig(6);
    assertEquals(seen, [6]);
    assertEquals(drv.diagnostics.configChanges, 1);
  });
  await t.step("INTx: the ISR says queue or config; reading it lowers the line", () => {
    const { drv, device, m, vp } = pciGuest({}, false);
    const seen: number[] = [];
    drv.onConfigChange((d) => seen.push(d.readConfig32(4)));
    drv.negotiate(0n);
    const c = collector<number>();
    const [vq] = drv.setupQueues<number>([{ name: "a", callback: c.callback }]);
    drv.setDriverOk();
    vq.addSgs([{ addr: 0x1000, length: 2 }], [{ addr: 0x2000, length: 2 }], 1);
    vq.kick();
    device.changeConfig(11);
    assertEquals(c.got, [{ token: 1, len: 2 }]);
    assertEquals(seen, [11]);
    assertEquals(vp.pci.intxAsserted, false);
    assertEquals(m.irq.lineLevel(m.entries[0].irqLine), false);
  });
  await t.step("a shared INTx line: the other device's handler says not mine", () => {
    const devices = [0, 1, 2, 3, 4].map(() => new EchoDevice(1, 16));
    const m = createMachine({ msi: false, devices });
    assertEquals(m.entries[0].irqLine, m.entries[4].irqLine, "slots 1 and 5 share a line");
    const drivers = [m.guest(0), m.guest(4)];
    const cs = drivers.map(() => collector<string>());
    const vqs = drivers.map((d, i) => {
      d.negotiate(0n);
      const [vq] = d.setupQueues<string>([{ name: "q", callback: cs[i].callback }]);
      d.setDriverOk();
      return vq;
    });
    vqs[1].addSgs([{ addr: 0x1000, length: 1 }], [{ addr: 0x2000, length: 1 }], "five");
    vqs[1].kick();
    assertEquals(cs[0].got, []);
    assertEquals(cs[1].got, [{ token: "five", len: 1 }]);
    assertEquals(drivers[0].diagnostics.spuriousInterrupts, 1);
    assertEquals(drivers[1].diagnostics.spuriousInterrupts, 0);
  });
});
