/**
 * Two guests on one virtual wire: a working network, start to finish.
 *
 * Each guest is a small machine with a virtio-net device; the two devices
 * share a cable (`createPair`). By default each machine also has a
 * virtio-iommu, and its network device sits behind it: the guest's
 * virtio_net driver maps every ring and buffer through dma-iommu, so the
 * device only ever sees IOVAs.
 *
 * What it does, printing each step in plain words:
 *
 * 1. probes both drivers and prints the features they negotiated, by name;
 * 2. checks the link is up on both sides;
 * 3. guest A resolves B with ARP and pings it (round-trip times printed);
 * 4. guest A sends B a stream of UDP datagrams; B checks every one (its
 *    sequence number and every byte of its pattern);
 * 5. prints a table: transport, features, packets, bytes, Gbit/s, packets/s,
 *    drops (the devices' counters), IOMMU MAP requests and translation-cache
 *    hit rate, and whether every datagram arrived intact.
 *
 * It exits with status 1 if a datagram was lost, duplicated or corrupted, or
 * a device dropped a frame.
 *
 *     deno run examples/net.ts                       # virtio-pci, behind a virtio-iommu
 *     deno run examples/net.ts --no-iommu            # the devices see guest physical addresses
 *     deno run examples/net.ts --transport=mmio      # virtio-mmio; the virtio-iommu is on mmio too
 *     deno run examples/net.ts --transport=vduse     # VDUSE daemons; their bounce domain replaces the IOMMU
 *     deno run examples/net.ts --packed              # packed virtqueues instead of split ones
 *     deno run examples/net.ts --mq=4                # 4 queue pairs, the stream spread over them
 *     deno run examples/net.ts --size=512 --count=100000
 *     deno run -W examples/net.ts --pcap=net.pcap    # record what crosses guest A's device
 *
 * `--size` is the UDP payload of each datagram (16..65507 bytes; above 1472
 * the devices offer a larger MTU so the datagrams still fit one frame).
 * On virtio-mmio the NIC's endpoint id is 1, as firmware (a device tree
 * `iommus` property) would give it. `--transport=vduse --mq=N` turns on the VDUSE control queue, which upstream
 * Linux refuses (see `allowNetCtrlVq`).
 *
 * @module
 */
import { createMachine, type MachineTransport } from "../src/machine.ts";
import { Iommu } from "../src/iommu/iommu.ts";
import type { IommuDmaSpace } from "../src/iommu/iommu_dma_space.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { PageAllocator } from "../src/guest/page_allocator.ts";
import { DeferredDmaApi } from "../src/guest/dma/deferred_dma.ts";
import { VirtioIommuDriver } from "../src/guest/iommu/virtio_iommu_driver.ts";
import type { NetGuestDevice } from "../src/guest/net/net_guest_device.ts";
import { VirtioNetDriver } from "../src/guest/net/virtio_net_driver.ts";
import { NetFeature } from "../src/guest/net/virtio_net_uapi.ts";
import { formatIpv4, InetHost } from "../src/guest/net/inet.ts";
import type { VdpaDevice } from "../src/guest/vdpa/vdpa_device.ts";
import { probeVirtioVdpa } from "../src/guest/vdpa/virtio_vdpa.ts";
import { VirtioFeature } from "../src/virtio/features.ts";
import { VirtioIommu } from "../devices/iommu/virtio_iommu.ts";
import { createPair, type PairBackend } from "../devices/net/backends/pair.ts";
import type { NetBackend } from "../devices/net/backends/net_backend.ts";
import { PcapRecorder } from "../devices/net/backends/pcap.ts";
import { openPcapFile, type PcapFile } from "../devices/net/backends/pcap_deno.ts";
import { VirtioNet } from "../devices/net/virtio_net.ts";
import { VduseDaemon } from "../transports/vduse/daemon.ts";
import { EmulatedVduseBackend } from "../transports/vduse/kernel/emulated_backend.ts";
import type { VduseDev } from "../transports/vduse/kernel/vduse_dev.ts";
import { VduseKernel } from "../transports/vduse/kernel/vduse_kernel.ts";

// ---- options ---------------------------------------------------------------

const KNOWN = ["transport", "no-iommu", "packed", "mq", "size", "count", "pcap", "help"];

function usage(message?: string): never {
  if (message !== undefined) console.error(message);
  console.error(
    "usage: deno run examples/net.ts [--transport=pci|mmio|vduse] [--no-iommu] [--packed]\n" +
      "                                [--mq=N] [--size=BYTES] [--count=N] [--pcap=FILE]",
  );
  Deno.exit(message === undefined ? 0 : 2);
}

for (const arg of Deno.args) {
  const name = arg.replace(/^--/, "").replace(/=.*$/, "");
  if (!arg.startsWith("--") || !KNOWN.includes(name)) usage(`unknown argument "${arg}"`);
}
if (Deno.args.includes("--help")) usage();

function option(name: string): string | undefined {
  const prefix = `--${name}=`;
  return Deno.args.findLast((a) => a.startsWith(prefix))?.slice(prefix.length);
}

function intOption(name: string, fallback: number, min: number, max: number): number {
  const text = option(name);
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    usage(`--${name} must be an integer in ${min}..${max}, not "${text}"`);
  }
  return n;
}

type Transport = MachineTransport | "vduse";
const transport = (option("transport") ?? "pci") as Transport;
if (!["pci", "mmio", "vduse"].includes(transport)) {
  usage(`--transport must be pci, mmio or vduse, not "${transport}"`);
}
const useIommu = !Deno.args.includes("--no-iommu") && transport !== "vduse";
const packed = Deno.args.includes("--packed");
const pairs = intOption("mq", 1, 1, 16);
const size = intOption("size", 1472, 16, 65507);
const count = intOption("count", 20000, 1, 10_000_000);
const pcapPath = option("pcap");

const say = (line: string) => console.log(line);
const encoder = new TextEncoder();
const tty = Deno.stdout.isTerminal();

/** The MTU the devices offer: 1500, or enough for one `size`-byte datagram. */
const mtu = Math.max(1500, size + 28);

// ---- feature names ---------------------------------------------------------

const FEATURE_NAMES = new Map<number, string>();
for (const [name, bit] of Object.entries(NetFeature)) FEATURE_NAMES.set(bit, name);
for (const [name, bit] of Object.entries(VirtioFeature)) FEATURE_NAMES.set(bit, name);

function featureNames(features: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if (((features >> BigInt(bit)) & 1n) === 1n) names.push(FEATURE_NAMES.get(bit) ?? `bit ${bit}`);
  }
  return names;
}

// ---- the guests ------------------------------------------------------------

/** One guest: its net device, driver, IPv4 host and whatever sits between them. */
interface Guest {
  name: string;
  ip: string;
  device: VirtioNet;
  driver: VirtioNetDriver;
  host: InetHost;
  /** Deferred interrupt work (VDUSE), run by {@linkcode settle}. */
  work: (() => void)[];
  /** The transmit queue pair the next frame goes to. */
  txQueue: number;
  /** Frames go out with `more` (the doorbell is rung by `driver.flush()`). */
  batching: boolean;
  viommu: VirtioIommuDriver | null;
  endpoint: IommuDmaSpace | null;
  vduse: VduseDev | null;
  daemon: VduseDaemon | null;
}

/** The endpoint id of the net device: its PCI requester id, or a firmware-given id on mmio. */
const ENDPOINT = transport === "pci" ? 2 << 3 : 1;

function boot(name: string, ip: string, mac: string, backend: NetBackend): Guest {
  const device = new VirtioNet({
    mac,
    backend,
    queuePairs: pairs,
    mtu: mtu > 1500 ? mtu : undefined,
    controlQueue: transport !== "vduse" || pairs > 1,
  });
  const guest: Guest = {
    name,
    ip,
    device,
    driver: null as unknown as VirtioNetDriver,
    host: null as unknown as InetHost,
    work: [],
    txQueue: 0,
    batching: false,
    viommu: null,
    endpoint: null,
    vduse: null,
    daemon: null,
  };
  let net: NetGuestDevice;
  if (transport === "vduse") {
    // The guest kernel loads vduse; a daemon in its userspace serves the device.
    const memory = new GuestMemory([{ base: 0, size: 64 << 20 }]);
    const pages = new PageAllocator(memory, { base: 1 << 20, size: 63 << 20 });
    const kernel = new VduseKernel({
      memory,
      pages,
      schedule: (w) => guest.work.push(w),
      msgTimeout: 0,
      allowNetCtrlVq: pairs > 1,
    });
    const daemon = new VduseDaemon(new EmulatedVduseBackend(kernel), device, {
      name: `vduse-${name}`,
      packed,
      ...(pairs > 1 ? { apiVersion: 1 as const, filterFeatures: 0n } : {}),
    });
    if (daemon.start() !== 0) throw new Error(`VDUSE daemon: ${daemon.lastError}`);
    const dev = kernel.vdpaDevAdd(`vduse-${name}`) as VduseDev;
    guest.vduse = dev;
    guest.daemon = daemon;
    net = probeVirtioVdpa(dev as VdpaDevice, { pages });
  } else {
    const memory = new GuestMemory([{ base: 0, size: 64 << 20 }]);
    const ring = { packed };
    if (useIommu) {
      const iommu = new Iommu({ memory });
      const endpoint = iommu.addEndpoint(ENDPOINT);
      const guestDma = new DeferredDmaApi();
      const machine = createMachine({
        memory,
        devices: [
          { device: new VirtioIommu(iommu), transport },
          { device, transport, ring },
        ],
        iommu: {
          deviceDma: (i) => (i === 1 ? endpoint : undefined),
          guestDma: (i) => (i === 1 ? guestDma : undefined),
        },
      });
      const viommu = VirtioIommuDriver.probe(machine.guest(0));
      guestDma.target = viommu.setupDma(ENDPOINT, {
        name: `${name}-net`,
        pci: transport === "pci",
      });
      guest.viommu = viommu;
      guest.endpoint = endpoint;
      net = machine.guest(1);
    } else {
      const machine = createMachine({ memory, devices: [{ device, transport, ring }] });
      net = machine.guest(0);
    }
  }
  guest.driver = VirtioNetDriver.probe(net, {
    queuePairs: pairs,
    onReceive: (frame, info) => guest.host.receive(frame, info),
  });
  guest.host = new InetHost({
    mac: guest.driver.mac,
    send: (frame) => guest.driver.send(frame, { queue: guest.txQueue, more: guest.batching }),
  }, ip);
  return guest;
}

/** Runs interrupt work and both drivers' softirqs until nothing is pending. */
function settle(...guests: Guest[]): void {
  for (let round = 0; round < 10_000; round++) {
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
  throw new Error("the guests did not settle");
}

let pcap: PcapFile | null = null;
let cableA: NetBackend;
let cableB: PairBackend;
{
  const [a, b] = createPair();
  cableA = a;
  cableB = b;
  if (pcapPath !== undefined) {
    try {
      pcap = openPcapFile(pcapPath);
    } catch (e) {
      console.error(
        `cannot open ${pcapPath} for the capture: ${(e as Error).message}\n` +
          "(writing a file needs --allow-write, e.g. deno run -W examples/net.ts --pcap=...)",
      );
      Deno.exit(2);
    }
    cableA = new PcapRecorder(a, pcap.sink);
  }
}

const transportName = transport === "pci"
  ? "virtio-pci"
  : transport === "mmio"
  ? "virtio-mmio"
  : "VDUSE (virtio_vdpa)";
say(
  `vireo net example: two guests, ${transportName}, ${
    packed ? "packed" : "split"
  } rings, ${pairs} ` +
    `queue pair${pairs > 1 ? "s" : ""}, ${
      useIommu
        ? "each NIC behind a virtio-iommu"
        : transport === "vduse"
        ? "buffers bounced through the VDUSE domain"
        : "no IOMMU"
    }`,
);
const A = boot("A", "10.0.0.1", "52:54:00:00:00:01", cableA);
const B = boot("B", "10.0.0.2", "52:54:00:00:00:02", cableB);
const guests = [A, B];

// ---- 1. negotiation --------------------------------------------------------

for (const g of guests) {
  const how = g.viommu !== null
    ? `; virtio-iommu probed, the NIC attached to a DMA domain (endpoint 0x${
      ENDPOINT.toString(16)
    }), every buffer mapped through dma-iommu`
    : g.vduse !== null
    ? `; bound through virtio_vdpa to VDUSE device "${g.vduse.name}", buffers bounced through ${
      g.vduse.as[0].domain!.bounceSize >> 20
    } MiB of bounce pages`
    : "";
  say(
    `guest ${g.name}: virtio-net ${g.driver.mac} probed, ${g.driver.rxMode} receive buffers${how}`,
  );
}
const negotiated = featureNames(A.driver.features);
say(`negotiated: ${negotiated.join(" ")}`);

// ---- 2. link ---------------------------------------------------------------

for (const g of guests) g.driver.open();
settle(A, B);
const linkUp = A.driver.linkUp && B.driver.linkUp;
say(
  `link: ${linkUp ? "up" : "DOWN"} on both sides (A ${A.driver.linkUp ? "up" : "down"}, B ${
    B.driver.linkUp ? "up" : "down"
  }), MTU ${A.driver.mtu}, ${A.driver.queuePairs} queue pair${
    A.driver.queuePairs > 1 ? "s" : ""
  } in use`,
);
if (!linkUp) {
  say("FAILED: the link did not come up");
  Deno.exit(1);
}

// ---- 3. ARP and ping -------------------------------------------------------

const PINGS = 10;
const rtts: number[] = [];
for (let seq = 1; seq <= PINGS; seq++) {
  const before = A.host.echoReplies.length;
  const start = performance.now();
  A.host.ping(B.ip, seq, new Uint8Array(56).fill(seq));
  settle(A, B);
  if (A.host.echoReplies.length > before && A.host.echoReplies.at(-1)!.seq === seq) {
    rtts.push(performance.now() - start);
  }
}
const bMac = A.host.arp.get(B.host.ip);
say(
  `arp: A resolved ${B.ip} to ${bMac ?? "nothing"}; B learnt ${formatIpv4(A.host.ip)} is ${
    B.host.arp.get(A.host.ip) ?? "nothing"
  }`,
);
if (rtts.length > 0) {
  const us = (ms: number) => `${(ms * 1000).toFixed(0)}`;
  say(
    `ping: ${rtts.length} of ${PINGS} echo replies from ${B.ip}, round trip min/avg/max ` +
      `${us(Math.min(...rtts))}/${us(rtts.reduce((s, x) => s + x, 0) / rtts.length)}/${
        us(Math.max(...rtts))
      } µs (the first waited for ARP)`,
  );
} else {
  say(`ping: no echo reply from ${B.ip}`);
}

// ---- 4. bulk UDP A -> B ----------------------------------------------------

const PORT = 9000;
const HEADER = 8; // sequence number, then the payload size
/** The pattern byte `i` of datagram `seq`. */
const patternByte = (seq: number, i: number) => (seq * 31 + i * 7 + (i >> 8)) & 0xff;

const seen = new Uint8Array(count);
let received = 0;
let duplicates = 0;
let corrupted = 0;
let outOfOrder = 0;
let lastSeq = -1;
B.host.bindUdp(PORT, (data) => {
  if (data.length !== size || data.length < HEADER) {
    corrupted++;
    return;
  }
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const seq = v.getUint32(0);
  if (seq >= count || v.getUint32(4) !== size) {
    corrupted++;
    return;
  }
  for (let i = HEADER; i < data.length; i++) {
    if (data[i] !== patternByte(seq, i)) {
      corrupted++;
      return;
    }
  }
  if (seen[seq] !== 0) {
    duplicates++;
    return;
  }
  seen[seq] = 1;
  received++;
  if (seq < lastSeq) outOfOrder++;
  lastSeq = seq;
});

/** Datagram payloads, built once per pattern class (the pattern repeats every 256 sequence numbers). */
const templates = Array.from({ length: 256 }, (_, s) => {
  const p = new Uint8Array(size);
  for (let i = HEADER; i < size; i++) p[i] = patternByte(s, i);
  new DataView(p.buffer).setUint32(4, size);
  return p;
});

/**
 * Datagrams sent per doorbell. B's driver refills its receive ring only when it
 * polls, and keeps at least half of it (128 buffers of 1.5 to 4 KiB) posted; a
 * batch must fit, or B's device would have nowhere to put a frame and drop it.
 */
const BATCH = Math.max(1, Math.min(64, Math.floor(96 / Math.ceil((size + 54) / 1530))));
let sent = 0;
let retries = 0;
const bulkStart = performance.now();
let lastReport = bulkStart;
const progress = (final: boolean) => {
  const s = (performance.now() - bulkStart) / 1000;
  const line = `  sending: ${sent} of ${count} datagrams, ${received} verified, ${
    (received * size * 8 / 1e9 / s).toFixed(2)
  } Gbit/s`;
  if (tty) Deno.stdout.writeSync(encoder.encode(`\r${line}${final ? "\n" : ""}`));
};
say(`udp: A sends ${count} datagrams of ${size} bytes to ${B.ip}:${PORT}; B checks every one`);
A.batching = true;
while (sent < count) {
  const end = Math.min(count, sent + BATCH);
  while (sent < end) {
    const payload = templates[sent & 255];
    new DataView(payload.buffer).setUint32(0, sent);
    A.txQueue = sent % pairs;
    const failures = A.host.stats.sendFailures;
    A.host.sendUdp(B.ip, 40000 + (sent % 64), PORT, payload);
    if (A.host.stats.sendFailures !== failures) {
      // The transmit ring was full: let the device drain it, then try again.
      if (++retries > 1000 + count) throw new Error("the transmit queue never drained");
      A.driver.flush();
      settle(A, B);
      continue;
    }
    sent++;
  }
  A.driver.flush();
  settle(A, B);
  const now = performance.now();
  if (now - lastReport > 100) {
    lastReport = now;
    progress(false);
  }
}
A.batching = false;
A.driver.flush();
settle(A, B);
A.driver.reclaim();
const seconds = (performance.now() - bulkStart) / 1000;
progress(true);

// ---- 5. the table ----------------------------------------------------------

let drops = 0;
let errors = 0;
for (const g of guests) {
  const rx = g.device.metrics.rxTotal();
  const tx = g.device.metrics.txTotal();
  drops += rx.drops + tx.drops;
  errors += rx.errors + tx.errors;
}
const lost = count - received;
const verified = lost === 0 && corrupted === 0 && duplicates === 0 && drops === 0 && errors === 0;
const txA = A.device.metrics.txTotal();
const rxB = B.device.metrics.rxTotal();

const rows: [string, string][] = [];
rows.push([
  "transport",
  `${transportName}, ${
    A.driver.hasFeature(VirtioFeature.RING_PACKED) ? "packed" : "split"
  } rings, ` +
  `${A.driver.queuePairs} queue pair${A.driver.queuePairs > 1 ? "s" : ""}`,
]);
/** The feature names, wrapped into lines of at most 72 characters. */
const featureLines: string[] = [];
for (const name of negotiated) {
  const last = featureLines.length - 1;
  if (last >= 0 && featureLines[last].length + 1 + name.length <= 72) {
    featureLines[last] += ` ${name}`;
  } else {
    featureLines.push(name);
  }
}
featureLines.forEach((l, i) => rows.push([i === 0 ? "features negotiated" : "", l]));
rows.push([
  "packets",
  `${received} of ${count} datagrams received; A's device sent ${txA.packets} frames, ` +
  `B's delivered ${rxB.packets} (ARP and ping included)`,
]);
if (pairs > 1) {
  rows.push([
    "per queue",
    `A sent ${A.device.metrics.tx.map((q) => q.packets).join("/")} frames, B received ${
      B.device.metrics.rx.map((q) => q.packets).join("/")
    } (tx/rx queues 0..${pairs - 1})`,
  ]);
}
rows.push([
  "bytes",
  `${received * size} of UDP payload (${txA.bytes} bytes of frames through A's device)`,
]);
rows.push(["Gbit/s", (received * size * 8 / 1e9 / seconds).toFixed(3)]);
rows.push(["packets/s", (received / seconds).toFixed(0)]);
rows.push([
  "drops",
  `${drops} (device counters, both guests; ${errors} errors)` +
  (retries > 0 ? `; the driver waited for a full ring ${retries} times` : ""),
]);
if (useIommu) {
  for (const g of guests) {
    const s = g.endpoint!.stats;
    const lookups = s.hits + s.misses;
    rows.push([
      `IOMMU (guest ${g.name})`,
      `${g.viommu!.stats.map} MAP requests, ${g.viommu!.stats.unmap} UNMAP; translation cache ` +
      `${lookups === 0 ? "unused" : `${(100 * s.hits / lookups).toFixed(1)}% hits`} ` +
      `(${lookups} lookups)`,
    ]);
  }
} else if (transport === "vduse") {
  for (const g of guests) {
    const d = g.vduse!.as[0].domain!.stats;
    rows.push([
      `VDUSE (guest ${g.name})`,
      `${d.maps} streaming mappings, ${d.bytesToBounce + d.bytesFromBounce} bytes bounced`,
    ]);
  }
} else {
  rows.push(["IOMMU", "none (--no-iommu)"]);
}
if (pcap !== null) {
  rows.push(["capture", `${(cableA as PcapRecorder).frames} frames written to ${pcapPath}`]);
}
rows.push(["data verified", verified ? "yes" : "NO"]);

const width = Math.max(...rows.map(([k]) => k.length));
say("");
for (const [k, v] of rows) say(`${k.padEnd(width)}  ${v}`);
say("");
if (useIommu) {
  say("Each frame buffer is a fresh streaming mapping: a MAP request, a first translation that");
  say("misses the cache, an UNMAP. The rings stay mapped, so their translations hit.");
  say("");
}

for (const g of guests) g.driver.remove();
pcap?.close();

if (verified) {
  say(
    `verified: all ${count} datagrams arrived exactly once with every byte intact${
      outOfOrder === 0 ? ", in order" : ` (${outOfOrder} overtook another across the queues)`
    }`,
  );
} else {
  say(
    `FAILED: ${lost} datagrams lost, ${duplicates} duplicated, ${corrupted} corrupted, ` +
      `${drops} frames dropped by the devices`,
  );
  Deno.exit(1);
}
