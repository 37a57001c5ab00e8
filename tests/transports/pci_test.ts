import { assertEquals } from "@std/assert";
import { GuestMemory } from "../../src/memory/mod.ts";
import { DirectDmaSpace } from "../../src/dma/mod.ts";
import { assignBars, PciHostBridge } from "../../src/pci/mod.ts";
import { DeviceStatus as S } from "../../src/virtio/mod.ts";
import {
  CommonCfg as C,
  VIRTIO_MSI_NO_VECTOR,
  VirtioPci,
  VirtioPciCapType,
} from "../../transports/pci/virtio_pci.ts";
import { ECHO_DEVICE_ID, ECHO_MAGIC, EchoDevice } from "../helpers/echo_device.ts";
import { SplitDriver } from "../queue/ring_writer.ts";

interface Caps {
  common: number;
  notify: number;
  isr: number;
  device: number;
  pciCfg: number;
  msix: number;
  multiplier: number;
}

/** A machine: memory, a host bridge with the function in slot 3, BARs assigned like firmware. */
function setup() {
  const mem = new GuestMemory([{ base: 0, size: 0x100000 }]);
  const dma = new DirectDmaSpace(mem);
  const device = new EchoDevice(2, 64);
  const msis: { address: number; data: number }[] = [];
  const intx: boolean[] = [];
  const bridge = new PciHostBridge({
    host: {
      msi: (_fn, address, data) => msis.push({ address, data }),
      intx: (_fn, level) => intx.push(level),
    },
  });
  const vp = new VirtioPci(device, { dma });
  bridge.attach(vp.pci, 3);
  assignBars(bridge, 0xe000_0000, 0xc000);
  const cfgR = (reg: number, size = 4) => bridge.configRead(0, 3, 0, reg, size);
  const cfgW = (reg: number, size: number, v: number) => bridge.configWrite(0, 3, 0, reg, size, v);
  cfgW(0x04, 2, cfgR(0x04, 2) | 0x4); // bus master, as Linux's pci_set_master
  const caps = walkCaps(cfgR);
  const bar4 = cfgR(0x24) * 2 ** 32 + ((cfgR(0x20) & ~0xf) >>> 0);
  const bar1 = (cfgR(0x14) & ~0xf) >>> 0;
  const common = bar4 + caps.common;
  const r = (off: number, size: number) => bridge.memRead(common + off, size);
  const w = (off: number, size: number, v: number) => bridge.memWrite(common + off, size, v);
  return { mem, dma, device, vp, bridge, msis, intx, cfgR, cfgW, caps, bar1, bar4, r, w };
}

/** Walks the capability list the way Linux's virtio_pci_find_capability does. */
function walkCaps(cfgR: (reg: number, size?: number) => number): Caps {
  const caps: Partial<Caps> = {};
  let ptr = cfgR(0x34, 1) & ~3;
  for (let n = 0; ptr !== 0 && n < 48; n++) {
    const id = cfgR(ptr, 1);
    if (id === 0x11) caps.msix = ptr;
    if (id === 0x09) {
      const type = cfgR(ptr + 3, 1);
      const bar = cfgR(ptr + 4, 1);
      if (type <= VirtioPciCapType.DEVICE_CFG) assertEquals(bar, 4, "structures are in BAR 4");
      const offset = cfgR(ptr + 8);
      if (type === VirtioPciCapType.COMMON_CFG) caps.common = offset;
      if (type === VirtioPciCapType.NOTIFY_CFG) {
        caps.notify = offset;
        caps.multiplier = cfgR(ptr + 16);
        assertEquals(cfgR(ptr + 2, 1), 20, "notify cap_len covers the multiplier");
      }
      if (type === VirtioPciCapType.ISR_CFG) caps.isr = offset;
      if (type === VirtioPciCapType.DEVICE_CFG) caps.device = offset;
      if (type === VirtioPciCapType.PCI_CFG) caps.pciCfg = ptr;
    }
    ptr = cfgR(ptr + 1, 1) & ~3;
  }
  return caps as Caps;
}

/** Linux's init sequence up to FEATURES_OK with VERSION_1 and echo bit 0. */
function negotiate(
  w: (o: number, s: number, v: number) => void,
  r: (o: number, s: number) => number,
) {
  w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE);
  w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER);
  w(C.DRIVER_FEATURE_SELECT, 4, 0);
  w(C.DRIVER_FEATURE, 4, 1);
  w(C.DRIVER_FEATURE_SELECT, 4, 1);
  w(C.DRIVER_FEATURE, 4, 1);
  w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
  return r(C.DEVICE_STATUS, 1);
}

Deno.test("virtio-pci identity and capabilities", async (t) => {
  const { cfgR, caps, bar4, bar1 } = setup();
  await t.step("vendor 0x1AF4, device 0x1040 + type, revision 1, subsystem 0x1100", () => {
    assertEquals(cfgR(0x00, 2), 0x1af4);
    assertEquals(cfgR(0x02, 2), 0x1040 + ECHO_DEVICE_ID);
    assertEquals(cfgR(0x08, 1), 1);
    assertEquals(cfgR(0x2e, 2), 0x1100);
    assertEquals(cfgR(0x3d, 1), 1, "INTA#");
    assertEquals((cfgR(0x06, 2) >> 4) & 1, 1, "capability list");
  });
  await t.step("all five virtio structures and MSI-X are found", () => {
    assertEquals(caps.common, 0x0000);
    assertEquals(caps.isr, 0x1000);
    assertEquals(caps.device, 0x2000);
    assertEquals(caps.notify, 0x3000);
    assertEquals(caps.multiplier, 4);
    assertEquals(caps.pciCfg > 0 && caps.msix > 0, true);
  });
  await t.step("BAR 4 is a 64-bit prefetchable BAR and BAR 1 a 32-bit one, both placed", () => {
    assertEquals(cfgR(0x20) & 0xf, 0xc);
    assertEquals(bar4 >= 0xe000_0000 && bar1 >= 0xe000_0000, true);
  });
});

Deno.test("virtio-pci common configuration", async (t) => {
  await t.step("feature windows and read-back of driver features", () => {
    const { r, w } = setup();
    w(C.DEVICE_FEATURE_SELECT, 4, 1);
    assertEquals(r(C.DEVICE_FEATURE, 4) & 1, 1, "VERSION_1");
    w(C.DEVICE_FEATURE_SELECT, 4, 5);
    assertEquals(r(C.DEVICE_FEATURE, 4), 0);
    w(C.DRIVER_FEATURE_SELECT, 4, 0);
    w(C.DRIVER_FEATURE, 4, 1);
    assertEquals(r(C.DRIVER_FEATURE, 4), 1);
  });
  await t.step("read-only fields ignore writes; num_queues is the device's", () => {
    const { r, w, vp } = setup();
    assertEquals(r(C.NUM_QUEUES, 2), 2);
    w(C.NUM_QUEUES, 2, 9);
    assertEquals(r(C.NUM_QUEUES, 2), 2);
    w(C.DEVICE_FEATURE, 4, 0);
    w(C.QUEUE_NOTIFY_OFF, 2, 7);
    assertEquals(vp.diagnostics.badAccesses, 3);
  });
  await t.step("a 16-bit register read as two bytes gives its bytes (v86 splits reads)", () => {
    const { r, w } = setup();
    w(C.QUEUE_SELECT, 2, 1);
    assertEquals(r(C.QUEUE_SIZE, 2), 64);
    w(C.QUEUE_SIZE, 2, 0x0120);
    assertEquals(r(C.QUEUE_SIZE, 1), 0x20);
    assertEquals(r(C.QUEUE_SIZE + 1, 1), 0x01);
    assertEquals(r(C.QUEUE_NOTIFY_OFF, 1), 1);
  });
  await t.step("wider or straddling accesses read 0 and are counted", () => {
    const { r, w, vp } = setup();
    assertEquals(r(C.NUM_QUEUES, 4), 0, "straddles num_queues and device_status");
    assertEquals(r(C.QUEUE_SIZE - 1, 2), 0);
    w(C.DEVICE_STATUS, 2, 1);
    assertEquals(r(C.DEVICE_STATUS, 1), 0);
    assertEquals(vp.diagnostics.badAccesses, 3);
  });
  await t.step("queue addresses are 32-bit halves; absent queues read 0", () => {
    const { r, w } = setup();
    w(C.QUEUE_SELECT, 2, 0);
    w(C.QUEUE_DESC_LO, 4, 0x1000);
    w(C.QUEUE_DESC_HI, 4, 0x2);
    assertEquals([r(C.QUEUE_DESC_LO, 4), r(C.QUEUE_DESC_HI, 4)], [0x1000, 2]);
    w(C.QUEUE_SELECT, 2, 9);
    assertEquals(r(C.QUEUE_SIZE, 2), 0);
    assertEquals(r(C.QUEUE_MSIX_VECTOR, 2), VIRTIO_MSI_NO_VECTOR);
  });
  await t.step("the status sequence: FEATURES_OK re-check, then reset clears everything", () => {
    const { r, w, device } = setup();
    assertEquals(negotiate(w, r), S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
    w(C.CONFIG_MSIX_VECTOR, 2, 0);
    w(C.DEVICE_STATUS, 1, 0);
    assertEquals(r(C.DEVICE_STATUS, 1), 0);
    assertEquals(r(C.CONFIG_MSIX_VECTOR, 2), VIRTIO_MSI_NO_VECTOR);
    assertEquals(r(C.DRIVER_FEATURE, 4), 0);
    assertEquals(device.resets, 1);
  });
  await t.step("config_generation changes with the device config", () => {
    const { r, device } = setup();
    const g = r(C.CONFIG_GENERATION, 1);
    device.changeConfig(1);
    assertEquals(r(C.CONFIG_GENERATION, 1), (g + 1) & 0xff);
  });
});

Deno.test("virtio-pci device config, ISR, MSI-X and the PCI_CFG window", async (t) => {
  await t.step("device config reads at every width", () => {
    const { bridge, bar4, caps } = setup();
    assertEquals(bridge.memRead(bar4 + caps.device, 4), ECHO_MAGIC);
    assertEquals(bridge.memRead(bar4 + caps.device + 1, 1), (ECHO_MAGIC >>> 8) & 0xff);
    bridge.memWrite(bar4 + caps.device + 4, 2, 0xbeef);
    assertEquals(bridge.memRead(bar4 + caps.device + 4, 2), 0xbeef);
  });
  await t.step(
    "without MSI-X a config change sets ISR bit 1 and INTx; reading ISR clears both",
    () => {
      const { r, w, device, intx, bridge, bar4, caps, cfgR } = setup();
      negotiate(w, r);
      w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
      device.changeConfig(2);
      assertEquals(intx, [true]);
      assertEquals((cfgR(0x06, 2) >> 3) & 1, 1, "status bit 3");
      assertEquals(bridge.memRead(bar4 + caps.isr, 1), 2);
      assertEquals(bridge.memRead(bar4 + caps.isr, 1), 0);
      assertEquals(intx, [true, false]);
    },
  );
  await t.step("MSI-X: vectors out of range read back NO_VECTOR; masked vectors pend", () => {
    const { r, w, device, msis, bridge, bar1, cfgR, cfgW, caps } = setup();
    cfgW(caps.msix + 2, 2, 0x8000); // MSI-X enable
    w(C.CONFIG_MSIX_VECTOR, 2, 5);
    assertEquals(r(C.CONFIG_MSIX_VECTOR, 2), VIRTIO_MSI_NO_VECTOR);
    w(C.CONFIG_MSIX_VECTOR, 2, 0);
    assertEquals(r(C.CONFIG_MSIX_VECTOR, 2), 0);
    bridge.memWrite(bar1 + 0, 4, 0xfee0_0000);
    bridge.memWrite(bar1 + 8, 4, 0x41);
    negotiate(w, r);
    w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    device.changeConfig(3);
    assertEquals(msis, [], "entries reset masked");
    assertEquals(bridge.memRead(bar1 + 0x800, 4) & 1, 1, "pending bit set");
    bridge.memWrite(bar1 + 12, 4, 0); // unmask vector 0
    assertEquals(msis, [{ address: 0xfee0_0000, data: 0x41 }]);
    assertEquals(bridge.memRead(bar1 + 0x800, 4) & 1, 0);
    assertEquals(cfgR(caps.msix + 2, 2) & 0x7ff, 2, "table size N-1 for 3 vectors");
  });
  await t.step("the PCI_CFG window reads and writes BAR 4 through config space", () => {
    const { cfgR, cfgW, caps, vp } = setup();
    const at = caps.pciCfg;
    cfgW(at + 4, 1, 4);
    cfgW(at + 8, 4, 0x2000);
    cfgW(at + 12, 4, 4);
    assertEquals(cfgR(at + 16), ECHO_MAGIC);
    cfgW(at + 8, 4, 0x2004);
    cfgW(at + 16, 4, 0x12345678);
    assertEquals(new DataView(vp.device.config.buffer).getUint32(4, true), 0x12345678);
    cfgW(at + 12, 4, 3); // an invalid length does nothing
    cfgW(at + 16, 4, 0);
    assertEquals(new DataView(vp.device.config.buffer).getUint32(4, true), 0x12345678);
  });
});

Deno.test("virtio-pci drives a device end to end", async (t) => {
  await t.step("queue setup, notify, used ring and an MSI-X interrupt", () => {
    const s = setup();
    const { r, w, mem, bridge, bar4, bar1, caps, cfgW, msis, device } = s;
    cfgW(caps.msix + 2, 2, 0x8000);
    bridge.memWrite(bar1 + 16 + 0, 4, 0xfee0_1000); // vector 1
    bridge.memWrite(bar1 + 16 + 8, 4, 0x51);
    bridge.memWrite(bar1 + 16 + 12, 4, 0);
    negotiate(w, r);
    const drv = new SplitDriver(mem, 64, 0x10000);
    w(C.QUEUE_SELECT, 2, 0);
    w(C.QUEUE_DESC_LO, 4, drv.desc);
    w(C.QUEUE_DRIVER_LO, 4, drv.avail);
    w(C.QUEUE_DEVICE_LO, 4, drv.used);
    w(C.QUEUE_MSIX_VECTOR, 2, 1);
    assertEquals(r(C.QUEUE_MSIX_VECTOR, 2), 1);
    w(C.QUEUE_ENABLE, 2, 1);
    w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    assertEquals(device.activations.length, 1);
    mem.write(0x20000, new TextEncoder().encode("hello, device"));
    drv.add([{ addr: 0x20000, len: 13 }, { addr: 0x21000, len: 64, write: true }]);
    bridge.memWrite(bar4 + caps.notify + 0 * caps.multiplier, 2, 0);
    assertEquals(drv.getUsed(), [{ id: 0, len: 13 }]);
    assertEquals(new TextDecoder().decode(mem.view(0x21000, 13)), "hello, device");
    assertEquals(msis, [{ address: 0xfee0_1000, data: 0x51 }]);
  });
  await t.step("a malformed ring sets DEVICE_NEEDS_RESET and raises a config interrupt", () => {
    const { r, w, mem, bridge, bar4, caps, intx, vp } = setup();
    negotiate(w, r);
    const drv = new SplitDriver(mem, 64, 0x10000);
    w(C.QUEUE_DESC_LO, 4, drv.desc);
    w(C.QUEUE_DRIVER_LO, 4, drv.avail);
    w(C.QUEUE_DEVICE_LO, 4, drv.used);
    w(C.QUEUE_ENABLE, 2, 1);
    w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    drv.setDesc(0, 0x20000, 16, 1, 0); // NEXT pointing at itself: a loop
    drv.publish(0);
    bridge.memWrite(bar4 + caps.notify, 2, 0);
    assertEquals(r(C.DEVICE_STATUS, 1) & S.DEVICE_NEEDS_RESET, S.DEVICE_NEEDS_RESET);
    assertEquals(intx, [true]);
    assertEquals(bridge.memRead(bar4 + caps.isr, 1), 2);
    assertEquals(vp.diagnostics.lastError.includes("loop"), true, vp.diagnostics.lastError);
    // The device stays broken until reset.
    bridge.memWrite(bar4 + caps.notify, 2, 0);
    assertEquals(vp.diagnostics.ignoredNotifies, 1);
  });
  await t.step("notifications are ignored while Bus Master is off", () => {
    const { r, w, bridge, bar4, caps, cfgR, cfgW, vp, device } = setup();
    negotiate(w, r);
    w(C.QUEUE_ENABLE, 2, 1);
    w(C.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    cfgW(0x04, 2, cfgR(0x04, 2) & ~0x4);
    bridge.memWrite(bar4 + caps.notify, 2, 0);
    assertEquals(device.notifies, []);
    assertEquals(vp.diagnostics.ignoredNotifies, 1);
  });
});
