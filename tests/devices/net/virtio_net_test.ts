import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  NetConfig,
  NetCtrl,
  NetStatus,
  VirtioNet,
  VirtioNetFeature as F,
} from "../../../devices/net/mod.ts";
import { hasFeature } from "../../../src/virtio/features.ts";
import { cable, ethFrame, Harness, HDR, patterned } from "./harness.ts";

const A_MAC = "52:54:00:00:00:0a";
const B_MAC = "52:54:00:00:00:0b";

Deno.test("VirtioNet config space layout", async (t) => {
  await t.step(
    "mac, status, max_virtqueue_pairs, mtu, speed and duplex sit at their offsets",
    () => {
      const net = new VirtioNet({
        mac: "52:54:00:12:34:56",
        queuePairs: 4,
        mtu: 9000,
        speed: 10000,
        duplex: "full",
      });
      const v = new DataView(net.config.buffer);
      assertEquals(net.config.length, 24);
      assertEquals(Array.from(net.config.subarray(0, 6)), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
      assertEquals(v.getUint16(NetConfig.STATUS, true), NetStatus.LINK_UP);
      assertEquals(v.getUint16(NetConfig.MAX_VIRTQUEUE_PAIRS, true), 4);
      assertEquals(v.getUint16(NetConfig.MTU, true), 9000);
      assertEquals(v.getUint32(NetConfig.SPEED, true), 10000);
      assertEquals(v.getUint8(NetConfig.DUPLEX), 1);
      assertEquals(net.numQueues, 9);
    },
  );
  await t.step("speed and duplex default to unknown; a link created down reads 0", () => {
    const net = new VirtioNet({ linkUp: false });
    const v = new DataView(net.config.buffer);
    assertEquals(v.getUint32(NetConfig.SPEED, true), 0xffffffff);
    assertEquals(v.getUint8(NetConfig.DUPLEX), 0xff);
    assertEquals(v.getUint16(NetConfig.STATUS, true), 0);
  });
  await t.step("driver writes to config are ignored and counted", () => {
    const net = new VirtioNet({ mac: A_MAC });
    net.writeConfig(0, new Uint8Array([1, 2, 3, 4, 5, 6]));
    assertEquals(net.macAddress, A_MAC);
    assertEquals(net.metrics.cfgFails, 1);
  });
});

Deno.test("VirtioNet offered features", async (t) => {
  await t.step("MAC and MTU are offered only when configured; MQ only with several pairs", () => {
    const plain = new VirtioNet();
    assert(!hasFeature(plain.deviceFeatures, F.MAC));
    assert(!hasFeature(plain.deviceFeatures, F.MTU));
    assert(!hasFeature(plain.deviceFeatures, F.MQ));
    assert(hasFeature(plain.deviceFeatures, F.STATUS));
    assert(hasFeature(plain.deviceFeatures, F.MRG_RXBUF));
    const full = new VirtioNet({ mac: A_MAC, mtu: 1500, queuePairs: 2 });
    for (const bit of [F.MAC, F.MTU, F.MQ, F.CTRL_VQ, F.CTRL_RX, F.CTRL_VLAN, F.GUEST_ANNOUNCE]) {
      assert(hasFeature(full.deviceFeatures, bit), `bit ${bit}`);
    }
  });
  await t.step("without a control queue no feature that needs one is offered (closed set)", () => {
    const net = new VirtioNet({ controlQueue: false, queuePairs: 2 });
    assertEquals(net.numQueues, 4);
    for (
      const bit of [
        F.CTRL_VQ,
        F.CTRL_RX,
        F.CTRL_VLAN,
        F.CTRL_RX_EXTRA,
        F.GUEST_ANNOUNCE,
        F.MQ,
        F.CTRL_MAC_ADDR,
        F.CTRL_GUEST_OFFLOADS,
      ]
    ) {
      assert(!hasFeature(net.deviceFeatures, bit), `bit ${bit}`);
    }
  });
  await t.step("offloads and mergeable buffers can be turned off", () => {
    const net = new VirtioNet({ offloads: false, mergeableRxBuffers: false });
    for (const bit of [F.CSUM, F.GUEST_CSUM, F.HOST_TSO4, F.GUEST_TSO4, F.MRG_RXBUF]) {
      assert(!hasFeature(net.deviceFeatures, bit));
    }
  });
  await t.step("validateFeatures refuses a feature without what it depends on", () => {
    const net = new VirtioNet();
    const f = (...bits: number[]) => bits.reduce((a, b) => a | (1n << BigInt(b)), 0n);
    assertEquals(net.validateFeatures(f(F.CSUM, F.HOST_TSO4)), null);
    assertEquals(
      net.validateFeatures(f(F.GUEST_TSO4)),
      "the driver accepted VIRTIO_NET_F_GUEST_TSO4 without VIRTIO_NET_F_GUEST_CSUM",
    );
    assertEquals(
      net.validateFeatures(f(F.CTRL_RX)),
      "the driver accepted VIRTIO_NET_F_CTRL_RX without VIRTIO_NET_F_CTRL_VQ",
    );
    assertEquals(
      net.validateFeatures(f(F.CSUM, F.HOST_ECN)),
      "the driver accepted VIRTIO_NET_F_HOST_ECN without VIRTIO_NET_F_HOST_TSO4 or VIRTIO_NET_F_HOST_TSO6",
    );
  });
});

Deno.test("VirtioNet rejects bad options with clear errors", () => {
  assertThrows(
    () => new VirtioNet({ mac: "zz" }),
    TypeError,
    'Cannot create virtio-net: mac "zz" is not 6 bytes',
  );
  assertThrows(
    () => new VirtioNet({ mac: new Uint8Array(5) }),
    TypeError,
    "Cannot create virtio-net: mac of 5 bytes is not 6 bytes",
  );
  assertThrows(() => new VirtioNet({ mtu: 67 }), RangeError, "mtu 67 is not in 68..65535");
  assertThrows(() => new VirtioNet({ queuePairs: 0 }), RangeError, "queuePairs 0 is not in 1..511");
  assertThrows(() => new VirtioNet({ queueSize: 100 }), RangeError, "queueSize 100");
  assertThrows(() => new VirtioNet({ speed: -1 }), RangeError, "speed -1");
  assertThrows(
    // deno-lint-ignore no-explicit-any
    () => new VirtioNet({ backend: {} as any }),
    TypeError,
    "backend is not a NetBackend",
  );
  const net = new VirtioNet();
  new Harness(net);
  assertThrows(() => net.bind({ interrupt() {}, configChanged() {}, fail() {} }), TypeError);
});

Deno.test("VirtioNet transmit and receive between two devices", async (t) => {
  await t.step("a frame goes from A's tx0 to B's rx0 with the header and data intact", () => {
    const { a, b } = cable();
    a.activate([F.MAC, F.STATUS]);
    b.activate([F.MAC, F.STATUS]);
    b.postRx(0, HDR + 1514);
    const frame = ethFrame(B_MAC, A_MAC, 0x0800, 100);
    a.transmit(1, frame);
    assertEquals(a.txDone(1), 1);
    assertEquals(a.host.interrupts, [1]);
    const got = b.received(0);
    assertEquals(got.length, 1);
    assertEquals(got[0].frame, frame);
    assertEquals(got[0].numBuffers, 1, "num_buffers is 1 without MRG_RXBUF");
    assertEquals(got[0].flags, 0);
    assertEquals(got[0].gsoType, 0);
    assertEquals(got[0].lens, [HDR + frame.length]);
    assertEquals(b.host.interrupts, [0]);
    assertEquals(a.device.metrics.tx[0].packets, 1);
    assertEquals(a.device.metrics.tx[0].bytes, frame.length);
    assertEquals(b.device.metrics.rx[0].packets, 1);
    assertEquals(b.device.metrics.rx[0].bytes, frame.length);
  });
  await t.step("scatter-gather: header and frame split across descriptors at odd places", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.postRxChain(0, [5, 7, 3, 2000]);
    const frame = ethFrame(B_MAC, A_MAC, 0x0800, 300);
    a.transmit(1, frame, {}, [3, 9, 1, 20, frame.length + HDR - 33]);
    const got = b.received(0);
    assertEquals(got.length, 1);
    assertEquals(got[0].frame, frame);
  });
  await t.step("several frames in one kick are published with one interrupt", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.postRx(0, 1526, 1526, 1526);
    for (let i = 0; i < 3; i++) a.queueTx(1, ethFrame(B_MAC, A_MAC, 0x0800, 50 + i));
    a.kick(1);
    assertEquals(b.received(0).map((f) => f.frame.length), [64, 65, 66]);
    assertEquals(b.host.interrupts, [0]);
    assertEquals(a.host.interrupts, [1]);
  });
  await t.step("a receive queue with NO_INTERRUPT set gets no interrupt", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.rings[0].availFlags = 1;
    b.postRx(0, 1526);
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.received(0).length, 1);
    assertEquals(b.host.interrupts, []);
  });
  await t.step("nothing moves before activation; notifications after reset are ignored", () => {
    const { a, b } = cable();
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(a.txDone(1), 0);
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    a.device.reset();
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(a.txDone(1), 0);
  });
});

Deno.test("VirtioNet transmit validation", async (t) => {
  await t.step(
    "chains shorter than header plus Ethernet header are malformed, returned and counted",
    () => {
      const { a, b } = cable();
      a.activate([F.MAC]);
      b.activate([F.MAC]);
      b.postRx(0, 1526);
      a.transmit(1, new Uint8Array(13));
      assertEquals(a.txDone(1), 1, "the chain is returned");
      assertEquals(a.device.metrics.tx[0].malformedFrames, 1);
      assertEquals(a.device.metrics.tx[0].drops, 1);
      assertEquals(b.received(0).length, 0);
    },
  );
  await t.step("NEEDS_CSUM without CSUM negotiated is malformed", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.postRx(0, 1526);
    a.transmit(1, ethFrame(B_MAC, A_MAC), { flags: 1, csumStart: 34, csumOffset: 6 });
    assertEquals(a.device.metrics.tx[0].malformedFrames, 1);
  });
  await t.step("unknown flag bits are ignored", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.postRx(0, 1526);
    a.transmit(1, ethFrame(B_MAC, A_MAC), { flags: 0xf2 });
    const got = b.received(0);
    assertEquals(got.length, 1);
    assertEquals(got[0].flags, 0);
  });
  await t.step("a transmit buffer outside guest memory drops the frame, not the device", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.postRx(0, 1526);
    const hdr = a.alloc(HDR);
    a.rings[1].add([
      { addr: hdr, len: HDR, write: false },
      { addr: 0x7fff_0000_0000, len: 60, write: false },
    ]);
    a.kick(1);
    assertEquals(a.txDone(1), 1);
    assertEquals(a.device.metrics.tx[0].dmaFaults, 1);
    assertEquals(a.host.failures, []);
    // B's buffer was not consumed: the next frame lands in it.
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.received(0).length, 1);
  });
  await t.step("a malformed transmit ring marks the device broken through the host", () => {
    const { a } = cable();
    a.activate([F.MAC]);
    a.mem.write16(a.rings[1].avail + 2, 1000); // avail idx jumps past the ring size
    a.kick(1);
    assertEquals(a.host.failures.length, 1);
    assert(a.host.failures[0].startsWith("virtio-net: Virtqueue 1"), a.host.failures[0]);
    assertEquals(a.device.metrics.deviceErrors, 1);
  });
});

Deno.test("VirtioNet receive buffers", async (t) => {
  await t.step(
    "without MRG_RXBUF a frame larger than the posted chain is dropped and counted",
    () => {
      const { a, b } = cable();
      a.activate([F.MAC]);
      b.activate([F.MAC]);
      b.postRx(0, HDR + 100);
      a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 200));
      assertEquals(b.received(0).length, 0);
      assertEquals(b.device.metrics.rx[0].frameTooBig, 1);
      assertEquals(b.device.metrics.rx[0].drops, 1);
      assertEquals(a.txDone(1), 1, "the sender's chain completes anyway");
      // The chain stays posted and takes the next frame that fits.
      const small = ethFrame(B_MAC, A_MAC, 0x0800, 60);
      a.transmit(1, small);
      const got = b.received(0);
      assertEquals(got.length, 1);
      assertEquals(got[0].frame, small);
    },
  );
  await t.step("a chain that cannot hold a header and an Ethernet header is returned empty", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.postRx(0, 8, 1526);
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.used(0).map((u) => u.len), [0, HDR + 60]);
    assertEquals(b.device.metrics.rx[0].badBuffers, 1);
  });
  await t.step("mergeable rx spreads a frame over several buffers with num_buffers", () => {
    const { a, b } = cable();
    a.activate([F.MAC, F.MRG_RXBUF]);
    b.activate([F.MAC, F.MRG_RXBUF]);
    b.postRx(0, 512, 512, 512, 512, 512);
    const frame = ethFrame(B_MAC, A_MAC, 0x0800, 1400);
    a.transmit(1, frame);
    const got = b.received(0);
    assertEquals(got.length, 1);
    assertEquals(got[0].numBuffers, 3);
    assertEquals(got[0].lens, [512, 512, HDR + frame.length - 1024], "all but the last are full");
    assertEquals(got[0].frame, frame);
    assertEquals(b.host.interrupts, [0], "the buffers are published together");
    assertEquals(b.device.metrics.rx[0].buffers, 3);
    // The unused buffers stay posted.
    const next = ethFrame(B_MAC, A_MAC, 0x0800, 900);
    a.transmit(1, next);
    const again = b.received(0);
    assertEquals(again[0].numBuffers, 2);
    assertEquals(again[0].frame, next);
  });
  await t.step("mergeable rx with a single big buffer uses num_buffers 1", () => {
    const { a, b } = cable();
    a.activate([F.MAC, F.MRG_RXBUF]);
    b.activate([F.MAC, F.MRG_RXBUF]);
    b.postRx(0, 4096);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 1500));
    const got = b.received(0);
    assertEquals(got[0].numBuffers, 1);
    assertEquals(got[0].frame.length, 1514);
  });
  await t.step(
    "a guest that posts no receive buffers loses frames, counted, without queueing",
    () => {
      const { a, b } = cable();
      a.activate([F.MAC]);
      b.activate([F.MAC]);
      let done = 0;
      for (let i = 0; i < 100; i++) {
        a.transmit(1, ethFrame(B_MAC, A_MAC));
        done += a.txDone(1);
      }
      assertEquals(done, 100, "the sender never stalls");
      assertEquals(b.device.metrics.rx[0].noRxAvailBuffer, 100);
      assertEquals(b.device.metrics.rx[0].drops, 100);
      b.postRx(0, 1526);
      b.kick(0);
      assertEquals(b.received(0).length, 0, "dropped frames do not come back");
      a.transmit(1, ethFrame(B_MAC, A_MAC));
      assertEquals(b.received(0).length, 1);
    },
  );
  await t.step("mergeable: too few buffers for a frame drops it; the buffers stay posted", () => {
    const { a, b } = cable();
    a.activate([F.MAC, F.MRG_RXBUF]);
    b.activate([F.MAC, F.MRG_RXBUF]);
    b.postRx(0, 256, 256);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 1000));
    assertEquals(b.received(0).length, 0);
    assertEquals(b.device.metrics.rx[0].noRxAvailBuffer, 1);
    assertEquals(b.rings[0].outstanding, 2);
    b.postRx(0, 2048);
    const frame = ethFrame(B_MAC, A_MAC, 0x0800, 1000);
    a.transmit(1, frame);
    const got = b.received(0);
    assertEquals(got[0].numBuffers, 3);
    assertEquals(got[0].frame, frame);
  });
  await t.step(
    "a receive buffer outside guest memory drops the frame and returns the buffer",
    () => {
      const { a, b } = cable();
      a.activate([F.MAC]);
      b.activate([F.MAC]);
      b.rings[0].add([{ addr: 0x7fff_0000_0000, len: 1526, write: true }]);
      a.transmit(1, ethFrame(B_MAC, A_MAC));
      assertEquals(b.used(0).map((u) => u.len), [0]);
      assertEquals(b.device.metrics.rx[0].dmaFaults, 1);
      assertEquals(b.host.failures, []);
      assertEquals(a.device.metrics.tx[0].packets, 1);
    },
  );
  await t.step("a malformed receive ring breaks only the receiving device", () => {
    const { a, b } = cable();
    a.activate([F.MAC]);
    b.activate([F.MAC]);
    b.mem.write16(b.rings[0].avail + 2, 999);
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.host.failures.length, 1);
    assertEquals(a.host.failures, []);
    assertEquals(a.txDone(1), 1);
  });
  await t.step("frames of 64 KiB cross with mergeable buffers", () => {
    const { a, b } = cable({}, {}, {}, 256);
    a.activate([F.MAC, F.MRG_RXBUF]);
    b.activate([F.MAC, F.MRG_RXBUF]);
    for (let i = 0; i < 20; i++) b.postRx(0, 4096);
    const frame = ethFrame(B_MAC, A_MAC, 0x0800, patterned(65535 - 14));
    a.transmit(1, frame, {}, [HDR, 4000, frame.length - 4000]);
    const got = b.received(0);
    assertEquals(got[0].numBuffers, 17);
    assertEquals(got[0].frame, frame);
  });
});

Deno.test("VirtioNet link status and announce", async (t) => {
  await t.step("setLinkUp changes status and raises a config change", () => {
    const { a, b } = cable();
    a.activate([F.MAC, F.STATUS]);
    b.activate([F.MAC, F.STATUS]);
    b.device.setLinkUp(false);
    assertEquals(b.host.configChanges, 1);
    assertEquals(b.device.config[NetConfig.STATUS] & NetStatus.LINK_UP, 0);
    b.device.setLinkUp(false);
    assertEquals(b.host.configChanges, 1, "no change, no interrupt");
    b.postRx(0, 1526);
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.received(0).length, 0);
    assertEquals(b.device.metrics.rx[0].linkDown, 1);
    b.transmit(1, ethFrame(A_MAC, B_MAC));
    assertEquals(b.device.metrics.tx[0].linkDown, 1);
    b.device.setLinkUp(true);
    assertEquals(b.device.config[NetConfig.STATUS] & NetStatus.LINK_UP, 1);
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.received(0).length, 1);
  });
  await t.step("announce sets ANNOUNCE; ANNOUNCE_ACK clears it before completing", () => {
    const { a } = cable();
    a.activate([F.MAC, F.STATUS, F.CTRL_VQ, F.GUEST_ANNOUNCE]);
    assert(a.device.announce());
    assertEquals(a.device.config[NetConfig.STATUS], NetStatus.LINK_UP | NetStatus.ANNOUNCE);
    assertEquals(a.host.configChanges, 1);
    assertEquals(a.ctrl(2, NetCtrl.ANNOUNCE, NetCtrl.ANNOUNCE_ACK), 0);
    assertEquals(a.device.config[NetConfig.STATUS], NetStatus.LINK_UP);
    assertEquals(a.ctrl(2, NetCtrl.ANNOUNCE, NetCtrl.ANNOUNCE_ACK), 1, "no announce pending");
  });
  await t.step("announce does nothing without GUEST_ANNOUNCE", () => {
    const { a } = cable();
    a.activate([F.MAC, F.STATUS, F.CTRL_VQ]);
    assertEquals(a.device.announce(), false);
    assertEquals(a.device.config[NetConfig.STATUS], NetStatus.LINK_UP);
  });
  await t.step("reset clears ANNOUNCE and keeps the link state", () => {
    const { a } = cable();
    a.activate([F.MAC, F.STATUS, F.CTRL_VQ, F.GUEST_ANNOUNCE]);
    a.device.announce();
    a.device.setLinkUp(false);
    a.device.reset();
    assertEquals(a.device.config[NetConfig.STATUS], 0);
  });
});

Deno.test("VirtioNet queue reset", async (t) => {
  await t.step("a reset receive queue forgets held chains; the re-enabled queue receives", () => {
    const { a, b } = cable();
    a.activate([F.MAC, F.MRG_RXBUF]);
    b.activate([F.MAC, F.MRG_RXBUF]);
    b.postRx(0, 256);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0800, 1000)); // holds the one buffer
    b.device.resetQueue(0);
    a.transmit(1, ethFrame(B_MAC, A_MAC));
    assertEquals(b.device.metrics.rx[0].noRxAvailBuffer, 2);
    // The driver re-initialises the ring and enables it again.
    const fresh = new Harness(new VirtioNet({ mac: B_MAC }));
    fresh.activate([F.MAC, F.MRG_RXBUF]);
    fresh.postRx(0, 2048);
    fresh.device.resetQueue(0);
    fresh.device.enableQueue(0, fresh.makeQueue(0));
    fresh.kick(0);
    assertEquals(fresh.device.metrics.rx[0].drops, 0);
  });
});

Deno.test("VirtioNet save and restore", async (t) => {
  await t.step("MAC, status and control state survive a round trip through JSON", () => {
    const { a } = cable({ queuePairs: 2 });
    a.activate([
      F.MAC,
      F.STATUS,
      F.CTRL_VQ,
      F.CTRL_RX,
      F.CTRL_VLAN,
      F.CTRL_MAC_ADDR,
      F.MQ,
      F.GUEST_ANNOUNCE,
    ], [0, 1, 2, 3, 4]);
    const ctrl = 4;
    assertEquals(a.ctrl(ctrl, NetCtrl.RX, NetCtrl.RX_PROMISC, new Uint8Array([0])), 0);
    assertEquals(a.ctrl(ctrl, NetCtrl.RX, NetCtrl.RX_ALLMULTI, new Uint8Array([1])), 0);
    assertEquals(a.ctrl(ctrl, NetCtrl.VLAN, NetCtrl.VLAN_ADD, new Uint8Array([5, 0])), 0);
    assertEquals(
      a.ctrl(ctrl, NetCtrl.MAC, NetCtrl.MAC_ADDR_SET, new Uint8Array([2, 0, 0, 0, 0, 9])),
      0,
    );
    assertEquals(a.ctrl(ctrl, NetCtrl.MQ, NetCtrl.MQ_VQ_PAIRS_SET, new Uint8Array([2, 0])), 0);
    a.device.announce();
    const saved = JSON.parse(JSON.stringify(a.device.saveState()));
    assertEquals(saved.mac, "02:00:00:00:00:09");
    const other = new VirtioNet({ mac: A_MAC, queuePairs: 2 });
    other.restoreState(saved);
    assertEquals(other.macAddress, "02:00:00:00:00:09");
    assertEquals(Array.from(other.config.subarray(0, 6)), [2, 0, 0, 0, 0, 9]);
    assertEquals(other.config[NetConfig.STATUS], NetStatus.LINK_UP | NetStatus.ANNOUNCE);
    assertEquals(other.activeQueuePairs, 2);
    assertEquals(other.rxFilter.promisc, false);
    assertEquals(other.rxFilter.allmulti, true);
    assert(other.rxFilter.hasVlan(5));
    assertEquals(other.saveState(), saved);
  });
  await t.step("a malformed state is refused with a TypeError", () => {
    const net = new VirtioNet();
    const good = net.saveState();
    assertThrows(() => net.restoreState({ ...good, version: 2 }), TypeError, "version 2");
    assertThrows(() => net.restoreState({ ...good, mac: "x" }), TypeError, 'mac "x"');
    assertThrows(() => net.restoreState({ ...good, activePairs: 3 }), TypeError, "activePairs 3");
    assertThrows(() => net.restoreState({ ...good, vlans: [5000] }), TypeError, "vlans");
    assertThrows(() => net.restoreState({ ...good, rxMode: {} }), TypeError, "rxMode");
  });
  await t.step("reset restores the MAC the device was created with", () => {
    const { a } = cable();
    a.activate([F.MAC, F.CTRL_VQ, F.CTRL_MAC_ADDR]);
    a.ctrl(2, NetCtrl.MAC, NetCtrl.MAC_ADDR_SET, new Uint8Array([2, 0, 0, 0, 0, 1]));
    assertEquals(a.device.macAddress, "02:00:00:00:00:01");
    a.device.reset();
    assertEquals(a.device.macAddress, A_MAC);
  });
});
