/**
 * examples/vduse_host.ts's failure paths on a machine without VDUSE: every
 * bad input and a missing /dev/vduse end with one plain sentence and the
 * documented exit status. (Serving a real kernel is tests/e2e/vduse's job.)
 */
import { assertEquals, assertStringIncludes } from "@std/assert";

async function run(...args: string[]): Promise<{ code: number; out: string }> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "examples/vduse_host.ts", ...args],
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await command.output();
  const decoder = new TextDecoder();
  return { code, out: decoder.decode(stdout) + decoder.decode(stderr) };
}

let hasVduse = false;
try {
  hasVduse = Deno.statSync("/dev/vduse/control") !== null;
} catch {
  // no VDUSE here: the failure paths below are what a user sees
}

Deno.test("examples/vduse_host.ts rejects bad flags with status 2", async () => {
  const none = await run();
  assertEquals(none.code, 2, none.out);
  assertStringIncludes(none.out, "give exactly one of --blk FILE and --net");
  const both = await run("--net", "--blk", "x.img");
  assertEquals(both.code, 2, both.out);
  const unknown = await run("--net", "--fast");
  assertEquals(unknown.code, 2, unknown.out);
  assertStringIncludes(unknown.out, "unknown flag --fast");
  const seconds = await run("--net", "--seconds=-1");
  assertEquals(seconds.code, 2, seconds.out);
  assertStringIncludes(seconds.out, "--seconds must be a positive number");
  const dangling = await run("--blk");
  assertEquals(dangling.code, 2, dangling.out);
  assertStringIncludes(dangling.out, "--blk needs a value");
});

Deno.test("examples/vduse_host.ts names a missing image", async () => {
  const out = await run("--blk", "/nonexistent/disk.img");
  assertEquals(out.code, 1, out.out);
  assertStringIncludes(out.out, "cannot open /nonexistent/disk.img");
});

Deno.test({
  name: "examples/vduse_host.ts without the vduse module says how to load it",
  ignore: hasVduse || Deno.build.os !== "linux",
}, async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/disk.img`, new Uint8Array(4096));
    const out = await run("--blk", `${dir}/disk.img`);
    assertEquals(out.code, 1, out.out);
    assertStringIncludes(out.out, "open /dev/vduse/control failed: -ENOENT");
    assertStringIncludes(out.out, "modprobe vduse virtio_vdpa");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
