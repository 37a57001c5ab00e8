/**
 * A model of Linux's `drivers/net/virtio_net.c`: probe (features, config,
 * queues), receive refill in the three buffer modes (small, big, mergeable),
 * NAPI-style polling with interrupt suppression, transmit with completion
 * reclaim, the control queue, link status and announce, and a frame-level API
 * on top (send a frame, receive frames).
 *
 * The driver reaches the device only through its transport driver
 * ({@linkcode NetGuestDevice}), guest memory and interrupts. Interrupt
 * callbacks only schedule work, as NAPI does; {@linkcode VirtioNetDriver.poll}
 * is the softirq that does it.
 *
 * @module
 */
import type { UsedBuffer, Virtqueue } from "../virtio/virtqueue.ts";
import { internetChecksum, macToBytes } from "./inet.ts";
import type { NetGuestDevice, NetQueueSpec } from "./net_guest_device.ts";
import {
  NET_HDR_F_DATA_VALID,
  NET_HDR_F_NEEDS_CSUM,
  NET_HDR_LEN,
  NET_OK,
  NET_S_ANNOUNCE,
  NET_S_LINK_UP,
  NetConfigOffset as C,
  NetCtrlCmd as Cmd,
  NetFeature as F,
  NetGsoType,
} from "./virtio_net_uapi.ts";

/** `ETH_HLEN`. */
const ETH_HLEN = 14;
/** `GOOD_PACKET_LEN`: ETH_HLEN + VLAN_HLEN + ETH_DATA_LEN. */
export const GOOD_PACKET_LEN = 1518;
/** `MAX_SKB_FRAGS`. */
const MAX_SKB_FRAGS = 17;
/** Bytes before the data in a big-mode first page (`sizeof(struct padded_vnet_hdr)`). */
const PADDED_VNET_HDR = 32;
/** `NAPI_POLL_WEIGHT`. */
const NAPI_WEIGHT = 64;
/** Control commands spin this many times on the used ring before giving up (the kernel spins forever). */
const CVQ_SPINS = 10_000;
const PAGE_SIZE = 4096;
const VIRTIO_ID_NET = 1;
const VERSION_1 = 32;

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** The device features the driver asks for: Linux's `features[]` table, less what vireo does not model (RSS, hash report, coalescing, stats, standby, tunnels). */
export const VIRTIO_NET_DRIVER_FEATURES: bigint = [
  F.CSUM,
  F.GUEST_CSUM,
  F.CTRL_GUEST_OFFLOADS,
  F.MTU,
  F.MAC,
  F.GUEST_TSO4,
  F.GUEST_TSO6,
  F.GUEST_ECN,
  F.GUEST_UFO,
  F.HOST_TSO4,
  F.HOST_TSO6,
  F.HOST_ECN,
  F.HOST_UFO,
  F.MRG_RXBUF,
  F.STATUS,
  F.CTRL_VQ,
  F.CTRL_RX,
  F.CTRL_VLAN,
  F.GUEST_ANNOUNCE,
  F.MQ,
  F.CTRL_MAC_ADDR,
  F.GUEST_USO4,
  F.GUEST_USO6,
  F.HOST_USO,
  F.SPEED_DUPLEX,
].reduce((m, b) => m | bit(b), 0n);

/** The transport bits Linux's virtio core keeps (`vring_transport_features`). */
export const VIRTIO_NET_TRANSPORT_FEATURES: bigint = [28, 29, 32, 33, 34, 36, 38]
  .reduce((m, b) => m | bit(b), 0n);

const CTRL_DEPENDENT = [
  F.CTRL_RX,
  F.CTRL_VLAN,
  F.GUEST_ANNOUNCE,
  F.MQ,
  F.CTRL_MAC_ADDR,
  F.CTRL_GUEST_OFFLOADS,
];
const GUEST_GSO = [
  F.GUEST_TSO4,
  F.GUEST_TSO6,
  F.GUEST_ECN,
  F.GUEST_UFO,
  F.GUEST_USO4,
  F.GUEST_USO6,
];

/** Receive-buffer modes, as Linux picks them. */
export type NetRxMode = "small" | "big" | "mergeable";

/** The metadata of a received frame (from its virtio_net_hdr). */
export interface NetRxInfo {
  /** The receive queue pair it arrived on. */
  queue: number;
  /** NEEDS_CSUM: the checksum from `csumStart` is partial (CHECKSUM_PARTIAL). */
  needsCsum: boolean;
  /** DATA_VALID: the device validated the checksum (CHECKSUM_UNNECESSARY). */
  dataValid: boolean;
  /** `csum_start`. */
  csumStart: number;
  /** `csum_offset`. */
  csumOffset: number;
  /** `gso_type`. */
  gsoType: number;
  /** `gso_size`. */
  gsoSize: number;
  /** `hdr_len`. */
  hdrLen: number;
  /** Receive buffers the frame used (`num_buffers`, 1 without mergeable buffers). */
  numBuffers: number;
}

/** Offloads for one transmitted frame. */
export interface NetTxOptions {
  /** Transmit queue pair (default 0; taken modulo the pairs in use). */
  queue?: number;
  /**
   * Ask for the checksum from `csumStart` to the end to be finished, stored at
   * `csumStart + csumOffset` (the field holds the pseudo-header sum). Without
   * VIRTIO_NET_F_CSUM the driver finishes it in software (`skb_checksum_help`).
   */
  csum?: { start: number; offset: number };
  /** Segmentation offload; needs the matching HOST_* feature. */
  gso?: { type: number; size: number; hdrLen?: number };
  /** More frames follow at once: defer the kick (`netdev_xmit_more`). */
  more?: boolean;
}

/** A frame taken from the driver's receive list. */
export interface NetReceivedFrame {
  /** The Ethernet frame (a copy out of guest memory: the kernel's skb). */
  frame: Uint8Array;
  /** Its metadata. */
  info: NetRxInfo;
}

/** How to probe the driver. */
export interface VirtioNetDriverOptions {
  /** Device features to ask for (default {@linkcode VIRTIO_NET_DRIVER_FEATURES}). */
  features?: bigint;
  /** Queue pairs to use when MQ is negotiated (Linux: the number of CPUs); default 1. */
  queuePairs?: number;
  /** The MAC address to use when the device offers none (default: a random local address). */
  mac?: string;
  /** Called with each received frame; without it frames wait in {@linkcode VirtioNetDriver.takeReceived}. */
  onReceive?: (frame: Uint8Array, info: NetRxInfo) => void;
  /** Called when the carrier changes. */
  onLinkChange?: (up: boolean) => void;
  /** Called when the device asks for an announce (`netdev_notify_peers`), before ANNOUNCE_ACK. */
  onAnnounce?: () => void;
  /** Ring size cap per queue (default: the device maximum). */
  ringSize?: number;
  /** Frames kept for {@linkcode VirtioNetDriver.takeReceived} at most (default 1024). */
  receiveBacklog?: number;
}

/** Driver statistics (what `ip -s link` and `ethtool -S` would show). */
export interface VirtioNetDriverStats {
  /** Frames received. */
  rxPackets: number;
  /** Bytes received. */
  rxBytes: number;
  /** Frames dropped: malformed, or the receive list was full. */
  rxDropped: number;
  /** Frames too short or with buffers missing (`rx_length_errors`). */
  rxLengthErrors: number;
  /** Frames sent. */
  txPackets: number;
  /** Bytes sent. */
  txBytes: number;
  /** Frames refused: ring full, carrier off, or no memory. */
  txDropped: number;
  /** Times a transmit queue was stopped for a full ring. */
  txStops: number;
  /** Doorbell writes (kicks) on all queues. */
  kicks: number;
  /** NAPI polls run. */
  napiPolls: number;
  /** Queue interrupts taken. */
  interrupts: number;
  /** Control commands answered VIRTIO_NET_ERR (or not answered). */
  ctrlErrors: number;
}

/** One receive queue: `struct receive_queue`. */
class ReceiveQueue {
  scheduled = false;
  /** Mergeable: EWMA of packet lengths (`mrg_avg_pkt_len`). */
  avgPktLen = GOOD_PACKET_LEN;
  /** Mergeable: the smallest payload area of a buffer (`min_buf_len`). */
  minBufLen = GOOD_PACKET_LEN;
  /** Buffer sizes by address (token) for small and mergeable buffers. */
  readonly sizes = new Map<number, number>();
  /** Big mode: the pages of each posted chain, by first page. */
  readonly chains = new Map<number, number[]>();
  constructor(readonly index: number, readonly vq: Virtqueue<number>) {}
}

/** One transmit queue: `struct send_queue`. */
class SendQueue {
  scheduled = false;
  stopped = false;
  constructor(readonly index: number, readonly vq: Virtqueue<TxBuf>) {}
}

interface TxBuf {
  addr: number;
  size: number;
  len: number;
}

/**
 * The guest's virtio-net driver. {@linkcode VirtioNetDriver.probe} it on a
 * transport driver's device, {@linkcode VirtioNetDriver.open} it, then
 * {@linkcode VirtioNetDriver.send} frames and run
 * {@linkcode VirtioNetDriver.poll} (after interrupts) to receive and reclaim.
 *
 * @example
 * ```ts ignore
 * const net = VirtioNetDriver.probe(guestDevice, { onReceive: (frame) => console.log(frame.length) });
 * net.open();
 * net.send(frame);
 * net.poll();
 * ```
 */
export class VirtioNetDriver {
  /** The transport driver's device. */
  readonly device: NetGuestDevice;
  /** The negotiated features. */
  readonly features: bigint;
  /** Receive-buffer mode. */
  readonly rxMode: NetRxMode;
  /** `max_virtqueue_pairs` (1 without MQ). */
  readonly maxQueuePairs: number;
  /** The MTU (config `mtu` with MTU, else 1500). */
  readonly mtu: number;
  /** Link speed in Mbit/s (0xffffffff unknown; with SPEED_DUPLEX). */
  speed = 0xffff_ffff;
  /** Duplex: 1 full, 0 half, 0xff unknown. */
  duplex = 0xff;
  /** Statistics. */
  readonly stats: VirtioNetDriverStats = {
    rxPackets: 0,
    rxBytes: 0,
    rxDropped: 0,
    rxLengthErrors: 0,
    txPackets: 0,
    txBytes: 0,
    txDropped: 0,
    txStops: 0,
    kicks: 0,
    napiPolls: 0,
    interrupts: 0,
    ctrlErrors: 0,
  };
  #mac: Uint8Array;
  #currPairs = 1;
  #linkUp = false;
  #open = false;
  #configPending = false;
  #promisc = false;
  #allmulti = false;
  readonly #rqs: ReceiveQueue[] = [];
  readonly #sqs: SendQueue[] = [];
  readonly #cvq: Virtqueue<number> | null;
  readonly #ctrlBuf: number;
  readonly #bigFrags: number;
  readonly #options: VirtioNetDriverOptions;
  readonly #received: NetReceivedFrame[] = [];
  readonly #used: UsedBuffer<number> = { token: 0, len: 0 };
  readonly #hdr = new Uint8Array(NET_HDR_LEN);
  readonly #hdrView = new DataView(this.#hdr.buffer);
  readonly #rxHdr = new Uint8Array(NET_HDR_LEN);
  readonly #rxHdrView = new DataView(this.#rxHdr.buffer);

  private constructor(
    device: NetGuestDevice,
    features: bigint,
    options: VirtioNetDriverOptions,
    config: { mac: Uint8Array; maxPairs: number; mtu: number },
  ) {
    this.device = device;
    this.features = features;
    this.#options = options;
    this.#mac = config.mac;
    this.maxQueuePairs = config.maxPairs;
    this.mtu = config.mtu;
    const has = (b: number) => (features & bit(b)) !== 0n;
    const guestGso = GUEST_GSO.some(has);
    this.rxMode = has(F.MRG_RXBUF) ? "mergeable" : guestGso || config.mtu > 1500 ? "big" : "small";
    this.#bigFrags = guestGso ? MAX_SKB_FRAGS : Math.ceil(config.mtu / PAGE_SIZE);
    const pairs = config.maxPairs;
    const specs: NetQueueSpec<unknown>[] = [];
    for (let i = 0; i < pairs; i++) {
      specs.push({
        name: `input.${i}`,
        callback: () => this.#rxInterrupt(i, true),
        ctx: this.rxMode === "mergeable",
        size: options.ringSize,
      });
      specs.push({
        name: `output.${i}`,
        callback: () => this.#txInterrupt(i),
        size: options.ringSize,
      });
    }
    if (has(F.CTRL_VQ)) specs.push({ name: "control", size: options.ringSize });
    const vqs = device.setupQueues(specs);
    // mergeable_min_buf_len: enough that a full ring holds the largest packet.
    const packetLen = guestGso || config.mtu > 1500 ? 65535 : config.mtu;
    for (let i = 0; i < pairs; i++) {
      const rq = new ReceiveQueue(i, vqs[2 * i] as Virtqueue<number>);
      const bufLen = NET_HDR_LEN + ETH_HLEN + 4 + packetLen;
      rq.minBufLen = Math.max(
        Math.max(Math.ceil(bufLen / rq.vq.size), NET_HDR_LEN) - NET_HDR_LEN,
        GOOD_PACKET_LEN,
      );
      this.#rqs.push(rq);
      this.#sqs.push(new SendQueue(i, vqs[2 * i + 1] as Virtqueue<TxBuf>));
    }
    this.#cvq = has(F.CTRL_VQ) ? vqs[2 * pairs] as Virtqueue<number> : null;
    const ctrl = this.#cvq === null ? null : device.heap.kmalloc(1024);
    if (this.#cvq !== null && ctrl === null) {
      device.deleteQueues();
      throw new Error("virtio_net: no memory for the control buffers");
    }
    this.#ctrlBuf = ctrl ?? 0;
    this.#currPairs = Math.max(1, Math.min(options.queuePairs ?? 1, pairs));
  }

  /**
   * Probes the device: negotiates features, reads the config, creates the
   * queues, sets DRIVER_OK, then sets the queue pairs and (without a device
   * MAC) the address, and reads the link status. Models `virtnet_probe`.
   *
   * @throws {TypeError} when the device is not a network device
   * @throws {Error} when negotiation, queue setup or memory fails (the device is marked FAILED)
   */
  static probe(device: NetGuestDevice, options: VirtioNetDriverOptions = {}): VirtioNetDriver {
    if (device?.deviceId !== VIRTIO_ID_NET) {
      throw new TypeError(`Cannot probe virtio-net: device id ${device?.deviceId} is not 1`);
    }
    let wanted = (options.features ?? VIRTIO_NET_DRIVER_FEATURES) | VIRTIO_NET_TRANSPORT_FEATURES;
    // virtnet_validate: drop MTU when the device's is below the minimum.
    if (device.readConfig16(C.MTU) < 68) wanted &= ~bit(F.MTU);
    let features: bigint;
    try {
      features = device.negotiate(wanted);
      const has = (b: number) => (features & bit(b)) !== 0n;
      if (!has(VERSION_1)) throw new Error("virtio_net: device is not modern (no VERSION_1)");
      if (!has(F.CTRL_VQ) && CTRL_DEPENDENT.some(has)) {
        throw new Error("virtio_net: device advertises control features without CTRL_VQ");
      }
      const mac = has(F.MAC)
        ? device.readConfig(C.MAC, 6)
        : options.mac !== undefined
        ? macBytes(options.mac)
        : randomMac();
      let maxPairs = has(F.MQ) ? device.readConfig16(C.MAX_VIRTQUEUE_PAIRS) : 1;
      if (maxPairs < 1 || maxPairs > 0x8000) maxPairs = 1;
      const mtu = has(F.MTU) ? device.readConfig16(C.MTU) : 1500;
      const driver = new VirtioNetDriver(device, features, options, { mac, maxPairs, mtu });
      if (has(F.SPEED_DUPLEX)) {
        driver.speed = device.readConfig32(C.SPEED);
        driver.duplex = device.readConfig8(C.DUPLEX);
      }
      device.onConfigChange(() => {
        driver.#configPending = true;
      });
      device.setDriverOk();
      if (has(F.MQ)) driver.#setQueues(driver.#currPairs);
      if (!has(F.MAC) && has(F.CTRL_MAC_ADDR)) {
        driver.#command(Cmd.MAC, Cmd.MAC_ADDR_SET, [driver.#mac]);
      }
      if (has(F.STATUS)) driver.#configWork();
      else driver.#setLink(true);
      return driver;
    } catch (e) {
      device.fail();
      throw e;
    }
  }

  /** The MAC address in use. */
  get mac(): string {
    return Array.from(this.#mac, (b) => b.toString(16).padStart(2, "0")).join(":");
  }

  /** The carrier state. */
  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** Queue pairs in use (`curr_queue_pairs`). */
  get queuePairs(): number {
    return this.#currPairs;
  }

  /** True when NAPI or config work is scheduled: call {@linkcode VirtioNetDriver.poll}. */
  get pending(): boolean {
    return this.#configPending || this.#rqs.some((q) => q.scheduled) ||
      this.#sqs.some((q) => q.scheduled);
  }

  /** True when `bit` was negotiated. */
  hasFeature(bit: number): boolean {
    return ((this.features >> BigInt(bit)) & 1n) === 1n;
  }

  /**
   * Brings the interface up: fills the receive queues in use and programs the
   * receive filter (PROMISC and ALLMULTI off, empty MAC table) with CTRL_RX.
   * Models `virtnet_open` and `virtnet_set_rx_mode`.
   */
  open(): void {
    if (this.#open) return;
    this.#open = true;
    for (let i = 0; i < this.#currPairs; i++) {
      this.#fill(this.#rqs[i]);
      // virtnet_napi_enable: schedule once, in case the device filled buffers
      // before NAPI was on (it would not interrupt again).
      this.#rxInterrupt(i, false);
    }
    for (let i = 0; i < this.maxQueuePairs; i++) this.#txInterrupt(i, false);
    if (this.hasFeature(F.CTRL_RX)) this.setRxMode({});
  }

  /**
   * Sends one Ethernet frame. Returns false when it was not queued (carrier
   * off, ring full, no memory): the kernel would keep it in the qdisc.
   * Models `start_xmit` / `xmit_skb`.
   *
   * @throws {RangeError} when the frame is shorter than an Ethernet header or
   *   asks for an offload that was not negotiated
   */
  send(frame: Uint8Array, options: NetTxOptions = {}): boolean {
    if (!(frame instanceof Uint8Array) || frame.length < ETH_HLEN) {
      throw new RangeError(`Cannot send a frame of ${frame?.length} bytes: shorter than 14`);
    }
    const sq = this.#sqs[(options.queue ?? 0) % this.#currPairs];
    const h = this.#hdr;
    h.fill(0);
    // The frame is copied only when a checksum must be finished in it (the
    // caller's bytes stay untouched); otherwise it goes straight to the buffer.
    const data = options.csum !== undefined && !this.hasFeature(F.CSUM) ? frame.slice() : frame;
    if (options.gso !== undefined) {
      const base = options.gso.type & ~NetGsoType.ECN;
      const need = base === NetGsoType.TCPV4
        ? F.HOST_TSO4
        : base === NetGsoType.TCPV6
        ? F.HOST_TSO6
        : base === NetGsoType.UDP
        ? F.HOST_UFO
        : base === NetGsoType.UDP_L4
        ? F.HOST_USO
        : -1;
      if (need < 0 || !this.hasFeature(need)) {
        throw new RangeError(`Cannot send a GSO frame of type ${options.gso.type}: not negotiated`);
      }
      if ((options.gso.type & NetGsoType.ECN) !== 0 && !this.hasFeature(F.HOST_ECN)) {
        throw new RangeError("Cannot send a GSO frame with ECN: HOST_ECN was not negotiated");
      }
      if (options.csum === undefined) {
        throw new RangeError("Cannot send a GSO frame without a partial checksum (csum)");
      }
      h[1] = options.gso.type;
      this.#hdrView.setUint16(2, options.gso.hdrLen ?? 0, true);
      this.#hdrView.setUint16(4, options.gso.size, true);
    }
    if (options.csum !== undefined) {
      const { start, offset } = options.csum;
      if (start + offset + 2 > data.length) {
        throw new RangeError(
          `Cannot send: checksum field at ${start + offset} is outside the frame`,
        );
      }
      if (this.hasFeature(F.CSUM)) {
        h[0] = NET_HDR_F_NEEDS_CSUM;
        this.#hdrView.setUint16(6, start, true);
        this.#hdrView.setUint16(8, offset, true);
      } else {
        // skb_checksum_help: finish it here.
        const c = internetChecksum(data, start, data.length);
        data[start + offset] = (c === 0 ? 0xffff : c) >> 8;
        data[start + offset + 1] = (c === 0 ? 0xffff : c) & 0xff;
      }
    }
    if (!this.#linkUp) {
      this.stats.txDropped++;
      return false;
    }
    this.#freeOldXmit(sq);
    if (sq.stopped) {
      this.stats.txDropped++;
      return false;
    }
    const size = NET_HDR_LEN + data.length;
    const heap = this.device.heap;
    const addr = heap.kmalloc(size);
    if (addr === null) {
      this.stats.txDropped++;
      return false;
    }
    const mem = this.device.memory;
    mem.write(addr, h);
    mem.write(addr + NET_HDR_LEN, data);
    const vq = sq.vq;
    if (vq.addOutbuf([{ addr, length: size }], { addr, size, len: data.length }) < 0) {
      heap.kfree(addr);
      this.stats.txDropped++;
      return false;
    }
    if (vq.numFree < 1) {
      // check_sq_full_and_disable
      sq.stopped = true;
      this.stats.txStops++;
      if (!vq.enableCbDelayed()) {
        this.#freeOldXmit(sq);
        if (vq.numFree >= 1) {
          sq.stopped = false;
          vq.disableCb();
        }
      }
    }
    if (!options.more || sq.stopped) this.#kick(vq);
    return true;
  }

  /** Rings the doorbell of every transmit queue with frames added under `more`. */
  flush(): void {
    for (const sq of this.#sqs) this.#kick(sq.vq);
  }

  /**
   * The softirq: runs config work and every scheduled NAPI poll (receive up
   * to `budget` frames per queue, reclaim transmit buffers). Returns the
   * frames received. Models `net_rx_action` with `virtnet_poll` and
   * `virtnet_poll_tx`.
   */
  poll(budget: number = NAPI_WEIGHT): number {
    if (this.#configPending) {
      this.#configPending = false;
      this.#configWork();
    }
    let work = 0;
    for (const rq of this.#rqs) {
      if (!rq.scheduled) continue;
      this.stats.napiPolls++;
      const received = this.#receive(rq, budget);
      work += received;
      if (received < budget) {
        // virtqueue_napi_complete
        const opaque = rq.vq.enableCbPrepare();
        rq.scheduled = false;
        if (rq.vq.poll(opaque)) {
          rq.vq.disableCb();
          rq.scheduled = true;
        }
      }
    }
    for (const sq of this.#sqs) {
      if (!sq.scheduled) continue;
      this.stats.napiPolls++;
      this.#freeOldXmit(sq);
      const opaque = sq.vq.enableCbPrepare();
      sq.scheduled = false;
      if (sq.vq.poll(opaque)) {
        sq.vq.disableCb();
        sq.scheduled = true;
      }
    }
    return work;
  }

  /** Takes the frames received since the last call (when no `onReceive` was given). */
  takeReceived(): NetReceivedFrame[] {
    return this.#received.splice(0);
  }

  /** Reclaims completed transmit buffers on every queue now (`free_old_xmit`). */
  reclaim(): void {
    for (const sq of this.#sqs) this.#freeOldXmit(sq);
  }

  // ---- control commands ---------------------------------------------------------

  /**
   * Programs the receive filter: PROMISC, ALLMULTI, then the MAC table.
   * Returns false when a command failed. Models `virtnet_set_rx_mode`.
   */
  setRxMode(
    mode: { promisc?: boolean; allmulti?: boolean; unicast?: string[]; multicast?: string[] },
  ): boolean {
    if (!this.hasFeature(F.CTRL_RX)) return false;
    this.#promisc = mode.promisc ?? this.#promisc;
    this.#allmulti = mode.allmulti ?? this.#allmulti;
    let ok = this.#command(Cmd.RX, Cmd.RX_PROMISC, [new Uint8Array([this.#promisc ? 1 : 0])]);
    ok = this.#command(Cmd.RX, Cmd.RX_ALLMULTI, [new Uint8Array([this.#allmulti ? 1 : 0])]) && ok;
    const uc = mode.unicast ?? [];
    const mc = mode.multicast ?? [];
    return this.#command(Cmd.MAC, Cmd.MAC_TABLE_SET, [macTable(uc), macTable(mc)]) && ok;
  }

  /** Sets promiscuous mode (CTRL_RX). */
  setPromisc(on: boolean): boolean {
    if (!this.hasFeature(F.CTRL_RX)) return false;
    this.#promisc = on;
    return this.#command(Cmd.RX, Cmd.RX_PROMISC, [new Uint8Array([on ? 1 : 0])]);
  }

  /** Sets all-multicast mode (CTRL_RX). */
  setAllmulti(on: boolean): boolean {
    if (!this.hasFeature(F.CTRL_RX)) return false;
    this.#allmulti = on;
    return this.#command(Cmd.RX, Cmd.RX_ALLMULTI, [new Uint8Array([on ? 1 : 0])]);
  }

  /**
   * Changes the MAC address with MAC_ADDR_SET. Returns false without
   * CTRL_MAC_ADDR or when the device refused. Models `virtnet_set_mac_address`.
   */
  setMacAddress(mac: string): boolean {
    const bytes = macBytes(mac);
    if (!this.hasFeature(F.CTRL_MAC_ADDR)) return false;
    if (!this.#command(Cmd.MAC, Cmd.MAC_ADDR_SET, [bytes])) return false;
    this.#mac = bytes;
    return true;
  }

  /** Accepts VLAN `vid` (CTRL_VLAN). Models `virtnet_vlan_rx_add_vid`. */
  vlanAdd(vid: number): boolean {
    if (!this.hasFeature(F.CTRL_VLAN)) return false;
    return this.#command(Cmd.VLAN, Cmd.VLAN_ADD, [le16(vid)]);
  }

  /** Stops accepting VLAN `vid`. Models `virtnet_vlan_rx_kill_vid`. */
  vlanDel(vid: number): boolean {
    if (!this.hasFeature(F.CTRL_VLAN)) return false;
    return this.#command(Cmd.VLAN, Cmd.VLAN_DEL, [le16(vid)]);
  }

  /**
   * Uses `pairs` queue pairs (MQ): VQ_PAIRS_SET, then fills new receive
   * queues. Models `virtnet_set_queues`.
   *
   * @throws {RangeError} when `pairs` is not in 1..maxQueuePairs
   */
  setQueuePairs(pairs: number): boolean {
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > this.maxQueuePairs) {
      throw new RangeError(`Cannot use ${pairs} queue pairs: not in 1..${this.maxQueuePairs}`);
    }
    if (!this.#setQueues(pairs)) return false;
    if (this.#open) { for (let i = 0; i < pairs; i++) this.#fill(this.#rqs[i]); }
    return true;
  }

  /**
   * Sets the receive offloads in use (a mask of GUEST_* feature bits) with
   * GUEST_OFFLOADS_SET. Models `virtnet_set_guest_offloads`.
   */
  setGuestOffloads(mask: bigint): boolean {
    if (!this.hasFeature(F.CTRL_GUEST_OFFLOADS)) return false;
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, mask, true);
    return this.#command(Cmd.GUEST_OFFLOADS, Cmd.GUEST_OFFLOADS_SET, [b]);
  }

  /**
   * Removes the driver: resets the device, frees every buffer still posted
   * and deletes the queues. Models `virtnet_remove`.
   */
  remove(): void {
    this.device.reset();
    const heap = this.device.heap;
    for (const rq of this.#rqs) {
      for (let t = rq.vq.detachUnusedBuf(); t !== null; t = rq.vq.detachUnusedBuf()) {
        this.#freeRxBuf(rq, t);
      }
    }
    for (const sq of this.#sqs) {
      for (let t = sq.vq.detachUnusedBuf(); t !== null; t = sq.vq.detachUnusedBuf()) {
        heap.kfree(t.addr);
      }
    }
    if (this.#cvq !== null) {
      while (this.#cvq.detachUnusedBuf() !== null) { /* ctrl buffers are the static block */ }
      heap.kfree(this.#ctrlBuf);
    }
    this.device.deleteQueues();
    this.#open = false;
  }

  // ---- internals --------------------------------------------------------------------

  /** `skb_recv_done` → `virtqueue_napi_schedule`. */
  #rxInterrupt(i: number, count = true): void {
    if (count) this.stats.interrupts++;
    const rq = this.#rqs[i];
    if (rq === undefined || rq.scheduled) return;
    rq.vq.disableCb();
    rq.scheduled = true;
  }

  /** `skb_xmit_done` → `virtqueue_napi_schedule`. */
  #txInterrupt(i: number, count = true): void {
    if (count) this.stats.interrupts++;
    const sq = this.#sqs[i];
    if (sq === undefined || sq.scheduled) return;
    sq.vq.disableCb();
    sq.scheduled = true;
  }

  #kick(vq: Virtqueue<unknown>): void {
    if (vq.kickPrepare() && vq.notify()) this.stats.kicks++;
  }

  #setLink(up: boolean): void {
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    this.#options.onLinkChange?.(up);
  }

  /** `virtnet_config_changed_work`. */
  #configWork(): void {
    if (!this.hasFeature(F.STATUS)) return;
    const v = this.device.readConfig16(C.STATUS);
    if ((v & NET_S_ANNOUNCE) !== 0) {
      this.#options.onAnnounce?.();
      if (this.hasFeature(F.GUEST_ANNOUNCE)) this.#command(Cmd.ANNOUNCE, Cmd.ANNOUNCE_ACK, []);
    }
    const up = (v & NET_S_LINK_UP) !== 0;
    if (up && !this.#linkUp && this.hasFeature(F.SPEED_DUPLEX)) {
      this.speed = this.device.readConfig32(C.SPEED);
      this.duplex = this.device.readConfig8(C.DUPLEX);
    }
    this.#setLink(up);
  }

  #setQueues(pairs: number): boolean {
    if (this.#cvq === null || !this.hasFeature(F.MQ)) return false;
    if (!this.#command(Cmd.MQ, Cmd.MQ_VQ_PAIRS_SET, [le16(pairs)])) return false;
    this.#currPairs = pairs;
    return true;
  }

  /**
   * Sends a control command and busy-waits for the answer. Models
   * `virtnet_send_command`.
   */
  #command(cls: number, cmd: number, data: Uint8Array[]): boolean {
    const cvq = this.#cvq;
    if (cvq === null) return false;
    const mem = this.device.memory;
    const base = this.#ctrlBuf;
    mem.write(base, new Uint8Array([cls, cmd]));
    mem.write8(base + 2, 0xff);
    const out = [{ addr: base, length: 2 }];
    let off = 16;
    for (const d of data) {
      if (off + d.length > 1024) throw new RangeError("Cannot send a control command over 1 KiB");
      mem.write(base + off, d);
      out.push({ addr: base + off, length: d.length });
      off += Math.ceil(d.length / 8) * 8;
    }
    if (cvq.addSgs(out, [{ addr: base + 2, length: 1 }], base) < 0) {
      this.stats.ctrlErrors++;
      return false;
    }
    this.stats.kicks++;
    if (!cvq.kick()) {
      this.stats.ctrlErrors++;
      return false;
    }
    for (let spin = 0; spin < CVQ_SPINS; spin++) {
      if (cvq.getBuf(this.#used) !== null) {
        const ok = mem.read8(base + 2) === NET_OK;
        if (!ok) this.stats.ctrlErrors++;
        return ok;
      }
      if (cvq.isBroken()) break;
    }
    this.stats.ctrlErrors++;
    return false;
  }

  // ---- receive ---------------------------------------------------------------------

  /** Posts receive buffers until the ring is full, then kicks. Models `try_fill_recv`. */
  #fill(rq: ReceiveQueue): boolean {
    let oom = false;
    const vq = rq.vq;
    while (vq.numFree > 0) {
      const err = this.rxMode === "mergeable"
        ? this.#addRecvbufMergeable(rq)
        : this.rxMode === "big"
        ? this.#addRecvbufBig(rq)
        : this.#addRecvbufSmall(rq);
      if (err !== 0) {
        oom = err === -12;
        break;
      }
    }
    this.#kick(vq);
    return !oom;
  }

  #addRecvbufSmall(rq: ReceiveQueue): number {
    const len = NET_HDR_LEN + GOOD_PACKET_LEN;
    const addr = this.device.heap.kmalloc(len);
    if (addr === null) return -12;
    const err = rq.vq.addInbuf([{ addr, length: len }], addr);
    if (err < 0) this.device.heap.kfree(addr);
    else rq.sizes.set(addr, len);
    return err;
  }

  #addRecvbufMergeable(rq: ReceiveQueue): number {
    // get_mergeable_buf_len: EWMA of packet lengths, clamped, cache aligned.
    const avg = Math.min(Math.max(Math.round(rq.avgPktLen), rq.minBufLen), PAGE_SIZE - NET_HDR_LEN);
    const len = Math.ceil((NET_HDR_LEN + avg) / 64) * 64;
    const addr = this.device.heap.kmalloc(len);
    if (addr === null) return -12;
    const err = rq.vq.addInbuf([{ addr, length: len }], addr);
    if (err < 0) this.device.heap.kfree(addr);
    else rq.sizes.set(addr, len);
    return err;
  }

  #addRecvbufBig(rq: ReceiveQueue): number {
    const pages = this.device.pages;
    const list: number[] = [];
    for (let i = 0; i < this.#bigFrags + 1; i++) {
      const p = pages.allocPages(1);
      if (p === null) {
        for (const q of list) pages.freePages(q);
        return -12;
      }
      list.push(p);
    }
    const first = list[0];
    const sgs = [
      { addr: first, length: NET_HDR_LEN },
      { addr: first + PADDED_VNET_HDR, length: PAGE_SIZE - PADDED_VNET_HDR },
      ...list.slice(1).map((p) => ({ addr: p, length: PAGE_SIZE })),
    ];
    const err = rq.vq.addInbuf(sgs, first);
    if (err < 0) { for (const q of list) pages.freePages(q); }
    else rq.chains.set(first, list);
    return err;
  }

  #freeRxBuf(rq: ReceiveQueue, token: number): void {
    if (this.rxMode === "big") {
      const list = rq.chains.get(token);
      rq.chains.delete(token);
      for (const p of list ?? []) this.device.pages.freePages(p);
    } else {
      rq.sizes.delete(token);
      this.device.heap.kfree(token);
    }
  }

  /** `virtnet_receive`: up to `budget` frames, then refill when half empty. */
  #receive(rq: ReceiveQueue, budget: number): number {
    let packets = 0;
    const vq = rq.vq;
    while (packets < budget) {
      const u = vq.getBuf(this.#used);
      if (u === null) break;
      this.#receiveBuf(rq, u.token, u.len);
      packets++;
    }
    if (this.#open && vq.numFree > Math.min(budget, vq.size) / 2) this.#fill(rq);
    return packets;
  }

  /** `receive_buf` for the three modes. */
  #receiveBuf(rq: ReceiveQueue, token: number, len: number): void {
    const mem = this.device.memory;
    if (len < NET_HDR_LEN + ETH_HLEN) {
      this.stats.rxLengthErrors++;
      this.stats.rxDropped++;
      this.#freeRxBuf(rq, token);
      return;
    }
    // The header is read into a scratch buffer: only its fields leave this function.
    const hdr = this.#rxHdr;
    mem.read(token, hdr);
    const hv = this.#rxHdrView;
    let frame: Uint8Array;
    let numBuffers = 1;
    if (this.rxMode === "small") {
      frame = new Uint8Array(len - NET_HDR_LEN);
      mem.read(token + NET_HDR_LEN, frame);
      this.#freeRxBuf(rq, token);
    } else if (this.rxMode === "big") {
      const list = rq.chains.get(token) ?? [];
      const total = len - NET_HDR_LEN;
      frame = new Uint8Array(total);
      let off = 0;
      for (let i = 0; i < list.length && off < total; i++) {
        const start = i === 0 ? list[0] + PADDED_VNET_HDR : list[i];
        const room = i === 0 ? PAGE_SIZE - PADDED_VNET_HDR : PAGE_SIZE;
        const n = Math.min(room, total - off);
        mem.read(start, frame.subarray(off, off + n));
        off += n;
      }
      this.#freeRxBuf(rq, token);
    } else {
      numBuffers = hv.getUint16(10, true);
      const size = rq.sizes.get(token) ?? 0;
      if (numBuffers === 0 || len > size) {
        this.stats.rxLengthErrors++;
        this.stats.rxDropped++;
        this.#freeRxBuf(rq, token);
        return;
      }
      const parts: Uint8Array[] = [];
      const first = new Uint8Array(len - NET_HDR_LEN);
      mem.read(token + NET_HDR_LEN, first);
      parts.push(first);
      this.#freeRxBuf(rq, token);
      let total = first.length;
      for (let i = 1; i < numBuffers; i++) {
        const u = rq.vq.getBuf(this.#used);
        if (u === null) {
          // "rx error: %d buffers out of %d missing"
          this.stats.rxLengthErrors++;
          this.stats.rxDropped++;
          return;
        }
        const bufSize = rq.sizes.get(u.token) ?? 0;
        if (u.len > bufSize) {
          // "rx error: len %u exceeds truesize %lu"
          this.#freeRxBuf(rq, u.token);
          this.stats.rxLengthErrors++;
          this.stats.rxDropped++;
          return;
        }
        const part = new Uint8Array(u.len);
        mem.read(u.token, part);
        this.#freeRxBuf(rq, u.token);
        parts.push(part);
        total += part.length;
      }
      if (parts.length === 1) {
        frame = first;
      } else {
        frame = new Uint8Array(total);
        let off = 0;
        for (const p of parts) {
          frame.set(p, off);
          off += p.length;
        }
      }
      rq.avgPktLen += (frame.length - rq.avgPktLen) / 64;
    }
    const flags = hdr[0];
    const info: NetRxInfo = {
      queue: rq.index,
      needsCsum: (flags & NET_HDR_F_NEEDS_CSUM) !== 0,
      dataValid: (flags & NET_HDR_F_DATA_VALID) !== 0,
      csumStart: hv.getUint16(6, true),
      csumOffset: hv.getUint16(8, true),
      gsoType: hdr[1],
      gsoSize: hv.getUint16(4, true),
      hdrLen: hv.getUint16(2, true),
      numBuffers,
    };
    this.stats.rxPackets++;
    this.stats.rxBytes += frame.length;
    const cb = this.#options.onReceive;
    if (cb !== undefined) {
      cb(frame, info);
    } else if (this.#received.length < (this.#options.receiveBacklog ?? 1024)) {
      this.#received.push({ frame, info });
    } else {
      this.stats.rxDropped++;
    }
  }

  // ---- transmit ----------------------------------------------------------------------

  /** `free_old_xmit`: reclaims used transmit buffers and wakes a stopped queue. */
  #freeOldXmit(sq: SendQueue): void {
    const heap = this.device.heap;
    for (;;) {
      const u = sq.vq.getBuf() as UsedBuffer<TxBuf> | null;
      if (u === null) break;
      heap.kfree(u.token.addr);
      this.stats.txPackets++;
      this.stats.txBytes += u.token.len;
    }
    if (sq.stopped && sq.vq.numFree >= 1) sq.stopped = false;
  }
}

function le16(v: number): Uint8Array {
  return new Uint8Array([v & 0xff, (v >> 8) & 0xff]);
}

function macBytes(mac: string): Uint8Array {
  return macToBytes(mac);
}

function macTable(macs: string[]): Uint8Array {
  const out = new Uint8Array(4 + 6 * macs.length);
  new DataView(out.buffer).setUint32(0, macs.length, true);
  macs.forEach((m, i) => out.set(macBytes(m), 4 + 6 * i));
  return out;
}

/** `eth_hw_addr_random`: a random, locally administered unicast address. */
function randomMac(): Uint8Array {
  const b = Uint8Array.from({ length: 6 }, () => Math.floor(Math.random() * 256));
  b[0] = (b[0] & 0xfe) | 0x02;
  return b;
}
