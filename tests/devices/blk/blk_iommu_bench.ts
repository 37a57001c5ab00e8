/**
 * virtio-blk through the guest driver (VirtioBlkDriver over virtio-pci, memory
 * backend): 4 KiB random reads and 128 KiB sequential reads, with the device
 * seeing guest physical addresses (direct) or behind a virtio-iommu with the
 * IOVA request mapper (one IOVA range per request), each against a baseline
 * that only copies the same bytes with `Uint8Array.set`.
 *
 * One bench iteration = BATCH reads in flight together (`Promise.all`).
 *
 *   deno bench tests/devices/blk/blk_iommu_bench.ts
 *   deno run tests/devices/blk/blk_iommu_bench.ts --summary   # IOPS, MB/s, IOMMU requests per read
 */
import { createMachine } from "../../../src/machine.ts";
import { Iommu } from "../../../src/iommu/iommu.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { DeferredDmaApi } from "../../../src/guest/dma/deferred_dma.ts";
import { VirtioIommuDriver } from "../../../src/guest/iommu/virtio_iommu_driver.ts";
import { VirtioBlkDriver } from "../../../src/guest/blk/virtio_blk_driver.ts";
import { IovaRequestMapper } from "../../../src/guest/blk/iova_request_mapper.ts";
import { VirtioIommu } from "../../../devices/iommu/virtio_iommu.ts";
import { VirtioBlk } from "../../../devices/blk/device.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";

const BATCH = 16;
const DISK = 64 << 20;
const ENDPOINT = 2 << 3;

/** A machine with a virtio-blk disk, direct or behind a virtio-iommu. */
class Rig {
  readonly disk: MemoryBackend;
  readonly driver: VirtioBlkDriver;
  readonly viommu: VirtioIommuDriver | null = null;
  readonly mapper: IovaRequestMapper | null = null;
  readonly out: Uint8Array;

  constructor(iommu: boolean) {
    this.disk = new MemoryBackend(DISK);
    for (let i = 0; i < DISK; i += 512) this.disk.bytes[i] = (i >>> 9) & 0xff;
    this.out = new Uint8Array(BATCH * (128 << 10));
    const device = new VirtioBlk({ backend: this.disk });
    const memory = new GuestMemory([{ base: 0, size: 64 << 20 }]);
    if (!iommu) {
      const m = createMachine({ memory, devices: [{ device, transport: "pci" }] });
      this.driver = VirtioBlkDriver.probe(m.guest(0));
      return;
    }
    const unit = new Iommu({ memory });
    const ep = unit.addEndpoint(ENDPOINT);
    const deferred = new DeferredDmaApi();
    const m = createMachine({
      memory,
      devices: [
        { device: new VirtioIommu(unit), transport: "pci" },
        { device, transport: "pci" },
      ],
      iommu: {
        deviceDma: (i) => (i === 1 ? ep : undefined),
        guestDma: (i) => (i === 1 ? deferred : undefined),
      },
    });
    this.viommu = VirtioIommuDriver.probe(m.guest(0));
    deferred.target = this.viommu.setupDma(ENDPOINT, { name: "blk" });
    this.mapper = new IovaRequestMapper(deferred);
    this.driver = VirtioBlkDriver.probe(m.guest(1), { mapper: this.mapper });
  }

  /** BATCH reads of `len` bytes at the given sectors, all in flight together. */
  async batch(sectors: Uint32Array, base: number, len: number): Promise<void> {
    const reads: Promise<Uint8Array>[] = [];
    for (let i = 0; i < BATCH; i++) {
      reads.push(this.driver.read(sectors[(base + i) & (sectors.length - 1)], len));
    }
    const got = await Promise.all(reads);
    for (let i = 0; i < BATCH; i++) {
      const s = sectors[(base + i) & (sectors.length - 1)];
      if (got[i][0] !== (s & 0xff)) throw new Error(`bad data at sector ${s}`);
    }
  }

  /** The baseline: copy the same bytes out of the disk. */
  copy(sectors: Uint32Array, base: number, len: number): void {
    const src = this.disk.bytes;
    for (let i = 0; i < BATCH; i++) {
      const off = sectors[(base + i) & (sectors.length - 1)] * 512;
      this.out.set(src.subarray(off, off + len), i * len);
    }
  }
}

function sectorList(len: number, sequential: boolean): Uint32Array {
  const n = 4096;
  const out = new Uint32Array(n);
  const per = len / 512;
  const slots = DISK / len;
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = (sequential ? i % slots : x % slots) * per;
  }
  return out;
}

const direct = new Rig(false);
const behind = new Rig(true);
const rand = sectorList(4096, false);
const seq = sectorList(128 << 10, true);
let pos = 0;

for (
  const [group, sectors, len] of [["4 KiB random read", rand, 4096], [
    "128 KiB sequential read",
    seq,
    128 << 10,
  ]] as const
) {
  Deno.bench({
    name: `Uint8Array.set of ${BATCH} x ${len >> 10} KiB (baseline)`,
    group,
    baseline: true,
    fn() {
      direct.copy(sectors, pos += BATCH, len);
    },
  });
  Deno.bench({
    name: `guest driver, ${BATCH} x ${len >> 10} KiB, direct`,
    group,
    async fn() {
      await direct.batch(sectors, pos += BATCH, len);
    },
  });
  Deno.bench({
    name: `guest driver, ${BATCH} x ${len >> 10} KiB, virtio-iommu + IOVA mapper`,
    group,
    async fn() {
      await behind.batch(sectors, pos += BATCH, len);
    },
  });
}

/** Runs `fn` for about `ms` milliseconds and returns the batches per second. */
async function rate(fn: () => void | Promise<void>, ms = 1000): Promise<number> {
  for (let i = 0; i < 50; i++) await fn();
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 10; i++) await fn();
    n += 10;
    now = performance.now();
  }
  return (n * 1000) / (now - start);
}

if (import.meta.main && Deno.args.includes("--summary")) {
  for (
    const [name, sectors, len] of [["4 KiB random read", rand, 4096], [
      "128 KiB sequential read",
      seq,
      128 << 10,
    ]] as const
  ) {
    const base = (await rate(() => direct.copy(sectors, pos += BATCH, len))) * BATCH;
    const d = (await rate(() => direct.batch(sectors, pos += BATCH, len))) * BATCH;
    const v = behind.viommu!.stats;
    const r0 = v.requests;
    const k0 = v.kicks;
    const reads0 = behind.mapper!.stats.iovaRequests;
    const b = (await rate(() => behind.batch(sectors, pos += BATCH, len))) * BATCH;
    const reads = behind.mapper!.stats.iovaRequests - reads0;
    const mbs = (ops: number) => ((ops * len) / 1e6).toFixed(0);
    console.log(
      `${name.padEnd(24)} baseline ${(base / 1000).toFixed(0)}k/s (${mbs(base)} MB/s) | ` +
        `direct ${(d / 1000).toFixed(1)}k IOPS (${mbs(d)} MB/s) | ` +
        `IOMMU ${(b / 1000).toFixed(1)}k IOPS (${mbs(b)} MB/s), ` +
        `${((v.requests - r0) / reads).toFixed(1)} virtio-iommu requests and ` +
        `${((v.kicks - k0) / reads).toFixed(1)} kicks per read`,
    );
  }
}
