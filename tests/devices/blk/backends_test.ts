import { assertEquals, assertRejects, assertThrows } from "@std/assert";
import { MemoryBackend } from "../../../devices/blk/backends/memory.ts";
import { ErrorInjectingBackend } from "../../../devices/blk/backends/error_injecting.ts";
import { FileBackend } from "../../../devices/blk/backends/file_deno.ts";
import { BlkHarness, OK, pattern } from "./helpers/harness.ts";

Deno.test("MemoryBackend", async (t) => {
  await t.step("reads and writes synchronously (returns undefined)", () => {
    const disk = new MemoryBackend(4096);
    assertEquals(disk.write(512, new Uint8Array([1, 2, 3])), undefined);
    const out = new Uint8Array(3);
    assertEquals(disk.read(512, out), undefined);
    assertEquals(out, new Uint8Array([1, 2, 3]));
    assertEquals(disk.flush(), undefined);
  });
  await t.step("wraps existing bytes in place", () => {
    const bytes = new Uint8Array(1024);
    const disk = new MemoryBackend(bytes);
    disk.writeZeroes(0, 0, false);
    disk.write(0, new Uint8Array([9]));
    assertEquals(bytes[0], 9);
    assertEquals(disk.size, 1024);
  });
  await t.step("discard and writeZeroes zero the range", () => {
    const disk = new MemoryBackend(new Uint8Array(2048).fill(7));
    disk.discard(0, 512);
    disk.writeZeroes(1024, 512, true);
    assertEquals([
      disk.bytes[0],
      disk.bytes[511],
      disk.bytes[512],
      disk.bytes[1024],
      disk.bytes[1536],
    ], [0, 0, 7, 0, 7]);
  });
  await t.step("rejects out-of-range access and writes to a read-only disk with RangeError", () => {
    const disk = new MemoryBackend(1024);
    assertThrows(
      () => disk.read(1000, new Uint8Array(100)),
      RangeError,
      "outside the 1024-byte backend",
    );
    assertThrows(() => disk.write(-1, new Uint8Array(1)), RangeError);
    assertThrows(() => disk.writeZeroes(0, 2000, false), RangeError);
    const ro = new MemoryBackend(1024, { readOnly: true });
    assertThrows(() => ro.write(0, new Uint8Array(1)), RangeError, "read-only");
    assertThrows(() => new MemoryBackend(-5), RangeError);
    // deno-lint-ignore no-explicit-any
    assertThrows(() => new MemoryBackend("big" as any), TypeError);
  });
});

Deno.test("ErrorInjectingBackend", async (t) => {
  await t.step("fails only matching operations, for `count` times", () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(8192));
    disk.inject({ ops: ["write"], offset: 4096, length: 1024, count: 2 });
    disk.write(0, new Uint8Array(512));
    disk.read(4096, new Uint8Array(512));
    assertThrows(() => disk.write(3584, new Uint8Array(1024)), Error, "Injected write fault");
    assertThrows(() => disk.write(5000, new Uint8Array(1)), Error);
    disk.write(4096, new Uint8Array(1));
    assertEquals(disk.injected, 2);
    assertEquals(disk.faults.length, 0);
  });
  await t.step("can fail asynchronously with a chosen error", async () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(8192));
    disk.inject({ ops: ["flush"], async: true, error: new TypeError("disk gone") });
    await assertRejects(async () => await disk.flush(), TypeError, "disk gone");
    disk.clearFaults();
    assertEquals(disk.flush(), undefined);
  });
  await t.step("passes size and read-only through", () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(8192, { readOnly: true }));
    assertEquals([disk.size, disk.readOnly], [8192, true]);
  });
  await t.step("rejects bad faults and bad inner backends", () => {
    const disk = new ErrorInjectingBackend(new MemoryBackend(8192));
    assertThrows(() => disk.inject({ count: 0 }), RangeError);
    assertThrows(() => disk.inject({ offset: -1 }), RangeError);
    // deno-lint-ignore no-explicit-any
    assertThrows(() => new ErrorInjectingBackend({} as any), TypeError);
  });
});

Deno.test("FileBackend", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "vireo-blk-file-" });
  try {
    await t.step(
      "creates a sparse image of the given size; writes read back after reopening",
      async () => {
        const path = `${dir}/a.img`;
        const disk = await FileBackend.open(path, { create: true, size: 1 << 20 });
        assertEquals(disk.size, 1 << 20);
        await disk.write(4096, pattern(8192, 1));
        await disk.flush();
        const out = new Uint8Array(8192);
        await disk.read(4096, out);
        assertEquals(out, pattern(8192, 1));
        await disk.close();
        const again = await FileBackend.open(path);
        assertEquals(again.size, 1 << 20);
        const out2 = new Uint8Array(8192);
        await again.read(4096, out2);
        assertEquals(out2, pattern(8192, 1));
        await again.close();
      },
    );
    await t.step(
      "operations run in submission order, even when not awaited one by one",
      async () => {
        const disk = await FileBackend.open(`${dir}/b.img`, { create: true, size: 65536 });
        const out = new Uint8Array(512);
        const ops = [
          disk.write(0, new Uint8Array(512).fill(1)),
          disk.write(0, new Uint8Array(512).fill(2)),
          disk.read(0, out),
          disk.writeZeroes(512, 1024, false),
          disk.flush(),
        ];
        await Promise.all(ops);
        assertEquals(out, new Uint8Array(512).fill(2));
        await disk.close();
      },
    );
    await t.step("writeZeroes zeroes more than one chunk", async () => {
      const disk = await FileBackend.open(`${dir}/c.img`, { create: true, size: 3 << 20 });
      await disk.write(0, new Uint8Array(3 << 20).fill(9));
      await disk.writeZeroes(512, (2 << 20) + 512, true);
      const out = new Uint8Array(3 << 20);
      await disk.read(0, out);
      assertEquals([out[511], out[512], out[(2 << 20) + 1023], out[(2 << 20) + 1024]], [
        9,
        0,
        0,
        9,
      ]);
      await disk.discard(0, 512);
      await disk.close();
    });
    await t.step("a read-only image: size from the file, writes refused", async () => {
      const path = `${dir}/ro.img`;
      await Deno.writeFile(path, new Uint8Array(1536).fill(5));
      const disk = await FileBackend.open(path, { readOnly: true });
      assertEquals([disk.size, disk.readOnly], [1536, true]);
      const out = new Uint8Array(512);
      await disk.read(1024, out);
      assertEquals(out, new Uint8Array(512).fill(5));
      await assertRejects(() => disk.write(0, new Uint8Array(512)), RangeError, "read-only");
      await assertRejects(() => disk.writeZeroes(0, 512, false), RangeError, "read-only");
      await disk.close();
      await assertRejects(() => FileBackend.open(path, { readOnly: true, size: 512 }), TypeError);
    });
    await t.step("bytes past the end of a file shrunk behind its back read as zero", async () => {
      const path = `${dir}/short.img`;
      const disk = await FileBackend.open(path, { create: true, size: 4096 });
      await disk.write(0, new Uint8Array(4096).fill(5));
      await Deno.truncate(path, 1000);
      const out = new Uint8Array(512).fill(0xee);
      await disk.read(512, out);
      assertEquals([out[0], out[487], out[488], out[511]], [5, 5, 0, 0]);
      await disk.close();
    });
    await t.step("misuse: bad options, ranges and use after close", async () => {
      await assertRejects(() => FileBackend.open(`${dir}/x.img`, { create: true }), TypeError);
      await assertRejects(() => FileBackend.open(`${dir}/x.img`, { size: -1 }), RangeError);
      await assertRejects(
        () => FileBackend.open(`${dir}/x.img`, { sync: "never" as "data" }),
        TypeError,
      );
      await assertRejects(() => FileBackend.open(`${dir}/missing.img`), Deno.errors.NotFound);
      const disk = await FileBackend.open(`${dir}/d.img`, {
        create: true,
        size: 4096,
        sync: "full",
      });
      assertThrows(() => disk.read(4000, new Uint8Array(512)), RangeError);
      await disk.flush();
      await disk.close();
      await assertRejects(() => disk.flush(), Error, "closed");
    });
    await t.step("drives a virtio-blk device asynchronously", async () => {
      const disk = await FileBackend.open(`${dir}/e.img`, { create: true, size: 1 << 20 });
      const h = new BlkHarness({ backend: disk });
      const writes = [0, 8, 16].map((s, i) => h.write(s, pattern(4096, i), { split: 3 }));
      const f = h.flush();
      await h.device.idle();
      assertEquals([...writes, f].map((r) => h.status(r)), [OK, OK, OK, OK]);
      const r = h.read(0, 3 * 4096, { split: 5 });
      await h.device.idle();
      assertEquals(h.data(r).slice(8192), pattern(4096, 2));
      await disk.close();
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
