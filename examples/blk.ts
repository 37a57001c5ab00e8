/**
 * A virtio-blk disk used by the guest's block driver, behind vireo's IOMMU.
 *
 * The machine has a virtio-iommu on virtio-pci (slot 1) and a virtio-blk
 * device on virtio-pci (slot 2) behind it. The guest model probes the
 * virtio-iommu, gives the disk a DMA domain and drives it with its
 * virtio-blk driver; each request's data is mapped into one IOVA range with
 * the IOVA-based DMA API (one reservation, a link per segment, one sync, one
 * destroy), the way Linux's block layer maps NVMe requests.
 *
 * What it does:
 *
 * 1. writes a known pattern over the start of the disk, flushes, reads it
 *    back and compares every byte;
 * 2. runs random 4 KiB reads and writes (writes store the pattern again,
 *    reads are checked against it), then sequential 128 KiB reads;
 * 3. prints a table: IOPS, MB/s, IOVA links, IOMMU requests, and how often
 *    the IOMMU's translation cache hit.
 *
 * It exits with status 1 if any byte read back was wrong.
 *
 *     deno run examples/blk.ts                          # a 64 MiB disk in memory
 *     deno run -RW examples/blk.ts --image=disk.img     # a raw image file (created if missing)
 *     deno run examples/blk.ts --no-iommu               # the disk sees guest physical addresses
 *     deno run examples/blk.ts --seconds=5 --depth=32   # longer, more requests in flight
 *     deno run examples/blk.ts --count=200              # a fixed number of requests per workload
 *     deno run examples/blk.ts --no-indirect            # no indirect descriptor tables to map
 *
 * With `--image`, the first 16 MiB of the image (or all of it, when smaller)
 * are overwritten with the pattern.
 *
 * @module
 */
import { createMachine, type Machine } from "../src/machine.ts";
import { Iommu } from "../src/iommu/iommu.ts";
import type { IommuDmaSpace } from "../src/iommu/iommu_dma_space.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { DeferredDmaApi } from "../src/guest/dma/deferred_dma.ts";
import { VirtioIommuDriver } from "../src/guest/iommu/virtio_iommu_driver.ts";
import { VirtioBlkDriver } from "../src/guest/blk/virtio_blk_driver.ts";
import { IovaRequestMapper } from "../src/guest/blk/iova_request_mapper.ts";
import { VirtioIommu } from "../devices/iommu/virtio_iommu.ts";
import { VirtioBlk } from "../devices/blk/device.ts";
import { MemoryBackend } from "../devices/blk/backends/memory.ts";
import type { BlockBackend } from "../devices/blk/backends/block_backend.ts";
import { FileBackend } from "../devices/blk/backends/file_deno.ts";

// ---- options ---------------------------------------------------------------

function option(name: string): string | undefined {
  const prefix = `--${name}=`;
  return Deno.args.find((a) => a.startsWith(prefix))?.slice(prefix.length);
}

function numberOption(name: string, fallback: number): number {
  const text = option(name);
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!(n > 0) || !Number.isFinite(n)) {
    console.error(`--${name} must be a positive number, not "${text}"`);
    Deno.exit(2);
  }
  return n;
}

const useIommu = !Deno.args.includes("--no-iommu");
const ring = { indirect: !Deno.args.includes("--no-indirect") };
const imagePath = option("image");
const seconds = numberOption("seconds", 1);
const countText = option("count");
const count = countText === undefined ? 0 : Math.floor(numberOption("count", 1));
const depth = Math.floor(numberOption("depth", 16));
const DISK_SIZE = 64 << 20;
const PATTERN_MAX = 16 << 20;

const say = (line: string) => console.log(line);
const mib = (n: number) => `${(n / (1 << 20)).toFixed(n % (1 << 20) === 0 ? 0 : 1)} MiB`;

// ---- the disk --------------------------------------------------------------

let backend: BlockBackend;
if (imagePath !== undefined) {
  try {
    backend = await FileBackend.open(imagePath);
    if (backend.size < 1 << 20) {
      await (backend as FileBackend).close();
      backend = await FileBackend.open(imagePath, { size: DISK_SIZE });
    }
    say(`disk: opened ${imagePath} (${mib(backend.size)})`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    backend = await FileBackend.open(imagePath, { create: true, size: DISK_SIZE });
    say(`disk: created ${imagePath} (${mib(DISK_SIZE)})`);
  }
} else {
  backend = new MemoryBackend(DISK_SIZE);
  say(`disk: ${mib(DISK_SIZE)} in memory`);
}
const device = new VirtioBlk({ backend, serial: "vireo-example" });

// ---- the machine and the guest drivers -------------------------------------

const ENDPOINT = 2 << 3; // the disk's PCI requester id: bus 0, slot 2, function 0
const memory = new GuestMemory([{ base: 0, size: 64 << 20 }]);
let machine: Machine;
let driver: VirtioBlkDriver;
let viommu: VirtioIommuDriver | null = null;
let endpoint: IommuDmaSpace | null = null;
let mapper: IovaRequestMapper | null = null;
if (useIommu) {
  const iommu = new Iommu({ memory });
  const ep = iommu.addEndpoint(ENDPOINT);
  const guestDma = new DeferredDmaApi();
  machine = createMachine({
    memory,
    devices: [
      { device: new VirtioIommu(iommu), transport: "pci" },
      { device, transport: "pci", ring },
    ],
    iommu: {
      deviceDma: (i) => (i === 1 ? ep : undefined),
      guestDma: (i) => (i === 1 ? guestDma : undefined),
    },
  });
  viommu = VirtioIommuDriver.probe(machine.guest(0));
  guestDma.target = viommu.setupDma(ENDPOINT, { name: "virtio-blk" });
  endpoint = ep;
  mapper = new IovaRequestMapper(guestDma);
  driver = VirtioBlkDriver.probe(machine.guest(1), { mapper });
  say("guest: virtio-iommu probed, the disk attached to a DMA domain; requests use IOVA ranges");
} else {
  machine = createMachine({ memory, devices: [{ device, transport: "pci", ring }] });
  driver = VirtioBlkDriver.probe(machine.guest(0));
  say("guest: no IOMMU; the disk sees guest physical addresses");
}
say(
  `guest: virtio-blk on virtio-pci, ${mib(driver.capacity * 512)}, ${driver.queues.length} ` +
    `queue(s), cache ${driver.cacheMode}, serial "${await driver.getId()}"`,
);

// ---- the pattern -----------------------------------------------------------

const patternSize = Math.min(
  PATTERN_MAX,
  Math.floor(driver.capacity * 512 / (128 << 10)) * (128 << 10),
);
if (patternSize < 128 << 10) {
  console.error("the disk is too small: at least 128 KiB is needed");
  Deno.exit(2);
}
/** What the first `patternSize` bytes of the disk hold. */
const pattern = new Uint8Array(patternSize);
{
  let x = 0x9e3779b9;
  const words = new Uint32Array(pattern.buffer);
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
}

/** Counts the bytes of `got` that differ from the pattern at `offset`. */
function mismatches(got: Uint8Array, offset: number): number {
  const want = pattern.subarray(offset, offset + got.length);
  let bad = 0;
  for (let i = 0; i < got.length; i++) if (got[i] !== want[i]) bad++;
  return bad;
}

let badBytes = 0;
const CHUNK = 1 << 20;
for (let off = 0; off < patternSize; off += CHUNK) {
  await driver.write(off / 512, pattern.subarray(off, Math.min(off + CHUNK, patternSize)));
}
await driver.flush();
for (let off = 0; off < patternSize; off += CHUNK) {
  const n = Math.min(CHUNK, patternSize - off);
  badBytes += mismatches(await driver.read(off / 512, n), off);
}
say(
  badBytes === 0
    ? `verify: wrote ${mib(patternSize)}, flushed, read it back: every byte matches`
    : `verify: wrote ${mib(patternSize)}, flushed, read it back: ${badBytes} bytes DIFFER`,
);

// ---- the workloads ---------------------------------------------------------

interface Counters {
  links: number;
  requests: number;
  hits: number;
  lookups: number;
}

function counters(): Counters {
  return {
    links: mapper?.stats.links ?? 0,
    requests: viommu?.stats.requests ?? 0,
    hits: endpoint?.stats.hits ?? 0,
    lookups: (endpoint?.stats.hits ?? 0) + (endpoint?.stats.misses ?? 0),
  };
}

interface Result {
  name: string;
  ops: number;
  bytes: number;
  ms: number;
  delta: Counters;
}

const tty = Deno.stdout.isTerminal();
const encoder = new TextEncoder();

/** Runs `op(i)` from `depth` workers until the time or count is up, with a progress line. */
async function workload(
  name: string,
  size: number,
  op: (i: number) => Promise<void>,
): Promise<Result> {
  const before = counters();
  const start = performance.now();
  const deadline = start + seconds * 1000;
  let issued = 0;
  let done = 0;
  let lastReport = start;
  const progress = (final: boolean) => {
    const ms = performance.now() - start;
    const line = `  ${name}: ${done} requests, ${(done / (ms / 1000)).toFixed(0)} IOPS, ${
      (done * size / 1e6 / (ms / 1000)).toFixed(1)
    } MB/s`;
    if (tty) Deno.stdout.writeSync(encoder.encode(`\r${line}${final ? "\n" : ""}`));
    else if (final) say(line);
  };
  const worker = async () => {
    while (count > 0 ? issued < count : performance.now() < deadline) {
      await op(issued++);
      done++;
      const now = performance.now();
      if (now - lastReport > 200) {
        lastReport = now;
        progress(false);
      }
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  const ms = performance.now() - start;
  progress(true);
  const after = counters();
  return {
    name,
    ops: done,
    bytes: done * size,
    ms,
    delta: {
      links: after.links - before.links,
      requests: after.requests - before.requests,
      hits: after.hits - before.hits,
      lookups: after.lookups - before.lookups,
    },
  };
}

let seed = 12345;
function random(n: number): number {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed % n;
}

say(
  `workload: ${count > 0 ? `${count} requests` : `${seconds} s`} each, ${depth} in flight`,
);
const blocks4k = patternSize / 4096;
const random4k = await workload("random 4 KiB read/write", 4096, async () => {
  const off = random(blocks4k) * 4096;
  if (random(4) === 0) {
    await driver.write(off / 512, pattern.subarray(off, off + 4096));
  } else {
    badBytes += mismatches(await driver.read(off / 512, 4096), off);
  }
});
const chunks128k = patternSize / (128 << 10);
let next128k = 0;
const seq128k = await workload("sequential 128 KiB read", 128 << 10, async () => {
  const off = (next128k++ % chunks128k) * (128 << 10);
  badBytes += mismatches(await driver.read(off / 512, 128 << 10), off);
});
await driver.flush();

// ---- the table -------------------------------------------------------------

const rows = [random4k, seq128k].map((r) => {
  const s = r.ms / 1000;
  const d = r.delta;
  return [
    r.name,
    String(r.ops),
    (r.ops / s).toFixed(0),
    (r.bytes / 1e6 / s).toFixed(1),
    useIommu ? (d.links / r.ops).toFixed(1) : "-",
    useIommu ? (d.requests / r.ops).toFixed(1) : "-",
    useIommu && d.lookups > 0 ? `${(100 * d.hits / d.lookups).toFixed(1)}%` : "-",
  ];
});
const head = [
  "workload",
  "requests",
  "IOPS",
  "MB/s",
  "IOVA links/req",
  "IOMMU requests/req",
  "cache hits",
];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells: string[]) =>
  cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
say("");
say(line(head));
say(widths.map((w) => "-".repeat(w)).join("  "));
for (const r of rows) say(line(r));
say("");
if (useIommu) {
  say(
    "IOVA links/req counts the data segments linked plus the granule holding the request header;",
  );
  say(
    "IOMMU requests/req counts MAP and UNMAP requests sent to the virtio-iommu for each disk request.",
  );
}

device.reset();
if (backend instanceof FileBackend) await backend.close();
if (badBytes === 0) {
  say("done: all data read back matched what was written");
} else {
  say(`FAILED: ${badBytes} bytes read back did not match`);
  Deno.exit(1);
}
