/**
 * Boots a real Linux kernel in v86 (a JavaScript x86 PC) inside this process,
 * with vireo's virtio-blk and virtio-net attached to v86's PCI bus through
 * `src/embed/v86.ts`, then drives the guest's shell over the serial console
 * and prints what happened on both sides.
 *
 * The guest assets (v86, SeaBIOS, Debian's i386 kernel, a busybox initramfs)
 * come from `bash tests/e2e/fetch_assets.sh`.
 *
 *     deno run --allow-read examples/v86.ts                  # an 8 MiB disk in memory
 *     deno run --allow-read examples/v86.ts --image=disk.img # a raw image (read into memory)
 *     deno run --allow-read examples/v86.ts --console        # also show the serial console
 *
 * The network cable's far end is a tiny IPv4 peer at 10.0.2.2 that answers
 * ARP and ping (the one the end-to-end tests use).
 *
 * @module
 */
import { V86PciBus } from "../src/embed/v86.ts";
import { VirtioPci } from "../transports/pci/virtio_pci.ts";
import { MemoryBackend, VirtioBlk } from "../devices/blk/mod.ts";
import { createPair, VirtioNet } from "../devices/net/mod.ts";
import { NetPeer } from "../tests/e2e/net_peer.ts";

const ASSETS = new URL("../tests/e2e/assets/", import.meta.url).pathname;
const args = new Map(
  Deno.args.map((a) => a.replace(/^--/, "").split("=") as [string, string]),
);

function asset(name: string): ArrayBuffer {
  try {
    return Deno.readFileSync(ASSETS + name).buffer as ArrayBuffer;
  } catch {
    console.error(`Missing ${ASSETS}${name}: run bash tests/e2e/fetch_assets.sh first`);
    Deno.exit(2);
  }
}

// The devices and their backends: a disk image and one end of a network cable.
const image = args.get("image");
const disk = new MemoryBackend(
  image === undefined ? 8 << 20 : Deno.readFileSync(image),
);
const [guestEnd, hostEnd] = createPair();
const peer = new NetPeer(hostEnd, "52:54:00:00:00:02", "10.0.2.2");
const blkDevice = new VirtioBlk({ backend: disk, serial: "vireo-example" });
const netDevice = new VirtioNet({ mac: "52:54:00:12:34:56", backend: guestEnd });

// The machine.
asset("v86.wasm"); // checks it is there
const { V86 } = await import(new URL("libv86.mjs", "file://" + ASSETS).href);
const started = performance.now();
const emulator = new V86({
  wasm_path: ASSETS + "v86.wasm",
  bios: { buffer: asset("bios.bin") },
  vga_bios: { buffer: asset("vgabios.bin") },
  bzimage: { buffer: asset("vmlinuz") },
  initrd: { buffer: asset("initramfs.gz") },
  // v86 delivers no MSI: pci=nomsi makes Linux use INTx and the ISR register.
  cmdline: "console=ttyS0,115200 pci=nomsi acpi=off tsc=reliable mitigations=off " +
    "random.trust_cpu=on rdinit=/init quiet loglevel=4",
  memory_size: 128 << 20,
  autostart: false,
  net_device: { type: "none" },
  disable_keyboard: true,
  disable_mouse: true,
  disable_speaker: true,
});

let blk!: VirtioPci;
let net!: VirtioPci;
let bus!: V86PciBus;
emulator.add_listener("emulator-loaded", () => {
  // Attach before the CPU runs, so the firmware assigns the BARs.
  bus = V86PciBus.install(emulator);
  blk = new VirtioPci(blkDevice, { dma: bus.dma, name: "vireo-blk" });
  net = new VirtioPci(netDevice, { dma: bus.dma, name: "vireo-net" });
  const a = bus.attach(blk.pci);
  const b = bus.attach(net.pci);
  console.log(`attached virtio-blk at 00:${hex(a.slot)}.0 and virtio-net at 00:${hex(b.slot)}.0`);
  emulator.run();
});

// A line-oriented view of the serial console.
let console_ = "";
const lineWaiters: (() => void)[] = [];
emulator.add_listener("serial0-output-byte", (byte: number) => {
  console_ += String.fromCharCode(byte);
  if (args.has("console")) Deno.stdout.writeSync(new Uint8Array([byte]));
  if (byte === 10) lineWaiters.splice(0).forEach((w) => w());
});

async function until(pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const m = pattern.exec(console_);
    if (m !== null) return m;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${pattern}`);
    await new Promise<void>((r) => {
      const t = setTimeout(r, 500);
      lineWaiters.push(() => {
        clearTimeout(t);
        r();
      });
    });
  }
}

let seq = 0;
async function sh(command: string): Promise<string> {
  const id = ++seq;
  const from = console_.length;
  emulator.serial0_send(`{ ${command}\n} 2>&1; echo "@@vireo done" ${id} $?\n`);
  const m = await until(new RegExp(`@@vireo done ${id} (\\d+)\\r?\\n`), 120000);
  return console_.slice(from, m.index).replaceAll("\r", "");
}

function hex(n: number): string {
  return n.toString(16).padStart(2, "0");
}

await until(/@@vireo ready [^\n]*\n/, 120000);
console.log(`Linux is up after ${((performance.now() - started) / 1000).toFixed(1)} s`);
await sh("true"); // the shell's banner

const steps: [string, string][] = [
  [
    "PCI functions",
    "for d in /sys/bus/pci/devices/*; do echo ${d##*/} $(cat $d/vendor $d/device)" +
    " $(basename $(readlink $d/driver) 2>/dev/null); done",
  ],
  [
    "virtio devices",
    "for d in /sys/bus/virtio/devices/*; do echo ${d##*/} $(cat $d/device)" +
    " $(basename $(readlink $d/driver)); done",
  ],
  ["the disk", "echo $(cat /sys/block/vda/size) sectors, serial $(cat /sys/block/vda/serial)"],
  ["read the whole disk", "time dd if=/dev/vda of=/dev/null bs=1M iflag=direct"],
  ["write a sector", "echo hello from Linux | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync"],
  [
    "bring up eth0",
    "ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip addr show eth0",
  ],
  ["ping the host side", "ping -c 3 10.0.2.2"],
  ["interrupts", "grep virtio /proc/interrupts"],
];
for (const [title, command] of steps) {
  console.log(`\n## ${title}\n$ ${command}`);
  console.log((await sh(command)).trimEnd());
}

console.log("\n## host side");
console.log(
  `disk sector 1 now starts with: ${
    JSON.stringify(new TextDecoder().decode(disk.bytes.subarray(512, 528)))
  }`,
);
const s = blkDevice.stats;
console.log(
  `virtio-blk: ${s.readRequests} reads (${s.bytesRead} bytes), ${s.writeRequests} writes, ` +
    `${s.flushRequests} flushes, ${s.getIdRequests} GET_ID`,
);
const m = netDevice.metrics;
console.log(
  `virtio-net: ${m.tx[0].packets} frames sent, ${m.rx[0].packets} received; peer answered ` +
    `${peer.stats.arpRequests} ARP and ${peer.stats.echoRequests} echo requests`,
);
console.log(
  `IRQ lines: ${bus.attachments.map((a) => `${a.fn.name} -> IRQ ${a.irq}`).join(", ")}`,
);
for (const fn of [blk, net]) {
  const d = fn.diagnostics;
  console.log(`${fn.pci.name}: status ${fn.core.status}, needs-reset ${d.needsResetCount}`);
}
await emulator.destroy();
Deno.exit(0);
