/**
 * A tiny host-side IPv4 peer on the far end of a pair backend: it answers ARP
 * and ICMP echo, reassembles IP fragments, hands UDP payloads to listeners and
 * sends UDP datagrams to the guest. Just enough for the end-to-end tests.
 *
 * @module
 */
import { BufferFrame } from "../../devices/net/net_frame.ts";
import type { NetFrame } from "../../devices/net/net_frame.ts";
import type { NetPort } from "../../devices/net/backends/net_backend.ts";
import type { PairBackend } from "../../devices/net/backends/pair.ts";

/** A UDP datagram the peer received. */
export interface UdpDatagram {
  /** Sender's IPv4 address as a dotted string. */
  from: string;
  /** Sender's port. */
  sourcePort: number;
  /** Destination port. */
  port: number;
  /** Payload (copied). */
  data: Uint8Array;
}

/** Counters of what the peer saw. */
export interface PeerStats {
  /** Frames received from the guest. */
  frames: number;
  /** ARP requests for the peer's address answered. */
  arpRequests: number;
  /** ICMP echo requests answered. */
  echoRequests: number;
  /** UDP datagrams received (after reassembly). */
  udpDatagrams: number;
  /** UDP payload bytes received. */
  udpBytes: number;
  /** IP fragments received. */
  fragments: number;
  /** Frames sent to the guest. */
  sent: number;
  /** Frames the guest's device did not take (no receive buffer). */
  sendDropped: number;
}

const ETH_ARP = 0x0806;
const ETH_IP = 0x0800;

/** Parses "a.b.c.d". */
export function ip4(text: string): Uint8Array {
  return new Uint8Array(text.split(".").map(Number));
}

function ipText(b: Uint8Array, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

/** The Internet checksum of `b[start, end)`. */
export function inetChecksum(b: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  for (let i = start; i + 1 < end; i += 2) sum += (b[i] << 8) | b[i + 1];
  if ((end - start) & 1) sum += b[end - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

interface Reassembly {
  parts: Map<number, Uint8Array>;
  total: number;
  header: Uint8Array;
}

/** The peer: give it the host end of a pair whose other end is the guest's NIC. */
export class NetPeer implements NetPort {
  /** The peer's MAC address. */
  readonly mac: Uint8Array;
  /** The peer's IPv4 address. */
  readonly ip: Uint8Array;
  /** Counters. */
  readonly stats: PeerStats = {
    frames: 0,
    arpRequests: 0,
    echoRequests: 0,
    udpDatagrams: 0,
    udpBytes: 0,
    fragments: 0,
    sent: 0,
    sendDropped: 0,
  };
  /** Learned from the guest's frames: its MAC, by IPv4 address text. */
  readonly neighbours: Map<string, Uint8Array> = new Map();
  readonly #backend: PairBackend;
  readonly #listeners = new Map<number, (d: UdpDatagram) => void>();
  readonly #reassembly = new Map<string, Reassembly>();
  #outbox: Uint8Array[] = [];
  #scheduled = false;
  #ipId = 1;
  readonly #buffer = new Uint8Array(65536 + 14);
  readonly #frame = new BufferFrame();

  /** Attaches the peer to `backend` (the host end of the cable). */
  constructor(backend: PairBackend, mac: string, ip: string) {
    this.#backend = backend;
    this.mac = new Uint8Array(mac.split(":").map((h) => parseInt(h, 16)));
    this.ip = ip4(ip);
    backend.attach(this);
  }

  /** Calls `listener` for every UDP datagram to `port`. */
  onUdp(port: number, listener: (d: UdpDatagram) => void): void {
    this.#listeners.set(port, listener);
  }

  /**
   * Sends a UDP datagram from `sourcePort` to the guest at `to`:`port` (the
   * guest's MAC must be known: it is learned from any frame the guest sent).
   * The frame leaves in a microtask, after the guest's current transmit batch.
   */
  sendUdp(to: string, port: number, sourcePort: number, payload: Uint8Array): void {
    const mac = this.neighbours.get(to);
    if (mac === undefined) throw new Error(`NetPeer: no MAC known for ${to}`);
    const f = new Uint8Array(14 + 20 + 8 + payload.length);
    f.set(mac, 0);
    f.set(this.mac, 6);
    f[12] = 0x08;
    f[13] = 0x00;
    this.#ipHeader(f, 14, 17, 8 + payload.length, ip4(to));
    const u = 34;
    f[u] = sourcePort >> 8;
    f[u + 1] = sourcePort & 0xff;
    f[u + 2] = port >> 8;
    f[u + 3] = port & 0xff;
    const len = 8 + payload.length;
    f[u + 4] = len >> 8;
    f[u + 5] = len & 0xff;
    f.set(payload, u + 8);
    // Checksum over the pseudo header and the datagram.
    let pseudo = 0;
    for (let i = 26; i < 34; i += 2) pseudo += (f[i] << 8) | f[i + 1];
    pseudo += 17 + len;
    let c = inetChecksum(f, u, u + len, pseudo);
    if (c === 0) c = 0xffff;
    f[u + 6] = c >> 8;
    f[u + 7] = c & 0xff;
    this.#queue(f);
  }

  /** See {@linkcode NetPort.receive}: a frame from the guest. */
  receive(frame: NetFrame, _mayDefer: boolean): boolean {
    this.stats.frames++;
    const n = Math.min(frame.length, this.#buffer.length);
    frame.rewind();
    frame.read(this.#buffer.subarray(0, n));
    this.#handle(this.#buffer.subarray(0, n));
    return true;
  }

  /** See {@linkcode NetPort.flush}. */
  flush(): void {}

  #handle(f: Uint8Array): void {
    if (f.length < 14) return;
    const type = (f[12] << 8) | f[13];
    if (type === ETH_ARP && f.length >= 42) {
      const op = (f[20] << 8) | f[21];
      const senderIp = ipText(f, 28);
      this.neighbours.set(senderIp, f.slice(22, 28));
      if (op === 1 && equal(f.subarray(38, 42), this.ip)) {
        this.stats.arpRequests++;
        const r = new Uint8Array(42);
        r.set(f.subarray(6, 12), 0);
        r.set(this.mac, 6);
        r.set([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2], 12);
        r.set(this.mac, 22);
        r.set(this.ip, 28);
        r.set(f.subarray(22, 32), 32);
        this.#queue(r);
      }
      return;
    }
    if (type !== ETH_IP || f.length < 34) return;
    const ihl = (f[14] & 0xf) * 4;
    const total = (f[16] << 8) | f[17];
    const ip = f.subarray(14, 14 + total);
    if (!equal(ip.subarray(16, 20), this.ip)) return;
    this.neighbours.set(ipText(ip, 12), f.slice(6, 12));
    const flagsFrag = (ip[6] << 8) | ip[7];
    const more = (flagsFrag & 0x2000) !== 0;
    const offset = (flagsFrag & 0x1fff) * 8;
    let payload = ip.subarray(ihl);
    if (more || offset !== 0) {
      this.stats.fragments++;
      const whole = this.#reassemble(ip, ihl, offset, more);
      if (whole === null) return;
      payload = whole;
    }
    const proto = ip[9];
    if (proto === 1 && payload[0] === 8) this.#echo(f, ip, ihl, payload);
    else if (proto === 17 && payload.length >= 8) {
      const port = (payload[2] << 8) | payload[3];
      const d: UdpDatagram = {
        from: ipText(ip, 12),
        sourcePort: (payload[0] << 8) | payload[1],
        port,
        data: payload.slice(8, (payload[4] << 8) | payload[5]),
      };
      this.stats.udpDatagrams++;
      this.stats.udpBytes += d.data.length;
      this.#listeners.get(port)?.(d);
    }
  }

  #reassemble(ip: Uint8Array, ihl: number, offset: number, more: boolean): Uint8Array | null {
    const key = `${ipText(ip, 12)}/${(ip[4] << 8) | ip[5]}/${ip[9]}`;
    let r = this.#reassembly.get(key);
    if (r === undefined) {
      r = { parts: new Map(), total: -1, header: ip.slice(0, ihl) };
      this.#reassembly.set(key, r);
      if (this.#reassembly.size > 256) {
        this.#reassembly.delete(this.#reassembly.keys().next().value!);
      }
    }
    const data = ip.slice(ihl);
    r.parts.set(offset, data);
    if (!more) r.total = offset + data.length;
    if (r.total < 0) return null;
    let have = 0;
    for (const part of r.parts.values()) have += part.length;
    if (have < r.total) return null;
    const whole = new Uint8Array(r.total);
    for (const [at, part] of r.parts) whole.set(part, at);
    this.#reassembly.delete(key);
    return whole;
  }

  #echo(f: Uint8Array, ip: Uint8Array, _ihl: number, icmp: Uint8Array): void {
    this.stats.echoRequests++;
    const r = new Uint8Array(14 + 20 + icmp.length);
    r.set(f.subarray(6, 12), 0);
    r.set(this.mac, 6);
    r[12] = 0x08;
    this.#ipHeader(r, 14, 1, icmp.length, ip.subarray(12, 16));
    const c = 34;
    r.set(icmp, c);
    r[c] = 0; // echo reply
    r[c + 2] = 0;
    r[c + 3] = 0;
    const sum = inetChecksum(r, c, c + icmp.length);
    r[c + 2] = sum >> 8;
    r[c + 3] = sum & 0xff;
    this.#queue(r);
  }

  #ipHeader(f: Uint8Array, at: number, proto: number, payload: number, dst: Uint8Array): void {
    const total = 20 + payload;
    f[at] = 0x45;
    f[at + 1] = 0;
    f[at + 2] = total >> 8;
    f[at + 3] = total & 0xff;
    const id = this.#ipId++ & 0xffff;
    f[at + 4] = id >> 8;
    f[at + 5] = id & 0xff;
    f[at + 6] = 0x40; // don't fragment
    f[at + 7] = 0;
    f[at + 8] = 64;
    f[at + 9] = proto;
    f.set(this.ip, at + 12);
    f.set(dst, at + 16);
    const sum = inetChecksum(f, at, at + 20);
    f[at + 10] = sum >> 8;
    f[at + 11] = sum & 0xff;
  }

  /** Replies go out after the guest's transmit batch, not from inside it. */
  #queue(frame: Uint8Array): void {
    this.#outbox.push(frame);
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      const out = this.#outbox;
      this.#outbox = [];
      for (const f of out) this.#sendOne(f);
      this.#backend.flush();
    });
  }

  #sendOne(f: Uint8Array): boolean {
    const ok = this.#backend.send(this.#frame.set(f));
    if (ok) this.stats.sent++;
    else this.stats.sendDropped++;
    return ok;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A finished TFTP transfer. */
export interface TftpTransfer {
  /** "put" (the guest uploaded) or "get" (the guest downloaded). */
  kind: "put" | "get";
  /** The file name the guest asked for. */
  name: string;
  /** The block size agreed. */
  blockSize: number;
  /** The bytes (uploaded, or served). */
  data: Uint8Array;
  /** Milliseconds from the request to the last acknowledgement. */
  ms: number;
}

interface TftpSession {
  kind: "put" | "get";
  name: string;
  client: string;
  clientPort: number;
  port: number;
  blockSize: number;
  block: number;
  chunks: Uint8Array[];
  received: number;
  data: Uint8Array;
  start: number;
  done: boolean;
}

/**
 * A TFTP server (RFC 1350 with the blksize option, RFC 2348) on the peer's
 * port 69: the guest's busybox `tftp` puts files to it and gets files from it,
 * which makes a bulk UDP transfer in each direction with every byte checked.
 */
export class TftpServer {
  /** Files the guest may get, by name. */
  readonly files: Map<string, Uint8Array> = new Map();
  /** Finished transfers, in order. */
  readonly transfers: TftpTransfer[] = [];
  readonly #peer: NetPeer;
  #nextPort = 40000;
  readonly #sessions = new Map<number, TftpSession>();
  #waiters: (() => void)[] = [];

  /** Listens on `peer`'s UDP port 69. */
  constructor(peer: NetPeer) {
    this.#peer = peer;
    peer.onUdp(69, (d) => this.#request(d));
  }

  /** Resolves with the next finished transfer named `name`. */
  async waitFor(name: string, timeoutMs = 60000): Promise<TftpTransfer> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const t = this.transfers.find((x) => x.name === name);
      if (t !== undefined) return t;
      if (Date.now() > deadline) throw new Error(`TFTP transfer ${name} did not finish`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  #request(d: UdpDatagram): void {
    const b = d.data;
    const op = (b[0] << 8) | b[1];
    if (op !== 1 && op !== 2) return;
    const fields = new TextDecoder().decode(b.subarray(2)).split("\0");
    const name = fields[0];
    let blockSize = 512;
    for (let i = 2; i + 1 < fields.length; i += 2) {
      if (fields[i].toLowerCase() === "blksize") blockSize = Number(fields[i + 1]);
    }
    const port = this.#nextPort++;
    const session: TftpSession = {
      kind: op === 2 ? "put" : "get",
      name,
      client: d.from,
      clientPort: d.sourcePort,
      port,
      blockSize,
      block: 0,
      chunks: [],
      received: 0,
      data: new Uint8Array(0),
      start: performance.now(),
      done: false,
    };
    this.#sessions.set(port, session);
    this.#peer.onUdp(port, (x) => this.#packet(session, x));
    const hasOptions = fields.length > 3 && fields[2] !== "";
    if (session.kind === "get") {
      const file = this.files.get(name);
      if (file === undefined) {
        this.#send(session, errorPacket(1, `no file ${name}`));
        return;
      }
      session.data = file;
    }
    if (hasOptions) {
      this.#send(session, oack(blockSize));
    } else if (session.kind === "put") {
      this.#send(session, ack(0));
    } else {
      this.#sendBlock(session, 1);
    }
  }

  #packet(s: TftpSession, d: UdpDatagram): void {
    const b = d.data;
    const op = (b[0] << 8) | b[1];
    const block = (b[2] << 8) | b[3];
    if (s.kind === "put" && op === 3) {
      if (block === ((s.block + 1) & 0xffff)) {
        const chunk = b.slice(4);
        s.chunks.push(chunk);
        s.received += chunk.length;
        s.block = block;
        if (chunk.length < s.blockSize) this.#finish(s);
      }
      this.#send(s, ack(s.block)); // a duplicate gets the last ack again
    } else if (s.kind === "get" && op === 4) {
      if (block !== (s.block & 0xffff)) return; // a stale duplicate
      // The last block is the first one shorter than blksize (possibly empty).
      if (s.block === Math.floor(s.data.length / s.blockSize) + 1) {
        this.#finish(s);
        return;
      }
      this.#sendBlock(s, s.block + 1);
    }
  }

  #sendBlock(s: TftpSession, n: number): void {
    s.block = n;
    const start = (n - 1) * s.blockSize;
    const chunk = s.data.subarray(start, Math.min(s.data.length, start + s.blockSize));
    const p = new Uint8Array(4 + chunk.length);
    p[1] = 3;
    p[2] = (n >> 8) & 0xff; // block numbers wrap at 65536
    p[3] = n & 0xff;
    p.set(chunk, 4);
    this.#send(s, p);
  }

  #finish(s: TftpSession): void {
    if (s.done) return;
    s.done = true;
    let data = s.data;
    if (s.kind === "put") {
      data = new Uint8Array(s.received);
      let at = 0;
      for (const c of s.chunks) {
        data.set(c, at);
        at += c.length;
      }
    }
    this.transfers.push({
      kind: s.kind,
      name: s.name,
      blockSize: s.blockSize,
      data,
      ms: performance.now() - s.start,
    });
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  #send(s: TftpSession, payload: Uint8Array): void {
    this.#peer.sendUdp(s.client, s.clientPort, s.port, payload);
  }
}

function ack(block: number): Uint8Array {
  return new Uint8Array([0, 4, (block >> 8) & 0xff, block & 0xff]);
}

function oack(blockSize: number): Uint8Array {
  return new Uint8Array([0, 6, ...new TextEncoder().encode(`blksize\0${blockSize}\0`)]);
}

function errorPacket(code: number, message: string): Uint8Array {
  return new Uint8Array([0, 5, 0, code, ...new TextEncoder().encode(message + "\0")]);
}
