/**
 * Serves a vireo virtio-blk or virtio-net device to THIS Linux host through
 * the kernel's VDUSE (vDPA Device in Userspace), the way QEMU's
 * qemu-storage-daemon and DPDK do: the daemon speaks the VDUSE uAPI on
 * /dev/vduse through Deno's FFI on libc, and the host kernel's own
 * virtio_blk / virtio_net drivers bind the device through virtio_vdpa.
 *
 * Needs Linux with the vduse and virtio_vdpa modules (`modprobe vduse
 * virtio_vdpa`), root (or access to /dev/vduse), and iproute2's `vdpa` tool
 * to attach the device:
 *
 *   deno run -A examples/vduse_host.ts --blk disk.img --attach
 *   # /dev/vdX appears; mkfs it, mount it, ...; Ctrl-C detaches and stops
 *
 * Flags:
 *   --blk FILE       serve FILE as a raw disk (its length is the disk size)
 *   --net            serve a NIC; frames go to a UDP peer (--udp-port, --udp-remote)
 *   --name NAME      the VDUSE device name (default vireo-blk / vireo-net)
 *   --attach         run `vdpa dev add name NAME mgmtdev vduse` (and `vdpa dev del` at exit)
 *   --readonly       offer the disk read-only
 *   --split          offer split rings only (default: packed rings offered too)
 *   --mac MAC        the NIC's MAC address (default 52:54:00:12:34:56)
 *   --udp-port N     local UDP port of the NIC's wire (default 5555)
 *   --udp-remote H:P where frames go (default: the first peer heard from)
 *   --seconds N      stop after N seconds (default: run until SIGINT/SIGTERM)
 *
 * Exit status: 0 after a clean stop, 1 when a system call fails (the line
 * names the call and the kernel's errno), 2 for bad flags.
 *
 * @module
 */
import { FfiVduseBackend } from "../transports/vduse/ffi_backend_deno.ts";
import { VduseDaemon } from "../transports/vduse/daemon.ts";
import { errnoName, LinuxErrno } from "../transports/vduse/errno.ts";
import { VirtioBlk } from "../devices/blk/device.ts";
import { FileBackend } from "../devices/blk/backends/file_deno.ts";
import { VirtioNet } from "../devices/net/virtio_net.ts";
import { UdpBackend } from "../devices/net/backends/udp_deno.ts";
import type { VirtioDevice } from "../src/virtio/device.ts";

const USAGE = "usage: deno run -A examples/vduse_host.ts (--blk FILE | --net) [--name NAME] " +
  "[--attach] [--readonly] [--split] [--mac MAC] [--udp-port N] [--udp-remote HOST:PORT] " +
  "[--seconds N]";

function say(line: string): void {
  console.log(`vduse_host: ${line}`);
}

function usage(problem: string): never {
  console.error(`vduse_host: ${problem}\n${USAGE}`);
  Deno.exit(2);
}

/** `--flag value` or `--flag=value`. */
function flag(name: string): string | undefined {
  const args = Deno.args;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === name) {
      if (i + 1 >= args.length) usage(`${name} needs a value`);
      return args[i + 1];
    }
    if (args[i].startsWith(name + "=")) return args[i].slice(name.length + 1);
  }
  return undefined;
}

const KNOWN = new Set([
  "--blk",
  "--net",
  "--name",
  "--attach",
  "--readonly",
  "--split",
  "--mac",
  "--udp-port",
  "--udp-remote",
  "--seconds",
]);
for (const a of Deno.args) {
  if (a.startsWith("--") && !KNOWN.has(a.split("=")[0])) usage(`unknown flag ${a}`);
}

const blkPath = flag("--blk");
const net = Deno.args.includes("--net");
if ((blkPath === undefined) === !net) usage("give exactly one of --blk FILE and --net");
const name = flag("--name") ?? (net ? "vireo-net" : "vireo-blk");
const attach = Deno.args.includes("--attach");
const secondsText = flag("--seconds");
const seconds = secondsText === undefined ? Infinity : Number(secondsText);
if (!(seconds > 0)) usage(`--seconds must be a positive number, not ${secondsText}`);

/** What an errno means for someone running this tool. */
function hint(errno: number): string {
  switch (-errno) {
    case LinuxErrno.ENOENT:
      return " (no /dev/vduse/control: load the modules with `modprobe vduse virtio_vdpa`)";
    case LinuxErrno.EACCES:
    case LinuxErrno.EPERM:
      return " (permission denied: run as root or give this user access to /dev/vduse)";
    case LinuxErrno.EEXIST:
      return ` (a VDUSE device named ${name} exists: pick another --name)`;
    case LinuxErrno.EINVAL:
      return " (the kernel refused the device's configuration)";
    default:
      return "";
  }
}

async function makeDevice(): Promise<{ device: VirtioDevice; describe: string }> {
  if (blkPath !== undefined) {
    let disk: FileBackend;
    try {
      disk = await FileBackend.open(blkPath, { readOnly: Deno.args.includes("--readonly") });
    } catch (e) {
      console.error(`vduse_host: cannot open ${blkPath}: ${(e as Error).message}`);
      Deno.exit(1);
    }
    if (disk.size < 512) {
      console.error(`vduse_host: ${blkPath} holds ${disk.size} bytes; a disk needs at least 512`);
      Deno.exit(1);
    }
    const device = new VirtioBlk({ backend: disk, serial: name.slice(0, 20) });
    const mib = (disk.size / (1 << 20)).toFixed(1);
    return {
      device,
      describe: `virtio-blk, ${Math.floor(disk.size / 512)} sectors (${mib} MiB) from ${blkPath}` +
        (disk.readOnly ? ", read-only" : ""),
    };
  }
  const port = Number(flag("--udp-port") ?? 5555);
  const remoteText = flag("--udp-remote");
  let remote: { hostname: string; port: number } | undefined;
  if (remoteText !== undefined) {
    const at = remoteText.lastIndexOf(":");
    remote = { hostname: remoteText.slice(0, at), port: Number(remoteText.slice(at + 1)) };
    if (at <= 0 || !Number.isInteger(remote.port)) usage(`--udp-remote wants HOST:PORT`);
  }
  let backend: UdpBackend;
  try {
    // A remote peer off this machine needs a socket bound beyond loopback.
    const hostname = remote === undefined || remote.hostname.startsWith("127.")
      ? "127.0.0.1"
      : "0.0.0.0";
    backend = await UdpBackend.open({ hostname, port, remote });
  } catch (e) {
    usage((e as Error).message);
  }
  const mac = flag("--mac") ?? "52:54:00:12:34:56";
  let device: VirtioNet;
  try {
    device = new VirtioNet({ mac, backend, controlQueue: false });
  } catch (e) {
    usage((e as Error).message);
  }
  return {
    device,
    describe: `virtio-net ${mac}, frames over UDP port ${port}` +
      (remote ? ` to ${remote.hostname}:${remote.port}` : ""),
  };
}

async function vdpa(...args: string[]): Promise<boolean> {
  try {
    const out = await new Deno.Command("vdpa", { args, stdout: "piped", stderr: "piped" })
      .output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim();
      console.error(`vduse_host: \`vdpa ${args.join(" ")}\` failed: ${err}`);
    }
    return out.success;
  } catch (e) {
    console.error(`vduse_host: cannot run \`vdpa\` (iproute2): ${(e as Error).message}`);
    return false;
  }
}

const { device, describe } = await makeDevice();
const backend = FfiVduseBackend.open({
  onPollError: (_fd, what) => say(`the device file broke: ${what}`),
});
const daemon = new VduseDaemon(backend, device, {
  name,
  packed: !Deno.args.includes("--split"),
});
const r = daemon.start();
if (r !== 0) {
  console.error(`vduse_host: ${daemon.lastError}${hint(r)}`);
  await backend.shutdown();
  Deno.exit(1);
}
say(`created /dev/vduse/${name}: ${describe}`);

// Report the driver's progress as the kernel's messages arrive.
let reported = 0;
const progress = setInterval(() => {
  if (daemon.live && reported === 0) {
    reported = 1;
    say(`driver ok (status 0x${daemon.status.toString(16)}): serving`);
  } else if (!daemon.live && reported === 1) {
    reported = 0;
    say("driver reset the device");
  }
  if (daemon.needsReset && reported !== 2) {
    reported = 2;
    say(`device failed: ${daemon.lastError}`);
  }
}, 100);

let attached = false;
if (attach) {
  attached = await vdpa("dev", "add", "name", name, "mgmtdev", "vduse");
  if (attached) say(`attached ${name} to the vDPA bus`);
}
if (!attach) say(`attach it with: vdpa dev add name ${name} mgmtdev vduse`);

let stopping = false;
const stopped = Promise.withResolvers<void>();
const stop = () => {
  if (stopping) return;
  stopping = true;
  stopped.resolve();
};
for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, stop);
if (Number.isFinite(seconds)) setTimeout(stop, seconds * 1000);
await stopped.promise;

if (attached && !(await vdpa("dev", "del", name))) say("detach failed; destroying anyway");
clearInterval(progress);
const destroyed = await daemon.shutdown();
const s = daemon.stats;
const requests = Object.entries(s.requests).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
say(
  `stopped: ${s.kicks} kicks, ${s.irqs} interrupts, ${s.starts} start(s); kernel requests: ` +
    `${requests}` + (daemon.needsReset ? `; device failed: ${daemon.lastError}` : ""),
);
if (device instanceof VirtioBlk) {
  const b = device.stats;
  say(
    `disk: ${b.readRequests} reads (${b.bytesRead} B), ${b.writeRequests} writes ` +
      `(${b.bytesWritten} B), ${b.flushRequests} flushes, ${b.ioErrors} I/O errors`,
  );
  (device.backend as FileBackend).close();
}
if (destroyed !== 0) say(`DESTROY_DEV failed: ${errnoName(destroyed)}`);
await backend.shutdown();
Deno.exit(0);
