/**
 * MAC address helpers: parse `"52:54:00:12:34:56"` (or `-` separated) into
 * 6 bytes and format them back.
 *
 * @module
 */

/**
 * Parses a MAC address given as a string of six hex pairs separated by `:`
 * or `-`, or as 6 bytes (copied).
 *
 * @param value the address
 * @param what the sentence start of the error message
 * @returns 6 new bytes
 * @throws {TypeError} when `value` is not a 6-byte address
 *
 * @example
 * ```ts
 * import { parseMac } from "@vireo/vireo/net";
 * console.log(parseMac("52:54:00:12:34:56")[5]); // 86
 * ```
 */
export function parseMac(
  value: string | Uint8Array,
  what = "Cannot parse MAC address",
): Uint8Array {
  if (value instanceof Uint8Array) {
    if (value.length !== 6) {
      throw new TypeError(`${what}: mac of ${value.length} bytes is not 6 bytes`);
    }
    return value.slice();
  }
  if (typeof value === "string") {
    const parts = value.split(/[:-]/);
    if (parts.length === 6 && parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) {
      return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
    }
  }
  throw new TypeError(`${what}: mac "${String(value)}" is not 6 bytes`);
}

/**
 * Formats 6 bytes as `"52:54:00:12:34:56"`.
 *
 * @param mac at least 6 bytes; the first 6 are used
 * @param offset where the address starts in `mac`
 * @returns the lower-case colon-separated address
 */
export function formatMac(mac: Uint8Array, offset = 0): string {
  const parts: string[] = [];
  for (let i = 0; i < 6; i++) parts.push((mac[offset + i] ?? 0).toString(16).padStart(2, "0"));
  return parts.join(":");
}
