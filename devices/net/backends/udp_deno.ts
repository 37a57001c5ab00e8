/**
 * A virtio-net backend that carries Ethernet frames in UDP datagrams (Deno
 * only): one frame per datagram, optionally prefixed with its 12-byte
 * virtio_net_hdr so offload metadata crosses too (like QEMU's `dgram`
 * netdev, or its `vnet_hdr` mode).
 *
 * Uses `Deno.listenDatagram` when the unstable `net` API is enabled, and
 * `node:dgram` otherwise.
 *
 * @module
 */
import { finishChecksum } from "../checksum.ts";
import { NetHdr } from "../constants.ts";
import { BufferFrame, type NetFrame } from "../net_frame.ts";
import { FrameBacklog } from "./frame_backlog.ts";
import type { NetBackend, NetPort } from "./net_backend.ts";

/** A UDP endpoint. */
export interface UdpAddress {
  /** Host name or IP address. */
  hostname: string;
  /** UDP port. */
  port: number;
}

/** Options of {@linkcode UdpBackend.open}. */
export interface UdpBackendOptions {
  /** Local address to bind (default `"127.0.0.1"`). */
  hostname?: string;
  /** Local port (default 0: any free port, see {@linkcode UdpBackend.address}). */
  port?: number;
  /**
   * Where frames are sent. Default: the source of the first datagram received
   * (so one side can listen and the other connect).
   */
  remote?: UdpAddress;
  /**
   * Prefix each datagram with the frame's 12-byte virtio_net_hdr, so partial
   * checksums and GSO frames cross as they are (default false: plain
   * Ethernet frames; checksums are finished before sending and GSO frames,
   * which vireo does not segment, are dropped and counted).
   */
  vnetHeader?: boolean;
  /** Frames held while the guest has no receive buffer (default 256). */
  backlog?: number;
}

/** Counters of a {@linkcode UdpBackend}. */
export interface UdpBackendStats {
  /** Datagrams sent. */
  sent: number;
  /** Datagrams received. */
  received: number;
  /** Frames not sent: no remote known yet, closed, or a GSO frame without `vnetHeader`. */
  dropped: number;
  /** Datagrams received that are not a frame (too short for the header). */
  malformed: number;
  /** Sends the socket reported as failed. */
  sendErrors: number;
}

/** The socket operations the backend needs. */
interface Socket {
  readonly port: number;
  send(bytes: Uint8Array, to: UdpAddress): Promise<void>;
  close(): void;
}

type DenoDatagramConn = {
  addr: { hostname: string; port: number };
  send(
    data: Uint8Array,
    addr: { transport: "udp"; hostname: string; port: number },
  ): Promise<number>;
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<[Uint8Array, { hostname: string; port: number }]>;
};

/**
 * Frames over UDP. Create it with {@linkcode UdpBackend.open}; give it to a
 * {@linkcode VirtioNet}; {@linkcode UdpBackend.close} it when done.
 *
 * @example
 * ```ts ignore
 * import { VirtioNet } from "@vireo/vireo/net";
 * import { UdpBackend } from "@vireo/vireo/net/udp-deno";
 * const backend = await UdpBackend.open({ port: 5555, remote: { hostname: "127.0.0.1", port: 5556 } });
 * const net = new VirtioNet({ mac: "52:54:00:12:34:56", backend });
 * ```
 */
export class UdpBackend implements NetBackend {
  /** Counters. */
  readonly stats: UdpBackendStats = {
    sent: 0,
    received: 0,
    dropped: 0,
    malformed: 0,
    sendErrors: 0,
  };
  /** Frames held for the device. */
  readonly backlog: FrameBacklog;
  /** Where frames are sent (learnt from received datagrams when not given). */
  remote: UdpAddress | null;
  readonly #socket: Socket;
  readonly #vnetHeader: boolean;
  readonly #frame = new BufferFrame();
  #port: NetPort | null = null;
  #closed = false;

  private constructor(
    socket: (onMessage: (data: Uint8Array, from: UdpAddress) => void) => Socket,
    options: UdpBackendOptions,
  ) {
    this.backlog = new FrameBacklog(options.backlog ?? 256);
    this.remote = options.remote ?? null;
    this.#vnetHeader = options.vnetHeader ?? false;
    this.#socket = socket((data, from) => this.#onMessage(data, from));
  }

  /**
   * Binds a UDP socket and returns the backend.
   *
   * @throws {RangeError} when a port is not in 0..65535 or `backlog` is out of range
   */
  static async open(options: UdpBackendOptions = {}): Promise<UdpBackend> {
    const hostname = options.hostname ?? "127.0.0.1";
    const port = options.port ?? 0;
    for (const p of [port, options.remote?.port ?? 0]) {
      if (!Number.isInteger(p) || p < 0 || p > 65535) {
        throw new RangeError(`Cannot open a UDP backend: port ${p} is not in 0..65535`);
      }
    }
    const listen = (Deno as unknown as { listenDatagram?: unknown }).listenDatagram;
    if (typeof listen === "function") {
      const conn = (listen as (o: unknown) => DenoDatagramConn)({
        transport: "udp",
        hostname,
        port,
      });
      return new UdpBackend((onMessage) => {
        (async () => {
          try {
            for await (const [data, from] of conn) onMessage(data, from);
          } catch {
            // closed
          }
        })();
        return {
          port: conn.addr.port,
          send: async (bytes, to) => {
            await conn.send(bytes, { transport: "udp", hostname: to.hostname, port: to.port });
          },
          close: () => conn.close(),
        };
      }, options);
    }
    const dgram = await import("node:dgram");
    const socket = dgram.createSocket(hostname.includes(":") ? "udp6" : "udp4");
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(port, hostname, () => {
        socket.off("error", reject);
        resolve();
      });
    });
    return new UdpBackend((onMessage) => {
      socket.on(
        "message",
        (msg: Uint8Array, info: { address: string; port: number }) =>
          onMessage(msg, { hostname: info.address, port: info.port }),
      );
      socket.on("error", () => {});
      return {
        port: socket.address().port,
        send: (bytes, to) =>
          new Promise<void>((resolve, reject) =>
            socket.send(
              bytes,
              to.port,
              to.hostname,
              (err: unknown) => err ? reject(err) : resolve(),
            )
          ),
        close: () => socket.close(),
      };
    }, options);
  }

  /** The local address the socket is bound to. */
  get address(): UdpAddress {
    return { hostname: "127.0.0.1", port: this.#socket.port };
  }

  /** See {@linkcode NetBackend.attach}. @throws {TypeError} when a device is already attached */
  attach(port: NetPort): void {
    if (this.#port !== null) {
      throw new TypeError("Cannot attach a device to a UDP backend: a device is already attached");
    }
    this.#port = port;
  }

  /** Copies `frame` into a datagram and sends it. */
  send(frame: NetFrame): boolean {
    const remote = this.remote;
    const h = frame.header;
    if (this.#closed || remote === null || (!this.#vnetHeader && h.isGso)) {
      this.stats.dropped++;
      return false;
    }
    const offset = this.#vnetHeader ? NetHdr.SIZE : 0;
    const bytes = new Uint8Array(offset + frame.length);
    frame.rewind();
    frame.read(bytes.subarray(offset));
    if (this.#vnetHeader) h.encode(bytes, 0, 0);
    else if (h.needsCsum) finishChecksum(bytes, h.csumStart, h.csumOffset);
    this.stats.sent++;
    this.#socket.send(bytes, remote).catch(() => this.stats.sendErrors++);
    return true;
  }

  /** Nothing to do: datagrams leave as they are sent. */
  flush(): void {}

  /** Delivers the frames held while the guest had no receive buffer. */
  rxReady(): void {
    if (this.#port !== null && this.backlog.length > 0) this.backlog.drain(this.#port);
  }

  /** Closes the socket. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.backlog.clear();
    try {
      this.#socket.close();
    } catch {
      // already closed
    }
  }

  #onMessage(data: Uint8Array, from: UdpAddress): void {
    if (this.#closed) return;
    this.stats.received++;
    if (this.remote === null) this.remote = from;
    const port = this.#port;
    if (port === null) return;
    const frame = this.#frame;
    if (this.#vnetHeader) {
      if (data.length < NetHdr.SIZE) {
        this.stats.malformed++;
        return;
      }
      frame.set(data.subarray(NetHdr.SIZE));
      frame.header.decode(data, 0);
    } else {
      frame.set(data);
    }
    const backlog = this.backlog;
    // Frames already held go first; the device drains them when it calls rxReady.
    if (backlog.length === 0 && port.receive(frame, true)) {
      port.flush();
      return;
    }
    backlog.push(frame);
  }
}
