import { assert, assertEquals } from "@std/assert";
import {
  NetAck,
  NetConfig,
  NetCtrl,
  VirtioNet,
  VirtioNetFeature as F,
} from "../../../devices/net/mod.ts";
import { cable, concat, ethFrame, Harness, HDR, macList } from "./harness.ts";

const A_MAC = "52:54:00:00:00:0a";
const B_MAC = "52:54:00:00:00:0b";
const OK = NetAck.OK;
const ERR = NetAck.ERR;
const CTRL = 2;
const ALL_CTRL = [
  F.MAC,
  F.STATUS,
  F.CTRL_VQ,
  F.CTRL_RX,
  F.CTRL_RX_EXTRA,
  F.CTRL_VLAN,
  F.CTRL_MAC_ADDR,
  F.GUEST_ANNOUNCE,
];
const on = new Uint8Array([1]);
const off = new Uint8Array([0]);

/** A device with every control feature, and a peer to send it frames. */
function setup(bits = ALL_CTRL) {
  const { a, b } = cable();
  a.activate([F.MAC]);
  b.activate(bits);
  const deliver = (frame: Uint8Array): boolean => {
    b.postRx(0, HDR + 1518);
    a.transmit(1, frame);
    const got = b.received(0);
    // Take back the unused buffer so every probe starts from one.
    return got.length === 1;
  };
  return { a, b, deliver };
}

Deno.test("VirtioNet control queue acks", async (t) => {
  await t.step("known commands answer OK, with used length 1", () => {
    const { b } = setup();
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, on), OK);
    assertEquals(b.device.metrics.ctrl.commands, 1);
  });
  await t.step("an unknown class or command answers VIRTIO_NET_ERR", () => {
    const { b } = setup();
    assertEquals(b.ctrl(CTRL, 42, 0), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, 9, on), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.VLAN, 7, new Uint8Array([1, 0])), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.MQ, NetCtrl.MQ_RSS_CONFIG, new Uint8Array(8)), ERR);
    assertEquals(b.device.metrics.ctrl.errAcks, 4);
  });
  await t.step("malformed payloads answer VIRTIO_NET_ERR and change nothing", () => {
    const { b } = setup();
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC), ERR, "missing byte");
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, new Uint8Array([0, 0])), ERR);
    assertEquals(b.device.rxFilter.promisc, true);
    assertEquals(b.ctrl(CTRL, NetCtrl.VLAN, NetCtrl.VLAN_ADD, new Uint8Array([1])), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.VLAN, NetCtrl.VLAN_ADD, new Uint8Array([0, 0x10])), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_ADDR_SET, new Uint8Array(5)), ERR);
    assertEquals(b.device.macAddress, B_MAC);
    assertEquals(b.ctrl(CTRL, NetCtrl.ANNOUNCE, NetCtrl.ANNOUNCE_ACK, on), ERR);
  });
  await t.step("a request with only a class byte answers VIRTIO_NET_ERR", () => {
    const { b } = setup();
    const cls = b.alloc(1);
    const ack = b.alloc(1);
    b.rings[CTRL].add([{ addr: cls, len: 1, write: false }, { addr: ack, len: 1, write: true }]);
    b.kick(CTRL);
    assertEquals(b.used(CTRL), [{ id: 0, len: 1 }]);
    assertEquals(b.mem.read8(ack), ERR);
  });
  await t.step("a request without a writable ack byte marks the device broken", () => {
    const { b } = setup();
    const req = b.alloc(3);
    b.mem.write(req, new Uint8Array([NetCtrl.RX, NetCtrl.RX_PROMISC, 0]));
    b.rings[CTRL].add([{ addr: req, len: 3, write: false }]);
    b.kick(CTRL);
    assertEquals(b.host.failures.length, 1);
    assert(b.host.failures[0].includes("no device-writable ack byte"));
  });
  await t.step("commands whose feature was not negotiated answer VIRTIO_NET_ERR", () => {
    const { b } = setup([F.MAC, F.CTRL_VQ]);
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.VLAN, NetCtrl.VLAN_ADD, new Uint8Array([1, 0])), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_ADDR_SET, new Uint8Array(6)), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.MQ, NetCtrl.MQ_VQ_PAIRS_SET, new Uint8Array([1, 0])), ERR);
    const extra = setup([F.MAC, F.CTRL_VQ, F.CTRL_RX]).b;
    assertEquals(extra.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_ALLMULTI, on), OK);
    assertEquals(extra.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_NOBCAST, on), ERR, "needs RX_EXTRA");
  });
  await t.step("the header may be split across descriptors in any way", () => {
    const { b } = setup();
    const one = b.alloc(1);
    const two = b.alloc(2);
    const ack = b.alloc(1);
    b.mem.write8(one, NetCtrl.VLAN);
    b.mem.write(two, new Uint8Array([NetCtrl.VLAN_ADD, 7]));
    const last = b.alloc(1);
    b.mem.write8(last, 0);
    b.rings[CTRL].add([
      { addr: one, len: 1, write: false },
      { addr: two, len: 2, write: false },
      { addr: last, len: 1, write: false },
      { addr: ack, len: 1, write: true },
    ]);
    b.kick(CTRL);
    assertEquals(b.mem.read8(ack), OK);
    assert(b.device.rxFilter.hasVlan(7));
  });
});

Deno.test("VirtioNet receive filtering (CTRL_RX, CTRL_RX_EXTRA)", async (t) => {
  await t.step("promiscuous after reset: frames for any address arrive", () => {
    const { deliver } = setup();
    assert(deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
  });
  await t.step(
    "PROMISC off: own unicast and broadcast pass, others are dropped and counted",
    () => {
      const { b, deliver } = setup();
      assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off), OK);
      assert(deliver(ethFrame(B_MAC, A_MAC)));
      assert(deliver(ethFrame("ff:ff:ff:ff:ff:ff", A_MAC)));
      assert(!deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
      assert(!deliver(ethFrame("01:00:5e:00:00:01", A_MAC)), "multicast not in the table");
      assertEquals(b.device.metrics.rx[0].filtered, 2);
    },
  );
  await t.step("ALLMULTI lets every multicast through", () => {
    const { b, deliver } = setup();
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_ALLMULTI, on), OK);
    assert(deliver(ethFrame("01:00:5e:00:00:01", A_MAC)));
    assert(!deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
  });
  await t.step("MAC_TABLE_SET adds unicast and multicast addresses; it replaces the table", () => {
    const { b, deliver } = setup();
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    const table = concat(macList("52:54:00:99:99:99"), macList("01:00:5e:00:00:07"));
    assertEquals(b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_TABLE_SET, table), OK);
    assert(deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
    assert(deliver(ethFrame("01:00:5e:00:00:07", A_MAC)));
    assert(!deliver(ethFrame("01:00:5e:00:00:08", A_MAC)));
    assertEquals(
      b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_TABLE_SET, concat(macList(), macList())),
      OK,
    );
    assert(!deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
    assert(deliver(ethFrame(B_MAC, A_MAC)), "the device's own address always passes");
  });
  await t.step("a malformed MAC_TABLE_SET answers ERR and keeps the old table", () => {
    const { b, deliver } = setup();
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    b.ctrl(
      CTRL,
      NetCtrl.MAC,
      NetCtrl.MAC_TABLE_SET,
      concat(macList("52:54:00:99:99:99"), macList()),
    );
    const short = macList("52:54:00:99:99:98").subarray(0, 8);
    assertEquals(b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_TABLE_SET, short), ERR);
    const trailing = concat(macList(), macList("01:00:5e:00:00:07"), new Uint8Array(1));
    assertEquals(b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_TABLE_SET, trailing), ERR);
    assertEquals(b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_TABLE_SET, macList()), ERR, "no multi");
    assert(deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
  });
  await t.step("a table longer than 64 entries overflows into accepting all of that kind", () => {
    const { b, deliver } = setup();
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    const many = Array.from(
      { length: 70 },
      (_, i) => `52:54:00:aa:00:${i.toString(16).padStart(2, "0")}`,
    );
    assertEquals(
      b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_TABLE_SET, concat(macList(...many), macList())),
      OK,
    );
    assert(b.device.rxFilter.uniOverflow);
    assert(deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
  });
  await t.step("RX_EXTRA: NOUNI, NOMULTI, NOBCAST and ALLUNI", () => {
    const { b, deliver } = setup();
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_NOBCAST, on), OK);
    assert(!deliver(ethFrame("ff:ff:ff:ff:ff:ff", A_MAC)));
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_ALLUNI, on), OK);
    assert(deliver(ethFrame("52:54:00:99:99:99", A_MAC)));
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_NOUNI, on), OK);
    assert(!deliver(ethFrame(B_MAC, A_MAC)));
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_ALLMULTI, on);
    assertEquals(b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_NOMULTI, on), OK);
    assert(!deliver(ethFrame("01:00:5e:00:00:01", A_MAC)));
  });
});

Deno.test("VirtioNet MAC_ADDR_SET", async (t) => {
  await t.step("updates config mac before completing, counts, raises a config change", () => {
    const { b, deliver } = setup();
    const changes = b.host.configChanges;
    const next = new Uint8Array([0x02, 0, 0, 0, 0, 0x42]);
    assertEquals(b.ctrl(CTRL, NetCtrl.MAC, NetCtrl.MAC_ADDR_SET, next), OK);
    assertEquals(Array.from(b.device.config.subarray(NetConfig.MAC, 6)), Array.from(next));
    assertEquals(b.device.macAddress, "02:00:00:00:00:42");
    assertEquals(b.device.metrics.ctrl.macAddressUpdates, 1);
    assertEquals(b.host.configChanges, changes + 1);
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    assert(deliver(ethFrame("02:00:00:00:00:42", A_MAC)));
    assert(!deliver(ethFrame(B_MAC, A_MAC)), "the old address no longer matches");
  });
});

Deno.test("VirtioNet VLAN filtering (CTRL_VLAN)", async (t) => {
  const tagged = (vid: number) => {
    const f = ethFrame(B_MAC, A_MAC, 0x8100, 60);
    f[14] = vid >> 8;
    f[15] = vid & 0xff;
    f[16] = 0x08;
    f[17] = 0x00;
    return f;
  };
  await t.step("with CTRL_VLAN only VLANs in the table pass (once not promiscuous)", () => {
    const { b, deliver } = setup();
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    assert(!deliver(tagged(5)));
    assertEquals(b.ctrl(CTRL, NetCtrl.VLAN, NetCtrl.VLAN_ADD, new Uint8Array([5, 0])), OK);
    assert(deliver(tagged(5)));
    assert(!deliver(tagged(6)));
    assert(deliver(ethFrame(B_MAC, A_MAC)), "untagged frames pass");
    assertEquals(b.ctrl(CTRL, NetCtrl.VLAN, NetCtrl.VLAN_DEL, new Uint8Array([5, 0])), OK);
    assert(!deliver(tagged(5)));
  });
  await t.step("without CTRL_VLAN every tagged frame is accepted", () => {
    const { b, deliver } = setup([F.MAC, F.CTRL_VQ, F.CTRL_RX]);
    b.ctrl(CTRL, NetCtrl.RX, NetCtrl.RX_PROMISC, off);
    assert(deliver(tagged(100)));
  });
});

Deno.test("VirtioNet control queue through a device with several pairs", () => {
  const h = new Harness(new VirtioNet({ mac: A_MAC, queuePairs: 3 }));
  // Without MQ the control queue is queue 2 even though the device has 3 pairs.
  h.activate([F.MAC, F.CTRL_VQ, F.CTRL_RX], [0, 1, 2]);
  assertEquals(h.ctrl(2, NetCtrl.RX, NetCtrl.RX_PROMISC, off), OK);
  const mq = new Harness(new VirtioNet({ mac: A_MAC, queuePairs: 3 }));
  mq.activate([F.MAC, F.CTRL_VQ, F.MQ], [0, 1, 2, 3, 4, 5, 6]);
  assertEquals(mq.ctrl(6, NetCtrl.MQ, NetCtrl.MQ_VQ_PAIRS_SET, new Uint8Array([3, 0])), OK);
});
