/**
 * Subprocess for flush_crash_test.ts: drives a virtio-blk device over a file
 * image, writes, flushes, prints "FLUSHED" once the FLUSH is acknowledged in
 * the used ring, then keeps writing unflushed data until it is killed.
 *
 * Usage: deno run --allow-read --allow-write crash_writer.ts <image>
 */
import { FileBackend } from "../../../devices/blk/backends/file_deno.ts";
import { BlkHarness, OK, pattern } from "./helpers/harness.ts";

const image = Deno.args[0];
const disk = await FileBackend.open(image, { create: true, size: 1 << 20 });
const h = new BlkHarness({ backend: disk });

async function waitFor(req: { status: number }): Promise<number> {
  while (h.mem.read8(req.status) === 0xff) await new Promise((r) => setTimeout(r, 1));
  return h.mem.read8(req.status);
}

// Write 16 KiB in four requests, wait for every acknowledgement.
const writes = [0, 8, 16, 24].map((sector, i) => h.write(sector, pattern(4096, 10 + i)));
for (const w of writes) if ((await waitFor(w)) !== OK) throw new Error("write failed");
const flush = h.flush();
if ((await waitFor(flush)) !== OK) throw new Error("flush failed");
const used = h.used().map((u) => u.id);
if (!used.includes(flush.head)) throw new Error("flush not in the used ring");
console.log("FLUSHED");

// Unflushed writes until killed.
let n = 0;
setInterval(() => {
  h.write(64 + (n++ % 64) * 8, pattern(4096, 99));
  h.used();
}, 1);
