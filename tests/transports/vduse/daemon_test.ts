import { assert, assertEquals, assertThrows } from "@std/assert";
import { DmaFault } from "../../../src/dma/dma_fault.ts";
import { featureMask } from "../../../src/virtio/features.ts";
import type { VdpaDevice } from "../../../src/guest/vdpa/vdpa_device.ts";
import { probeVirtioVdpa } from "../../../src/guest/vdpa/virtio_vdpa.ts";
import { VduseDaemon } from "../../../transports/vduse/daemon.ts";
import type { VduseDev } from "../../../transports/vduse/kernel/vduse_dev.ts";
import { VduseIoctl } from "../../../transports/vduse/uapi.ts";
import type { VduseBackend } from "../../../transports/vduse/backend.ts";
import { ECHO_F_GOOD, EchoDevice } from "../../helpers/echo_device.ts";
import { setup } from "./helpers.ts";

Deno.test("VduseDaemon life cycle", async (t) => {
  await t.step("start creates the device and sets up every queue; stop destroys it", () => {
    const f = setup();
    const daemon = new VduseDaemon(f.backend, new EchoDevice(3, 128), { name: "e" });
    assertEquals(daemon.start(), 0);
    const dev = f.kernel.devices.get("e")!;
    assertEquals(dev.vqs.map((q) => q.numMax), [128, 128, 128]);
    assertEquals(dev.deviceFeatures & featureMask(32, 33), featureMask(32, 33));
    assertEquals(daemon.stop(), 0);
    assertEquals(f.kernel.devices.size, 0);
    assertEquals(f.backend.openFds, 0);
  });

  await t.step("CREATE_DEV errors surface with a readable lastError", () => {
    const f = setup({ extraDeviceIds: [] });
    const daemon = new VduseDaemon(f.backend, new EchoDevice(1), { name: "e" });
    assertEquals(daemon.start(), -22);
    assertEquals(daemon.lastError, "CREATE_DEV failed: -EINVAL");
  });

  await t.step("an existing device is reused (EEXIST), as libvduse reconnects", () => {
    const f = setup();
    const a = new VduseDaemon(f.backend, new EchoDevice(1), { name: "e" });
    assertEquals(a.start(), 0);
    f.backend.close(a.fd);
    const b = new VduseDaemon(f.backend, new EchoDevice(1), { name: "e" });
    assertEquals(b.start(), 0);
  });

  await t.step(
    "shutdown destroys again after the backend let go of a polled fd (-EBUSY once)",
    async () => {
      const f = setup();
      // A real kernel: a poll(2) still sleeping on the closed device fd holds
      // the file, so the first DESTROY_DEV sees the device open.
      let held = true;
      let quiesced = 0;
      const real = f.backend;
      const backend: VduseBackend = {
        openControl: () => real.openControl(),
        openDevice: (name) => real.openDevice(name),
        close: (fd) => real.close(fd),
        read: (fd, buf) => real.read(fd, buf),
        write: (fd, buf) => real.write(fd, buf),
        watch: (fd, onReady) => real.watch(fd, onReady),
        mmap: (fd, offset, length, prot) => real.mmap(fd, offset, length, prot),
        munmap: (view) => real.munmap(view),
        eventfd: (onSignal) => real.eventfd(onSignal),
        ioctl(fd: number, request: number, arg: Uint8Array | null): number {
          if (request === VduseIoctl.DESTROY_DEV && held) return -16;
          return real.ioctl(fd, request, arg);
        },
        quiesce(): Promise<void> {
          quiesced++;
          held = false;
          return Promise.resolve();
        },
      };
      const daemon = new VduseDaemon(backend, new EchoDevice(1), { name: "e" });
      assertEquals(daemon.start(), 0);
      assertEquals(await daemon.shutdown(), 0);
      assertEquals(quiesced, 1);
      assertEquals(f.kernel.devices.size, 0);
      assertEquals(f.backend.openFds, 0);
    },
  );

  await t.step("shutdown of a device still on the vDPA bus stays -EBUSY, named", async () => {
    const f = setup();
    const daemon = new VduseDaemon(f.backend, new EchoDevice(1), { name: "e" });
    assertEquals(daemon.start(), 0);
    f.kernel.vdpaDevAdd("e");
    assertEquals(await daemon.shutdown(), -16);
    assertEquals(daemon.lastError, "DESTROY_DEV e failed: -EBUSY");
    assertEquals(f.kernel.devices.size, 1);
  });

  await t.step("option checks", () => {
    const f = setup();
    assertThrows(() => new VduseDaemon(f.backend, new EchoDevice(2), { name: "" }), TypeError);
    assertThrows(
      () => new VduseDaemon(f.backend, new EchoDevice(2), { name: "e", vqGroups: [0, 1] }),
      RangeError,
    );
    assertThrows(
      () =>
        new VduseDaemon(f.backend, new EchoDevice(2), {
          name: "e",
          apiVersion: 1,
          ngroups: 1,
          vqGroups: [0, 1],
        }),
      RangeError,
    );
  });
});

Deno.test("VduseDaemon IOTLB cache", async (t) => {
  await t.step("UPDATE_IOTLB drops cached regions: no stale translation survives", () => {
    const f = setup();
    const daemon = new VduseDaemon(f.backend, new EchoDevice(1), { name: "e" });
    daemon.start();
    const dev = f.kernel.vdpaDevAdd("e") as VduseDev;
    f.memory.write32(0x1_0000, 0x1111_1111);
    f.memory.write32(0x2_0000, 0x2222_2222);
    const space = daemon.spaces[0];
    const invalidated: number[][] = [];
    space.addInvalidationListener((a, l) => invalidated.push([a, l]));
    assertEquals(dev.setMap(0, [{ iova: 0x8000_0000, size: 0x1000, phys: 0x1_0000, perm: 3 }]), 0);
    assertEquals(space.read32(0x8000_0000), 0x1111_1111);
    const stale = space.view(0x8000_0000, 4, 1)!; // what a daemon that never drops would keep
    assertEquals(space.stats.fetches, 1);
    // vhost-vdpa replaces the map: same IOVA, other memory.
    assertEquals(dev.setMap(0, [{ iova: 0x8000_0000, size: 0x1000, phys: 0x2_0000, perm: 1 }]), 0);
    assertEquals(daemon.stats.requests["UPDATE_IOTLB"], 2);
    assert(invalidated.length >= 1);
    assertEquals(space.read32(0x8000_0000), 0x2222_2222);
    assertEquals(new DataView(stale.buffer, stale.byteOffset).getUint32(0, true), 0x1111_1111);
    assertEquals(space.stats.fetches, 2);
    // The new map is read-only: a device write faults.
    assertThrows(() => space.write32(0x8000_0000, 0), DmaFault);
    // An IOVA nothing maps faults as unmapped.
    const err = assertThrows(() => space.read8(0x9000_0000), DmaFault);
    assertEquals(err.reason, "unmapped");
  });

  await t.step("the daemon's GET_FD / mmap / close leaves no fd behind", () => {
    const f = setup();
    const daemon = new VduseDaemon(f.backend, new EchoDevice(1), { name: "e" });
    daemon.start();
    const dev = f.kernel.vdpaDevAdd("e") as VduseDev;
    const before = f.backend.openFds;
    dev.setMap(0, [{ iova: 0, size: 0x1000, phys: 0, perm: 3 }]);
    daemon.spaces[0].read8(0);
    assertEquals(f.backend.openFds, before);
    assertEquals(f.backend.mappings.size, 1);
    dev.setMap(0, []);
    assertEquals(f.backend.mappings.size, 0);
  });
});

Deno.test("VduseDaemon with address spaces (API v1)", async (t) => {
  await t.step("a group moved to AS 1 maps in its own domain; both queues echo", () => {
    const f = setup();
    const device = new EchoDevice(2, 64);
    const daemon = new VduseDaemon(f.backend, device, {
      name: "e",
      apiVersion: 1,
      vqGroups: [0, 1],
    });
    assertEquals(daemon.start(), 0, daemon.lastError);
    const dev = f.kernel.vdpaDevAdd("e") as VduseDev;
    assertEquals([dev.ngroups, dev.nas], [2, 2]);
    assertEquals(dev.getVqGroup(1), 1);
    // The control plane (vhost-vdpa's SET_GROUP_ASID) moves group 1 before the driver starts.
    assertEquals(dev.setGroupAsid(1, 1), 0);
    assertEquals(daemon.groupAsid, [0, 1]);
    const guest = probeVirtioVdpa(dev as VdpaDevice, { pages: f.pages });
    guest.negotiate(featureMask(ECHO_F_GOOD));
    const got: number[] = [];
    const [q0, q1] = guest.setupQueues<string>([
      { name: "data", callback: (q) => got.push(q.index) },
      { name: "cvq", callback: (q) => got.push(q.index) },
    ]);
    guest.setDriverOk();
    assertEquals(daemon.spaceOfQueue(1), daemon.spaces[1]);
    const as0 = dev.as[0].domain!;
    const as1 = dev.as[1].domain!;
    for (const [vq, out, inn] of [[q0, 0x1_0000, 0x2_0000], [q1, 0x3_0000, 0x4_0000]] as const) {
      f.memory.write(out, new Uint8Array([vq.index + 1, 2, 3]));
      assertEquals(vq.addSgs([{ addr: out, length: 3 }], [{ addr: inn, length: 3 }], "x"), 0);
      vq.kick();
      f.flush();
      assertEquals(vq.getBuf()?.len, 3);
      assertEquals(f.memory.view(inn, 3), new Uint8Array([vq.index + 1, 2, 3]));
    }
    assertEquals(got, [0, 1]);
    // Each queue's rings and buffers live in its group's address space.
    assertEquals(as0.stats.maps, as1.stats.maps);
    assert(as1.stats.maps > 0 && as1.stats.coherentLive > 0);
    assertEquals(as0.stats.coherentLive, as1.stats.coherentLive);
    // The same IOVA means different memory in the two spaces.
    const iova = as0.bounceSize - 4096;
    assert(daemon.spaces[0].regions.some((r) => r.start === 0));
    assert(daemon.spaces[1].regions.some((r) => r.start === 0));
    assert(daemon.spaces[0].view(iova, 1, 1) !== daemon.spaces[1].view(iova, 1, 1));
    daemon.spaces[0].write8(iova, 0xa0);
    daemon.spaces[1].write8(iova, 0xa1);
    assertEquals([daemon.spaces[0].read8(iova), daemon.spaces[1].read8(iova)], [0xa0, 0xa1]);
  });

  await t.step("GET_FD2 per address space; out-of-range ids never reach the daemon", () => {
    const f = setup();
    const daemon = new VduseDaemon(f.backend, new EchoDevice(2), {
      name: "e",
      apiVersion: 1,
      vqGroups: [0, 1],
      nas: 2,
    });
    daemon.start();
    const dev = f.kernel.vdpaDevAdd("e") as VduseDev;
    const ring = dev.mapOps.alloc(dev.groups[0], 64)!;
    f.memory.write8(ring.cpuAddr, 0x5a);
    assertEquals(daemon.spaces[0].read8(ring.dmaAddr), 0x5a);
    assertThrows(() => daemon.spaces[1].read8(ring.dmaAddr), DmaFault);
    // The kernel checks ids before sending; an out-of-range one never reaches the daemon.
    assertEquals(dev.setGroupAsid(1, 5), -22);
    assertEquals(f.backend.ioctl(daemon.fd, VduseIoctl.IOTLB_GET_FD, null), -14);
  });
});
