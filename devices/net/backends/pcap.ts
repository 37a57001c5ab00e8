import type { NetFrame } from "../net_frame.ts";
import type { NetBackend, NetPort } from "./net_backend.ts";

/**
 * Where pcap bytes go. Called synchronously with a view that is reused
 * afterwards: copy what is kept.
 */
export type PcapSink = (bytes: Uint8Array) => void;

/** Options of {@linkcode PcapRecorder}. */
export interface PcapOptions {
  /** Most bytes recorded per frame (default 65535). */
  snaplen?: number;
  /** The clock, in milliseconds since the Unix epoch (default `Date.now`). */
  now?: () => number;
  /** Which directions to record (default both). */
  direction?: "tx" | "rx" | "both";
}

/** The classic pcap magic (microsecond timestamps). */
export const PCAP_MAGIC = 0xa1b2c3d4;
/** LINKTYPE_ETHERNET. */
export const PCAP_LINKTYPE_ETHERNET = 1;
/** Bytes of the pcap file header. */
export const PCAP_FILE_HEADER_SIZE = 24;
/** Bytes of a pcap record header. */
export const PCAP_RECORD_HEADER_SIZE = 16;

/**
 * A backend wrapper that records every frame crossing a device, in pcap
 * format (Ethernet link type, microsecond timestamps), to a sink: what the
 * device transmits and what it is offered to receive. The virtio_net_hdr is
 * not recorded; frames whose checksum the device would finish appear as the
 * guest wrote them, as in a capture inside the guest.
 *
 * The recorder itself is portable; `pcap_deno.ts` has a file sink.
 *
 * @example
 * ```ts
 * import { createPair, PcapRecorder } from "@vireo/vireo/net";
 * const chunks: Uint8Array[] = [];
 * const [a] = createPair();
 * const recorder = new PcapRecorder(a, (bytes) => chunks.push(bytes.slice()));
 * console.log(chunks.length, recorder.frames); // 1 0 (the file header)
 * ```
 */
export class PcapRecorder implements NetBackend {
  /** The wrapped backend. */
  readonly inner: NetBackend;
  /** Frames recorded. */
  frames = 0;
  readonly #sink: PcapSink;
  readonly #snaplen: number;
  readonly #now: () => number;
  readonly #tx: boolean;
  readonly #rx: boolean;
  readonly #record: Uint8Array;
  readonly #view: DataView;

  /**
   * Wraps `inner` and writes the pcap file header to `sink` at once.
   *
   * @throws {TypeError} when `inner` or `sink` has the wrong type
   * @throws {RangeError} when `snaplen` is not in 1..262144
   */
  constructor(inner: NetBackend, sink: PcapSink, options: PcapOptions = {}) {
    if (typeof inner?.send !== "function") {
      throw new TypeError("Cannot create a pcap recorder: inner is not a NetBackend");
    }
    if (typeof sink !== "function") {
      throw new TypeError("Cannot create a pcap recorder: sink is not a function");
    }
    const snaplen = options.snaplen ?? 65535;
    if (!Number.isInteger(snaplen) || snaplen < 1 || snaplen > 262144) {
      throw new RangeError(`Cannot create a pcap recorder: snaplen ${snaplen} is not in 1..262144`);
    }
    const direction = options.direction ?? "both";
    this.inner = inner;
    this.#sink = sink;
    this.#snaplen = snaplen;
    this.#now = options.now ?? Date.now;
    this.#tx = direction !== "rx";
    this.#rx = direction !== "tx";
    this.#record = new Uint8Array(PCAP_RECORD_HEADER_SIZE + snaplen);
    this.#view = new DataView(this.#record.buffer);
    const header = new Uint8Array(PCAP_FILE_HEADER_SIZE);
    const v = new DataView(header.buffer);
    v.setUint32(0, PCAP_MAGIC, true);
    v.setUint16(4, 2, true);
    v.setUint16(6, 4, true);
    v.setUint32(16, snaplen, true);
    v.setUint32(20, PCAP_LINKTYPE_ETHERNET, true);
    sink(header);
  }

  /** Attaches the device to the wrapped backend, recording what it delivers. */
  attach(port: NetPort): void {
    this.inner.attach({
      receive: (frame, mayDefer) => {
        const consumed = port.receive(frame, mayDefer);
        if (consumed && this.#rx) this.#write(frame);
        return consumed;
      },
      flush: () => port.flush(),
    });
  }

  /** Records `frame`, then sends it through the wrapped backend. */
  send(frame: NetFrame): boolean {
    if (this.#tx) this.#write(frame);
    frame.rewind();
    return this.inner.send(frame);
  }

  /** See {@linkcode NetBackend.flush}. */
  flush(): void {
    this.inner.flush();
  }

  /** See {@linkcode NetBackend.rxReady}. */
  rxReady(): void {
    this.inner.rxReady();
  }

  /** Closes the wrapped backend. */
  close(): void {
    this.inner.close();
  }

  #write(frame: NetFrame): void {
    const captured = Math.min(frame.length, this.#snaplen);
    const ms = this.#now();
    const seconds = Math.floor(ms / 1000);
    const v = this.#view;
    v.setUint32(0, seconds >>> 0, true);
    v.setUint32(4, Math.floor((ms - seconds * 1000) * 1000) >>> 0, true);
    v.setUint32(8, captured, true);
    v.setUint32(12, frame.length, true);
    const data = this.#record.subarray(PCAP_RECORD_HEADER_SIZE, PCAP_RECORD_HEADER_SIZE + captured);
    frame.peek(data);
    this.frames++;
    this.#sink(this.#record.subarray(0, PCAP_RECORD_HEADER_SIZE + captured));
  }
}
