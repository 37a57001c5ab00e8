/**
 * Boots Debian trixie's amd64 kernel in QEMU (TCG, no KVM) with the VDUSE
 * guest of fetch_assets.sh and runs one guest test script, reading the serial
 * console. Used by vduse_test.ts.
 *
 * The initrd is the cached base.cpio (busybox, modules, vdpa, deno and their
 * libraries) followed by a small cpio packed here at every boot: /init, the
 * guest scripts and vireo's source under /vireo (the same relative layout as
 * the repository, so guest-side TypeScript imports the repository's modules by
 * relative paths), plus any extra files a test asks for.
 *
 * @module
 */
import { collectTree, type CpioEntry, parentDirs, S_IFREG, writeCpio } from "../make_initramfs.ts";

const ASSETS_ENV = Deno.env.get("VIREO_VDUSE_ASSETS");
/** Where fetch_assets.sh puts the assets (VIREO_VDUSE_ASSETS overrides it, as there). */
export const ASSETS_DIR: string = ASSETS_ENV
  ? ASSETS_ENV.replace(/\/*$/, "/")
  : new URL("../assets/vduse/", import.meta.url).pathname;
/** The repository root. */
export const REPO_DIR: string = new URL("../../../", import.meta.url).pathname;

/** The parts of the repository the guest gets under /vireo. */
const SOURCE_PARTS = [
  "deno.json",
  "mod.ts",
  "src",
  "transports",
  "devices",
  "examples",
  "tests/e2e/net_peer.ts",
];
const GUEST_DIR = "tests/e2e/vduse/guest";

/** The kernel command line (before `vireo.run=`). */
export const CMDLINE: string = "console=ttyS0 rdinit=/init quiet loglevel=4 panic=-1 " +
  "mitigations=off random.trust_cpu=on";

/** A file a test adds to the guest. */
export interface GuestFile {
  /** Absolute path in the guest (its parent directories are created). */
  path: string;
  /** Contents. */
  data: Uint8Array;
  /** Permission bits (default 0644). */
  mode?: number;
}

/** Options of {@linkcode bootGuest}. */
export interface BootOptions {
  /** The guest script to run: GUEST_DIR/NAME.sh. */
  run: string;
  /** Extra files for the guest. */
  files?: GuestFile[];
  /** Kernel command line additions (after `vireo.run=NAME`). */
  cmdline?: string;
  /** Milliseconds the whole boot may take, power-off included (default 120 000). */
  timeoutMs?: number;
  /** Copy the serial console to stdout as it arrives (also with VIREO_E2E_ECHO=1). */
  echo?: boolean;
  /** Guest RAM in MiB (default 2048). */
  memoryMiB?: number;
}

/** What one boot produced. */
export interface BootResult {
  /** The serial console, `\r` removed. */
  log: string;
  /** The `@@vireo ...` lines, without the prefix. */
  markers: string[];
  /** Checks that passed: name -> the rest of the line. */
  ok: Map<string, string>;
  /** Checks that failed: name -> the rest of the line. */
  fail: Map<string, string>;
  /** `@@vireo info KEY VALUE` lines: key -> value. */
  info: Map<string, string>;
  /** The script's exit status (`@@vireo exit N`), null when it never got there. */
  exit: number | null;
  /** Wall milliseconds from spawning QEMU to `@@vireo ready` (kernel + init + modules). */
  readyMs: number;
  /** Wall milliseconds from spawning QEMU to its exit. */
  totalMs: number;
  /** Guest uptime in seconds at `@@vireo ready`, as the guest reported it. */
  guestReadyS: number;
}

/**
 * The assets fetch_assets.sh made.
 *
 * @throws {Error} naming the script to run when any asset is missing
 */
export function assetPaths(dir: string = ASSETS_DIR): { kernel: string; base: string } {
  const need = ["vmlinuz", "base.cpio", "MANIFEST"];
  const missing = need.filter((f) => {
    try {
      return !Deno.statSync(dir + f).isFile;
    } catch {
      return true;
    }
  });
  if (missing.length > 0) {
    throw new Error(
      `The VDUSE end-to-end assets are missing from ${dir} (${missing.join(", ")}): ` +
        "run tests/e2e/vduse/fetch_assets.sh first (it needs Debian's archive and npm)",
    );
  }
  return { kernel: dir + "vmlinuz", base: dir + "base.cpio" };
}

/** Packs /init, the guest scripts, vireo's source and `files` into one cpio. */
export async function buildOverlay(files: GuestFile[] = []): Promise<Uint8Array> {
  const entries: CpioEntry[] = [];
  const seen = new Set<string>();
  const add = (e: CpioEntry): void => {
    if (seen.has(e.name)) return;
    seen.add(e.name);
    entries.push(e);
  };
  const init = await Deno.readFile(`${REPO_DIR}${GUEST_DIR}/init`);
  add({ name: "init", mode: S_IFREG | 0o755, data: init });
  for (const d of parentDirs("vireo/x")) add(d);
  for (const part of SOURCE_PARTS) {
    const info = await Deno.stat(REPO_DIR + part);
    if (info.isDirectory) {
      add({ name: `vireo/${part}`, mode: 0o040755, data: new Uint8Array(0) });
      for (const e of await collectTree(REPO_DIR + part, `vireo/${part}`)) add(e);
    } else {
      for (const d of parentDirs(`vireo/${part}`)) add(d);
      add({
        name: `vireo/${part}`,
        mode: S_IFREG | 0o644,
        data: await Deno.readFile(REPO_DIR + part),
      });
    }
  }
  for (const d of parentDirs(`vireo/${GUEST_DIR}/x`)) add(d);
  for (const e of await collectTree(REPO_DIR + GUEST_DIR, `vireo/${GUEST_DIR}`)) add(e);
  for (const f of files) {
    const name = f.path.replace(/^\/+/, "");
    for (const d of parentDirs(name)) add(d);
    // A test's file replaces a packed one of the same name.
    const at = entries.findIndex((e) => e.name === name);
    if (at >= 0) entries.splice(at, 1);
    seen.delete(name);
    add({ name, mode: S_IFREG | (f.mode ?? 0o644), data: f.data });
  }
  return writeCpio(entries);
}

function qemuArgs(kernel: string, initrd: string, append: string, memoryMiB: number): string[] {
  return [
    "-accel",
    "tcg,thread=multi",
    "-cpu",
    "max",
    "-m",
    String(memoryMiB),
    "-smp",
    "2",
    "-nodefaults",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-monitor",
    "none",
    "-no-reboot",
    "-kernel",
    kernel,
    "-initrd",
    initrd,
    "-append",
    append,
  ];
}

/**
 * Boots the guest, runs `options.run`, waits for the power-off and returns the
 * console and its markers. It does not judge the result (see the tests).
 *
 * @throws {Error} with the console's tail when QEMU does not finish in time or
 *   cannot be started
 */
export async function bootGuest(options: BootOptions): Promise<BootResult> {
  const { kernel, base } = assetPaths();
  const echo = options.echo === true || Deno.env.get("VIREO_E2E_ECHO") === "1";
  const timeoutMs = options.timeoutMs ?? 120_000;
  const dir = await Deno.makeTempDir({ prefix: "vireo-vduse-" });
  try {
    const initrd = `${dir}/boot.cpio`;
    const overlay = await buildOverlay(options.files);
    const file = await Deno.open(initrd, { write: true, create: true, truncate: true });
    try {
      const baseFile = await Deno.open(base);
      await baseFile.readable.pipeTo(file.writable, { preventClose: true });
      await file.write(overlay);
    } finally {
      try {
        file.close();
      } catch { /* closed by pipeTo */ }
    }
    const append = `${CMDLINE} vireo.run=${options.run}` +
      (options.cmdline === undefined ? "" : ` ${options.cmdline}`);
    const start = performance.now();
    const child = new Deno.Command("qemu-system-x86_64", {
      args: qemuArgs(kernel, initrd, append, options.memoryMiB ?? 2048),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let log = "";
    let readyMs = -1;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, timeoutMs);
    const stderr = new Response(child.stderr).text();
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      const text = decoder.decode(chunk, { stream: true }).replaceAll("\r", "");
      if (echo) Deno.stdout.writeSync(chunk);
      log += text;
      if (readyMs < 0 && /^@@vireo ready /m.test(log)) readyMs = performance.now() - start;
    }
    const status = await child.status;
    clearTimeout(timer);
    const totalMs = performance.now() - start;
    const err = (await stderr).trim();
    if (timedOut) {
      throw new Error(
        `The guest (vireo.run=${options.run}) did not finish within ${timeoutMs} ms; ` +
          `serial console tail:\n${log.slice(-4000)}`,
      );
    }
    const markers = [...log.matchAll(/^@@vireo (.*)$/gm)].map((m) => m[1]);
    const exitLine = markers.find((m) => m.startsWith("exit "));
    if (exitLine === undefined) {
      throw new Error(
        `QEMU exited (${status.code}) before the guest script finished (vireo.run=${options.run})` +
          `${err === "" ? "" : `; stderr: ${err}`}; serial console tail:\n${log.slice(-4000)}`,
      );
    }
    const ok = new Map<string, string>();
    const fail = new Map<string, string>();
    const info = new Map<string, string>();
    for (const m of markers) {
      const [kind, name, ...rest] = m.split(" ");
      if (kind === "ok") ok.set(name, rest.join(" "));
      if (kind === "fail") fail.set(name, rest.join(" "));
      if (kind === "info") info.set(name, rest.join(" "));
    }
    const ready = markers.find((m) => m.startsWith("ready "))?.split(" ");
    return {
      log,
      markers,
      ok,
      fail,
      info,
      exit: Number(exitLine.split(" ")[1]),
      readyMs,
      totalMs,
      guestReadyS: ready === undefined ? NaN : Number(ready[2]),
    };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** One line describing a boot's timing. */
export function timing(r: BootResult): string {
  return `ready after ${(r.readyMs / 1000).toFixed(1)} s wall (guest uptime ${
    r.guestReadyS.toFixed(1)
  } s), powered off after ${(r.totalMs / 1000).toFixed(1)} s`;
}
