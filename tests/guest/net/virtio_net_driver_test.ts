import { assert, assertEquals, assertThrows } from "@std/assert";
import { NetGso } from "../../../devices/net/constants.ts";
import {
  buildEthernet,
  buildIpv4,
  buildUdp,
  EtherType,
  InetHost,
  IpProto,
  parseIpv4,
} from "../../../src/guest/net/inet.ts";
import { type NetRxInfo, VirtioNetDriver } from "../../../src/guest/net/virtio_net_driver.ts";
import { NetFeature as F } from "../../../src/guest/net/virtio_net_uapi.ts";
import { VirtioNet } from "../../../devices/net/virtio_net.ts";
import { makeGuest, settle, twoGuests, up } from "./helpers.ts";

const A = "52:54:00:00:00:01";
const B = "52:54:00:00:00:02";
const bit = (n: number) => 1n << BigInt(n);

function frameTo(dst: string, src: string, payload: number, fill = 0x5a): Uint8Array {
  return buildEthernet(dst, src, 0x88b5, new Uint8Array(payload).fill(fill));
}

Deno.test("VirtioNetDriver.probe", async (t) => {
  await t.step("negotiates, reads mac, mtu and link, creates rx, tx and control queues", () => {
    const [ga] = twoGuests({ mtu: 1500, speed: 1000, duplex: "full" });
    const d = VirtioNetDriver.probe(ga.transport);
    assertEquals(d.mac, A);
    assertEquals(d.mtu, 1500);
    assertEquals(d.linkUp, true);
    assertEquals(d.speed, 1000);
    assertEquals(d.duplex, 1);
    assertEquals(d.rxMode, "mergeable");
    assert(d.hasFeature(F.CTRL_VQ) && d.hasFeature(F.STATUS) && d.hasFeature(F.MRG_RXBUF));
    assertEquals(ga.transport.vqs.map((q) => q.name), ["input.0", "output.0", "control"]);
    assertEquals(
      ga.transport.getStatus(),
      1 | 2 | 4 | 8,
      "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK",
    );
    assertEquals(ga.device.features, d.features);
  });
  await t.step("without MAC in the device the driver uses its own address and sets it", () => {
    const g = makeGuest(new VirtioNet());
    const d = up(g, { mac: "02:00:00:00:00:77" });
    assertEquals(d.mac, "02:00:00:00:00:77");
    assertEquals(g.device.macAddress, "02:00:00:00:00:77", "MAC_ADDR_SET reached the device");
  });
  await t.step("refuses a device that is not a network device", () => {
    const g = makeGuest(new VirtioNet());
    assertThrows(
      // deno-lint-ignore no-explicit-any
      () => VirtioNetDriver.probe({ ...g.transport, deviceId: 2 } as any),
      TypeError,
      "device id 2 is not 1",
    );
  });
  await t.step("picks small buffers without MRG_RXBUF and big ones with guest GSO", () => {
    const small = makeGuest(new VirtioNet({ mergeableRxBuffers: false, offloads: false }));
    assertEquals(VirtioNetDriver.probe(small.transport).rxMode, "small");
    const big = makeGuest(new VirtioNet({ mergeableRxBuffers: false }));
    assertEquals(VirtioNetDriver.probe(big.transport).rxMode, "big");
    const jumbo = makeGuest(
      new VirtioNet({ mergeableRxBuffers: false, offloads: false, mtu: 9000 }),
    );
    assertEquals(VirtioNetDriver.probe(jumbo.transport).rxMode, "big");
  });
  await t.step(
    "queue pairs: all max_virtqueue_pairs queues exist, VQ_PAIRS_SET picks the count",
    () => {
      const g = makeGuest(new VirtioNet({ queuePairs: 4 }));
      const d = up(g, { queuePairs: 2 });
      assertEquals(d.maxQueuePairs, 4);
      assertEquals(d.queuePairs, 2);
      assertEquals(g.transport.vqs.length, 9);
      assertEquals(g.device.activeQueuePairs, 2);
    },
  );
});

for (const packed of [true, false]) {
  const layout = packed ? "packed" : "split";
  Deno.test(`VirtioNetDriver frames over ${layout} rings`, async (t) => {
    for (
      const [mode, options] of [
        ["mergeable", {}],
        ["small", { mergeableRxBuffers: false, offloads: false }],
        ["big", { mergeableRxBuffers: false }],
      ] as const
    ) {
      await t.step(`${mode} receive buffers carry frames of every size`, () => {
        // Big mode posts 18 pages per buffer: give the guests room for a full ring.
        const [ga, gb] = twoGuests(options, options, { packed, memory: 64 << 20 });
        const got: Uint8Array[] = [];
        const a = up(ga);
        const b = up(gb, { onReceive: (f) => got.push(f) });
        assertEquals(b.rxMode, mode);
        const sizes = mode === "small" ? [60, 500, 1514] : [60, 1514, 4000, 20000];
        for (const n of sizes) assert(a.send(frameTo(B, A, n - 14, n & 0xff)));
        settle(a, b);
        assertEquals(got.map((f) => f.length), sizes);
        sizes.forEach((n, i) => assertEquals(got[i], frameTo(B, A, n - 14, n & 0xff)));
        assertEquals(b.stats.rxPackets, sizes.length);
        assertEquals(a.stats.txPackets, sizes.length, "completions reclaimed");
      });
    }
    await t.step(
      "a thousand frames flow with refill and reclaim; remove frees every buffer",
      () => {
        const [ga, gb] = twoGuests({}, {}, { packed });
        const free: number[][] = [];
        for (let round = 0; round < 2; round++) {
          let received = 0;
          const a = up(ga);
          const b = up(gb, { onReceive: () => received++ });
          for (let i = 0; i < 1000; i++) {
            while (!a.send(frameTo(B, A, 100 + (i % 1000)))) settle(a, b);
            if (i % 16 === 0) settle(a, b);
          }
          settle(a, b);
          a.reclaim();
          assertEquals(received, 1000);
          assertEquals(a.stats.txPackets, 1000);
          assertEquals(gb.device.metrics.rx[0].drops, 0);
          a.remove();
          b.remove();
          free.push([ga.pages.freeCount, gb.pages.freeCount]);
          // The transport probe again, for the next round.
          for (const g of [ga, gb]) g.transport.addStatus(1);
        }
        // Slab pages stay cached after the first round; nothing more may be missing.
        assertEquals(free[1], free[0]);
      },
    );
  });
}

Deno.test("VirtioNetDriver NAPI and interrupt suppression", async (t) => {
  await t.step(
    "an interrupt schedules NAPI with callbacks off; the poll turns them back on",
    () => {
      for (const packed of [true, false]) {
        const [ga, gb] = twoGuests({}, {}, { packed });
        const a = up(ga);
        const b = up(gb);
        const rxq = gb.transport.vqs[0];
        assert(b.pending, "open schedules NAPI once (virtnet_napi_enable)");
        settle(a, b);
        const before = b.stats.interrupts;
        a.send(frameTo(B, A, 100));
        assert(b.pending, "the rx interrupt scheduled a poll");
        const irqs = b.stats.interrupts;
        assertEquals(irqs, before + 1);
        // More frames while NAPI is scheduled raise no interrupt: callbacks are disabled.
        for (let i = 0; i < 10; i++) a.send(frameTo(B, A, 100));
        assertEquals(b.stats.interrupts, irqs);
        assertEquals(b.poll(), 11);
        assert(!b.pending);
        assertEquals(b.takeReceived().length, 11);
        assert(!rxq.isBroken());
        a.send(frameTo(B, A, 100));
        assertEquals(b.stats.interrupts, irqs + 1, "re-enabled after the poll");
      }
    },
  );
  await t.step("a budget leaves NAPI scheduled until the ring is drained", () => {
    const [ga, gb] = twoGuests();
    const a = up(ga);
    const b = up(gb);
    for (let i = 0; i < 20; i++) a.send(frameTo(B, A, 60));
    assertEquals(b.poll(8), 8);
    assert(b.pending);
    assertEquals(b.poll(8), 8);
    assertEquals(b.poll(8), 4);
    assert(!b.pending);
    assertEquals(b.takeReceived().length, 20);
  });
  await t.step("transmit completions: reclaimed when sending and by the tx poll", () => {
    const [ga, gb] = twoGuests();
    const a = up(ga);
    up(gb);
    a.send(frameTo(B, A, 60), { more: true });
    a.send(frameTo(B, A, 60), { more: true });
    assertEquals(gb.device.metrics.rx[0].packets, 0, "held until the kick");
    a.flush();
    assertEquals(gb.device.metrics.rx[0].packets, 2);
    a.send(frameTo(B, A, 60));
    assertEquals(a.stats.txPackets, 2, "the first two reclaimed before adding");
  });
  await t.step("filling the transmit ring stops the queue; the completions wake it", () => {
    const [ga, gb] = twoGuests({ queueSize: 8 }, {}, { packed: false });
    const a = up(ga);
    up(gb);
    for (let i = 0; i < 8; i++) assert(a.send(frameTo(B, A, 60), { more: true }));
    assertEquals(a.stats.txStops, 1, "the last free descriptor stopped the queue, which kicks");
    assertEquals(gb.device.metrics.rx[0].packets, 8);
    assert(a.pending, "enableCbDelayed asked for the completion interrupt");
    settle(a);
    assertEquals(a.stats.txPackets, 8);
    assert(a.send(frameTo(B, A, 60)));
  });
});

Deno.test("VirtioNetDriver control commands reach the device", async (t) => {
  await t.step("rx mode, MAC table, MAC address and VLANs", () => {
    const g = makeGuest(new VirtioNet({ mac: A }));
    const d = up(g);
    const filter = g.device.rxFilter;
    assertEquals(filter.promisc, false, "open turns promiscuous mode off");
    assert(
      d.setRxMode({
        allmulti: true,
        unicast: ["52:54:00:aa:bb:cc"],
        multicast: ["01:00:5e:00:00:01"],
      }),
    );
    assertEquals([filter.allmulti, filter.uniCount, filter.multiCount], [true, 1, 1]);
    assert(d.setPromisc(true));
    assertEquals(filter.promisc, true);
    assert(d.setMacAddress("02:11:22:33:44:55"));
    assertEquals(g.device.macAddress, "02:11:22:33:44:55");
    assertEquals(d.mac, "02:11:22:33:44:55");
    assert(d.vlanAdd(42));
    assert(filter.hasVlan(42));
    assert(d.vlanDel(42));
    assert(!filter.hasVlan(42));
    assert(!d.vlanAdd(5000), "the device answers VIRTIO_NET_ERR");
    assertEquals(d.stats.ctrlErrors, 1);
  });
  await t.step("commands whose feature was not negotiated are not sent", () => {
    const g = makeGuest(new VirtioNet({ mac: A, controlQueue: false }));
    const d = up(g);
    assertEquals(d.setPromisc(true), false);
    assertEquals(d.setMacAddress("02:00:00:00:00:01"), false);
    assertEquals(g.transport.vqs.length, 2);
  });
  await t.step("GUEST_OFFLOADS_SET switches receive offloads", () => {
    const [ga, gb] = twoGuests();
    const a = up(ga);
    const infos: NetRxInfo[] = [];
    const b = up(gb, { onReceive: (_f, info) => infos.push(info) });
    const big = buildEthernet(B, A, EtherType.IPV4, new Uint8Array(9000));
    const gso = { type: NetGso.TCPV4, size: 1448, hdrLen: 54 };
    a.send(big, { csum: { start: 34, offset: 16 }, gso });
    settle(a, b);
    assertEquals(infos[0].gsoType, NetGso.TCPV4);
    assert(b.setGuestOffloads(bit(F.GUEST_CSUM)));
    a.send(big, { csum: { start: 34, offset: 16 }, gso });
    settle(a, b);
    assertEquals(infos.length, 1);
    assertEquals(gb.device.metrics.rx[0].offloadDrops, 1);
  });
});

Deno.test("VirtioNetDriver link status and announce", async (t) => {
  await t.step("a link change raises a config interrupt the driver handles in its poll", () => {
    const g = makeGuest(new VirtioNet({ mac: A }));
    const changes: boolean[] = [];
    const d = up(g, { onLinkChange: (u) => changes.push(u) });
    assertEquals(changes, [true]);
    g.device.setLinkUp(false);
    assert(d.pending);
    d.poll();
    assertEquals(d.linkUp, false);
    assertEquals(changes, [true, false]);
    assertEquals(d.send(frameTo(B, A, 60)), false, "no carrier");
    g.device.setLinkUp(true);
    d.poll();
    assertEquals(changes, [true, false, true]);
  });
  await t.step("announce: the driver announces and acks, which clears ANNOUNCE", () => {
    const g = makeGuest(new VirtioNet({ mac: A }));
    let announced = 0;
    const d = up(g, { onAnnounce: () => announced++ });
    assert(g.device.announce());
    assertEquals(g.device.config[6] & 2, 2);
    d.poll();
    assertEquals(announced, 1);
    assertEquals(g.device.config[6] & 2, 0);
    assertEquals(g.device.metrics.ctrl.errAcks, 0);
  });
});

Deno.test("VirtioNetDriver multiqueue", () => {
  const [ga, gb] = twoGuests({ queuePairs: 2 }, { queuePairs: 2 });
  const seen = new Set<number>();
  const a = up(ga, { queuePairs: 2 });
  const b = up(gb, { queuePairs: 2, onReceive: (_f, info) => seen.add(info.queue) });
  for (let port = 1000; port < 1040; port++) {
    const udp = buildUdp(
      parseIpv4("10.0.0.1"),
      parseIpv4("10.0.0.2"),
      port,
      53,
      new Uint8Array(10),
    );
    const ip = buildIpv4(parseIpv4("10.0.0.1"), parseIpv4("10.0.0.2"), IpProto.UDP, udp);
    a.send(buildEthernet(B, A, EtherType.IPV4, ip), { queue: port % 2 });
  }
  settle(a, b);
  assertEquals(b.stats.rxPackets, 40);
  assertEquals([...seen].sort(), [0, 1], "flows spread over both receive queues");
  assertEquals(ga.device.metrics.tx.map((m) => m.packets), [20, 20]);
});

Deno.test("VirtioNetDriver checksum offload", async (t) => {
  await t.step(
    "a partial UDP checksum crosses as NEEDS_CSUM, and is finished for a guest without GUEST_CSUM",
    () => {
      for (const guestCsum of [true, false]) {
        const [ga, gb] = twoGuests();
        const a = up(ga);
        const infos: NetRxInfo[] = [];
        const frames: Uint8Array[] = [];
        const b = up(gb, {
          features: guestCsum ? undefined : bit(F.MAC) | bit(F.STATUS) | bit(F.MRG_RXBUF),
          onReceive: (f, i) => {
            frames.push(f);
            infos.push(i);
          },
        });
        const src = parseIpv4("10.0.0.1");
        const dst = parseIpv4("10.0.0.2");
        const udp = buildUdp(src, dst, 4000, 53, new Uint8Array(33).fill(7), true);
        a.send(buildEthernet(B, A, EtherType.IPV4, buildIpv4(src, dst, IpProto.UDP, udp)), {
          csum: { start: 34, offset: 6 },
        });
        settle(a, b);
        assertEquals(infos[0].needsCsum, guestCsum);
        const host = new InetHost({ mac: B, send: () => true }, "10.0.0.2");
        let got = 0;
        host.bindUdp(53, () => got++);
        host.receive(frames[0], infos[0]);
        assertEquals(got, 1, guestCsum ? "trusted as partial" : "verifies as finished");
      }
    },
  );
  await t.step("without CSUM the driver finishes the checksum itself", () => {
    const [ga, gb] = twoGuests({ offloads: false }, { offloads: false });
    const a = up(ga);
    const frames: Uint8Array[] = [];
    const b = up(gb, { onReceive: (f) => frames.push(f) });
    const src = parseIpv4("10.0.0.1");
    const dst = parseIpv4("10.0.0.2");
    const udp = buildUdp(src, dst, 4000, 53, new Uint8Array(10), true);
    a.send(buildEthernet(B, A, EtherType.IPV4, buildIpv4(src, dst, IpProto.UDP, udp)), {
      csum: { start: 34, offset: 6 },
    });
    settle(a, b);
    const host = new InetHost({ mac: B, send: () => true }, "10.0.0.2");
    let got = 0;
    host.bindUdp(53, () => got++);
    host.receive(frames[0]);
    assertEquals(got, 1);
  });
  await t.step("asking for an offload that was not negotiated throws", () => {
    const [ga] = twoGuests({ offloads: false });
    const a = up(ga);
    assertThrows(
      () =>
        a.send(new Uint8Array(100), {
          gso: { type: NetGso.TCPV4, size: 1000 },
          csum: { start: 34, offset: 16 },
        }),
      RangeError,
      "not negotiated",
    );
    assertThrows(() => a.send(new Uint8Array(10)), RangeError, "shorter than 14");
  });
});
