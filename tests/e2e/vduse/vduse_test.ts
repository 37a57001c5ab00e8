/**
 * End-to-end: Linux's real VDUSE drives vireo's daemon. QEMU (TCG) boots
 * Debian trixie's amd64 kernel; inside that guest, Deno runs
 * examples/vduse_host.ts (vireo's VDUSE daemon over libc through FFI), the
 * guest's `vdpa` tool attaches the device, and the guest kernel's own
 * virtio_blk / virtio_net drivers bind it through virtio_vdpa. Every check
 * runs in the guest (tests/e2e/vduse/guest/*.sh) and reports `@@vireo ok|fail
 * NAME` on the serial console; the host asserts on those lines and on the
 * values the guest reports.
 *
 * Needs the assets of tests/e2e/vduse/fetch_assets.sh and qemu-system-x86_64;
 * fails (never skips) without them. Run: `deno test --allow-all tests/e2e`.
 * VIREO_E2E_ECHO=1 copies the guest's console to stdout.
 *
 * @module
 */
import { assert, assertEquals, assertMatch } from "@std/assert";
import { bootGuest, type BootResult, type GuestFile, timing } from "./qemu.ts";

const SECTOR = 512;
const DISK_BYTES = 16 << 20;
const WRITE_BYTES = 4 << 20;
const WRITE_OFFSET = 4 << 20;

/** A disk image whose every sector is distinct and reproducible. */
export function patternImage(bytes: number, seed: number): Uint8Array {
  const data = new Uint8Array(bytes);
  const words = new Uint32Array(data.buffer);
  const encoder = new TextEncoder();
  for (let sector = 0; sector < bytes / SECTOR; sector++) {
    let x = ((sector + 1) * 2654435761 + seed) >>> 0 || 1;
    for (let i = 0; i < SECTOR / 4; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      words[sector * (SECTOR / 4) + i] = x;
    }
    data.set(encoder.encode(`vireo seed ${seed} sector ${sector}\n`), sector * SECTOR);
  }
  // No partition-table signature in sector 0: the guest's partition scan finds nothing.
  data[510] = 0;
  data[511] = 0;
  return data;
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A readable account of a boot for failure messages. */
function explain(r: BootResult): string {
  const fails = [...r.fail].map(([k, v]) => `  ${k}: ${v}`).join("\n");
  return `exit ${r.exit}; failed checks:\n${fails || "  (none)"}\n--- console tail:\n${
    r.log.slice(-5000)
  }`;
}

/** Asserts that the guest script passed every check and reported each of `expect`. */
function assertPassed(r: BootResult, expect: string[]): void {
  assert(r.exit === 0 && r.fail.size === 0, `the guest test failed: ${explain(r)}`);
  const missing = expect.filter((name) => !r.ok.has(name));
  assertEquals(missing, [], `checks never reported: ${explain(r)}`);
}

function report(name: string, r: BootResult): void {
  console.log(`${name}: ${timing(r)}`);
  for (const [k, v] of r.info) {
    // sysfs lists feature bits as a string of 0/1, bit 0 first.
    const shown = /features$/.test(k) && /^[01]+$/.test(v)
      ? `0x${BigInt("0b" + [...v].reverse().join("")).toString(16)}`
      : v;
    console.log(`  ${k}: ${shown}`);
  }
  for (const [k, v] of r.ok) if (/\d ms\b/.test(v)) console.log(`  ${k}: ${v}`);
}

function blkFiles(): { files: GuestFile[]; pattern: Uint8Array; written: Uint8Array } {
  const pattern = patternImage(DISK_BYTES, 1);
  const written = patternImage(WRITE_BYTES, 2);
  return {
    files: [
      { path: "/data/pattern.img", data: pattern },
      { path: "/data/write.bin", data: written },
    ],
    pattern,
    written,
  };
}

Deno.test("VDUSE guest: modules, /dev/vduse/control, the vdpa tool and Deno", async () => {
  const r = await bootGuest({ run: "smoke", timeoutMs: 90_000 });
  report("smoke", r);
  assertPassed(r, ["control-node", "vdpa-mgmtdev", "deno-eval", "vireo-import"]);
});

Deno.test("VDUSE guest: virtio-blk from vireo's daemon, read/write/flush", async () => {
  const { files, pattern, written } = blkFiles();
  const r = await bootGuest({ run: "blk", files, timeoutMs: 180_000 });
  report("blk", r);
  assertPassed(r, [
    "daemon-created",
    "vdpa-dev-add",
    "blockdev",
    "driver-ok",
    "size",
    "read-sectors",
    "device-sha",
    "write",
    "write-readback",
    "write-file",
    "sync-device",
    "write-sector-file",
    "device-equals-file",
    "vdpa-dev-del",
    "daemon-exit",
    "flushes",
    "no-io-errors",
    "destroyed",
  ]);
  // The guest's hashes against the host's own.
  assertEquals(r.info.get("device-sha256"), await sha256(pattern));
  const after = pattern.slice();
  after.set(written, WRITE_OFFSET);
  const text = new TextEncoder().encode("vireo: written by the Linux guest through VDUSE");
  after.fill(0, 100 * SECTOR, 101 * SECTOR);
  after.set(text, 100 * SECTOR);
  assertEquals(r.info.get("final-sha256"), await sha256(after));
  assertEquals(r.info.get("write_cache"), "write back", "the device offers FLUSH");
});

Deno.test("VDUSE guest: a daemon that corrupts reads is caught by the pattern checks", async () => {
  const { files } = blkFiles();
  const r = await bootGuest({ run: "blk_corrupt", files, timeoutMs: 180_000 });
  report("blk_corrupt", r);
  assert(r.ok.has("blockdev"), `the corrupting daemon still served a disk: ${explain(r)}`);
  assert(r.exit !== 0, `the guest test passed against a corrupting daemon: ${explain(r)}`);
  for (const check of ["read-sectors", "device-sha", "write-readback", "device-equals-file"]) {
    assert(r.fail.has(check), `check ${check} did not fail: ${explain(r)}`);
  }
  // Every one of the 12 single-request sector reads saw the flipped bit.
  assertMatch(r.fail.get("read-sectors")!, /^mismatch at sectors( \d+){12}$/);
  assertMatch(r.log, /corrupting_daemon: flipped a bit in [1-9]\d* reads/);
  // Writes are not corrupted: what reached the image file is right.
  for (const check of ["write-file", "write-sector-file"]) {
    assert(r.ok.has(check), `check ${check} failed: ${explain(r)}`);
  }
});

Deno.test("VDUSE guest: virtio-net from vireo's daemon, ping and UDP to a peer", async () => {
  const r = await bootGuest({ run: "net", timeoutMs: 150_000 });
  report("net", r);
  assertPassed(r, [
    "net-accepted",
    "vdpa-attach",
    "iface",
    "driver-ok",
    "mac",
    "link-up",
    "ping",
    "ping-1400",
    "udp-echo",
    "daemon-exit",
    "destroyed",
  ]);
  assertEquals(r.info.get("net-driver")?.split(" ")[0], "virtio_net");
});
