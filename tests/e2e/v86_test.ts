/**
 * End-to-end: the stock Debian i386 kernel, booted in v86 inside this process,
 * drives vireo's virtio-blk and virtio-net through virtio-pci (INTx, no MSI).
 * Every check is made from inside the guest (shell commands over the serial
 * console) and, where it can be, from the host side (backends and counters).
 *
 * Needs the assets of tests/e2e/fetch_assets.sh; fails (never skips) without them.
 * Run: `deno test --allow-all tests/e2e`.
 *
 * @module
 */
import { assert, assertEquals, assertMatch } from "@std/assert";
import { Guest } from "./harness.ts";
import { NetPeer, TftpServer } from "./net_peer.ts";
import { VirtioPci } from "../../transports/pci/virtio_pci.ts";
import type { RingFeatureOptions } from "../../transports/core/virtio_core.ts";
import { hasFeature, VirtioFeature } from "../../src/virtio/features.ts";
import { DeviceStatus } from "../../src/virtio/status.ts";
import { MemoryBackend, VirtioBlk } from "../../devices/blk/mod.ts";
import { createPair, VirtioNet } from "../../devices/net/mod.ts";

const SECTOR = 512;
const DISK_BYTES = 8 << 20;
const SERIAL = "vireo-e2e";
const GUEST_MAC = "52:54:00:12:34:56";
const PEER_MAC = "52:54:00:00:00:02";
const PEER_IP = "10.0.2.2";
const GUEST_IP = "10.0.2.15";

/** A disk whose every sector has distinct, reproducible content. */
export function patternedDisk(bytes = DISK_BYTES): MemoryBackend {
  const data = new Uint8Array(bytes);
  const words = new Uint32Array(data.buffer);
  for (let sector = 0; sector < bytes / SECTOR; sector++) {
    let x = (sector + 1) * 2654435761 >>> 0 || 1;
    for (let i = 0; i < SECTOR / 4; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      words[sector * (SECTOR / 4) + i] = x;
    }
  }
  return new MemoryBackend(data);
}

/** A reproducible payload for downloads. */
function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function firstWord(output: string): string {
  return output.trim().split(/\s+/)[0];
}

function mib(bytes: number, ms: number): string {
  return `${(bytes / (1 << 20) / (ms / 1000)).toFixed(2)} MiB/s`;
}

/** A machine under test: the guest and vireo's two functions with their backends. */
interface Rig {
  guest: Guest;
  blk: VirtioPci;
  net: VirtioPci;
  blkDevice: VirtioBlk;
  netDevice: VirtioNet;
  disk: MemoryBackend;
  peer: NetPeer;
  tftp: TftpServer;
}

/** Boots a guest with vireo's virtio-blk (slot 5) and virtio-net (slot 6). */
async function bootRig(ring: RingFeatureOptions, platform = false): Promise<Rig> {
  const disk = patternedDisk();
  const [guestEnd, hostEnd] = createPair();
  const peer = new NetPeer(hostEnd, PEER_MAC, PEER_IP);
  const tftp = new TftpServer(peer);
  const blkDevice = new VirtioBlk({ backend: disk, serial: SERIAL });
  const netDevice = new VirtioNet({ mac: GUEST_MAC, backend: guestEnd });
  let blk!: VirtioPci;
  let net!: VirtioPci;
  const guest = await Guest.boot({
    setup(bus) {
      const options = {
        ...ring,
        dma: bus.dma,
        ...(platform ? { platformDma: bus.dma, accessPlatform: true } : {}),
      };
      blk = new VirtioPci(blkDevice, { ...options, name: "vireo-blk" });
      net = new VirtioPci(netDevice, { ...options, name: "vireo-net" });
      bus.attach(blk.pci, { slot: 5 });
      bus.attach(net.pci, { slot: 6 });
    },
  });
  console.log(`booted to a shell in ${(guest.bootMs / 1000).toFixed(1)} s`);
  return { guest, blk, net, blkDevice, netDevice, disk, peer, tftp };
}

/** The guest found both functions, bound virtio_pci, and the drivers took them. */
async function checkEnumeration(rig: Rig): Promise<void> {
  const { guest } = rig;
  const pci = await guest.sh(
    "for d in /sys/bus/pci/devices/*; do echo ${d##*/} $(cat $d/vendor $d/device) " +
      "$(basename $(readlink $d/driver) 2>/dev/null); done",
  );
  assertMatch(pci, /^0000:00:05\.0 0x1af4 0x1042 virtio-pci$/m);
  assertMatch(pci, /^0000:00:06\.0 0x1af4 0x1041 virtio-pci$/m);
  const virtio = await guest.sh(
    "for d in /sys/bus/virtio/devices/*; do echo $(cat $d/device) " +
      "$(basename $(readlink $d/driver)); done",
  );
  assertMatch(virtio, /^0x0002 virtio_blk$/m);
  assertMatch(virtio, /^0x0001 virtio_net$/m);
  for (const fn of [rig.blk, rig.net]) {
    assertEquals(fn.core.status & DeviceStatus.DRIVER_OK, DeviceStatus.DRIVER_OK, fn.pci.name);
    assert(fn.pci.busMaster, `${fn.pci.name}: bus mastering enabled`);
  }
}

function checkFeatures(rig: Rig, expect: Record<string, boolean>): void {
  const bits: Record<string, number> = {
    packed: VirtioFeature.RING_PACKED,
    eventIdx: VirtioFeature.EVENT_IDX,
    accessPlatform: VirtioFeature.ACCESS_PLATFORM,
  };
  for (const fn of [rig.blk, rig.net]) {
    for (const [name, on] of Object.entries(expect)) {
      assertEquals(hasFeature(fn.core.features, bits[name]), on, `${fn.pci.name}: ${name}`);
    }
  }
}

/** Reads of chosen sectors (each position within a page among them) return the host's bytes. */
async function checkKnownSectors(rig: Rig, sectors: number[]): Promise<void> {
  // From the device, not the page cache (busybox dd quietly drops O_DIRECT it cannot honour).
  await rig.guest.sh("sync && echo 3 > /proc/sys/vm/drop_caches");
  for (const s of [0, 1, 2, 3, 4, 5, 6, 7, ...sectors]) {
    const out = await rig.guest.sh(
      `dd if=/dev/vda bs=512 skip=${s} count=1 iflag=direct 2>/dev/null | sha256sum`,
    );
    const want = await sha256(rig.disk.bytes.subarray(s * SECTOR, (s + 1) * SECTOR));
    assertEquals(firstWord(out), want, `sector ${s}`);
  }
}

/** Writes from the guest land in the host backend, byte for byte. */
async function checkWrites(rig: Rig): Promise<void> {
  const { guest, disk } = rig;
  const text = "vireo: written by the Linux guest";
  await guest.sh(
    `printf '${text}' | dd of=/dev/vda bs=512 seek=100 count=1 conv=sync oflag=direct 2>/dev/null`,
  );
  const sector = disk.bytes.subarray(100 * SECTOR, 101 * SECTOR);
  assertEquals(new TextDecoder().decode(sector.subarray(0, text.length)), text);
  assert(sector.subarray(text.length).every((b) => b === 0), "the rest of the sector is zero");
  // 64 KiB of random data through the page cache, then fsync.
  const out = await guest.sh(
    "dd if=/dev/urandom of=/tmp/w bs=4096 count=16 2>/dev/null && " +
      "dd if=/tmp/w of=/dev/vda bs=4096 seek=512 conv=fsync 2>/dev/null && sha256sum /tmp/w",
  );
  const offset = 512 * 4096;
  assertEquals(await sha256(disk.bytes.subarray(offset, offset + 65536)), firstWord(out));
}

Deno.test({
  name: "v86 + Linux: virtio-blk and virtio-net over virtio-pci (packed ring, event idx)",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const rig = await bootRig({ packed: true, eventIdx: true });
  const { guest, disk, blkDevice, peer, tftp } = rig;
  try {
    await t.step("PCI enumeration and virtio_pci probe of both functions", async () => {
      await checkEnumeration(rig);
      checkFeatures(rig, { packed: true, eventIdx: true, accessPlatform: false });
    });

    await t.step("virtio-blk: capacity and the serial from GET_ID", async () => {
      assertEquals((await guest.sh("cat /sys/block/vda/size")).trim(), String(DISK_BYTES / SECTOR));
      assertEquals((await guest.sh("cat /sys/block/vda/serial")).trim(), SERIAL);
      assert(blkDevice.stats.getIdRequests > 0, "GET_ID reached the device");
    });

    await t.step("virtio-blk: reads of known sectors", async () => {
      await checkKnownSectors(rig, [2047, 4096, 9999, DISK_BYTES / SECTOR - 1]);
    });

    await t.step("virtio-blk: a full-disk sequential read", async () => {
      const start = performance.now();
      await guest.sh("dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>/dev/null");
      const ms = performance.now() - start;
      const out = await guest.sh("dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | sha256sum");
      assertEquals(firstWord(out), await sha256(disk.bytes));
      console.log(`full-disk read (O_DIRECT, 1 MiB requests): ${mib(DISK_BYTES, ms)}`);
    });

    await t.step("virtio-blk: writes are seen by the host backend", async () => {
      await checkWrites(rig);
    });

    await t.step("virtio-blk: fsync sends a flush", async () => {
      const before = blkDevice.stats.flushRequests;
      await guest.sh("dd if=/dev/zero of=/dev/vda bs=4096 seek=700 count=1 conv=fsync 2>/dev/null");
      assert(blkDevice.stats.flushRequests > before, "FLUSH reached the device");
      assertEquals((await guest.sh("cat /sys/block/vda/queue/write_cache")).trim(), "write back");
    });

    await t.step("virtio-net: ARP and ping to the host-side peer", async () => {
      await guest.sh(`ip addr add ${GUEST_IP}/24 dev eth0 && ip link set eth0 up`);
      const out = await guest.sh(`ping -c 3 -W 5 ${PEER_IP}`);
      assertMatch(out, /3 packets transmitted, 3 packets received/);
      assert(peer.stats.arpRequests >= 1, "the peer answered ARP");
      assert(peer.stats.echoRequests >= 3, "the peer answered the echo requests");
      assertMatch(await guest.sh("ip neigh"), new RegExp(`${PEER_IP} .*lladdr ${PEER_MAC}`));
    });

    await t.step(
      "virtio-net: bulk UDP guest to host (TFTP put of the disk, 8 KiB blocks)",
      async () => {
        const start = performance.now();
        await guest.sh(`tftp -p -l /dev/vda -r disk -b 8192 ${PEER_IP}`, 120000);
        const ms = performance.now() - start;
        const put = await tftp.waitFor("disk");
        assertEquals(put.data.length, DISK_BYTES);
        assertEquals(await sha256(put.data), await sha256(disk.bytes));
        assert(peer.stats.fragments > 0, "8 KiB datagrams arrived as IP fragments");
        console.log(`TFTP put, guest to host: ${mib(DISK_BYTES, ms)}`);
      },
    );

    await t.step("virtio-net: bulk UDP host to guest (TFTP get, 1468-byte blocks)", async () => {
      const blob = pattern(2 << 20, 7);
      tftp.files.set("blob", blob);
      const start = performance.now();
      await guest.sh(`tftp -g -r blob -l /tmp/blob -b 1468 ${PEER_IP}`, 120000);
      const ms = performance.now() - start;
      const out = await guest.sh("sha256sum /tmp/blob && rm /tmp/blob");
      assertEquals(firstWord(out), await sha256(blob));
      console.log(`TFTP get, host to guest: ${mib(blob.length, ms)}`);
    });

    await t.step("no device, transport or adapter reported an error", () => {
      checkHealth(rig);
    });
  } finally {
    await guest.destroy();
  }
});

function checkHealth(rig: Rig): void {
  for (const fn of [rig.blk, rig.net]) {
    assertEquals(fn.diagnostics.needsResetCount, 0, `${fn.pci.name}: ${fn.diagnostics.lastError}`);
    assertEquals(fn.core.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
  }
  const s = rig.blkDevice.stats;
  assertEquals([s.ioErrors, s.deviceErrors, s.dataDmaFaults], [0, 0, 0]);
  const m = rig.netDevice.metrics;
  assertEquals(m.deviceErrors, 0);
  assertEquals(m.tx.reduce((n, q) => n + q.errors + q.dmaFaults + q.malformedFrames, 0), 0);
  assertEquals(m.rx.reduce((n, q) => n + q.errors + q.dmaFaults, 0), 0);
  assert(rig.guest.bus.attachments.every((a) => a.irq > 0), "INTx was delivered to both");
  console.log(
    `v86 memory grew ${rig.guest.bus.dma.growths} times (translations re-made each time)`,
  );
  const d = rig.guest.bus.diagnostics;
  assertEquals([d.unmappedBars, d.droppedMsis, d.droppedIntx], [0, 0, 0], d.last);
}

/** What every variant must still do: block reads and writes, ping, a small transfer each way. */
async function smoke(t: Deno.TestContext, rig: Rig): Promise<void> {
  const { guest, tftp, disk } = rig;
  await t.step("virtio-blk: known sectors, writes and flush", async () => {
    await checkKnownSectors(rig, [3333, DISK_BYTES / SECTOR - 1]);
    await checkWrites(rig);
    assert(rig.blkDevice.stats.flushRequests > 0, "FLUSH reached the device");
  });
  await t.step("virtio-net: ping and TFTP both ways", async () => {
    await guest.sh(`ip addr add ${GUEST_IP}/24 dev eth0 && ip link set eth0 up`);
    assertMatch(await guest.sh(`ping -c 2 -W 5 ${PEER_IP}`), /2 packets received/);
    await guest.sh(`dd if=/dev/vda of=/tmp/part bs=64k count=16 2>/dev/null`);
    await guest.sh(`tftp -p -l /tmp/part -r part -b 8192 ${PEER_IP}`);
    const put = await tftp.waitFor("part");
    assertEquals(await sha256(put.data), await sha256(disk.bytes.subarray(0, 1 << 20)));
    const blob = pattern(512 << 10, 11);
    tftp.files.set("small", blob);
    await guest.sh(`tftp -g -r small -l /tmp/small -b 1468 ${PEER_IP}`);
    assertEquals(firstWord(await guest.sh("sha256sum /tmp/small")), await sha256(blob));
  });
  await t.step("no device, transport or adapter reported an error", () => {
    checkHealth(rig);
  });
}

Deno.test({
  name: "v86 + Linux: split ring with event idx off",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const rig = await bootRig({ packed: false, eventIdx: false });
  try {
    await t.step("both functions probed; split ring, no event idx negotiated", async () => {
      await checkEnumeration(rig);
      checkFeatures(rig, { packed: false, eventIdx: false, accessPlatform: false });
    });
    await smoke(t, rig);
  } finally {
    await rig.guest.destroy();
  }
});

Deno.test({
  name: "v86 + Linux: packed ring with event idx off",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const rig = await bootRig({ packed: true, eventIdx: false });
  try {
    await t.step("both functions probed; packed ring, no event idx negotiated", async () => {
      await checkEnumeration(rig);
      checkFeatures(rig, { packed: true, eventIdx: false, accessPlatform: false });
    });
    await smoke(t, rig);
  } finally {
    await rig.guest.destroy();
  }
});

Deno.test({
  name: "v86 + Linux: ACCESS_PLATFORM offered without a guest IOMMU (split ring, event idx)",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const rig = await bootRig({ packed: false, eventIdx: true }, true);
  try {
    await t.step("both functions probed; ACCESS_PLATFORM accepted by the driver", async () => {
      await checkEnumeration(rig);
      checkFeatures(rig, { packed: false, eventIdx: true, accessPlatform: true });
    });
    await smoke(t, rig);
  } finally {
    await rig.guest.destroy();
  }
});
