/**
 * Two guests, each with a virtio-net device served by a VDUSE daemon in its
 * own "userspace", joined by a virtual cable. Each guest's virtio_net driver
 * binds through virtio_vdpa; every buffer it sends or receives is bounced
 * through the VDUSE IOVA domain, and the daemon reaches the rings and bounce
 * pages only through the IOTLB regions it maps with VDUSE_IOTLB_GET_FD.
 *
 * Then a virtio-blk disk, served the same way, takes a write, a flush and a read.
 *
 * Run: `deno run examples/vduse.ts`
 *
 * @module
 */
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { PageAllocator } from "../src/guest/page_allocator.ts";
import type { VdpaDevice } from "../src/guest/vdpa/vdpa_device.ts";
import { probeVirtioVdpa } from "../src/guest/vdpa/virtio_vdpa.ts";
import { VirtioNetDriver } from "../src/guest/net/virtio_net_driver.ts";
import { VirtioBlkDriver } from "../src/guest/blk/virtio_blk_driver.ts";
import { VirtioBlk } from "../devices/blk/device.ts";
import { MemoryBackend } from "../devices/blk/backends/memory.ts";
import { createPair } from "../devices/net/backends/pair.ts";
import { VirtioNet } from "../devices/net/virtio_net.ts";
import { VduseDaemon } from "../transports/vduse/daemon.ts";
import { EmulatedVduseBackend } from "../transports/vduse/kernel/emulated_backend.ts";
import type { VduseDev } from "../transports/vduse/kernel/vduse_dev.ts";
import { VduseKernel } from "../transports/vduse/kernel/vduse_kernel.ts";

interface Guest {
  name: string;
  mac: string;
  work: (() => void)[];
  daemon: VduseDaemon;
  dev: VduseDev;
  driver: VirtioNetDriver;
  received: Uint8Array[];
}

function bootGuest(name: string, mac: string, cable: ReturnType<typeof createPair>[0]): Guest {
  const memory = new GuestMemory([{ base: 0, size: 32 << 20 }]);
  const pages = new PageAllocator(memory, { base: 1 << 20, size: 31 << 20 });
  // The guest kernel loads vduse; its interrupt work runs from our loop below.
  const work: (() => void)[] = [];
  const kernel = new VduseKernel({ memory, pages, schedule: (w) => work.push(w), msgTimeout: 0 });
  // Userspace: a daemon serving a virtio-net model over /dev/vduse.
  const device = new VirtioNet({ mac, backend: cable, controlQueue: false });
  const daemon = new VduseDaemon(new EmulatedVduseBackend(kernel), device, { name: "vduse-net0" });
  if (daemon.start() !== 0) throw new Error(daemon.lastError);
  // The admin runs `vdpa dev add`; virtio_vdpa and virtio_net bind.
  const dev = kernel.vdpaDevAdd("vduse-net0") as VduseDev;
  const received: Uint8Array[] = [];
  const transport = probeVirtioVdpa(dev as VdpaDevice, { pages });
  const driver = VirtioNetDriver.probe(transport, { onReceive: (f) => received.push(f.slice()) });
  driver.open();
  return { name, mac, work, daemon, dev, driver, received };
}

function frame(dst: string, src: string, text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const f = new Uint8Array(14 + Math.max(payload.length, 46));
  f.set(dst.split(":").map((h) => parseInt(h, 16)), 0);
  f.set(src.split(":").map((h) => parseInt(h, 16)), 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  f.set(payload, 14);
  return f;
}

function settle(...guests: Guest[]): void {
  for (let round = 0; round < 1000; round++) {
    let busy = false;
    for (const g of guests) {
      while (g.work.length > 0) {
        g.work.shift()!();
        busy = true;
      }
      if (g.driver.pending) {
        g.driver.poll();
        busy = true;
      }
    }
    if (!busy) return;
  }
}

const [cableA, cableB] = createPair();
const alice = bootGuest("alice", "52:54:00:00:00:01", cableA);
const bob = bootGuest("bob", "52:54:00:00:00:02", cableB);

for (const g of [alice, bob]) {
  console.log(
    `${g.name}: virtio-net ${g.driver.mac} bound through virtio_vdpa to VDUSE device ` +
      `"${g.dev.name}" (status 0x${g.dev.getStatus().toString(16)}, API v${g.dev.apiVersion}, ` +
      `${g.dev.as[0].domain!.bounceSize >> 20} MiB bounce window)`,
  );
}

const count = 200;
for (let i = 0; i < count; i++) {
  while (!alice.driver.send(frame(bob.mac, alice.mac, `hello bob, frame ${i}`))) {
    settle(alice, bob);
  }
  if (i % 16 === 0) settle(alice, bob);
}
bob.driver.send(frame(alice.mac, bob.mac, "hello alice"));
settle(alice, bob);
alice.driver.reclaim();

const text = (f: Uint8Array) => new TextDecoder().decode(f.subarray(14)).replace(/\0+$/, "");
console.log(
  `bob received ${bob.received.length} of ${count} frames; the last says "${
    text(bob.received.at(-1)!)
  }"`,
);
console.log(`alice received ${alice.received.length} frame: "${text(alice.received[0])}"`);
for (const g of [alice, bob]) {
  const d = g.dev.as[0].domain!.stats;
  const s = g.daemon.stats;
  console.log(
    `${g.name}: ${d.maps} streaming mappings, ${d.bytesToBounce} bytes copied into bounce pages, ` +
      `${d.bytesFromBounce} copied back; daemon answered ${
        s.requests["SET_STATUS"]
      } status messages, ` +
      `served ${s.kicks} kicks and injected ${s.irqs} interrupts through ${
        g.daemon.spaces[0].regions.length
      } mapped IOTLB regions`,
  );
}
alice.driver.remove();
bob.driver.remove();
console.log(`after removal: alice's daemon is ${alice.daemon.live ? "still live" : "stopped"}`);

// A disk: the same daemon code serves a virtio-blk model.
{
  const memory = new GuestMemory([{ base: 0, size: 16 << 20 }]);
  const pages = new PageAllocator(memory, { base: 1 << 20, size: 15 << 20 });
  const kernel = new VduseKernel({ memory, pages, msgTimeout: 0 });
  const disk = new MemoryBackend(8 << 20);
  const daemon = new VduseDaemon(
    new EmulatedVduseBackend(kernel),
    new VirtioBlk({ backend: disk }),
    { name: "vduse-blk0" },
  );
  if (daemon.start() !== 0) throw new Error(daemon.lastError);
  const dev = kernel.vdpaDevAdd("vduse-blk0") as VduseDev;
  const blk = VirtioBlkDriver.probe(probeVirtioVdpa(dev as VdpaDevice, { pages }));
  const message = new TextEncoder().encode("written through VDUSE bounce pages");
  const sector = new Uint8Array(512);
  sector.set(message);
  await blk.write(100, sector);
  await blk.flush();
  const back = await blk.read(100, 512);
  console.log(
    `disk: ${blk.capacity} sectors; sector 100 reads back "${
      new TextDecoder().decode(back.subarray(0, message.length))
    }" (${dev.as[0].domain!.stats.maps} mappings, ${daemon.stats.kicks} kicks)`,
  );
  blk.remove();
}
