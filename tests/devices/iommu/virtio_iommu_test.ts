import { assertEquals, assertThrows } from "@std/assert";
import { GuestMemory } from "../../../src/memory/mod.ts";
import { DirectDmaSpace, DmaFault } from "../../../src/dma/mod.ts";
import { Iommu, IommuStatus as S } from "../../../src/iommu/mod.ts";
import { createDeviceQueue } from "../../../src/queue/create_device_queue.ts";
import { featureMask } from "../../../src/virtio/mod.ts";
import {
  IommuRequest as T,
  PROBE_SIZE,
  VirtioIommu,
  VirtioIommuFeature as F,
} from "../../../devices/iommu/mod.ts";
import { SplitDriver } from "../../queue/ring_writer.ts";

const REQ = 0x40000; // request buffers
const TAIL = 0x48000; // status tails / probe buffers
const EVT = 0x50000; // event buffers

function setup(features = featureMask(F.MAP_UNMAP, F.PROBE, F.BYPASS_CONFIG, 32)) {
  const mem = new GuestMemory([{ base: 0, size: 0x100000 }]);
  const dma = new DirectDmaSpace(mem);
  const iommu = new Iommu({ memory: mem });
  const ep = iommu.addEndpoint(8);
  const device = new VirtioIommu(iommu);
  const interrupts: number[] = [];
  const failures: string[] = [];
  device.bind({
    interrupt: (q) => interrupts.push(q),
    configChanged: () => {},
    fail: (r) => failures.push(r),
  });
  const reqq = new SplitDriver(mem, 16, 0x1000);
  const evq = new SplitDriver(mem, 16, 0x8000);
  device.activate({
    features,
    dma,
    queues: [
      createDeviceQueue(reqq.config({ index: 0 }), dma, false),
      createDeviceQueue(evq.config({ index: 1 }), dma, false),
    ],
  });
  /** Sends one request (readable bytes + writable tail) and returns its status. */
  const send = (bytes: Uint8Array, writable = 4): { status: number; len: number } => {
    mem.write(REQ, bytes);
    mem.fill(TAIL, writable, 0xff);
    reqq.add([{ addr: REQ, len: bytes.length }, { addr: TAIL, len: writable, write: true }]);
    device.notify(0);
    const [used] = reqq.getUsed();
    return { status: mem.read8(TAIL + writable - 4), len: used.len };
  };
  return { mem, iommu, ep, device, reqq, evq, send, interrupts, failures };
}

function req(type: number, fields: [number, number | bigint][], size: number): Uint8Array {
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  b[0] = type;
  for (const [off, val] of fields) {
    if (typeof val === "bigint") v.setBigUint64(off, val, true);
    else v.setUint32(off, val, true);
  }
  return b;
}
const attach = (domain: number, ep: number, flags = 0) =>
  req(T.ATTACH, [[4, domain], [8, ep], [12, flags]], 20);
const detach = (domain: number, ep: number) => req(T.DETACH, [[4, domain], [8, ep]], 20);
const map = (domain: number, start: bigint, end: bigint, phys: bigint, flags: number) =>
  req(T.MAP, [[4, domain], [8, start], [16, end], [24, phys], [32, flags]], 36);
const unmap = (domain: number, start: bigint, end: bigint) =>
  req(T.UNMAP, [[4, domain], [8, start], [16, end]], 28);

Deno.test("VirtioIommu config space", () => {
  const { device } = setup();
  const v = new DataView(device.config.buffer);
  assertEquals(v.getBigUint64(0, true), 0xffff_ffff_ffff_f000n, "4 KiB granule");
  assertEquals(v.getBigUint64(16, true), 2n ** 53n - 1n);
  assertEquals(v.getUint32(28, true), 0xffffffff);
  assertEquals(v.getUint32(32, true), PROBE_SIZE);
  device.writeConfig(36, Uint8Array.of(2));
  assertEquals(device.config[36], 0, "only 0 or 1");
  device.writeConfig(36, Uint8Array.of(1));
  assertEquals(device.iommu.bypass, true);
  device.writeConfig(0, Uint8Array.of(0));
  assertEquals(device.config[1], 0xf0, "page_size_mask is read-only");
});

Deno.test("VirtioIommu requests", async (t) => {
  await t.step("ATTACH, MAP then device DMA works; UNMAP makes it fault", () => {
    const { send, ep, mem, device } = setup();
    assertEquals(send(attach(1, 8)).status, S.OK);
    assertEquals(send(map(1, 0x10000n, 0x10fffn, 0x3000n, 3)).status, S.OK);
    mem.write32(0x3010, 77);
    assertEquals(ep.read32(0x10010), 77);
    assertEquals(send(unmap(1, 0x10000n, 0x10fffn)).status, S.OK);
    assertThrows(() => ep.read32(0x10010), DmaFault);
    assertEquals([device.stats.maps, device.stats.unmaps], [1, 1]);
  });
  await t.step("each bad request gets its status code", () => {
    const { send } = setup();
    assertEquals(send(attach(1, 99)).status, S.NOENT, "unknown endpoint");
    assertEquals(send(attach(1, 8, 2)).status, S.INVAL, "unknown attach flag");
    send(attach(1, 8));
    assertEquals(send(map(1, 0x10n, 0xfffn, 0n, 3)).status, S.RANGE, "misaligned");
    assertEquals(send(map(2, 0n, 0xfffn, 0n, 3)).status, S.NOENT, "unknown domain");
    assertEquals(send(map(1, 0n, 0xfffn, 0n, 0x10)).status, S.INVAL, "unknown map flag");
    assertEquals(send(map(1, 0n, 0xfffn, 0n, 4)).status, S.INVAL, "MMIO without F_MMIO");
    assertEquals(send(map(1, 0n, 2n ** 60n - 1n, 0n, 3)).status, S.RANGE, "beyond 2^53");
    assertEquals(send(map(1, 0n, 0x1fffn, 0n, 3)).status, S.OK);
    assertEquals(send(map(1, 0x1000n, 0x1fffn, 0n, 3)).status, S.INVAL, "overlap");
    assertEquals(send(unmap(1, 0n, 0xfffn)).status, S.RANGE, "split unmap");
    assertEquals(send(detach(1, 8)).status, S.OK);
    assertEquals(send(detach(1, 8)).status, S.NOENT, "the domain is gone");
    const withReserved = attach(1, 8);
    withReserved[1] = 1;
    assertEquals(send(withReserved).status, S.INVAL, "reserved head byte");
  });
  await t.step("bypass attach needs BYPASS_CONFIG", () => {
    const a = setup();
    assertEquals(a.send(attach(3, 8, 1)).status, S.OK);
    const b = setup(featureMask(F.MAP_UNMAP, 32));
    assertEquals(b.send(attach(3, 8, 1)).status, S.INVAL);
  });
  await t.step("an unknown type is UNSUPP; a request too short for its type is unanswered", () => {
    const { send } = setup();
    assertEquals(send(req(9, [], 8)).status, S.UNSUPP);
    const short = send(req(T.MAP, [], 20));
    assertEquals(short.len, 0);
  });
  await t.step("PROBE reports the MSI doorbell as a RESV_MEM property", () => {
    const { send, mem } = setup();
    const r = send(req(T.PROBE, [[4, 8]], 72), PROBE_SIZE + 4);
    assertEquals(r.status, S.OK);
    assertEquals(r.len, PROBE_SIZE + 4);
    assertEquals(mem.read16(TAIL), 1, "RESV_MEM");
    assertEquals(mem.read16(TAIL + 2), 20);
    assertEquals(mem.read8(TAIL + 4), 1, "MSI subtype");
    assertEquals(mem.read64(TAIL + 8), 0xfee00000);
    assertEquals(mem.read64(TAIL + 16), 0xfeefffff);
    assertEquals(mem.read16(TAIL + 24), 0, "terminated");
    assertEquals(send(req(T.PROBE, [[4, 77]], 72), PROBE_SIZE + 4).status, S.NOENT);
  });
});

Deno.test("VirtioIommu fault events", async (t) => {
  await t.step("a device DMA fault is reported on the event queue", async () => {
    const { send, ep, evq, mem, device, interrupts } = setup();
    send(attach(1, 8));
    evq.add([{ addr: EVT, len: 24, write: true }]);
    device.notify(1);
    assertThrows(() => ep.write32(0x20000, 1), DmaFault);
    await Promise.resolve();
    const [used] = evq.getUsed();
    assertEquals(used.len, 24);
    assertEquals(mem.read8(EVT), 2, "MAPPING");
    assertEquals(mem.read32(EVT + 4), 2 | 0x100, "WRITE | ADDRESS");
    assertEquals(mem.read32(EVT + 8), 8, "endpoint");
    assertEquals(mem.read64(EVT + 16), 0x20000);
    assertEquals(interrupts.includes(1), true);
  });
  await t.step(
    "faults wait for an event buffer, and past the bound are dropped and counted",
    async () => {
      const { ep, evq, mem, device } = setup();
      for (let i = 0; i < 70; i++) assertThrows(() => ep.read8(i * 4096), DmaFault);
      await Promise.resolve();
      assertEquals(device.stats.droppedFaultEvents, 6);
      evq.add([{ addr: EVT, len: 24, write: true }]);
      device.notify(1);
      assertEquals(mem.read8(EVT), 1, "DOMAIN: not attached");
      assertEquals(device.stats.faultEvents, 1);
    },
  );
});
