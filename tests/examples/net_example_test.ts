/** examples/net.ts runs as a newcomer runs it: two guests talk, every datagram checks out. */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";

async function run(
  args: string[],
  permissions: string[] = [],
): Promise<{ code: number; out: string }> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, "examples/net.ts", ...args],
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await command.output();
  const decoder = new TextDecoder();
  return { code, out: decoder.decode(stdout) + decoder.decode(stderr) };
}

/** The checks every successful run passes. */
function assertWorked(code: number, out: string, count: number): void {
  assertEquals(code, 0, out);
  assertStringIncludes(out, "link: up on both sides");
  assertMatch(out, /ping: 10 of 10 echo replies/);
  assertMatch(out, new RegExp(`${count} of ${count} datagrams received`));
  assertMatch(out, /drops\s+0 \(device counters/);
  assertMatch(out, /data verified\s+yes/);
  assertStringIncludes(out, `verified: all ${count} datagrams arrived exactly once`);
  assert(!out.includes("\r"), "no progress line when stdout is not a terminal");
}

Deno.test("examples/net.ts by default: virtio-pci behind the virtio-iommu", async () => {
  const { code, out } = await run([]);
  assertWorked(code, out, 20000);
  assertStringIncludes(
    out,
    "virtio-pci, split rings, 1 queue pair, each NIC behind a virtio-iommu",
  );
  assertMatch(out, /negotiated: .*\bVERSION_1\b.*\bACCESS_PLATFORM\b/);
  assertMatch(out, /IOMMU \(guest A\)\s+\d+ MAP requests.*translation cache \d+\.\d% hits/);
  assertMatch(out, /IOMMU \(guest B\)\s+\d+ MAP requests/);
  assertMatch(out, /Gbit\/s\s+\d+\.\d+/);
  assertMatch(out, /packets\/s\s+\d+/);
});

Deno.test("examples/net.ts --no-iommu --packed", async () => {
  const { code, out } = await run(["--no-iommu", "--packed", "--count=500"]);
  assertWorked(code, out, 500);
  assertStringIncludes(out, "virtio-pci, packed rings, 1 queue pair, no IOMMU");
  assertMatch(out, /negotiated: .*\bRING_PACKED\b/);
  assert(!/negotiated: .*ACCESS_PLATFORM/.test(out), out);
  assertMatch(out, /IOMMU\s+none/);
});

Deno.test("examples/net.ts --transport=mmio keeps the NIC behind the virtio-iommu", async () => {
  const { code, out } = await run(["--transport=mmio", "--count=500"]);
  assertWorked(code, out, 500);
  assertStringIncludes(
    out,
    "virtio-mmio, split rings, 1 queue pair, each NIC behind a virtio-iommu",
  );
  assertMatch(out, /IOMMU \(guest A\)\s+\d+ MAP requests/);
});

Deno.test("examples/net.ts --transport=vduse bounces through the VDUSE domain", async () => {
  const { code, out } = await run(["--transport=vduse", "--count=500"]);
  assertWorked(code, out, 500);
  assertStringIncludes(out, "VDUSE (virtio_vdpa)");
  assertMatch(out, /VDUSE \(guest A\)\s+\d+ streaming mappings/);
});

Deno.test("examples/net.ts --mq=2 spreads the stream over two queue pairs", async () => {
  const { code, out } = await run(["--mq=2", "--count=500"]);
  assertWorked(code, out, 500);
  assertStringIncludes(out, "2 queue pairs in use");
  assertMatch(out, /negotiated: .*\bMQ\b/);
  // Both of B's receive queues carried frames.
  assertMatch(out, /B received [1-9]\d*\/[1-9]\d* /);
});

Deno.test("examples/net.ts --size fits large datagrams in one frame", async () => {
  const { code, out } = await run(["--size=9000", "--count=200", "--transport=vduse", "--packed"]);
  assertWorked(code, out, 200);
  assertStringIncludes(out, "MTU 9028");
});

Deno.test("examples/net.ts --pcap writes a pcap file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/net.pcap`;
    const { code, out } = await run([`--pcap=${path}`, "--count=50"], [`--allow-write=${dir}`]);
    assertWorked(code, out, 50);
    assertMatch(out, /capture\s+\d+ frames written to/);
    const bytes = await Deno.readFile(path);
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    assertEquals(v.getUint32(0, true), 0xa1b2c3d4, "the classic pcap magic");
    assertEquals(v.getUint32(20, true), 1, "LINKTYPE_ETHERNET");
    // Header, then at least the 50 datagrams (each a record header and a frame).
    assert(bytes.length > 24 + 50 * (16 + 1514), `${bytes.length} bytes`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("examples/net.ts refuses an unknown flag with status 2", async () => {
  const { code, out } = await run(["--transport=usb"]);
  assertEquals(code, 2, out);
  assertStringIncludes(out, "--transport must be pci, mmio or vduse");
});
