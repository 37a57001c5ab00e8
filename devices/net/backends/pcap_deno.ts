/**
 * A pcap file sink for {@linkcode PcapRecorder} (Deno only).
 *
 * @module
 */
import type { PcapSink } from "./pcap.ts";

/** A pcap sink writing to a file, and the way to close it. */
export interface PcapFile {
  /** Pass this to {@linkcode PcapRecorder}. */
  readonly sink: PcapSink;
  /** Closes the file. Idempotent. */
  close(): void;
}

/**
 * Opens (creating or truncating) `path` as a pcap file sink. Writes are
 * synchronous, so the file is complete whenever the device is idle.
 *
 * @param path the file to write
 * @returns the sink and its close function
 *
 * @example
 * ```ts ignore
 * import { createPair, PcapRecorder } from "@vireo/vireo/net";
 * import { openPcapFile } from "@vireo/vireo/net/pcap-deno";
 * const file = openPcapFile("net.pcap");
 * const [a] = createPair();
 * const backend = new PcapRecorder(a, file.sink);
 * ```
 */
export function openPcapFile(path: string | URL): PcapFile {
  const file = Deno.openSync(path, { write: true, create: true, truncate: true });
  let open = true;
  return {
    sink: (bytes) => {
      if (!open) return;
      let done = 0;
      while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
    },
    close: () => {
      if (!open) return;
      open = false;
      file.close();
    },
  };
}
