/**
 * Minimal Ethernet, ARP, IPv4, ICMP and UDP for the guest model: builders and
 * parsers for the packets an example needs to ping and move data, the
 * Internet checksum, and {@linkcode InetHost}, a tiny host stack (ARP cache,
 * echo replies, UDP ports) on top of a frame-level driver.
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */

/** Ethertypes. */
export const EtherType = {
  /** IPv4. */
  IPV4: 0x0800,
  /** ARP. */
  ARP: 0x0806,
  /** 802.1Q VLAN tag. */
  VLAN: 0x8100,
  /** IPv6. */
  IPV6: 0x86dd,
} as const;

/** IP protocol numbers. */
export const IpProto = {
  /** ICMP. */
  ICMP: 1,
  /** TCP. */
  TCP: 6,
  /** UDP. */
  UDP: 17,
} as const;

/** The broadcast MAC address. */
export const BROADCAST_MAC = "ff:ff:ff:ff:ff:ff";

/** Parses `"10.0.0.1"` into a 32-bit number. @throws {TypeError} on a malformed address */
export function parseIpv4(text: string): number {
  const parts = typeof text === "string" ? text.split(".") : [];
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new TypeError(`Cannot parse IPv4 address "${String(text)}"`);
  }
  return parts.reduce((a, p) => a * 256 + Number(p), 0);
}

/** Formats a 32-bit number as `"10.0.0.1"`. */
export function formatIpv4(ip: number): string {
  return [ip >>> 24, (ip >>> 16) & 0xff, (ip >>> 8) & 0xff, ip & 0xff].join(".");
}

/** Parses `"52:54:00:12:34:56"` into 6 bytes. @throws {TypeError} on a malformed address */
export function macToBytes(text: string): Uint8Array {
  const parts = typeof text === "string" ? text.split(":") : [];
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) {
    throw new TypeError(`Cannot parse MAC address "${String(text)}"`);
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

/** Formats 6 bytes at `offset` as `"52:54:00:12:34:56"`. */
export function bytesToMac(bytes: Uint8Array, offset = 0): string {
  return Array.from(bytes.subarray(offset, offset + 6), (b) => b.toString(16).padStart(2, "0"))
    .join(":");
}

/**
 * The 16-bit ones' complement sum of `bytes[start..end)` added to `initial`,
 * folded but not complemented.
 */
export function onesSum(bytes: Uint8Array, start = 0, end = bytes.length, initial = 0): number {
  let sum = initial;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  if (i < end) sum += bytes[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The Internet checksum of `bytes[start..end)` (complemented), with an optional initial sum. */
export function internetChecksum(
  bytes: Uint8Array,
  start = 0,
  end = bytes.length,
  initial = 0,
): number {
  return ~onesSum(bytes, start, end, initial) & 0xffff;
}

/** The pseudo-header sum of an IPv4 TCP/UDP segment (folded, not complemented). */
export function pseudoHeaderSum(src: number, dst: number, proto: number, length: number): number {
  let sum = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + length;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** An Ethernet frame, parsed. */
export interface EthernetFrame {
  /** Destination MAC. */
  dst: string;
  /** Source MAC. */
  src: string;
  /** Ethertype (after a VLAN tag, if any). */
  type: number;
  /** The VLAN id, or -1 when untagged. */
  vlan: number;
  /** The payload (a view into the frame). */
  payload: Uint8Array;
}

/** Builds an Ethernet frame. */
export function buildEthernet(
  dst: string,
  src: string,
  type: number,
  payload: Uint8Array,
): Uint8Array {
  const f = new Uint8Array(14 + payload.length);
  f.set(macToBytes(dst), 0);
  f.set(macToBytes(src), 6);
  f[12] = type >>> 8;
  f[13] = type & 0xff;
  f.set(payload, 14);
  return f;
}

/** Parses an Ethernet frame, or returns null when it is shorter than its header. */
export function parseEthernet(frame: Uint8Array): EthernetFrame | null {
  if (frame.length < 14) return null;
  let type = (frame[12] << 8) | frame[13];
  let off = 14;
  let vlan = -1;
  if (type === EtherType.VLAN) {
    if (frame.length < 18) return null;
    vlan = ((frame[14] << 8) | frame[15]) & 0xfff;
    type = (frame[16] << 8) | frame[17];
    off = 18;
  }
  return {
    dst: bytesToMac(frame, 0),
    src: bytesToMac(frame, 6),
    type,
    vlan,
    payload: frame.subarray(off),
  };
}

/** An ARP packet (Ethernet/IPv4), parsed. */
export interface ArpPacket {
  /** 1 request, 2 reply. */
  op: number;
  /** Sender MAC. */
  senderMac: string;
  /** Sender IPv4. */
  senderIp: number;
  /** Target MAC. */
  targetMac: string;
  /** Target IPv4. */
  targetIp: number;
}

/** Builds an ARP packet (the Ethernet payload). */
export function buildArp(p: ArpPacket): Uint8Array {
  const b = new Uint8Array(28);
  const v = new DataView(b.buffer);
  v.setUint16(0, 1);
  v.setUint16(2, EtherType.IPV4);
  b[4] = 6;
  b[5] = 4;
  v.setUint16(6, p.op);
  b.set(macToBytes(p.senderMac), 8);
  v.setUint32(14, p.senderIp);
  b.set(macToBytes(p.targetMac), 18);
  v.setUint32(24, p.targetIp);
  return b;
}

/** Parses an ARP packet, or returns null when it is not Ethernet/IPv4 ARP. */
export function parseArp(payload: Uint8Array): ArpPacket | null {
  if (payload.length < 28) return null;
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (
    v.getUint16(0) !== 1 || v.getUint16(2) !== EtherType.IPV4 || payload[4] !== 6 ||
    payload[5] !== 4
  ) {
    return null;
  }
  return {
    op: v.getUint16(6),
    senderMac: bytesToMac(payload, 8),
    senderIp: v.getUint32(14),
    targetMac: bytesToMac(payload, 18),
    targetIp: v.getUint32(24),
  };
}

/** An IPv4 packet, parsed. */
export interface Ipv4Packet {
  /** Source address. */
  src: number;
  /** Destination address. */
  dst: number;
  /** Protocol. */
  proto: number;
  /** Time to live. */
  ttl: number;
  /** Identification. */
  id: number;
  /** The payload (a view). */
  payload: Uint8Array;
}

/** Builds an IPv4 packet (20-byte header, don't-fragment, checksummed). */
export function buildIpv4(
  src: number,
  dst: number,
  proto: number,
  payload: Uint8Array,
  options: { ttl?: number; id?: number } = {},
): Uint8Array {
  const b = new Uint8Array(20 + payload.length);
  const v = new DataView(b.buffer);
  b[0] = 0x45;
  v.setUint16(2, b.length);
  v.setUint16(4, options.id ?? 0);
  v.setUint16(6, 0x4000);
  b[8] = options.ttl ?? 64;
  b[9] = proto;
  v.setUint32(12, src);
  v.setUint32(16, dst);
  v.setUint16(10, internetChecksum(b, 0, 20));
  b.set(payload, 20);
  return b;
}

/** Parses an IPv4 packet; null when malformed or its header checksum is wrong. */
export function parseIpv4Packet(bytes: Uint8Array): Ipv4Packet | null {
  if (bytes.length < 20 || bytes[0] >> 4 !== 4) return null;
  const ihl = (bytes[0] & 0xf) * 4;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const total = v.getUint16(2);
  if (ihl < 20 || total < ihl || total > bytes.length) return null;
  if (onesSum(bytes, 0, ihl) !== 0xffff) return null;
  return {
    src: v.getUint32(12),
    dst: v.getUint32(16),
    proto: bytes[9],
    ttl: bytes[8],
    id: v.getUint16(4),
    payload: bytes.subarray(ihl, total),
  };
}

/** An ICMP echo message, parsed. */
export interface IcmpEcho {
  /** 8 request, 0 reply. */
  type: number;
  /** Identifier. */
  id: number;
  /** Sequence number. */
  seq: number;
  /** Data. */
  data: Uint8Array;
}

/** Builds an ICMP echo request (type 8) or reply (type 0). */
export function buildIcmpEcho(echo: IcmpEcho): Uint8Array {
  const b = new Uint8Array(8 + echo.data.length);
  const v = new DataView(b.buffer);
  b[0] = echo.type;
  v.setUint16(4, echo.id);
  v.setUint16(6, echo.seq);
  b.set(echo.data, 8);
  v.setUint16(2, internetChecksum(b));
  return b;
}

/** Parses an ICMP echo message; null when not an echo or the checksum is wrong. */
export function parseIcmpEcho(bytes: Uint8Array): IcmpEcho | null {
  if (bytes.length < 8 || (bytes[0] !== 0 && bytes[0] !== 8) || onesSum(bytes) !== 0xffff) {
    return null;
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { type: bytes[0], id: v.getUint16(4), seq: v.getUint16(6), data: bytes.subarray(8) };
}

/** A UDP datagram, parsed. */
export interface UdpDatagram {
  /** Source port. */
  sport: number;
  /** Destination port. */
  dport: number;
  /** Data. */
  data: Uint8Array;
}

/**
 * Builds a UDP datagram with its checksum. With `partial` the checksum field
 * holds only the pseudo-header sum, for a device to finish (NEEDS_CSUM with
 * csum_offset 6).
 */
export function buildUdp(
  src: number,
  dst: number,
  sport: number,
  dport: number,
  data: Uint8Array,
  partial = false,
): Uint8Array {
  const b = new Uint8Array(8 + data.length);
  const v = new DataView(b.buffer);
  v.setUint16(0, sport);
  v.setUint16(2, dport);
  v.setUint16(4, b.length);
  b.set(data, 8);
  const pseudo = pseudoHeaderSum(src, dst, IpProto.UDP, b.length);
  if (partial) {
    v.setUint16(6, pseudo);
  } else {
    const c = internetChecksum(b, 0, b.length, pseudo);
    v.setUint16(6, c === 0 ? 0xffff : c);
  }
  return b;
}

/**
 * Parses a UDP datagram. The checksum is checked unless it is 0 (none) or
 * `trusted` (the driver reported a partial or validated checksum).
 */
export function parseUdp(
  src: number,
  dst: number,
  bytes: Uint8Array,
  trusted = false,
): UdpDatagram | null {
  if (bytes.length < 8) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = v.getUint16(4);
  if (len < 8 || len > bytes.length) return null;
  if (!trusted && v.getUint16(6) !== 0) {
    if (onesSum(bytes, 0, len, pseudoHeaderSum(src, dst, IpProto.UDP, len)) !== 0xffff) return null;
  }
  return { sport: v.getUint16(0), dport: v.getUint16(2), data: bytes.subarray(8, len) };
}

/** What {@linkcode InetHost} needs from a network driver. */
export interface FrameLink {
  /** The interface's MAC address. */
  readonly mac: string;
  /** Sends one Ethernet frame; false when it could not be queued. */
  send(frame: Uint8Array): boolean;
}

/** Received frame metadata {@linkcode InetHost.receive} looks at. */
export interface FrameInfo {
  /** The checksum was left partial by the sender (CHECKSUM_PARTIAL): trust it. */
  needsCsum?: boolean;
  /** The device validated the checksum. */
  dataValid?: boolean;
}

/** Counters of an {@linkcode InetHost}. */
export interface InetHostStats {
  /** Frames handled. */
  received: number;
  /** Frames ignored (not for us, malformed, bad checksum, unknown protocol). */
  ignored: number;
  /** Frames sent. */
  sent: number;
  /** Frames that could not be sent (driver queue full, no ARP answer yet and queue full). */
  sendFailures: number;
}

/**
 * A tiny IPv4 host on a {@linkcode FrameLink}: answers ARP and ICMP echo
 * requests, resolves addresses with ARP (holding a few packets meanwhile),
 * records echo replies and delivers UDP datagrams to bound ports.
 *
 * @example
 * ```ts
 * import { InetHost } from "@vireo/vireo/guest/net";
 * const sent: Uint8Array[] = [];
 * const host = new InetHost({ mac: "52:54:00:00:00:01", send: (f) => sent.push(f) > 0 }, "10.0.0.1");
 * host.ping("10.0.0.2", 1);
 * console.log(sent.length); // 1: an ARP request for 10.0.0.2
 * ```
 */
export class InetHost {
  /** The link. */
  readonly link: FrameLink;
  /** Our address. */
  readonly ip: number;
  /** Learnt neighbours: IPv4 → MAC. */
  readonly arp: Map<number, string> = new Map();
  /** Echo replies received: `{ from, id, seq, data }`. */
  readonly echoReplies: { from: number; id: number; seq: number; data: Uint8Array }[] = [];
  /** Counters. */
  readonly stats: InetHostStats = { received: 0, ignored: 0, sent: 0, sendFailures: 0 };
  readonly #udp = new Map<number, (data: Uint8Array, from: number, sport: number) => void>();
  readonly #waiting: { ip: number; proto: number; payload: Uint8Array }[] = [];
  #id = 1;

  /** Creates the host with address `ip` on `link`. @throws {TypeError} on a malformed address */
  constructor(link: FrameLink, ip: string) {
    this.link = link;
    this.ip = parseIpv4(ip);
  }

  /** Calls `handler` with each datagram to UDP port `port`. */
  bindUdp(port: number, handler: (data: Uint8Array, from: number, sport: number) => void): void {
    this.#udp.set(port, handler);
  }

  /** Sends an ICMP echo request to `ip`. */
  ping(ip: string, seq: number, data: Uint8Array = new Uint8Array(56)): void {
    this.#sendIp(parseIpv4(ip), IpProto.ICMP, buildIcmpEcho({ type: 8, id: 0x7669, seq, data }));
  }

  /** Sends a UDP datagram to `ip:dport`. */
  sendUdp(ip: string, sport: number, dport: number, data: Uint8Array): void {
    const dst = parseIpv4(ip);
    this.#sendIp(dst, IpProto.UDP, buildUdp(this.ip, dst, sport, dport, data));
  }

  /** Broadcasts a gratuitous ARP (what Linux's `netdev_notify_peers` makes an IPv4 host send). */
  announce(): void {
    this.#send(buildEthernet(
      BROADCAST_MAC,
      this.link.mac,
      EtherType.ARP,
      buildArp({
        op: 1,
        senderMac: this.link.mac,
        senderIp: this.ip,
        targetMac: "00:00:00:00:00:00",
        targetIp: this.ip,
      }),
    ));
  }

  /** Handles one received Ethernet frame. */
  receive(frame: Uint8Array, info: FrameInfo = {}): void {
    this.stats.received++;
    const eth = parseEthernet(frame);
    if (eth === null || (eth.dst !== this.link.mac && eth.dst !== BROADCAST_MAC)) {
      this.stats.ignored++;
      return;
    }
    if (eth.type === EtherType.ARP) return this.#arp(eth);
    if (eth.type !== EtherType.IPV4) {
      this.stats.ignored++;
      return;
    }
    const ip = parseIpv4Packet(eth.payload);
    if (ip === null || ip.dst !== this.ip) {
      this.stats.ignored++;
      return;
    }
    this.arp.set(ip.src, eth.src);
    if (ip.proto === IpProto.ICMP) {
      const echo = parseIcmpEcho(ip.payload);
      if (echo === null) {
        this.stats.ignored++;
      } else if (echo.type === 8) {
        this.#sendIp(ip.src, IpProto.ICMP, buildIcmpEcho({ ...echo, type: 0 }));
      } else {
        this.echoReplies.push({
          from: ip.src,
          id: echo.id,
          seq: echo.seq,
          data: echo.data.slice(),
        });
      }
      return;
    }
    if (ip.proto === IpProto.UDP) {
      const trusted = info.needsCsum === true || info.dataValid === true;
      const udp = parseUdp(ip.src, ip.dst, ip.payload, trusted);
      const handler = udp === null ? undefined : this.#udp.get(udp.dport);
      if (udp === null || handler === undefined) {
        this.stats.ignored++;
        return;
      }
      handler(udp.data, ip.src, udp.sport);
      return;
    }
    this.stats.ignored++;
  }

  #arp(eth: EthernetFrame): void {
    const arp = parseArp(eth.payload);
    if (arp === null) {
      this.stats.ignored++;
      return;
    }
    this.arp.set(arp.senderIp, arp.senderMac);
    if (arp.op === 1 && arp.targetIp === this.ip) {
      this.#send(buildEthernet(
        arp.senderMac,
        this.link.mac,
        EtherType.ARP,
        buildArp({
          op: 2,
          senderMac: this.link.mac,
          senderIp: this.ip,
          targetMac: arp.senderMac,
          targetIp: arp.senderIp,
        }),
      ));
    }
    // Send what waited for this address.
    for (let i = 0; i < this.#waiting.length;) {
      const w = this.#waiting[i];
      if (w.ip === arp.senderIp) {
        this.#waiting.splice(i, 1);
        this.#sendIp(w.ip, w.proto, w.payload);
      } else {
        i++;
      }
    }
  }

  #sendIp(dst: number, proto: number, payload: Uint8Array): void {
    const mac = this.arp.get(dst);
    if (mac === undefined) {
      if (this.#waiting.length >= 16) {
        this.stats.sendFailures++;
        return;
      }
      this.#waiting.push({ ip: dst, proto, payload });
      this.#send(buildEthernet(
        BROADCAST_MAC,
        this.link.mac,
        EtherType.ARP,
        buildArp({
          op: 1,
          senderMac: this.link.mac,
          senderIp: this.ip,
          targetMac: "00:00:00:00:00:00",
          targetIp: dst,
        }),
      ));
      return;
    }
    const id = this.#id = (this.#id + 1) & 0xffff;
    this.#send(
      buildEthernet(
        mac,
        this.link.mac,
        EtherType.IPV4,
        buildIpv4(this.ip, dst, proto, payload, { id }),
      ),
    );
  }

  #send(frame: Uint8Array): void {
    if (this.link.send(frame)) this.stats.sent++;
    else this.stats.sendFailures++;
  }
}
