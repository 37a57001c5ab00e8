import { assert, assertEquals, assertThrows } from "@std/assert";
import { featureMask, VirtioFeature } from "../../../src/virtio/features.ts";
import { DeviceStatus } from "../../../src/virtio/status.ts";
import type { VdpaDevice } from "../../../src/guest/vdpa/vdpa_device.ts";
import { probeVirtioVdpa, type VirtioVdpaDevice } from "../../../src/guest/vdpa/virtio_vdpa.ts";
import type { Virtqueue } from "../../../src/guest/virtio/virtqueue.ts";
import { VirtioDriverError } from "../../../src/guest/virtio/virtio_guest_device.ts";
import { VduseDaemon, type VduseDaemonOptions } from "../../../transports/vduse/daemon.ts";
import type { VduseDev } from "../../../transports/vduse/kernel/vduse_dev.ts";
import { ECHO_F_GOOD, EchoDevice } from "../../helpers/echo_device.ts";
import { type Fixture, setup } from "./helpers.ts";

interface Echo {
  f: Fixture;
  device: EchoDevice;
  daemon: VduseDaemon;
  dev: VduseDev;
  guest: VirtioVdpaDevice;
  vq: Virtqueue<string>;
  irqs: number[];
}

/** Kernel + daemon + virtio_vdpa + one echo queue, DRIVER_OK. */
function bringUp(
  options: Partial<VduseDaemonOptions> = {},
  kernel: Parameters<typeof setup>[0] = {},
  filter = 0n,
): Echo {
  const f = setup(kernel);
  const device = new EchoDevice(2, 64);
  const daemon = new VduseDaemon(f.backend, device, { name: "echo0", ...options });
  assertEquals(daemon.start(), 0, daemon.lastError);
  const dev = f.kernel.vdpaDevAdd("echo0") as VduseDev;
  const guest = probeVirtioVdpa(dev as VdpaDevice, { pages: f.pages, filterFeatures: filter });
  guest.negotiate(featureMask(ECHO_F_GOOD));
  const irqs: number[] = [];
  const [vq] = guest.setupQueues<string>([
    { name: "echo", callback: (q) => irqs.push(q.index) },
    { name: "spare" },
  ]);
  guest.setDriverOk();
  return { f, device, daemon, dev, guest, vq, irqs };
}

/** Sends `data` through the echo queue and returns what came back. */
function roundTrip(e: Echo, data: Uint8Array, out = 0x1_0000, inn = 0x2_0000): Uint8Array {
  e.f.memory.write(out, data);
  e.f.memory.fill(inn, data.length, 0);
  assertEquals(
    e.vq.addSgs([{ addr: out, length: data.length }], [{ addr: inn, length: data.length }], "t"),
    0,
  );
  e.vq.kick();
  e.f.flush();
  const used = e.vq.getBuf();
  assertEquals(used?.token, "t");
  assertEquals(used?.len, data.length);
  return e.f.memory.view(inn, data.length).slice();
}

Deno.test("VDUSE end to end: echo device behind the daemon", async (t) => {
  await t.step("GET_VQ_STATE reports where the daemon's queue is, split and packed", () => {
    for (const packed of [false, true]) {
      const e = bringUp({ packed });
      for (let i = 0; i < 70; i++) roundTrip(e, new Uint8Array([i])); // past a 64-entry wrap
      const state = e.dev.getVqState(0);
      if (packed) {
        // Each chain is one indirect descriptor: 70 slots = one lap of 64 (the
        // wrap counters flip from 1 to 0) and 6 more.
        assertEquals(state, {
          packed: { lastAvailCounter: 0, lastAvailIdx: 6, lastUsedCounter: 0, lastUsedIdx: 6 },
        });
      } else {
        assertEquals(state, { split: { availIndex: 70 } });
      }
      // The unused queue is at its beginning in the negotiated layout.
      assertEquals(
        e.dev.getVqState(1),
        packed
          ? { packed: { lastAvailCounter: 1, lastAvailIdx: 0, lastUsedCounter: 1, lastUsedIdx: 0 } }
          : { split: { availIndex: 0 } },
      );
      assertEquals(e.daemon.stats.requests["GET_VQ_STATE"], 2);
    }
  });

  await t.step("probe, negotiation and DRIVER_OK go through SET_STATUS messages", () => {
    const e = bringUp();
    assertEquals(e.guest.transport, "vdpa");
    assertEquals(e.dev.getStatus(), 0x0f);
    assertEquals(e.daemon.live, true);
    assert(e.guest.hasFeature(VirtioFeature.ACCESS_PLATFORM));
    assert(e.guest.hasFeature(ECHO_F_GOOD));
    assertEquals(e.daemon.stats.requests["SET_STATUS"], 5); // 0, 1, 3, 0xb, 0xf
    assertEquals(e.device.activations.length, 1);
    assertEquals(e.device.activations[0].queues.map((q) => q !== null), [true, true]);
    assertEquals(e.guest.vqs[0].mapper.path, "map-ops");
  });

  await t.step("a buffer goes guest → bounce → device → bounce → guest", () => {
    const e = bringUp();
    const data = new Uint8Array(1500).map((_, i) => i * 7);
    assertEquals(roundTrip(e, data), data);
    assertEquals(e.device.echoed, 1);
    assertEquals(e.irqs, [0]);
    const d = e.dev.as[0].domain!;
    assertEquals(d.stats.bytesToBounce, 1500 + 32); // the frame and a 2-entry indirect table
    assertEquals(d.stats.bytesFromBounce, 1500);
    // Rings are coherent, buffers were bounced: the daemon mapped the rings and the bounce window.
    const space = e.daemon.spaces[0];
    assert(space.regions.some((r) => r.start === 0 && r.last === d.bounceSize - 1));
    assert(space.regions.some((r) => r.start >= d.bounceSize));
    for (let i = 0; i < 20; i++) {
      assertEquals(roundTrip(e, data.subarray(i, i + 100)), data.subarray(i, i + 100));
    }
    assertEquals(e.device.echoed, 21);
  });

  await t.step("packed rings and split rings both work", () => {
    const packed = bringUp();
    assert(packed.guest.hasFeature(VirtioFeature.RING_PACKED));
    assertEquals(roundTrip(packed, new Uint8Array([1, 2, 3])), new Uint8Array([1, 2, 3]));
    const split = bringUp({ packed: false });
    assert(!split.guest.hasFeature(VirtioFeature.RING_PACKED));
    assertEquals(roundTrip(split, new Uint8Array([4, 5])), new Uint8Array([4, 5]));
  });

  await t.step("a refused feature makes FEATURES_OK fail", () => {
    const f = setup();
    const daemon = new VduseDaemon(f.backend, new EchoDevice(1), { name: "echo0" });
    daemon.start();
    const guest = probeVirtioVdpa(f.kernel.vdpaDevAdd("echo0") as VdpaDevice, { pages: f.pages });
    const err = assertThrows(() => guest.negotiate(featureMask(0, 1)), VirtioDriverError);
    assertEquals(err.errno, -19);
    assertEquals(guest.getStatus() & DeviceStatus.FEATURES_OK, 0);
    assert(daemon.lastError.includes("echo refuses feature 1"));
  });

  await t.step("probe fails when no daemon answers", () => {
    const f = setup();
    const ctl = f.backend.openControl();
    const daemon = new VduseDaemon(f.backend, new EchoDevice(1), { name: "echo0" });
    daemon.start();
    daemon.stop(); // closes the fd: nobody reads messages any more
    f.backend.close(ctl);
    // The device still exists? stop() destroyed it, so create a silent one by hand.
    const silent = new VduseDaemon(f.backend, new EchoDevice(1), { name: "echo1" });
    silent.start();
    const vdpa = f.kernel.vdpaDevAdd("echo1") as VduseDev;
    f.backend.close(silent.fd);
    assertThrows(() => probeVirtioVdpa(vdpa, { pages: f.pages }), VirtioDriverError);
    f.timers.advance(30_000);
    assertEquals(vdpa.broken, true);
  });

  await t.step("reset with buffers mapped, then a second bring-up on the same device", () => {
    const e = bringUp();
    e.f.memory.fill(0x3_0000, 64, 0xaa);
    // An inbound buffer the device never uses stays mapped across the reset.
    assertEquals(e.vq.addInbuf([{ addr: 0x3_0000, length: 64 }], "pending"), 0);
    const d = e.dev.as[0].domain!;
    assert(d.bounceMapped);
    e.guest.reset();
    assertEquals(e.daemon.live, false);
    assertEquals(e.device.resets, 2); // probe's reset, then this one
    assertEquals(d.bounceMapped, false); // bounce window left the IOTLB
    assertEquals(e.daemon.spaces[0].regions.length, 0); // the daemon dropped its maps
    assertEquals(e.vq.detachUnusedBuf(), "pending"); // unmapped now: copied back
    assertEquals(e.f.memory.read8(0x3_0000), 0); // FROM_DEVICE: the bounce slot's zeros came back
    e.guest.deleteQueues();
    assertEquals(d.stats.coherentLive, 0);
    assertEquals(d.stats.warnings, 0);
    // Probe again on the same vDPA device.
    const again = probeVirtioVdpa(e.dev as VdpaDevice, { pages: e.f.pages });
    again.negotiate(featureMask(ECHO_F_GOOD));
    const [vq] = again.setupQueues<string>([{ name: "echo", callback: () => {} }, { name: "x" }]);
    again.setDriverOk();
    assertEquals(e.daemon.stats.starts, 2);
    e.vq = vq;
    assertEquals(roundTrip(e, new Uint8Array([9, 8, 7])), new Uint8Array([9, 8, 7]));
  });

  await t.step(
    "bounce exhaustion: adds fail and unwind (-EIO packed, -ENOMEM split, as Linux)",
    () => {
      for (const [packed, errno] of [[true, -5], [false, -12]] as const) {
        const e = bringUp({ packed });
        const d = e.dev.as[0].domain!;
        // 1 MiB bounce: 255 usable slots, 10 per add (an 8-slot aligned data
        // buffer, header, indirect table); iova.c's top-down search from its
        // cached node leaves aligned holes, so about 15 adds fit.
        let added = 0;
        for (let i = 0; i < 64; i++) {
          const r = e.vq.addSgs(
            [{ addr: 0x1_0000, length: 16 }],
            [{ addr: 0x2_0000 + (i % 16) * 0x8000, length: 0x8000 }],
            `b${i}`,
          );
          if (r !== 0) {
            assertEquals(r, errno);
            break;
          }
          added++;
        }
        assert(added >= 12 && added <= 25, `added ${added}`);
        assert(d.stats.mapFailures >= 1);
        // Whatever the failed add mapped was unmapped again: only complete buffers stay.
        const perAdd = 3; // header, data, indirect table
        assertEquals(d.stats.maps - d.stats.unmaps, added * perAdd);
      }
    },
  );

  await t.step(
    "a guest buffer at an unmapped IOVA stops the daemon's device, never the host",
    () => {
      const e = bringUp();
      let configIrqs = 0;
      e.guest.onConfigChange(() => configIrqs++);
      // Premapped: the ring carries IOVAs nothing maps.
      const bad = [{ addr: 0x4700_0000, length: 16 }];
      assertEquals(e.vq.addSgs(bad, [{ addr: 0x4710_0000, length: 16 }], "bad", true), 0);
      e.vq.kick();
      e.f.flush();
      assertEquals(e.daemon.needsReset, true);
      assert(e.daemon.lastError.includes("unmapped"), e.daemon.lastError);
      assertEquals(configIrqs, 1);
      const kicks = e.daemon.stats.kicks;
      e.vq.kick();
      assertEquals(e.device.echoed, 0);
      assertEquals(e.daemon.stats.kicks, kicks + 1); // kicks arrive but are not served until reset
      e.guest.reset();
      assertEquals(e.daemon.needsReset, false);
    },
  );

  await t.step("config changes: DEV_SET_CONFIG + DEV_INJECT_CONFIG_IRQ reach the driver", () => {
    const e = bringUp();
    let changes = 0;
    e.guest.onConfigChange(() => changes++);
    e.device.changeConfig(0x1234_5678);
    e.f.flush();
    assertEquals(changes, 1);
    assertEquals(e.guest.readConfig32(4), 0x1234_5678);
    e.guest.writeConfig32(4, 1); // ignored by VDUSE
    assertEquals(e.guest.readConfig32(4), 0x1234_5678);
  });
});
