import { assertEquals } from "@std/assert";
import { pattern } from "./helpers/harness.ts";

Deno.test("VirtioBlk FLUSH on a file image survives SIGKILL of the process", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vireo-blk-crash-" });
  const image = `${dir}/disk.img`;
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-write",
        new URL("./crash_writer.ts", import.meta.url).pathname,
        image,
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.getReader();
    let out = "";
    const decoder = new TextDecoder();
    while (!out.includes("FLUSHED\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += decoder.decode(value, { stream: true });
    }
    child.kill("SIGKILL");
    const status = await child.status;
    reader.releaseLock();
    await child.stdout.cancel().catch(() => {});
    const stderr = new TextDecoder().decode(
      await new Response(child.stderr).arrayBuffer(),
    );
    assertEquals(out.includes("FLUSHED\n"), true, `child output: ${out}\n${stderr}`);
    assertEquals(status.signal, "SIGKILL");
    const bytes = await Deno.readFile(image);
    assertEquals(bytes.length, 1 << 20);
    for (let i = 0; i < 4; i++) {
      assertEquals(bytes.slice(i * 4096, (i + 1) * 4096), pattern(4096, 10 + i), `block ${i}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
