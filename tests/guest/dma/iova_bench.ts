/**
 * Per-request streaming mappings versus one IOVA range per batch, over the
 * virtio-iommu device.
 *
 * A batch is one I/O of 16 scattered 4 KiB segments:
 *
 * - "map/unmap": each segment is mapped with `mapPage` and unmapped with
 *   `unmapPage` (what virtio_ring does per descriptor);
 * - "IOVA API": `iovaTryAlloc` once, `iovaLink` each segment, one
 *   `iovaSync`, then `iovaDestroy` (what blk-mq/nvme do with the IOVA API).
 *
 * Run: `deno bench tests/guest/dma/iova_bench.ts`. Before the timings, the
 * number of virtio-iommu requests and request-queue kicks per batch is printed.
 */
import { DmaDirection } from "../../../src/guest/dma/dma_api.ts";
import type { DmaIommu } from "../../../src/guest/dma/dma_iommu.ts";
import {
  iovaDestroy,
  iovaLink,
  iovaSync,
  iovaTryAlloc,
  newIovaState,
} from "../../../src/guest/dma/iova_api.ts";
import { makeViommuMachine, type ViommuMachine } from "../iommu/viommu_harness.ts";

const SEGMENTS = 16;
const SEG = 4096;
const TO = DmaDirection.TO_DEVICE;
const phys = Array.from({ length: SEGMENTS }, (_, i) => 0x20_0000 + i * 0x3000);
const handles = new Array<number>(SEGMENTS);

function perRequest(dma: DmaIommu): void {
  for (let i = 0; i < SEGMENTS; i++) handles[i] = dma.mapPage(phys[i], SEG, TO);
  for (let i = 0; i < SEGMENTS; i++) dma.unmapPage(handles[i], SEG, TO);
}

const state = newIovaState();
function iovaBatch(dma: DmaIommu): void {
  if (!iovaTryAlloc(dma, state, phys[0], SEGMENTS * SEG)) throw new Error("no IOVA");
  for (let i = 0; i < SEGMENTS; i++) iovaLink(dma, state, phys[i], i * SEG, SEG, TO);
  iovaSync(dma, state, 0, SEGMENTS * SEG);
  iovaDestroy(dma, state, SEGMENTS * SEG, TO);
}

interface Setup {
  m: ViommuMachine;
  dma: DmaIommu;
}

function setup(strict: boolean): Setup {
  const m = makeViommuMachine();
  return { m, dma: m.viommu.setupDma(8, { strict }) };
}

/** Requests the device handled and kicks made per batch, averaged over `n` batches. */
function perBatch(s: Setup, run: (dma: DmaIommu) => void, n = 64): [number, number] {
  run(s.dma); // warm up (lazy mode: the first batch leaves its UNMAPs queued)
  const r0 = s.m.device.stats.requests;
  const k0 = s.m.viommu.stats.kicks;
  for (let i = 0; i < n; i++) run(s.dma);
  return [(s.m.device.stats.requests - r0) / n, (s.m.viommu.stats.kicks - k0) / n];
}

const rows: string[] = [];
for (const strict of [true, false]) {
  const mode = strict ? "strict" : "lazy";
  const [rq, kq] = perBatch(setup(strict), perRequest);
  const [ri, ki] = perBatch(setup(strict), iovaBatch);
  const f = (v: number) => v.toFixed(2).padStart(8);
  rows.push(`${mode.padEnd(6)} map/unmap ${f(rq)} ${f(kq)}`);
  rows.push(`${mode.padEnd(6)} IOVA API  ${f(ri)} ${f(ki)}`);
}
console.log(`virtio-iommu traffic per batch of ${SEGMENTS} x ${SEG} B segments`);
console.log("mode   path      requests    kicks");
for (const row of rows) console.log(row);

for (const strict of [true, false]) {
  const mode = strict ? "strict" : "lazy";
  const a = setup(strict);
  Deno.bench(
    `${mode}: map/unmap per segment (16 segments)`,
    { group: mode, baseline: true },
    () => {
      perRequest(a.dma);
    },
  );
  const b = setup(strict);
  Deno.bench(`${mode}: one IOVA range linked per batch (16 segments)`, { group: mode }, () => {
    iovaBatch(b.dma);
  });
}
