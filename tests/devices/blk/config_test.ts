import { assertEquals, assertThrows } from "@std/assert";
import { VirtioBlk } from "../../../devices/blk/device.ts";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import type { BlockBackend } from "../../../devices/blk/backends/block_backend.ts";
import { BlkHarness, OK, pattern, RecordingHost } from "./helpers/harness.ts";
import { DeferredBackend } from "./helpers/test_backends.ts";

function le(config: Uint8Array, off: number, size: number): number {
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + config[off + i];
  return v;
}

function bits(features: bigint): number[] {
  const out = [];
  for (let i = 0; i < 64; i++) if ((features >> BigInt(i)) & 1n) out.push(i);
  return out;
}

Deno.test("VirtioBlk config space layout", async (t) => {
  await t.step("every field sits at its spec offset", () => {
    const blk = new VirtioBlk({
      backend: new MemoryBackend(3 * 1024 * 1024 + 700),
      numQueues: 3,
      blockSize: 4096,
      physicalBlockSize: 16384,
      alignmentOffset: 1,
      minIoSize: 2,
      optIoSize: 64,
      sizeMax: 65536,
      segMax: 126,
      geometry: { cylinders: 1000, heads: 16, sectors: 63 },
      discard: { maxSectors: 1024, maxSegments: 8, sectorAlignment: 16 },
      writeZeroes: { maxSectors: 2048, maxSegments: 4, mayUnmap: false },
    });
    const c = blk.config;
    assertEquals(c.length, 96);
    assertEquals(le(c, 0x00, 8), 6145, "capacity in 512-byte sectors, rounded down");
    assertEquals(le(c, 0x08, 4), 65536, "size_max");
    assertEquals(le(c, 0x0c, 4), 126, "seg_max");
    assertEquals(le(c, 0x10, 2), 1000, "cylinders");
    assertEquals(c[0x12], 16, "heads");
    assertEquals(c[0x13], 63, "sectors");
    assertEquals(le(c, 0x14, 4), 4096, "blk_size");
    assertEquals(c[0x18], 2, "physical_block_exp");
    assertEquals(c[0x19], 1, "alignment_offset");
    assertEquals(le(c, 0x1a, 2), 2, "min_io_size");
    assertEquals(le(c, 0x1c, 4), 64, "opt_io_size");
    assertEquals(c[0x20], 1, "writeback");
    assertEquals(c[0x21], 0, "unused0");
    assertEquals(le(c, 0x22, 2), 3, "num_queues");
    assertEquals(le(c, 0x24, 4), 1024, "max_discard_sectors");
    assertEquals(le(c, 0x28, 4), 8, "max_discard_seg");
    assertEquals(le(c, 0x2c, 4), 16, "discard_sector_alignment");
    assertEquals(le(c, 0x30, 4), 2048, "max_write_zeroes_sectors");
    assertEquals(le(c, 0x34, 4), 4, "max_write_zeroes_seg");
    assertEquals(c[0x38], 0, "write_zeroes_may_unmap");
    assertEquals([...c.slice(0x39)], new Array(96 - 0x39).fill(0), "unused1, secure erase, zoned");
  });
  await t.step("features offered follow the options", () => {
    const blk = new VirtioBlk({
      backend: new MemoryBackend(4096),
      numQueues: 3,
      sizeMax: 4096,
      geometry: { cylinders: 1, heads: 1, sectors: 1 },
    });
    assertEquals(bits(blk.deviceFeatures), [1, 2, 4, 6, 9, 10, 11, 12, 13, 14]);
    const minimal = new VirtioBlk({
      backend: new MemoryBackend(4096, { readOnly: true }),
      flush: false,
      configWce: false,
      discard: false,
      writeZeroes: false,
    });
    assertEquals(bits(minimal.deviceFeatures), [2, 5, 6, 10]);
    assertEquals(minimal.config[0x20], 0, "writeback 0 without FLUSH");
  });
  await t.step("defaults: 512-byte blocks, seg_max = queue size - 2, one queue", () => {
    const blk = new VirtioBlk({ backend: new MemoryBackend(1 << 20) });
    assertEquals(le(blk.config, 0x14, 4), 512);
    assertEquals(le(blk.config, 0x0c, 4), 254);
    assertEquals(le(blk.config, 0x22, 2), 1);
    assertEquals(blk.queueMaxSize(0), 256);
    assertEquals(blk.deviceId, 2);
  });
  await t.step("a capacity above 2^32 sectors fills both halves of the le64", () => {
    const huge: BlockBackend = {
      size: 2 ** 45,
      readOnly: false,
      read() {},
      write() {},
      flush() {},
      discard() {},
      writeZeroes() {},
    };
    const blk = new VirtioBlk({ backend: huge });
    assertEquals(le(blk.config, 0, 4), 0);
    assertEquals(le(blk.config, 4, 4), 16);
    assertEquals(blk.capacity, 2 ** 36);
  });
});

Deno.test("VirtioBlk config writes", async (t) => {
  await t.step("writeback is writable only once CONFIG_WCE was accepted", () => {
    const h = new BlkHarness({ noActivate: true });
    h.device.writeConfig(0x20, new Uint8Array([0]));
    assertEquals(h.device.config[0x20], 1, "ignored before negotiation");
    h.activate();
    h.device.writeConfig(0x20, new Uint8Array([0]));
    assertEquals(h.device.config[0x20], 0);
    h.device.writeConfig(0x1c, new Uint8Array([9, 9, 9, 9, 7]));
    assertEquals(h.device.config[0x20], 1, "a wide write covering writeback");
    assertEquals(h.device.config[0x1c], 0, "opt_io_size is read-only");
  });
  await t.step("every other field is read-only", () => {
    const h = new BlkHarness();
    const before = h.device.config.slice();
    for (let off = 0; off < 96; off++) {
      if (off !== 0x20) h.device.writeConfig(off, new Uint8Array([0xaa]));
    }
    assertEquals(h.device.config, before);
  });
  await t.step("CONFIG_WCE accepted without FLUSH starts writethrough (writeback 0)", () => {
    const blk = new VirtioBlk({ backend: new MemoryBackend(4096) });
    blk.bind(new RecordingHost());
    blk.validateFeatures((1n << 32n) | (1n << 11n));
    assertEquals(blk.config[0x20], 0);
    assertEquals(blk.writethrough, true);
  });
  await t.step("a reset restores the initial writeback value", () => {
    const h = new BlkHarness();
    h.device.writeConfig(0x20, new Uint8Array([0]));
    h.device.reset();
    assertEquals(h.device.config[0x20], 1);
  });
});

Deno.test("VirtioBlk capacity changes", async (t) => {
  await t.step("updateCapacity() re-reads the backend and raises a config change", () => {
    let size = 1 << 20;
    const inner = new MemoryBackend(8 << 20);
    const growing: BlockBackend = {
      get size() {
        return size;
      },
      readOnly: false,
      read: (o, d) => inner.read(o, d),
      write: (o, s) => inner.write(o, s),
      flush: () => {},
      discard: () => {},
      writeZeroes: () => {},
    };
    const h = new BlkHarness({ backend: growing });
    assertEquals(h.device.capacity, 2048);
    size = 2 << 20;
    assertEquals(h.device.updateCapacity(), 4096);
    assertEquals(le(h.device.config, 0, 8), 4096);
    assertEquals(h.host.configChanges, 1);
    assertEquals(h.device.updateCapacity(), 4096);
    assertEquals(h.host.configChanges, 1, "no change, no notification");
    assertEquals(h.status(h.write(3000, pattern(512, 1))), OK);
  });
});

Deno.test("VirtioBlk saveState / restoreState", async (t) => {
  await t.step("round-trips writeback and the negotiated features as plain data", () => {
    const a = new BlkHarness();
    a.device.writeConfig(0x20, new Uint8Array([0]));
    const state = JSON.parse(JSON.stringify(a.device.saveState()));
    assertEquals(state.version, 1);
    assertEquals(state.writeback, 0);
    const b = new BlkHarness({ noActivate: true });
    b.device.restoreState(state);
    assertEquals(b.device.config[0x20], 0);
    assertEquals(b.device.writethrough, true);
    assertEquals(b.device.saveState(), a.device.saveState());
  });
  await t.step("refuses malformed states with TypeError", () => {
    const h = new BlkHarness();
    const good = h.device.saveState();
    for (
      const bad of [
        {},
        { ...good, version: 2 },
        { ...good, writeback: 2 },
        { ...good, features: 12 },
        { ...good, features: "0xzz" },
        { ...good, capacity: -1 },
        { ...good, features: "0x800000" },
      ]
    ) {
      assertThrows(() => h.device.restoreState(bad), TypeError);
    }
  });
  await t.step("refuses a state saved for a disk of another size with RangeError", () => {
    const h = new BlkHarness();
    assertThrows(
      () => h.device.restoreState({ ...h.device.saveState(), capacity: 1 }),
      RangeError,
      "differs from the backend's",
    );
  });
  await t.step("refuses to save while requests are in flight", async () => {
    const disk = new DeferredBackend(1 << 20);
    const h = new BlkHarness({ backend: disk });
    h.read(0, 512);
    assertThrows(() => h.device.saveState(), RangeError, "await idle()");
    await disk.completeAll();
    await h.device.idle();
    assertEquals(h.device.saveState().version, 1);
  });
});

Deno.test("VirtioBlk options are validated", async (t) => {
  const backend = new MemoryBackend(4096);
  const cases: [string, unknown, typeof TypeError | typeof RangeError][] = [
    ["no options", undefined, TypeError],
    ["no backend", {}, TypeError],
    [
      "a backend without writeZeroes",
      { backend: { size: 1, readOnly: false, read() {} } },
      TypeError,
    ],
    ["a serial of 21 characters", { backend, serial: "x".repeat(21) }, RangeError],
    ["a non-ASCII serial", { backend, serial: "é" }, RangeError],
    ["a serial that is not a string", { backend, serial: 5 }, TypeError],
    ["0 queues", { backend, numQueues: 0 }, RangeError],
    ["a fractional queue count", { backend, numQueues: 1.5 }, RangeError],
    ["a queue size of 0x10000", { backend, queueSize: 0x10000 }, RangeError],
    ["a block size of 1000", { backend, blockSize: 1000 }, RangeError],
    ["a block size of 256", { backend, blockSize: 256 }, RangeError],
    ["a physical block smaller than the logical one", {
      backend,
      blockSize: 4096,
      physicalBlockSize: 512,
    }, RangeError],
    ["a physical block of 3 logical blocks", { backend, physicalBlockSize: 1536 }, RangeError],
    ["CONFIG_WCE without FLUSH", { backend, flush: false }, RangeError],
    ["flush as a string", { backend, flush: "yes" }, TypeError],
    [
      "geometry heads of 256",
      { backend, geometry: { cylinders: 1, heads: 256, sectors: 1 } },
      RangeError,
    ],
    ["discard.maxSegments of 0", { backend, discard: { maxSegments: 0 } }, RangeError],
    ["a negative backend size", {
      backend: {
        ...backend,
        size: -1,
        read() {},
        write() {},
        flush() {},
        discard() {},
        writeZeroes() {},
      },
    }, RangeError],
  ];
  for (const [name, options, error] of cases) {
    await t.step(`${name} throws ${error.name}`, () => {
      // deno-lint-ignore no-explicit-any
      assertThrows(() => new VirtioBlk(options as any), error);
    });
  }
  await t.step("binding twice throws", () => {
    const blk = new VirtioBlk({ backend });
    blk.bind(new RecordingHost());
    assertThrows(() => blk.bind(new RecordingHost()), Error, "twice");
  });
});
