/**
 * cpio ("newc") initramfs archives for the end-to-end guests, without a
 * `cpio` binary on the host: the writer, a directory walker, and a CLI that
 * packs a directory with `/dev/console` added so the kernel can give `/init`
 * its console. `OUT.gz` is gzip'd (the v86 guest); `OUT.cpio` stays plain (the
 * QEMU/TCG guest, where gunzip of ~100 MB would cost seconds).
 *
 * Usage: `deno run --allow-read --allow-write tests/e2e/make_initramfs.ts ROOT OUT.gz|OUT.cpio`
 *
 * @module
 */

/** One entry of the archive. */
export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string;
  /** `st_mode`: file type and permission bits. */
  mode: number;
  /** Contents (file data, or a symlink's target). */
  data: Uint8Array;
  /** Device major and minor for character devices. */
  rdev?: [number, number];
}

/** `S_IFDIR`. */
export const S_IFDIR = 0o040000;
/** `S_IFREG`. */
export const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/**
 * Serialises entries in the "newc" format (magic 070701) with the trailer.
 *
 * @param entries the archive's entries in order (directories before their contents)
 * @returns the uncompressed archive
 */
export function writeCpio(entries: readonly CpioEntry[]): Uint8Array {
  const encoder = new TextEncoder();
  const chunks: Uint8Array[] = [];
  let size = 0;
  const push = (bytes: Uint8Array): void => {
    chunks.push(bytes);
    size += bytes.byteLength;
    const pad = (4 - (size % 4)) % 4;
    if (pad !== 0) {
      chunks.push(new Uint8Array(pad));
      size += pad;
    }
  };
  const hex8 = (n: number): string => n.toString(16).padStart(8, "0");
  let ino = 1;
  for (const entry of [...entries, { name: "TRAILER!!!", mode: 0, data: new Uint8Array(0) }]) {
    const name = encoder.encode(entry.name + "\0");
    const rdev = (entry as CpioEntry).rdev ?? [0, 0];
    const header = "070701" + hex8(entry.name === "TRAILER!!!" ? 0 : ino++) + hex8(entry.mode) +
      hex8(0) + hex8(0) + hex8(1) + hex8(0) + hex8(entry.data.byteLength) + hex8(0) + hex8(0) +
      hex8(rdev[0]) + hex8(rdev[1]) + hex8(name.byteLength) + hex8(0);
    const head = new Uint8Array(header.length + name.byteLength);
    head.set(encoder.encode(header));
    head.set(name, header.length);
    push(head);
    if (entry.data.byteLength > 0) push(entry.data);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}

/**
 * Lists the directory `root` recursively (sorted, parents first) as entries
 * named `prefix/...`.
 *
 * @param root a host directory
 * @param prefix the archive path the directory's contents go under ("" for the top)
 * @param skip relative paths (from `root`) to leave out
 */
export async function collectTree(
  root: string,
  prefix = "",
  skip: (rel: string) => boolean = () => false,
): Promise<CpioEntry[]> {
  const out: CpioEntry[] = [];
  const walk = async (rel: string): Promise<void> => {
    const names: Deno.DirEntry[] = [];
    for await (const e of Deno.readDir(rel === "" ? root : `${root}/${rel}`)) names.push(e);
    names.sort((a, b) => a.name < b.name ? -1 : 1);
    for (const e of names) {
      const sub = rel === "" ? e.name : `${rel}/${e.name}`;
      if (skip(sub)) continue;
      const path = `${root}/${sub}`;
      const name = prefix === "" ? sub : `${prefix}/${sub}`;
      const info = await Deno.lstat(path);
      const perm = (info.mode ?? 0o644) & 0o7777;
      if (info.isSymlink) {
        const target = new TextEncoder().encode(await Deno.readLink(path));
        out.push({ name, mode: S_IFLNK | 0o777, data: target });
      } else if (info.isDirectory) {
        out.push({ name, mode: S_IFDIR | perm, data: new Uint8Array(0) });
        await walk(sub);
      } else {
        out.push({ name, mode: S_IFREG | perm, data: await Deno.readFile(path) });
      }
    }
  };
  await walk("");
  return out;
}

/** The directory entries `a/b/c` needs before it (`a`, `a/b`), as mode-0755 directories. */
export function parentDirs(path: string): CpioEntry[] {
  const parts = path.split("/");
  return parts.slice(0, -1).map((_, i) => ({
    name: parts.slice(0, i + 1).join("/"),
    mode: S_IFDIR | 0o755,
    data: new Uint8Array(0),
  }));
}

/** Adds `dev/` (if missing) and the `dev/console` character device (5, 1) in place. */
export function addConsole(entries: CpioEntry[]): void {
  if (!entries.some((e) => e.name === "dev")) {
    entries.unshift({ name: "dev", mode: S_IFDIR | 0o755, data: new Uint8Array(0) });
  }
  const devAt = entries.findIndex((e) => e.name === "dev");
  entries.splice(devAt + 1, 0, {
    name: "dev/console",
    mode: S_IFCHR | 0o600,
    data: new Uint8Array(0),
    rdev: [5, 1],
  });
}

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

if (import.meta.main) {
  const [root, out] = Deno.args;
  if (root === undefined || out === undefined) {
    console.error("usage: make_initramfs.ts ROOT OUT.gz|OUT.cpio");
    Deno.exit(2);
  }
  const entries = await collectTree(root);
  addConsole(entries);
  const archive = writeCpio(entries);
  if (out.endsWith(".cpio")) {
    await Deno.writeFile(out, archive);
    console.log(`${out}: ${entries.length} entries, ${archive.byteLength} bytes`);
  } else {
    const packed = await gzip(archive);
    await Deno.writeFile(out, packed);
    console.log(
      `${out}: ${entries.length} entries, ${archive.byteLength} bytes, ${packed.byteLength} gzip'd`,
    );
  }
}
