import { assertEquals } from "@std/assert";
import { ErrorInjectingBackend } from "../../../devices/blk/backends/error_injecting.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { VirtioBlkFeature } from "../../../devices/blk/constants.ts";
import { SplitQueue } from "../../../src/queue/split_queue.ts";
import { BlkHarness, IOERR, OK, pattern, WRITE_ZEROES } from "./helpers/harness.ts";
import { DeferredBackend, settle, VolatileBackend } from "./helpers/test_backends.ts";

Deno.test("VirtioBlk completes asynchronous requests out of order", async (t) => {
  await t.step(
    "a backend that finishes in reverse order gets its chains used in reverse order",
    async () => {
      const disk = new DeferredBackend(1 << 20);
      disk.inner.bytes.set(pattern(4 * 512, 1), 0);
      const h = new BlkHarness({ backend: disk });
      const reqs = [0, 1, 2, 3].map((s) => h.read(s, 512));
      assertEquals(h.used(), [], "nothing completes before the backend does");
      assertEquals(h.device.inFlight, 4);
      assertEquals(reqs.map((r) => h.status(r)), [0xff, 0xff, 0xff, 0xff]);
      await disk.completeAll("reverse");
      assertEquals(h.used().map((u) => u.id), reqs.map((r) => r.head).reverse());
      for (const [i, r] of reqs.entries()) {
        assertEquals(h.status(r), OK);
        assertEquals(h.data(r), pattern(4 * 512, 1).slice(i * 512, i * 512 + 512));
      }
      assertEquals(h.host.interrupts.length, 4, "one interrupt per asynchronous completion");
      assertEquals(h.device.inFlight, 0);
    },
  );
  await t.step("a request over several runs completes only when all of them have", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    const w = h.write(0, pattern(4096, 2), { split: 4 });
    assertEquals(disk.held.length, 4);
    await disk.completeAt(3);
    await disk.completeAt(0);
    await disk.completeAt(1);
    assertEquals(h.status(w), 0xff);
    await disk.completeAt(0);
    assertEquals(h.status(w), OK);
    assertEquals(disk.inner.bytes.slice(0, 4096), pattern(4096, 2));
  });
  await t.step("idle() resolves once every request has completed", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    h.read(0, 512);
    let idle = false;
    h.device.idle().then(() => idle = true);
    await settle();
    assertEquals(idle, false);
    await disk.completeAll();
    assertEquals(idle, true);
  });
});

Deno.test("VirtioBlk bounds the requests in flight per queue", async (t) => {
  await t.step(
    "stops popping at queueDepth, asks not to be kicked, and resumes on completion",
    async () => {
      const disk = new DeferredBackend(1 << 20);
      const h = new BlkHarness({ backend: disk, queueDepth: 4 });
      const reqs = Array.from({ length: 10 }, (_, i) => h.read(i, 512));
      assertEquals(h.device.inFlight, 4);
      assertEquals(disk.held.length, 4);
      assertEquals(h.device.stats.throttled, 1);
      assertEquals(h.rings[0].usedFlags() & 1, 1, "VRING_USED_F_NO_NOTIFY while throttled");
      await disk.completeAt(0);
      assertEquals(h.device.inFlight, 4, "one completed, one more popped");
      assertEquals(disk.held.length, 4);
      while (disk.held.length > 0) await disk.completeAll("reverse");
      assertEquals(reqs.map((r) => h.status(r)), new Array(10).fill(OK));
      assertEquals(h.device.inFlight, 0);
      assertEquals(h.rings[0].usedFlags() & 1, 0, "kicks re-enabled once drained");
      assertEquals(h.device.stats.peakInFlight, 4);
    },
  );
  await t.step("a queueDepth above the ring size takes every request of a full ring", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk, ringSize: 16, queueDepth: 32 });
    for (let i = 0; i < 5; i++) h.read(i, 512, { kick: false });
    h.device.notify(0);
    assertEquals(h.device.inFlight, 5);
    assertEquals(h.device.stats.throttled, 0);
    await disk.completeAll();
    assertEquals(h.used().length, 5);
  });
  await t.step("queues are bounded independently", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk, numQueues: 2, queueDepth: 2 });
    for (let i = 0; i < 3; i++) h.read(i, 512, { q: 0 });
    for (let i = 0; i < 3; i++) h.read(i, 512, { q: 1 });
    assertEquals(h.device.inFlight, 4);
    while (disk.held.length > 0) await disk.completeAll();
    assertEquals([h.used(0).length, h.used(1).length], [3, 3]);
  });
});

Deno.test("VirtioBlk backend errors complete the request with IOERR and nothing else", async (t) => {
  await t.step("a synchronous write failure: IOERR, other requests unaffected", () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(1 << 20));
    disk.inject({ ops: ["write"], offset: 4096, length: 512, count: 1 });
    const h = new BlkHarness({ backend: disk });
    const a = h.write(0, pattern(512, 1));
    const b = h.write(8, pattern(512, 2));
    const c = h.write(16, pattern(512, 3));
    assertEquals([h.status(a), h.status(b), h.status(c)], [OK, IOERR, OK]);
    assertEquals(h.used().map((u) => u.len), [1, 1, 1]);
    const r = h.read(0, 17 * 512);
    const data = h.data(r);
    assertEquals(data.slice(0, 512), pattern(512, 1));
    assertEquals(data.slice(8 * 512, 9 * 512), new Uint8Array(512));
    assertEquals(data.slice(16 * 512), pattern(512, 3));
    assertEquals(h.device.stats.backendErrors, 1);
    assertEquals(h.device.stats.lastBackendError, "Injected write fault at offset 4096");
    assertEquals(h.host.failures, []);
  });
  await t.step("an asynchronous read rejection: IOERR with used length 1", async () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(1 << 20));
    disk.inject({ ops: ["read"], async: true });
    const h = new BlkHarness({ backend: disk });
    const r = h.read(0, 512);
    await settle();
    assertEquals(h.status(r), IOERR);
    assertEquals(h.used(), [{ id: r.head, len: 1 }]);
  });
  await t.step("a failure in one run of a multi-run request fails the whole request", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    const r = h.read(0, 2048, { split: 4 });
    await disk.completeAt(1, new Error("media error"));
    await disk.completeAll();
    assertEquals(h.status(r), IOERR);
    assertEquals(h.device.stats.lastBackendError, "media error");
  });
  await t.step("flush and write-zeroes failures are IOERR", () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(1 << 20));
    disk.inject({ ops: ["flush", "writeZeroes"] });
    const h = new BlkHarness({ backend: disk });
    assertEquals(h.status(h.flush()), IOERR);
    assertEquals(h.status(h.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 1 }])), IOERR);
    assertEquals(h.status(h.read(0, 512)), OK);
  });
  await t.step("a backend that throws a non-Error value is still IOERR", () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(1 << 20));
    disk.inject({ ops: ["read"], error: "boom", count: 1 });
    const h = new BlkHarness({ backend: disk });
    assertEquals(h.status(h.read(0, 512)), IOERR);
    assertEquals(h.device.stats.lastBackendError, "boom");
  });
});

Deno.test("VirtioBlk FLUSH is a durability barrier", async (t) => {
  await t.step(
    "writes acknowledged before a FLUSH survive a crash once the FLUSH is acknowledged",
    () => {
      const disk = new VolatileBackend(1 << 20);
      const h = new BlkHarness({ backend: disk });
      assertEquals(h.device.writethrough, false);
      h.write(0, pattern(4096, 1));
      const f = h.flush();
      assertEquals(h.status(f), OK);
      h.write(8, pattern(4096, 2)); // not flushed
      disk.crash();
      assertEquals(disk.current.slice(0, 4096), pattern(4096, 1));
      assertEquals(disk.current.slice(4096, 8192), new Uint8Array(4096));
    },
  );
  await t.step("the FLUSH is acknowledged only after the backend flush completes", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    const w = h.write(0, pattern(512, 1));
    await disk.completeAll();
    assertEquals(h.status(w), OK);
    const f = h.flush();
    assertEquals(disk.held.map((o) => o.op), ["flush"]);
    assertEquals(h.status(f), 0xff);
    assertEquals(h.used(), [{ id: w.head, len: 1 }]);
    await disk.completeAll();
    assertEquals(h.status(f), OK);
  });
  await t.step(
    "writethrough (CONFIG_WCE with writeback 0): every write is flushed before it completes",
    () => {
      const disk = new VolatileBackend(1 << 20);
      const h = new BlkHarness({ backend: disk, writeback: false });
      assertEquals(h.device.writethrough, true);
      h.write(0, pattern(512, 1));
      disk.crash();
      assertEquals(disk.current.slice(0, 512), pattern(512, 1));
      assertEquals(disk.flushes, 1);
    },
  );
  await t.step("without FLUSH negotiated the device is writethrough", () => {
    const disk = new VolatileBackend(1 << 20);
    const h = new BlkHarness({
      backend: disk,
      withoutFeatures: [VirtioBlkFeature.FLUSH, VirtioBlkFeature.CONFIG_WCE],
    });
    assertEquals(h.device.writethrough, true);
    h.ranges(WRITE_ZEROES, [{ sector: 0, sectors: 1 }]);
    h.write(8, pattern(512, 2));
    assertEquals(disk.flushes, 2);
  });
  await t.step("the driver switching writeback on and off changes the cache mode", () => {
    const disk = new VolatileBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    h.device.writeConfig(0x20, new Uint8Array([0]));
    assertEquals(h.device.writethrough, true);
    h.write(0, pattern(512, 3));
    assertEquals(disk.flushes, 1);
    h.device.writeConfig(0x20, new Uint8Array([1]));
    h.write(0, pattern(512, 4));
    assertEquals(disk.flushes, 1);
  });
});

Deno.test("VirtioBlk resets drop completions that arrive late", async (t) => {
  await t.step("a queue reset: the late completion touches neither status nor ring", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    const r = h.write(0, pattern(512, 1));
    h.device.resetQueue(0);
    await disk.completeAll();
    assertEquals(h.status(r), 0xff);
    assertEquals(h.used(), []);
    assertEquals(h.device.stats.droppedCompletions, 1);
    assertEquals(h.device.inFlight, 0);
  });
  await t.step("a device reset, then a new activation, serves new requests", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk, ringSize: 16 });
    h.read(0, 512);
    h.device.reset();
    await disk.completeAll();
    assertEquals(h.host.interrupts, []);
    assertEquals(h.device.inFlight, 0);
  });
});

Deno.test("VirtioBlk with VIRTIO_F_IN_ORDER uses chains in the order they were made available", async () => {
  const disk = new DeferredBackend(1 << 20);
  const h = new BlkHarness({ backend: disk, noActivate: true });
  const features = h.features | (1n << 35n);
  const queue = new SplitQueue({
    index: 0,
    size: 64,
    descAddr: h.rings[0].desc,
    driverAddr: h.rings[0].avail,
    deviceAddr: h.rings[0].used,
    eventIdx: false,
    indirect: false,
    inOrder: true,
  }, h.dma);
  h.device.validateFeatures(features);
  h.device.activate({ features, queues: [queue], dma: h.dma });
  const reqs = [0, 1, 2, 3].map((s) => h.read(s, 512));
  await disk.completeAt(3);
  await disk.completeAt(1);
  assertEquals(h.used(), [], "nothing before the oldest completes");
  assertEquals(h.status(reqs[3]), OK, "the status is written early, the chain used later");
  await disk.completeAt(0);
  assertEquals(h.used().map((u) => u.id), [reqs[0].head, reqs[1].head]);
  await disk.completeAt(0);
  assertEquals(h.used().map((u) => u.id), [reqs[2].head, reqs[3].head]);
  assertEquals(h.device.inFlight, 0);
});
