import { assert, assertEquals } from "@std/assert";
import { flowHash, NetAck, NetCtrl, VirtioNetFeature as F } from "../../../devices/net/mod.ts";
import { cable, ethFrame, type Harness, HDR } from "./harness.ts";

const A_MAC = "52:54:00:00:00:0a";
const B_MAC = "52:54:00:00:00:0b";
const PAIRS = 4;
const CTRL = 2 * PAIRS;
const MQ_BITS = [F.MAC, F.CTRL_VQ, F.MQ];

/** An IPv4/UDP frame from `src:sport` to `dst:dport`. */
function udp(
  dstMac: string,
  srcMac: string,
  src: number,
  sport: number,
  dst: number,
  dport: number,
) {
  const body = new Uint8Array(20 + 8 + 18);
  body.set([0x45, 0, 0, body.length, 0, 0, 0x40, 0, 64, 17]);
  body.set([10, 0, 0, src], 12);
  body.set([10, 0, 0, dst], 16);
  body.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, 0, 26], 20);
  return ethFrame(dstMac, srcMac, 0x0800, body);
}

function pairsSet(h: Harness, n: number): number {
  return h.ctrl(CTRL, NetCtrl.MQ, NetCtrl.MQ_VQ_PAIRS_SET, new Uint8Array([n & 0xff, n >> 8]));
}

function setup() {
  const { a, b } = cable({ queuePairs: PAIRS }, { queuePairs: PAIRS }, {}, 128);
  a.activate(MQ_BITS);
  b.activate(MQ_BITS);
  for (let q = 0; q < PAIRS; q++) {
    for (let i = 0; i < 32; i++) {
      a.postRx(2 * q, HDR + 1518);
      b.postRx(2 * q, HDR + 1518);
    }
  }
  return { a, b };
}

/** How many frames each receive queue of `h` got. */
function perQueue(h: Harness): number[] {
  return Array.from({ length: PAIRS }, (_, q) => h.received(2 * q).length);
}

Deno.test("VirtioNet multiqueue", async (t) => {
  await t.step("the control queue is last: 2 * max_virtqueue_pairs", () => {
    const { b } = setup();
    assertEquals(b.device.numQueues, 2 * PAIRS + 1);
    assertEquals(pairsSet(b, 2), NetAck.OK);
    assertEquals(b.device.activeQueuePairs, 2);
  });
  await t.step("until VQ_PAIRS_SET only rx0 receives", () => {
    const { a, b } = setup();
    for (let i = 0; i < 20; i++) a.transmit(1, udp(B_MAC, A_MAC, 1, 1000 + i, 2, 53));
    assertEquals(perQueue(b), [20, 0, 0, 0]);
  });
  await t.step("VQ_PAIRS_SET outside 1..max_virtqueue_pairs answers ERR", () => {
    const { b } = setup();
    assertEquals(pairsSet(b, 0), NetAck.ERR);
    assertEquals(pairsSet(b, PAIRS + 1), NetAck.ERR);
    assertEquals(b.device.activeQueuePairs, 1);
  });
  await t.step("flows spread over the active pairs only, each flow on one queue", () => {
    const { a, b } = setup();
    assertEquals(pairsSet(b, 3), NetAck.OK);
    for (let i = 0; i < 60; i++) a.transmit(1, udp(B_MAC, A_MAC, 1, 2000 + (i % 30), 2, 53));
    const counts = perQueue(b);
    assertEquals(counts[3], 0, "no rx queue beyond the requested count");
    assertEquals(counts.reduce((x, y) => x + y), 60);
    assert(counts.filter((n) => n > 0).length >= 2, `spread: ${counts}`);
    for (const n of counts) assertEquals(n % 2, 0, "both frames of a flow land together");
  });
  await t.step("a flow's replies are steered to the queue pair its transmits used", () => {
    const { a, b } = setup();
    assertEquals(pairsSet(b, PAIRS), NetAck.OK);
    for (let pair = 0; pair < PAIRS; pair++) {
      const sport = 5000 + pair;
      b.transmit(2 * pair + 1, udp(A_MAC, B_MAC, 2, 53, 1, sport));
      a.transmit(1, udp(B_MAC, A_MAC, 1, sport, 2, 53));
      const expected = [0, 0, 0, 0];
      expected[pair] = 1;
      assertEquals(perQueue(b), expected, `flow sent on pair ${pair}`);
    }
  });
  await t.step("non-IP frames go to rx0; going back to one pair sends everything to rx0", () => {
    const { a, b } = setup();
    pairsSet(b, PAIRS);
    a.transmit(1, ethFrame(B_MAC, A_MAC, 0x0806, 28));
    assertEquals(perQueue(b), [1, 0, 0, 0]);
    assertEquals(pairsSet(b, 1), NetAck.OK);
    for (let i = 0; i < 10; i++) a.transmit(1, udp(B_MAC, A_MAC, 1, 3000 + i, 2, 53));
    assertEquals(perQueue(b), [10, 0, 0, 0]);
  });
  await t.step("frames sent on any tx queue are carried", () => {
    const { a, b } = setup();
    for (let pair = 0; pair < PAIRS; pair++) {
      a.transmit(2 * pair + 1, udp(B_MAC, A_MAC, 1, 1, 2, 2));
    }
    assertEquals(perQueue(b), [4, 0, 0, 0]);
    assertEquals(a.device.metrics.tx.map((m) => m.packets), [1, 1, 1, 1]);
  });
  await t.step("without MQ negotiated queues beyond the first pair are not used", () => {
    const { a, b } = cable({ queuePairs: PAIRS }, { queuePairs: PAIRS });
    a.activate([F.MAC, F.CTRL_VQ], [0, 1, 2]);
    b.activate([F.MAC]);
    a.transmit(2 * PAIRS - 1, udp(B_MAC, A_MAC, 1, 1, 2, 2));
    assertEquals(a.device.metrics.tx[PAIRS - 1].chains, 0);
  });
});

Deno.test("flowHash is symmetric and ignores non-IP frames", () => {
  const there = udp(B_MAC, A_MAC, 1, 1234, 2, 80);
  const back = udp(A_MAC, B_MAC, 2, 80, 1, 1234);
  assertEquals(flowHash(there, there.length), flowHash(back, back.length));
  assert(flowHash(there, there.length) >= 0);
  const arp = ethFrame(B_MAC, A_MAC, 0x0806, 28);
  assertEquals(flowHash(arp, arp.length), -1);
  assertEquals(flowHash(there, 20), -1, "a head too short for the IP header");
});
