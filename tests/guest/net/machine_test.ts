import { assert, assertEquals } from "@std/assert";
import { createPair } from "../../../devices/net/backends/pair.ts";
import { VirtioNet } from "../../../devices/net/virtio_net.ts";
import { InetHost } from "../../../src/guest/net/inet.ts";
import { VirtioNetDriver } from "../../../src/guest/net/virtio_net_driver.ts";
import { createMachine, type MachineTransport } from "../../../src/machine.ts";
import { featureMask, VirtioFeature } from "../../../src/virtio/features.ts";
import { settle } from "./helpers.ts";

/** One machine with one NIC on `transport`, its driver probed and opened, and an IPv4 host. */
function machine(
  mac: string,
  ip: string,
  backend: ReturnType<typeof createPair>[0],
  transport: MachineTransport,
  options: { msi?: boolean; split?: boolean } = {},
) {
  const device = new VirtioNet({ mac, backend, queuePairs: 2 });
  const m = createMachine({
    devices: [{ device, transport }],
    msi: options.msi,
    guestFilterFeatures: options.split ? featureMask(VirtioFeature.RING_PACKED) : 0n,
  });
  let host: InetHost | null = null;
  const driver = VirtioNetDriver.probe(m.guest(0), {
    queuePairs: 2,
    onReceive: (frame, info) => host!.receive(frame, info),
  });
  driver.open();
  host = new InetHost({ mac: driver.mac, send: (f) => driver.send(f) }, ip);
  return { m, device, driver, host };
}

const cases: [string, MachineTransport, MachineTransport, { msi?: boolean; split?: boolean }][] = [
  ["virtio-pci with MSI-X to virtio-mmio", "pci", "mmio", {}],
  ["virtio-pci with INTx to virtio-pci, split rings", "pci", "pci", { msi: false, split: true }],
  ["virtio-mmio to virtio-mmio", "mmio", "mmio", {}],
];

for (const [name, ta, tb, options] of cases) {
  Deno.test(`VirtioNetDriver on createMachine: ping and UDP, ${name}`, () => {
    const [ea, eb] = createPair();
    const a = machine("52:54:00:00:00:01", "10.0.0.1", ea, ta, options);
    const b = machine("52:54:00:00:00:02", "10.0.0.2", eb, tb, options);
    assertEquals([a.driver.queuePairs, b.driver.queuePairs], [2, 2]);
    assertEquals(a.m.guest(0).transport, ta);
    for (let seq = 1; seq <= 5; seq++) {
      a.host.ping("10.0.0.2", seq, new Uint8Array(1000));
      settle(a.driver, b.driver);
    }
    assertEquals(a.host.echoReplies.map((r) => r.seq), [1, 2, 3, 4, 5]);
    let bytes = 0;
    b.host.bindUdp(9, (data) => bytes += data.length);
    for (let i = 0; i < 200; i++) {
      a.host.sendUdp("10.0.0.2", 40000 + (i % 8), 9, new Uint8Array(1472));
      if (i % 8 === 7) settle(a.driver, b.driver);
    }
    settle(a.driver, b.driver);
    assertEquals(bytes, 200 * 1472);
    assertEquals(a.device.metrics.rxTotal().drops + b.device.metrics.rxTotal().drops, 0);
    assert(b.device.metrics.rx.every((q) => q.packets > 0), "both receive queues were used");
    assertEquals(a.driver.stats.ctrlErrors + b.driver.stats.ctrlErrors, 0);
  });
}
