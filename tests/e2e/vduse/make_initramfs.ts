/**
 * Builds the cpio ("newc") archives of the VDUSE end-to-end guest with the
 * writer of tests/e2e/make_initramfs.ts. The archives stay uncompressed: the
 * guest runs under TCG, where gunzip of ~100 MB would cost seconds, and the
 * kernel accepts plain and concatenated archives alike.
 *
 * CLI (used by fetch_assets.sh): `deno run --allow-read --allow-write
 * tests/e2e/vduse/make_initramfs.ts ROOT OUT.cpio` packs the directory ROOT
 * and adds `/dev/console`.
 *
 * @module
 */
import { writeCpio } from "../make_initramfs.ts";

/** One entry of an archive (the shape `writeCpio` takes). */
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

/** Serialises entries into one uncompressed newc archive (with its trailer). */
export function packCpio(entries: readonly CpioEntry[]): Uint8Array {
  return writeCpio(entries);
}

if (import.meta.main) {
  const [root, out] = Deno.args;
  if (root === undefined || out === undefined) {
    console.error("usage: make_initramfs.ts ROOT OUT.cpio");
    Deno.exit(2);
  }
  const entries = await collectTree(root);
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
  const archive = packCpio(entries);
  await Deno.writeFile(out, archive);
  console.log(`${out}: ${entries.length} entries, ${archive.byteLength} bytes`);
}
