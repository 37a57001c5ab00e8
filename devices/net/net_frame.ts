import { DmaAccess } from "../../src/dma/dma_access.ts";
import { DmaTranslation } from "../../src/dma/dma_space.ts";
import type { ChainWriter, DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import { addChecksum } from "./checksum.ts";
import { NetHeader } from "./net_header.ts";

/**
 * One Ethernet frame on its way between a device and a backend: its offload
 * metadata ({@linkcode NetHeader}) and a cursor over its bytes, wherever they
 * live (a guest's transmit chain, or a host buffer).
 *
 * A frame is only valid during the call it is passed to: a backend that keeps
 * the bytes copies them out with {@linkcode NetFrame.read}. Reading moves the
 * cursor; {@linkcode NetFrame.rewind} goes back to byte 0.
 */
export abstract class NetFrame {
  /** The frame's offload metadata. */
  readonly header: NetHeader = new NetHeader();
  /** Frame length in bytes (the Ethernet frame, without virtio_net_hdr). */
  length = 0;

  /** Moves the cursor back to the first byte. */
  abstract rewind(): void;
  /** Bytes between the cursor and the end. */
  abstract get remaining(): number;
  /** Copies up to `dest.length` bytes from the cursor into `dest`; returns how many. */
  abstract read(dest: Uint8Array): number;
  /** Skips up to `n` bytes; returns how many were skipped. */
  abstract skip(n: number): number;
  /**
   * Copies up to `n` bytes from the cursor into a receive chain's writable
   * part, in one copy; returns how many (less when the chain is full).
   */
  abstract copyTo(writer: ChainWriter, n: number): number;
  /**
   * The unfolded ones' complement sum of the bytes from `start` to the end
   * (see {@linkcode addChecksum}); does not move the cursor.
   */
  abstract sum(start: number): number;

  /**
   * Copies the first `dest.length` bytes (or the whole frame when shorter)
   * into `dest` and leaves the cursor at byte 0; returns how many.
   */
  peek(dest: Uint8Array): number {
    this.rewind();
    const n = this.read(dest);
    this.rewind();
    return n;
  }
}

/**
 * A frame held in host memory (a backend's buffer).
 *
 * @example
 * ```ts
 * import { BufferFrame } from "@vireo/vireo/net";
 * const frame = new BufferFrame();
 * frame.set(new Uint8Array(60));
 * console.log(frame.length, frame.header.flags); // 60 0
 * ```
 */
export class BufferFrame extends NetFrame {
  #bytes: Uint8Array = new Uint8Array(0);
  #pos = 0;

  /**
   * Points the frame at `bytes` (no copy: the caller keeps them unchanged
   * while the frame is in use) with empty offload metadata, cursor at 0.
   */
  set(bytes: Uint8Array): this {
    this.#bytes = bytes;
    this.length = bytes.length;
    this.#pos = 0;
    this.header.clear();
    return this;
  }

  /** The bytes the frame stands for. */
  get bytes(): Uint8Array {
    return this.#bytes;
  }

  /** See {@linkcode NetFrame.rewind}. */
  rewind(): void {
    this.#pos = 0;
  }

  /** See {@linkcode NetFrame.remaining}. */
  get remaining(): number {
    return this.length - this.#pos;
  }

  /** See {@linkcode NetFrame.read}. */
  read(dest: Uint8Array): number {
    const n = Math.min(dest.length, this.length - this.#pos);
    dest.set(this.#bytes.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    return n;
  }

  /** See {@linkcode NetFrame.skip}. */
  skip(n: number): number {
    const k = Math.max(0, Math.min(n, this.length - this.#pos));
    this.#pos += k;
    return k;
  }

  /** See {@linkcode NetFrame.copyTo}. */
  copyTo(writer: ChainWriter, n: number): number {
    const k = Math.max(0, Math.min(n, this.length - this.#pos));
    const written = writer.write(this.#bytes.subarray(this.#pos, this.#pos + k));
    this.#pos += written;
    return written;
  }

  /** See {@linkcode NetFrame.sum}. */
  sum(start: number): number {
    return addChecksum(0, this.#bytes, Math.min(start, this.length), this.length, false);
  }
}

/**
 * A frame that still sits in a guest's transmit chain: the readable part of
 * the chain after its `virtio_net_hdr`. Copying it into a peer's receive
 * chain is the only copy of the payload on the pair path.
 */
export class ChainFrame extends NetFrame {
  #chain: DescriptorChain | null = null;
  #skip = 0;
  readonly #t = new DmaTranslation();

  /**
   * Points the frame at `chain`, whose frame bytes start `headerSize` bytes
   * into the readable part; leaves the cursor at frame byte 0. The caller sets
   * {@linkcode NetFrame.header}.
   */
  set(chain: DescriptorChain, headerSize: number): this {
    this.#chain = chain;
    this.#skip = headerSize;
    this.length = chain.readableLength - headerSize;
    this.rewind();
    return this;
  }

  /** See {@linkcode NetFrame.rewind}. */
  rewind(): void {
    const reader = this.#chain!.reader;
    reader.rewind();
    reader.skip(this.#skip);
  }

  /** See {@linkcode NetFrame.remaining}. */
  get remaining(): number {
    return this.#chain!.reader.remaining;
  }

  /** See {@linkcode NetFrame.read}. @throws {DmaFault} */
  read(dest: Uint8Array): number {
    return this.#chain!.reader.read(dest);
  }

  /** See {@linkcode NetFrame.skip}. */
  skip(n: number): number {
    return this.#chain!.reader.skip(n);
  }

  /** See {@linkcode NetFrame.copyTo}. @throws {DmaFault} */
  copyTo(writer: ChainWriter, n: number): number {
    return this.#chain!.reader.copyTo(writer, n);
  }

  /** See {@linkcode NetFrame.sum}. @throws {DmaFault} */
  sum(start: number): number {
    const chain = this.#chain!;
    const t = this.#t;
    let skip = this.#skip + start;
    let sum = 0;
    let odd = false;
    for (let i = 0; i < chain.readableCount; i++) {
      let len = chain.lengths[i];
      let addr = chain.addrs[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      addr += skip;
      len -= skip;
      skip = 0;
      while (len > 0) {
        chain.dma.translate(addr, len, DmaAccess.Read, t);
        sum = addChecksum(sum, t.bytes, t.offset, t.offset + t.length, odd);
        if ((t.length & 1) !== 0) odd = !odd;
        addr += t.length;
        len -= t.length;
      }
    }
    return sum;
  }
}
