/** examples/blk.ts runs as a user runs it, verifies its data and exits 0. */
import { assertEquals, assertMatch, assertStringIncludes } from "@std/assert";

async function run(...args: string[]): Promise<{ code: number; out: string }> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "examples/blk.ts", ...args],
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await command.output();
  const decoder = new TextDecoder();
  return { code, out: decoder.decode(stdout) + decoder.decode(stderr) };
}

Deno.test("examples/blk.ts verifies its pattern behind the IOMMU with IOVA ranges", async () => {
  const { code, out } = await run("--count=64");
  assertEquals(code, 0, out);
  assertStringIncludes(out, "read it back: every byte matches");
  assertStringIncludes(out, "requests use IOVA ranges");
  assertMatch(out, /random 4 KiB read\/write\s+64\s/);
  assertMatch(out, /sequential 128 KiB read\s+64\s/);
  assertStringIncludes(out, "done: all data read back matched");
});

Deno.test("examples/blk.ts --no-iommu runs direct", async () => {
  const { code, out } = await run("--count=32", "--no-iommu");
  assertEquals(code, 0, out);
  assertStringIncludes(out, "no IOMMU");
  assertStringIncludes(out, "read it back: every byte matches");
});

Deno.test("examples/blk.ts --image creates and reopens a raw image file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const image = `${dir}/disk.img`;
    const first = await run("--count=16", `--image=${image}`);
    assertEquals(first.code, 0, first.out);
    assertStringIncludes(first.out, `created ${image}`);
    assertStringIncludes(first.out, "read it back: every byte matches");
    assertEquals((await Deno.stat(image)).size, 64 << 20);
    const second = await run("--count=16", `--image=${image}`);
    assertEquals(second.code, 0, second.out);
    assertStringIncludes(second.out, `opened ${image}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
