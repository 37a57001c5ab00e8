/** The examples run as a user runs them and exit 0; each prints its own verdict. */
import { assertEquals, assertStringIncludes } from "@std/assert";

async function run(example: string): Promise<{ code: number; out: string }> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-net", `examples/${example}`],
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await command.output();
  const decoder = new TextDecoder();
  return { code, out: decoder.decode(stdout) + decoder.decode(stderr) };
}

Deno.test("examples/embed.ts hosts vireo functions on a toy emulator's own PCI bus", async () => {
  const { code, out } = await run("embed.ts");
  assertEquals(code, 0, out);
  assertStringIncludes(out, "done: both devices echoed");
});

Deno.test("examples/iommu.ts works through the IOMMU and catches a skipped iovaSync", async () => {
  const { code, out } = await run("iommu.ts");
  assertEquals(code, 0, out);
  assertStringIncludes(out, "echoed 1000 of 1000 buffers");
  assertStringIncludes(out, "DEVICE_NEEDS_RESET set");
  assertStringIncludes(out, "fault event: reason 2");
});
