/**
 * The real device models behind VDUSE: two virtio-net devices on a virtual
 * cable, each served by a VDUSE daemon and driven by the guest's virtio_net
 * driver through virtio_vdpa; and virtio-blk driven by the guest's blk driver.
 */
import { assert, assertEquals } from "@std/assert";
import type { VdpaDevice } from "../../../src/guest/vdpa/vdpa_device.ts";
import { probeVirtioVdpa } from "../../../src/guest/vdpa/virtio_vdpa.ts";
import { VirtioNetDriver } from "../../../src/guest/net/virtio_net_driver.ts";
import { VirtioBlkDriver } from "../../../src/guest/blk/virtio_blk_driver.ts";
import { VirtioBlk } from "../../../devices/blk/device.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { createPair } from "../../../devices/net/backends/pair.ts";
import { VirtioNet } from "../../../devices/net/virtio_net.ts";
import { VduseDaemon } from "../../../transports/vduse/daemon.ts";
import type { VduseDev } from "../../../transports/vduse/kernel/vduse_dev.ts";
import { type Fixture, setup } from "./helpers.ts";

const A = "52:54:00:00:00:0a";
const B = "52:54:00:00:00:0b";

function mac(s: string): number[] {
  return s.split(":").map((h) => parseInt(h, 16));
}

function frame(dst: string, src: string, payload: number, fill: number): Uint8Array {
  const f = new Uint8Array(14 + payload).fill(fill);
  f.set(mac(dst), 0);
  f.set(mac(src), 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  return f;
}

interface NetGuest {
  f: Fixture;
  daemon: VduseDaemon;
  dev: VduseDev;
  driver: VirtioNetDriver;
}

function netGuest(
  m: string,
  backend: ReturnType<typeof createPair>[0],
  got: Uint8Array[],
  packed: boolean,
): NetGuest {
  const f = setup({ bounceSize: 4 << 20 });
  const device = new VirtioNet({ mac: m, backend, controlQueue: false });
  const daemon = new VduseDaemon(f.backend, device, { name: "net0", packed });
  assertEquals(daemon.start(), 0, daemon.lastError);
  const dev = f.kernel.vdpaDevAdd("net0") as VduseDev;
  const guest = probeVirtioVdpa(dev as VdpaDevice, { pages: f.pages });
  const driver = VirtioNetDriver.probe(guest, { onReceive: (fr) => got.push(fr.slice()) });
  driver.open();
  return { f, daemon, dev, driver };
}

/** Runs interrupt work and NAPI polls until both sides are idle. */
function settle(...guests: NetGuest[]): void {
  for (let round = 0; round < 1000; round++) {
    let busy = false;
    for (const g of guests) {
      if (g.f.work.length > 0) {
        g.f.flush();
        busy = true;
      }
      if (g.driver.pending) {
        g.driver.poll();
        busy = true;
      }
    }
    if (!busy) return;
  }
  throw new Error("the guests did not settle");
}

for (const packed of [true, false]) {
  Deno.test(`VDUSE end to end: virtio-net over ${packed ? "packed" : "split"} rings`, async (t) => {
    await t.step("frames of every size cross the cable both ways through bounce buffers", () => {
      const [ea, eb] = createPair();
      const gotA: Uint8Array[] = [];
      const gotB: Uint8Array[] = [];
      const a = netGuest(A, ea, gotA, packed);
      const b = netGuest(B, eb, gotB, packed);
      assertEquals(a.driver.mac, A);
      assert(a.daemon.live && b.daemon.live);
      const sizes = [60, 1514, 4000, 9000];
      for (const n of sizes) assert(a.driver.send(frame(B, A, n - 14, n & 0xff)));
      settle(a, b);
      assertEquals(gotB.map((fr) => fr.length), sizes);
      sizes.forEach((n, i) => assertEquals(gotB[i], frame(B, A, n - 14, n & 0xff)));
      assert(b.driver.send(frame(A, B, 100, 1)));
      settle(a, b);
      assertEquals(gotA.length, 1);
      assertEquals(gotA[0], frame(A, B, 100, 1));
      // Every payload byte went through the bounce window of its side.
      assert(a.dev.as[0].domain!.stats.bytesToBounce >= sizes.reduce((x, y) => x + y));
      assert(b.dev.as[0].domain!.stats.bytesFromBounce >= sizes.reduce((x, y) => x + y));
      assertEquals(a.daemon.lastError, "");
    });

    await t.step("a thousand frames flow; remove returns the guest's memory", () => {
      const [ea, eb] = createPair();
      const a = netGuest(A, ea, [], packed);
      const counter: Uint8Array[] = [];
      const b = netGuest(B, eb, counter, packed);
      const freeA = a.f.pages.freeCount;
      for (let i = 0; i < 1000; i++) {
        while (!a.driver.send(frame(B, A, 100 + i, i & 0xff))) settle(a, b);
        if (i % 16 === 0) settle(a, b);
      }
      settle(a, b);
      a.driver.reclaim();
      assertEquals(counter.length, 1000);
      assertEquals(a.driver.stats.txPackets, 1000);
      a.driver.remove();
      assert(a.f.pages.freeCount > freeA, "rings and rx buffers were freed");
      assertEquals(a.dev.as[0].domain!.stats.warnings, 0);
    });
  });
}

Deno.test("VDUSE end to end: virtio-blk", async (t) => {
  await t.step("writes, reads and flushes go through the daemon to the disk", async () => {
    const f = setup({ schedule: (w) => queueMicrotask(w), bounceSize: 2 << 20 });
    const disk = new MemoryBackend(1 << 20);
    const device = new VirtioBlk({ backend: disk });
    const daemon = new VduseDaemon(f.backend, device, { name: "vda" });
    assertEquals(daemon.start(), 0, daemon.lastError);
    const dev = f.kernel.vdpaDevAdd("vda") as VduseDev;
    const guest = probeVirtioVdpa(dev as VdpaDevice, { pages: f.pages });
    const blk = VirtioBlkDriver.probe(guest);
    assertEquals(blk.capacity, (1 << 20) / 512);
    const data = new Uint8Array(8192).map((_, i) => (i * 13) & 0xff);
    await blk.write(8, data);
    await blk.flush();
    assertEquals(await blk.read(8, 8192), data);
    assertEquals(await blk.read(0, 512), new Uint8Array(512));
    const domain = dev.as[0].domain!;
    assert(domain.stats.bytesToBounce >= 8192 && domain.stats.bytesFromBounce >= 8192 + 512);
    blk.remove();
    assertEquals(domain.stats.coherentLive, 0);
    assertEquals(domain.stats.maps, domain.stats.unmaps);
  });
});

Deno.test("VDUSE end to end: virtio-net control queue in its own address space", async (t) => {
  await t.step("allowNetCtrlVq + API v1: the CVQ's group moves to AS 1 and commands work", () => {
    const f = setup({ bounceSize: 4 << 20, allowNetCtrlVq: true });
    const [ea] = createPair();
    const device = new VirtioNet({ mac: A, backend: ea });
    assertEquals(device.numQueues, 3);
    const daemon = new VduseDaemon(f.backend, device, {
      name: "net0",
      apiVersion: 1,
      vqGroups: [0, 0, 1],
      filterFeatures: 0n,
    });
    assertEquals(daemon.start(), 0, daemon.lastError);
    const dev = f.kernel.vdpaDevAdd("net0") as VduseDev;
    // What vhost-vdpa's SET_GROUP_ASID does for a shadowing control plane.
    assertEquals(dev.setGroupAsid(1, 1), 0);
    const guest = probeVirtioVdpa(dev as VdpaDevice, { pages: f.pages });
    const driver = VirtioNetDriver.probe(guest, {});
    driver.open();
    assertEquals(guest.vqs.length, 3);
    assert(driver.setPromisc(true));
    assertEquals(dev.as[1].domain!.stats.maps > 0, true);
    assertEquals(daemon.spaceOfQueue(2), daemon.spaces[1]);
    assertEquals(daemon.lastError, "");
  });

  await t.step("without the opt-in the kernel refuses CTRL_VQ", () => {
    const f = setup();
    const [ea] = createPair();
    const daemon = new VduseDaemon(f.backend, new VirtioNet({ mac: A, backend: ea }), {
      name: "net0",
      apiVersion: 1,
      vqGroups: [0, 0, 1],
      filterFeatures: 0n,
    });
    assertEquals(daemon.start(), -22);
  });
});
