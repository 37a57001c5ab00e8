/**
 * Boots the real Debian i386 kernel inside v86, in-process, with vireo PCI
 * functions attached through {@linkcode V86PciBus}, and drives the guest's
 * shell over the serial console. Shared by the end-to-end tests and
 * `examples/v86.ts`.
 *
 * The guest side is tests/e2e/guest/init: it loads the virtio modules, prints
 * `@@vireo ready`, and serves a shell (echo off, no prompt) on ttyS0.
 *
 * @module
 */
import { V86PciBus } from "../../src/embed/v86.ts";

/** Where fetch_assets.sh puts the guest assets. */
export const ASSETS_DIR: string = new URL("./assets/", import.meta.url).pathname;

/** The kernel command line the tests use. */
export const CMDLINE: string = "console=ttyS0,115200 pci=nomsi acpi=off tsc=reliable " +
  "mitigations=off random.trust_cpu=on rdinit=/init quiet loglevel=4";

/** The files a boot needs. */
export interface GuestAssets {
  /** The v86 ESM module's URL. */
  libv86: string;
  /** Path of v86.wasm. */
  wasmPath: string;
  /** SeaBIOS. */
  bios: ArrayBuffer;
  /** SeaBIOS's VGA BIOS. */
  vgaBios: ArrayBuffer;
  /** The i386 kernel (bzImage). */
  kernel: ArrayBuffer;
  /** The gzip'd cpio initramfs. */
  initrd: ArrayBuffer;
}

/**
 * Reads the assets.
 *
 * @throws {Error} naming the script to run when any asset is missing
 */
export function loadAssets(dir: string = ASSETS_DIR): GuestAssets {
  const need = ["libv86.mjs", "v86.wasm", "bios.bin", "vgabios.bin", "vmlinuz", "initramfs.gz"];
  const missing = need.filter((f) => {
    try {
      return !Deno.statSync(dir + f).isFile;
    } catch {
      return true;
    }
  });
  if (missing.length > 0) {
    throw new Error(
      `The end-to-end guest assets are missing from ${dir} (${
        missing.join(", ")
      }): run tests/e2e/fetch_assets.sh first (it needs the npm registry and Debian's archive)`,
    );
  }
  const read = (f: string): ArrayBuffer => Deno.readFileSync(dir + f).buffer as ArrayBuffer;
  return {
    libv86: new URL("libv86.mjs", "file://" + dir).href,
    wasmPath: dir + "v86.wasm",
    bios: read("bios.bin"),
    vgaBios: read("vgabios.bin"),
    kernel: read("vmlinuz"),
    initrd: read("initramfs.gz"),
  };
}

/** Options of {@linkcode Guest.boot}. */
export interface BootOptions {
  /** Attaches the devices (called on "emulator-loaded", before the CPU runs). */
  setup(bus: V86PciBus): void;
  /** Guest RAM in MiB (default 128). */
  memoryMiB?: number;
  /** Appended to {@linkcode CMDLINE}. */
  cmdline?: string;
  /** Milliseconds to wait for `@@vireo ready` (default 60 000). */
  timeoutMs?: number;
  /** Copy the serial console to stdout. */
  echo?: boolean;
}

/** The result of one shell command in the guest. */
export interface CommandResult {
  /** Everything the command printed (stdout and stderr), `\r` removed. */
  output: string;
  /** Its exit status. */
  status: number;
}

// deno-lint-ignore no-explicit-any
type V86Object = any;

/** A booted guest: its serial log, the bus adapter, and a shell to run commands in. */
export class Guest {
  /** The v86 emulator object. */
  readonly emulator: V86Object;
  /** The bus adapter the devices are attached to. */
  readonly bus: V86PciBus;
  /** Wall-clock milliseconds from `new V86` to `@@vireo ready`. */
  readonly bootMs: number;
  #log: string;
  #pending = "";
  #waiters: (() => void)[] = [];
  #seq = 0;
  #echo: boolean;

  private constructor(
    emulator: V86Object,
    bus: V86PciBus,
    log: string,
    bootMs: number,
    echo: boolean,
  ) {
    this.emulator = emulator;
    this.bus = bus;
    this.#log = log;
    this.bootMs = bootMs;
    this.#echo = echo;
    emulator.add_listener("serial0-output-byte", (byte: number) => this.#byte(byte));
  }

  /** Everything the serial console printed so far. */
  get log(): string {
    return this.#log;
  }

  /**
   * Boots the kernel with the devices `options.setup` attaches and waits for
   * the guest's init to report ready.
   *
   * @throws {Error} when the assets are missing or the guest is not ready in time
   */
  static async boot(options: BootOptions): Promise<Guest> {
    const assets = loadAssets();
    const { V86 } = await import(assets.libv86);
    const start = performance.now();
    const emulator = new V86({
      wasm_path: assets.wasmPath,
      bios: { buffer: assets.bios },
      vga_bios: { buffer: assets.vgaBios },
      bzimage: { buffer: assets.kernel },
      initrd: { buffer: assets.initrd },
      cmdline: options.cmdline === undefined ? CMDLINE : `${CMDLINE} ${options.cmdline}`,
      memory_size: (options.memoryMiB ?? 128) << 20,
      autostart: false,
      net_device: { type: "none" },
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
    });
    let log = "";
    let bus: V86PciBus | undefined;
    let setupError: unknown;
    const echo = options.echo === true;
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `The guest did not report ready within ${
              options.timeoutMs ?? 60000
            } ms; serial console:\n${log.slice(-3000)}`,
          ),
        );
      }, options.timeoutMs ?? 60000);
      emulator.add_listener("serial0-output-byte", function onByte(byte: number) {
        const c = String.fromCharCode(byte);
        log += c;
        if (echo) Deno.stdout.writeSync(new Uint8Array([byte]));
        if (c === "\n" && /@@vireo ready [^\n]*\n$/.test(log.slice(-100))) {
          clearTimeout(timer);
          emulator.remove_listener("serial0-output-byte", onByte);
          resolve();
        }
      });
      emulator.add_listener("emulator-loaded", () => {
        try {
          bus = V86PciBus.install(emulator);
          options.setup(bus);
        } catch (e) {
          setupError = e;
          clearTimeout(timer);
          reject(e);
          return;
        }
        emulator.run();
      });
    });
    try {
      await ready;
    } catch (e) {
      await emulator.destroy().catch(() => {});
      throw setupError ?? e;
    }
    const guest = new Guest(emulator, bus!, log, performance.now() - start, echo);
    // The shell's banner and job-control notice come before its first command: discard them.
    await guest.run("true");
    return guest;
  }

  /**
   * Runs `command` in the guest's shell and waits for it to finish.
   *
   * @throws {Error} with the serial tail when it does not finish within `timeoutMs`
   */
  async run(command: string, timeoutMs = 60000): Promise<CommandResult> {
    const id = ++this.#seq;
    const marker = new RegExp(`@@vireo done ${id} (\\d+)\\r?\\n`);
    this.#pending = "";
    // The marker is assembled at run time, so an echo of the typed line never matches.
    this.emulator.serial0_send(`{ ${command}\n} 2>&1; echo "@@vireo done" ${id} $?\n`);
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const m = marker.exec(this.#pending);
      if (m !== null) {
        const output = this.#pending.slice(0, m.index).replaceAll("\r", "");
        this.#pending = "";
        return { output, status: Number(m[1]) };
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `Guest command did not finish within ${timeoutMs} ms: ${command}\n--- serial tail:\n${
            this.#log.slice(-3000)
          }`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.min(left, 1000));
        this.#waiters.push(done);
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
      });
    }
  }

  /**
   * Runs `command` and returns its output.
   *
   * @throws {Error} with the output when it exits non-zero
   */
  async sh(command: string, timeoutMs = 60000): Promise<string> {
    const r = await this.run(command, timeoutMs);
    if (r.status !== 0) {
      throw new Error(`Guest command failed (exit ${r.status}): ${command}\n${r.output}`);
    }
    return r.output;
  }

  /** Stops the machine and frees its timers. */
  async destroy(): Promise<void> {
    await this.emulator.destroy();
  }

  #byte(byte: number): void {
    const c = String.fromCharCode(byte);
    this.#log += c;
    if (this.#log.length > 1 << 20) this.#log = this.#log.slice(-(1 << 19));
    this.#pending += c;
    if (this.#echo) Deno.stdout.writeSync(new Uint8Array([byte]));
    if (c === "\n") {
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) w();
    }
  }
}
