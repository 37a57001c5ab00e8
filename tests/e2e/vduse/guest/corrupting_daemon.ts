/**
 * examples/vduse_host.ts with a broken disk: every read from the image file
 * has one bit flipped (bit 0 of its first byte) before the device completes
 * the request. Used by the negative control of the VDUSE end-to-end tests,
 * which must see the guest's pattern checks fail. Same flags as vduse_host.ts.
 *
 * @module
 */
import { FileBackend } from "../../../../devices/blk/backends/file_deno.ts";

const read = FileBackend.prototype.read;
let corrupted = 0;
FileBackend.prototype.read = async function (offset: number, dest: Uint8Array): Promise<void> {
  await read.call(this, offset, dest);
  if (dest.byteLength > 0) dest[0] ^= 1;
  corrupted++;
};
globalThis.addEventListener("unload", () => {
  console.log(`corrupting_daemon: flipped a bit in ${corrupted} reads`);
});
await import("../../../../examples/vduse_host.ts");
