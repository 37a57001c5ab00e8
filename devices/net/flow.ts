/**
 * Flow hashing for multiqueue steering: a symmetric hash of a frame's IP
 * addresses and TCP/UDP ports, so that a flow and its replies hash alike.
 *
 * @module
 */

/** Bytes of a frame's head that {@linkcode flowHash} looks at. */
export const FLOW_HEAD_BYTES = 64;

const IPV4 = 0x0800;
const IPV6 = 0x86dd;
const VLAN = 0x8100;
const TCP = 6;
const UDP = 17;

/**
 * The symmetric flow hash of a frame (IPv4 or IPv6, TCP or UDP ports when
 * they are inside the head), or -1 for a frame that is not IP. Swapping
 * source and destination gives the same hash.
 *
 * @param head the frame's first bytes
 * @param length how many bytes of `head` are valid
 * @returns a non-negative 31-bit hash, or -1
 */
export function flowHash(head: Uint8Array, length: number): number {
  if (length < 14) return -1;
  let l3 = 14;
  let type = (head[12] << 8) | head[13];
  if (type === VLAN) {
    if (length < 18) return -1;
    type = (head[16] << 8) | head[17];
    l3 = 18;
  }
  let h: number;
  let proto: number;
  let l4: number;
  if (type === IPV4) {
    if (length < l3 + 20) return -1;
    const ihl = (head[l3] & 0x0f) * 4;
    proto = head[l3 + 9];
    h = word(head, l3 + 12) ^ word(head, l3 + 16);
    const fragmented = (((head[l3 + 6] << 8) | head[l3 + 7]) & 0x3fff) !== 0;
    l4 = fragmented ? -1 : l3 + ihl;
  } else if (type === IPV6) {
    if (length < l3 + 40) return -1;
    proto = head[l3 + 6];
    h = 0;
    for (let i = 8; i < 40; i += 4) h ^= word(head, l3 + i);
    l4 = l3 + 40;
  } else {
    return -1;
  }
  h = Math.imul(h ^ proto, 0x9e3779b1);
  if ((proto === TCP || proto === UDP) && l4 >= 0 && l4 + 4 <= length) {
    h ^= ((head[l4] << 8) | head[l4 + 1]) ^ ((head[l4 + 2] << 8) | head[l4 + 3]);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return h & 0x7fff_ffff;
}

function word(b: Uint8Array, i: number): number {
  return (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3];
}
