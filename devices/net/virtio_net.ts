import { DmaAccess } from "../../src/dma/dma_access.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { type DmaSpace, DmaTranslation } from "../../src/dma/dma_space.ts";
import { GuestFault } from "../../src/guest_fault.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import type { DeviceQueue } from "../../src/queue/device_queue.ts";
import type { ActivateContext, VirtioDevice, VirtioDeviceHost } from "../../src/virtio/device.ts";
import { VirtioDeviceId } from "../../src/virtio/device_id.ts";
import { featureMask, hasFeature } from "../../src/virtio/features.ts";
import { type NetBackend, type NetPort, NullBackend } from "./backends/net_backend.ts";
import { foldChecksum } from "./checksum.ts";
import {
  ETH_HLEN,
  MAC_TABLE_ENTRIES,
  MAX_CHAIN_SEGMENTS,
  MAX_FRAME_SIZE,
  MAX_RX_BUFFERS_PER_FRAME,
  MAX_VLAN,
  NET_QUEUE_SIZE,
  NET_SPEED_UNKNOWN,
  NetAck,
  NetConfig,
  NetCtrl,
  NetDuplex,
  NetGso,
  NetHdr,
  NetHdrFlag,
  NetStatus,
  VirtioNetFeature as F,
} from "./constants.ts";
import { FLOW_HEAD_BYTES, flowHash } from "./flow.ts";
import { formatMac, parseMac } from "./mac.ts";
import {
  type NetCtrlMetrics,
  NetMetrics,
  type NetRxQueueMetrics,
  type NetTxQueueMetrics,
} from "./metrics.ts";
import { ChainFrame, type NetFrame } from "./net_frame.ts";
import { NetHeader } from "./net_header.ts";
import { RxFilter } from "./rx_filter.ts";

/** How a virtio-net device is built. */
export interface VirtioNetOptions {
  /**
   * The device's MAC address (`"52:54:00:12:34:56"` or 6 bytes). When given,
   * VIRTIO_NET_F_MAC is offered; otherwise the driver picks an address and may
   * set it with MAC_ADDR_SET.
   */
  mac?: string | Uint8Array;
  /** Where frames go; a backend that drops everything by default. */
  backend?: NetBackend;
  /** `max_virtqueue_pairs`, 1..511 (default 1). More than 1 offers VIRTIO_NET_F_MQ. */
  queuePairs?: number;
  /** Largest ring size of every queue: a power of two in 1..32768 (default 256). */
  queueSize?: number;
  /** Offers VIRTIO_NET_F_MTU with this `mtu`, 68..65535. */
  mtu?: number;
  /** `speed` in Mbit/s, 0..0x7fffffff (default unknown). */
  speed?: number;
  /** `duplex` (default unknown). */
  duplex?: "full" | "half" | "unknown";
  /** The link state at creation (default up). */
  linkUp?: boolean;
  /** Offer the checksum and segmentation offloads, CSUM, GUEST_CSUM and the TSO/UFO/USO family (default true). */
  offloads?: boolean;
  /** Offer VIRTIO_NET_F_MRG_RXBUF (default true). */
  mergeableRxBuffers?: boolean;
  /** Offer the control queue and the features that need it (default true). */
  controlQueue?: boolean;
}

/** The device's saved state: config and everything the control queue set. */
export interface VirtioNetState {
  /** Format version, 1. */
  version: 1;
  /** The current MAC address (after MAC_ADDR_SET). */
  mac: string;
  /** The config `status` field. */
  status: number;
  /** Queue pairs in use (VQ_PAIRS_SET). */
  activePairs: number;
  /** The GUEST_OFFLOADS_SET mask as a decimal string, or null when never set. */
  guestOffloads: string | null;
  /** RX modes. */
  rxMode: {
    promisc: boolean;
    allmulti: boolean;
    alluni: boolean;
    nomulti: boolean;
    nouni: boolean;
    nobcast: boolean;
  };
  /** The MAC filter table. */
  macTable: {
    unicast: string[];
    multicast: string[];
    uniOverflow: boolean;
    multiOverflow: boolean;
  };
  /** VLAN ids accepted. */
  vlans: number[];
}

/** A guest error found by the virtio-net device (a control request without an ack byte). */
export class VirtioNetError extends GuestFault {}

const HDR = NetHdr.SIZE;
const RX_CHAIN_SEGMENTS = 256;
const FLOW_TABLE_SIZE = 1024;
const CONSUMED = 0;
const NO_BUFFER = 1;
const NO_FIX = -1;
const DROP = -2;
const MALFORMED = -3;
const HEAD_VLAN = 18;
const OFFLOAD_BITS = [
  F.CSUM,
  F.GUEST_CSUM,
  F.GUEST_TSO4,
  F.GUEST_TSO6,
  F.GUEST_ECN,
  F.GUEST_UFO,
  F.HOST_TSO4,
  F.HOST_TSO6,
  F.HOST_ECN,
  F.HOST_UFO,
  F.GUEST_USO4,
  F.GUEST_USO6,
  F.HOST_USO,
];
const CTRL_BITS = [
  F.CTRL_VQ,
  F.CTRL_RX,
  F.CTRL_VLAN,
  F.CTRL_RX_EXTRA,
  F.GUEST_ANNOUNCE,
  F.CTRL_MAC_ADDR,
];
/** The receive offloads GUEST_OFFLOADS_SET may toggle. */
const GUEST_OFFLOAD_MASK = featureMask(
  F.GUEST_CSUM,
  F.GUEST_TSO4,
  F.GUEST_TSO6,
  F.GUEST_ECN,
  F.GUEST_UFO,
  F.GUEST_USO4,
  F.GUEST_USO6,
);
/** [feature, what it needs (any of)] pairs a driver must respect. */
const DEPENDENCIES: readonly [number, readonly number[]][] = [
  [F.GUEST_TSO4, [F.GUEST_CSUM]],
  [F.GUEST_TSO6, [F.GUEST_CSUM]],
  [F.GUEST_UFO, [F.GUEST_CSUM]],
  [F.GUEST_USO4, [F.GUEST_CSUM]],
  [F.GUEST_USO6, [F.GUEST_CSUM]],
  [F.GUEST_ECN, [F.GUEST_TSO4, F.GUEST_TSO6]],
  [F.HOST_TSO4, [F.CSUM]],
  [F.HOST_TSO6, [F.CSUM]],
  [F.HOST_UFO, [F.CSUM]],
  [F.HOST_USO, [F.CSUM]],
  [F.HOST_ECN, [F.HOST_TSO4, F.HOST_TSO6]],
  [F.CTRL_RX, [F.CTRL_VQ]],
  [F.CTRL_VLAN, [F.CTRL_VQ]],
  [F.CTRL_RX_EXTRA, [F.CTRL_RX]],
  [F.GUEST_ANNOUNCE, [F.CTRL_VQ]],
  [F.MQ, [F.CTRL_VQ]],
  [F.CTRL_MAC_ADDR, [F.CTRL_VQ]],
  [F.CTRL_GUEST_OFFLOADS, [F.CTRL_VQ]],
];

/** One receive queue: the ring and the chains popped from it but not yet used. */
class RxQueue {
  queue: DeviceQueue | null = null;
  /** Chain objects; `pool[0..held)` are popped and wait for a frame, oldest first. */
  readonly pool: DescriptorChain[] = [];
  held = 0;
  /** Chains used by the frame being written, and the one being filled. */
  count = 0;
  cur = 0;
  /** Entries pushed since the last publish. */
  dirty = false;
  readonly metrics: NetRxQueueMetrics;
  constructor(metrics: NetRxQueueMetrics) {
    this.metrics = metrics;
  }
}

/** One transmit queue. */
class TxQueue {
  queue: DeviceQueue | null = null;
  chain: DescriptorChain | null = null;
  readonly frame: ChainFrame = new ChainFrame();
  busy = false;
  again = false;
  readonly metrics: NetTxQueueMetrics;
  constructor(metrics: NetTxQueueMetrics) {
    this.metrics = metrics;
  }
}

/**
 * The virtio-net device model (device id 1, virtio 1.x §5.1).
 *
 * Queues are rx0, tx0, rx1, tx1, ... and the control queue last. Frames go
 * to and come from a {@linkcode NetBackend}; offload metadata travels with
 * them as a {@linkcode NetHeader}. vireo does not segment or checksum
 * in software except where a receiver needs it:
 *
 * - a NEEDS_CSUM frame going to a driver without GUEST_CSUM gets its checksum
 *   finished while it is copied (the only case the device computes one);
 * - a GSO frame going to a driver that did not accept that GUEST_* offload
 *   (or whose GUEST_OFFLOADS_SET turned it off) is dropped and counted in
 *   `offloadDrops`, since nobody would split it. Link two vireo devices whose
 *   guests accept the same offloads (Linux accepts all of them), or turn
 *   `offloads` off.
 *
 * Receive: without MRG_RXBUF a frame takes one chain and a frame larger than
 * that chain is dropped (`frameTooBig`), the chain staying posted for the next
 * frame; with MRG_RXBUF a frame spans as many buffers as it needs
 * (`num_buffers`), published together. With no buffer posted, a frame is
 * dropped and counted (`noRxAvailBuffer`) or, when its backend can hold it,
 * deferred until the guest posts buffers; nothing is queued inside the device.
 *
 * Guest mistakes in rings or control requests mark the device
 * DEVICE_NEEDS_RESET; a buffer that cannot be read or written drops its frame
 * and is counted. Counters are in {@linkcode VirtioNet.metrics}.
 *
 * @example
 * ```ts
 * import { VirtioNet } from "@vireo/vireo/net";
 * const net = new VirtioNet({ mac: "52:54:00:12:34:56", mtu: 1500 });
 * console.log(net.numQueues, net.macAddress); // 3 "52:54:00:12:34:56"
 * ```
 */
export class VirtioNet implements VirtioDevice {
  /** Device type 1. */
  readonly deviceId: number = VirtioDeviceId.NET;
  /** Features offered (device bits; the transport adds the ring bits). */
  readonly deviceFeatures: bigint;
  /** `2 * max_virtqueue_pairs`, plus 1 with the control queue. */
  readonly numQueues: number;
  /** `struct virtio_net_config` (24 bytes). */
  readonly config: Uint8Array = new Uint8Array(NetConfig.SIZE);
  /** `max_virtqueue_pairs`. */
  readonly maxQueuePairs: number;
  /** Device statistics. */
  readonly metrics: NetMetrics;
  /** The backend frames go to. */
  readonly backend: NetBackend;

  readonly #queueSize: number;
  readonly #initialMac: Uint8Array;
  readonly #mac = new Uint8Array(6);
  readonly #mtu: number;
  readonly #configView: DataView;
  readonly #filter = new RxFilter();
  readonly #rx: RxQueue[] = [];
  readonly #tx: TxQueue[] = [];
  readonly #flows = new Uint16Array(FLOW_TABLE_SIZE);
  readonly #port: NetPort;
  #host: VirtioDeviceHost | undefined;
  #dma: DmaSpace | null = null;
  #ctrlQueue: DeviceQueue | null = null;
  #ctrlChain: DescriptorChain | null = null;
  #ctrlIndex = -1;
  #pairsAvailable = 1;
  #activePairs = 1;
  #live = false;
  #broken = false;
  #status: number;
  #guestOffloads: bigint | null = null;
  // Negotiated behaviour, as booleans for the hot path.
  #features = 0n;
  #mrg = false;
  #hostCsum = false;
  #hostGso = 0; // bit per gso base type accepted on TX, plus 0x80 for ECN
  #rxCsum = false;
  #rxGso = 0; // bit per gso base type accepted on RX (UDP_L4: 1 << 5 v4, 1 << 6 v6), 0x80 ECN
  #mtuLimit = 0; // non-GSO frames above this are dropped on RX (0: no limit)
  // Scratch, so the hot path allocates nothing.
  readonly #hdrBytes = new Uint8Array(HDR);
  readonly #rxHeader = new NetHeader();
  readonly #head = new Uint8Array(FLOW_HEAD_BYTES);
  readonly #headVlan = this.#head.subarray(0, HEAD_VLAN);
  readonly #csumBytes = new Uint8Array(2);
  readonly #t = new DmaTranslation();

  /**
   * Creates the device.
   *
   * @throws {TypeError} when `mac` is not a 6-byte address or `backend` is not a backend
   * @throws {RangeError} when `queuePairs`, `queueSize`, `mtu` or `speed` is out of range
   */
  constructor(options: VirtioNetOptions = {}) {
    const what = "Cannot create virtio-net";
    const pairs = options.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > 511) {
      throw new RangeError(`${what}: queuePairs ${pairs} is not in 1..511`);
    }
    const size = options.queueSize ?? NET_QUEUE_SIZE;
    if (!Number.isInteger(size) || size < 1 || size > 32768 || (size & (size - 1)) !== 0) {
      throw new RangeError(`${what}: queueSize ${size} is not a power of two in 1..32768`);
    }
    const mtu = options.mtu;
    if (mtu !== undefined && (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535)) {
      throw new RangeError(`${what}: mtu ${mtu} is not in 68..65535`);
    }
    const speed = options.speed ?? NET_SPEED_UNKNOWN;
    if (
      !Number.isInteger(speed) || speed < 0 || (speed > 0x7fff_ffff && speed !== NET_SPEED_UNKNOWN)
    ) {
      throw new RangeError(`${what}: speed ${speed} is not in 0..2147483647`);
    }
    const duplex = options.duplex ?? "unknown";
    if (duplex !== "full" && duplex !== "half" && duplex !== "unknown") {
      throw new TypeError(`${what}: duplex "${duplex}" is not "full", "half" or "unknown"`);
    }
    const backend = options.backend ?? new NullBackend();
    if (
      typeof backend !== "object" || backend === null || typeof backend.send !== "function" ||
      typeof backend.attach !== "function"
    ) {
      throw new TypeError(`${what}: backend is not a NetBackend`);
    }
    this.#initialMac = options.mac === undefined ? new Uint8Array(6) : parseMac(options.mac, what);
    this.#mac.set(this.#initialMac);
    this.#mtu = mtu ?? 0;
    this.#queueSize = size;
    this.maxQueuePairs = pairs;
    const ctrl = options.controlQueue ?? true;
    this.numQueues = 2 * pairs + (ctrl ? 1 : 0);
    const bits: number[] = [F.STATUS, F.SPEED_DUPLEX];
    if (options.mac !== undefined) bits.push(F.MAC);
    if (mtu !== undefined) bits.push(F.MTU);
    if (options.mergeableRxBuffers ?? true) bits.push(F.MRG_RXBUF);
    if (options.offloads ?? true) bits.push(...OFFLOAD_BITS);
    if (ctrl) {
      bits.push(...CTRL_BITS);
      if (options.offloads ?? true) bits.push(F.CTRL_GUEST_OFFLOADS);
      if (pairs > 1) bits.push(F.MQ);
    }
    this.deviceFeatures = featureMask(...bits);
    this.metrics = new NetMetrics(pairs);
    for (let i = 0; i < pairs; i++) {
      this.#rx.push(new RxQueue(this.metrics.rx[i]));
      this.#tx.push(new TxQueue(this.metrics.tx[i]));
    }
    this.#status = (options.linkUp ?? true) ? NetStatus.LINK_UP : 0;
    const v = new DataView(this.config.buffer);
    this.#configView = v;
    v.setUint16(NetConfig.MAX_VIRTQUEUE_PAIRS, pairs, true);
    v.setUint16(NetConfig.MTU, this.#mtu, true);
    v.setUint32(NetConfig.SPEED, speed, true);
    v.setUint8(
      NetConfig.DUPLEX,
      duplex === "full" ? NetDuplex.FULL : duplex === "half" ? NetDuplex.HALF : NetDuplex.UNKNOWN,
    );
    this.#writeConfig();
    this.backend = backend;
    this.#port = {
      receive: (frame, mayDefer) => this.#receive(frame, mayDefer),
      flush: () => this.#flushRx(),
    };
    backend.attach(this.#port);
  }

  /** The current MAC address (`"52:54:00:12:34:56"`); MAC_ADDR_SET changes it. */
  get macAddress(): string {
    return formatMac(this.#mac);
  }

  /** True while the link is up. */
  get linkUp(): boolean {
    return (this.#status & NetStatus.LINK_UP) !== 0;
  }

  /** Queue pairs in use: 1 after reset, then what VQ_PAIRS_SET chose. */
  get activeQueuePairs(): number {
    return this.#activePairs;
  }

  /** The features the driver accepted (0 before activation). */
  get features(): bigint {
    return this.#features;
  }

  /** The receive filter the driver programmed through the control queue (read-only use). */
  get rxFilter(): RxFilter {
    return this.#filter;
  }

  /**
   * Sets the link state. A change updates `status` and raises a config
   * interrupt; while down, the device drops what it would send or receive.
   */
  setLinkUp(up: boolean): void {
    const next = up ? this.#status | NetStatus.LINK_UP : this.#status & ~NetStatus.LINK_UP;
    if (next === this.#status) return;
    this.#status = next;
    this.#writeConfig();
    this.#host?.configChanged();
    if (up && this.#live) this.backend.rxReady();
  }

  /**
   * Asks the driver to announce itself (gratuitous ARP / NA), as after a
   * migration: sets ANNOUNCE in `status` and raises a config interrupt. The
   * driver answers with ANNOUNCE_ACK, which clears the bit.
   *
   * @returns false (doing nothing) unless the device runs with GUEST_ANNOUNCE negotiated
   */
  announce(): boolean {
    if (!this.#live || !hasFeature(this.#features, F.GUEST_ANNOUNCE)) return false;
    this.#status |= NetStatus.ANNOUNCE;
    this.#writeConfig();
    this.#host?.configChanged();
    return true;
  }

  /** See {@linkcode VirtioDevice.queueMaxSize}. */
  queueMaxSize(_index: number): number {
    return this.#queueSize;
  }

  /** The config space is read-only to a modern driver: writes are ignored and counted. */
  writeConfig(_offset: number, _data: Uint8Array): void {
    this.metrics.cfgFails++;
  }

  /** See {@linkcode VirtioDevice.bind}. @throws {TypeError} when bound twice */
  bind(host: VirtioDeviceHost): void {
    if (this.#host !== undefined) {
      throw new TypeError("Cannot bind virtio-net: the device is already bound to a transport");
    }
    this.#host = host;
  }

  /** Refuses feature sets that break the spec's dependencies (virtio 1.x §5.1.3.1). */
  validateFeatures(features: bigint): string | null {
    for (const [bit, needs] of DEPENDENCIES) {
      if (hasFeature(features, bit) && !needs.some((n) => hasFeature(features, n))) {
        return `the driver accepted ${featureName(bit)} without ${
          needs.map(featureName).join(" or ")
        }`;
      }
    }
    return null;
  }

  /** See {@linkcode VirtioDevice.activate}. */
  activate(context: ActivateContext): void {
    const f = context.features;
    this.#features = f;
    this.#dma = context.dma;
    this.#mrg = hasFeature(f, F.MRG_RXBUF);
    this.#hostCsum = hasFeature(f, F.CSUM);
    this.#hostGso = (hasFeature(f, F.HOST_TSO4) ? 1 << NetGso.TCPV4 : 0) |
      (hasFeature(f, F.HOST_TSO6) ? 1 << NetGso.TCPV6 : 0) |
      (hasFeature(f, F.HOST_UFO) ? 1 << NetGso.UDP : 0) |
      (hasFeature(f, F.HOST_USO) ? 1 << NetGso.UDP_L4 : 0) |
      (hasFeature(f, F.HOST_ECN) ? NetGso.ECN : 0);
    this.#applyGuestOffloads();
    this.#mtuLimit = hasFeature(f, F.MTU) ? this.#mtu + ETH_HLEN : 0;
    this.#pairsAvailable = hasFeature(f, F.MQ) ? this.maxQueuePairs : 1;
    if (this.#activePairs > this.#pairsAvailable) this.#activePairs = 1;
    this.#filter.vlanFiltering = hasFeature(f, F.CTRL_VLAN);
    const queues = context.queues;
    for (let i = 0; i < this.maxQueuePairs; i++) {
      const usable = i < this.#pairsAvailable;
      this.#setRx(i, usable ? queues[2 * i] ?? null : null);
      this.#setTx(i, usable ? queues[2 * i + 1] ?? null : null);
    }
    this.#ctrlIndex = hasFeature(f, F.CTRL_VQ) ? 2 * this.#pairsAvailable : -1;
    this.#ctrlQueue = this.#ctrlIndex >= 0 ? queues[this.#ctrlIndex] ?? null : null;
    this.#ctrlChain = new DescriptorChain(context.dma, MAX_CHAIN_SEGMENTS);
    this.#live = true;
    this.#broken = false;
    this.backend.rxReady();
  }

  /** See {@linkcode VirtioDevice.notify}. */
  notify(index: number, _data?: number): void {
    if (!this.#live || this.#broken) return;
    if (index === this.#ctrlIndex) {
      this.#processCtrl();
    } else if (index < 2 * this.#pairsAvailable) {
      if ((index & 1) === 1) this.#processTx(index >> 1);
      else this.backend.rxReady();
    }
  }

  /** See {@linkcode VirtioDevice.resetQueue}: forgets the queue and the chains popped from it. */
  resetQueue(index: number): void {
    if (index === this.#ctrlIndex) {
      this.#ctrlQueue = null;
    } else if (index < 2 * this.maxQueuePairs) {
      if ((index & 1) === 1) this.#setTx(index >> 1, null);
      else this.#setRx(index >> 1, null);
    }
  }

  /** See {@linkcode VirtioDevice.enableQueue}. */
  enableQueue(index: number, queue: DeviceQueue): void {
    if (index === this.#ctrlIndex) {
      this.#ctrlQueue = queue;
    } else if (index < 2 * this.#pairsAvailable) {
      if ((index & 1) === 1) {
        this.#setTx(index >> 1, queue);
      } else {
        this.#setRx(index >> 1, queue);
        if (this.#live) this.backend.rxReady();
      }
    }
  }

  /**
   * Device reset: drops the queues, restores the MAC address the device was
   * created with and clears everything the control queue set. The link state
   * (a host property) is kept; ANNOUNCE is cleared. Counters are kept.
   */
  reset(): void {
    this.#live = false;
    this.#broken = false;
    this.#features = 0n;
    this.#dma = null;
    for (let i = 0; i < this.maxQueuePairs; i++) {
      this.#setRx(i, null);
      this.#setTx(i, null);
    }
    this.#ctrlQueue = null;
    this.#ctrlIndex = -1;
    this.#pairsAvailable = 1;
    this.#activePairs = 1;
    this.#guestOffloads = null;
    this.#filter.reset();
    this.#flows.fill(0);
    this.#mac.set(this.#initialMac);
    this.#status &= NetStatus.LINK_UP;
    this.#writeConfig();
  }

  /**
   * The device state: MAC, status and the control-queue state, as plain data.
   * Chains the device holds (popped receive buffers waiting for a frame) are
   * not part of it: save a quiesced device.
   */
  saveState(): Record<string, unknown> {
    const f = this.#filter;
    const table = (from: number, count: number) =>
      Array.from({ length: count }, (_, i) => formatMac(f.table, (from + i) * 6));
    const vlans: number[] = [];
    for (let vid = 0; vid < MAX_VLAN; vid++) if (f.hasVlan(vid)) vlans.push(vid);
    const state: VirtioNetState = {
      version: 1,
      mac: formatMac(this.#mac),
      status: this.#status,
      activePairs: this.#activePairs,
      guestOffloads: this.#guestOffloads === null ? null : this.#guestOffloads.toString(),
      rxMode: {
        promisc: f.promisc,
        allmulti: f.allmulti,
        alluni: f.alluni,
        nomulti: f.nomulti,
        nouni: f.nouni,
        nobcast: f.nobcast,
      },
      macTable: {
        unicast: table(0, f.uniCount),
        multicast: table(f.uniCount, f.multiCount),
        uniOverflow: f.uniOverflow,
        multiOverflow: f.multiOverflow,
      },
      vlans,
    };
    return state as unknown as Record<string, unknown>;
  }

  /** Restores what {@linkcode VirtioNet.saveState} returned. @throws {TypeError} on a malformed state */
  restoreState(state: Record<string, unknown>): void {
    const what = "Cannot restore virtio-net";
    const s = state as Partial<VirtioNetState>;
    if (typeof s !== "object" || s === null || s.version !== 1) {
      throw new TypeError(`${what}: state version ${String(s?.version)} is not 1`);
    }
    const mac = parseMac(s.mac as string, what);
    if (!Number.isInteger(s.status) || (s.status! & ~3) !== 0) {
      throw new TypeError(`${what}: status ${String(s.status)} is not a 2-bit value`);
    }
    if (
      !Number.isInteger(s.activePairs) || s.activePairs! < 1 || s.activePairs! > this.maxQueuePairs
    ) {
      throw new TypeError(
        `${what}: activePairs ${String(s.activePairs)} is not in 1..${this.maxQueuePairs}`,
      );
    }
    if (s.guestOffloads !== null && !/^\d+$/.test(String(s.guestOffloads))) {
      throw new TypeError(`${what}: guestOffloads "${String(s.guestOffloads)}" is not a number`);
    }
    const m = s.rxMode;
    const modes = ["promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast"] as const;
    if (typeof m !== "object" || m === null || !modes.every((k) => typeof m[k] === "boolean")) {
      throw new TypeError(`${what}: rxMode is not a set of six booleans`);
    }
    const t = s.macTable;
    if (
      typeof t !== "object" || t === null || !Array.isArray(t.unicast) ||
      !Array.isArray(t.multicast) || typeof t.uniOverflow !== "boolean" ||
      typeof t.multiOverflow !== "boolean" ||
      t.unicast.length + t.multicast.length > MAC_TABLE_ENTRIES
    ) {
      throw new TypeError(`${what}: macTable is malformed`);
    }
    const uni = new Uint8Array(t.unicast.length * 6);
    t.unicast.forEach((a, i) => uni.set(parseMac(a, what), i * 6));
    const multi = new Uint8Array(t.multicast.length * 6);
    t.multicast.forEach((a, i) => multi.set(parseMac(a, what), i * 6));
    if (
      !Array.isArray(s.vlans) ||
      !s.vlans.every((v) => Number.isInteger(v) && v >= 0 && v < MAX_VLAN)
    ) {
      throw new TypeError(`${what}: vlans is not a list of VLAN ids`);
    }
    const f = this.#filter;
    f.reset();
    for (const k of modes) f[k] = m[k];
    f.setTable(uni, t.unicast.length, multi, t.multicast.length);
    f.uniOverflow = t.uniOverflow;
    f.multiOverflow = t.multiOverflow;
    for (const vid of s.vlans) f.addVlan(vid);
    this.#mac.set(mac);
    this.#status = s.status!;
    this.#activePairs = s.activePairs!;
    this.#guestOffloads = s.guestOffloads === null ? null : BigInt(s.guestOffloads!);
    this.#flows.fill(0);
    if (this.#live) this.#applyGuestOffloads();
    this.#writeConfig();
  }

  // ---------------------------------------------------------------- config

  #writeConfig(): void {
    this.config.set(this.#mac, NetConfig.MAC);
    this.#configView.setUint16(NetConfig.STATUS, this.#status, true);
  }

  #applyGuestOffloads(): void {
    const f = this.#guestOffloads === null
      ? this.#features
      : this.#features & (~GUEST_OFFLOAD_MASK | this.#guestOffloads);
    this.#rxCsum = hasFeature(f, F.GUEST_CSUM);
    this.#rxGso = (hasFeature(f, F.GUEST_TSO4) ? 1 << NetGso.TCPV4 : 0) |
      (hasFeature(f, F.GUEST_TSO6) ? 1 << NetGso.TCPV6 : 0) |
      (hasFeature(f, F.GUEST_UFO) ? 1 << NetGso.UDP : 0) |
      (hasFeature(f, F.GUEST_USO4) ? 1 << 5 : 0) |
      (hasFeature(f, F.GUEST_USO6) ? 1 << 6 : 0) |
      (hasFeature(f, F.GUEST_ECN) ? NetGso.ECN : 0);
  }

  #setRx(i: number, queue: DeviceQueue | null): void {
    const rxq = this.#rx[i];
    rxq.queue = queue;
    rxq.held = 0;
    rxq.count = 0;
    rxq.dirty = false;
  }

  #setTx(i: number, queue: DeviceQueue | null): void {
    const txq = this.#tx[i];
    txq.queue = queue;
    if (queue !== null && txq.chain === null && this.#dma !== null) {
      txq.chain = new DescriptorChain(this.#dma, MAX_CHAIN_SEGMENTS);
    }
  }

  /** A guest error: stop processing until reset and tell the transport. */
  #fail(reason: string): void {
    if (this.#broken) return;
    this.#broken = true;
    this.metrics.deviceErrors++;
    this.#host?.fail(`virtio-net: ${reason}`);
  }

  // ---------------------------------------------------------------- transmit

  #processTx(k: number): void {
    const txq = this.#tx[k];
    const q = txq.queue;
    const chain = txq.chain;
    if (q === null || chain === null) return;
    txq.metrics.kicks++;
    if (txq.busy) {
      txq.again = true;
      return;
    }
    txq.busy = true;
    let budget = 4 * q.size + 64;
    try {
      do {
        txq.again = false;
        q.setNotification(false);
        while (budget > 0 && q.pop(chain)) {
          budget--;
          this.#transmit(txq, chain, k);
          q.push(chain.token, 0);
        }
      } while ((q.setNotification(true) || txq.again) && budget > 0 && !this.#broken);
    } catch (e) {
      if (!(e instanceof GuestFault)) throw e;
      this.#fail(e.message);
    } finally {
      txq.busy = false;
    }
    this.backend.flush();
    if (!this.#broken && this.#publish(q)) this.#host?.interrupt(2 * k + 1);
  }

  /** Sends the frame in `chain`; every outcome is counted, only ring errors throw. */
  #transmit(txq: TxQueue, chain: DescriptorChain, k: number): void {
    const m = txq.metrics;
    m.chains++;
    const len = chain.readableLength - HDR;
    if (len < ETH_HLEN || len > MAX_FRAME_SIZE) {
      m.malformedFrames++;
      m.errors++;
      m.drops++;
      return;
    }
    const frame = txq.frame;
    try {
      this.#readTxHeader(chain, frame.header);
      if (!this.#txHeaderValid(frame.header, len)) {
        m.malformedFrames++;
        m.errors++;
        m.drops++;
        return;
      }
      if ((this.#status & NetStatus.LINK_UP) === 0) {
        m.linkDown++;
        m.drops++;
        return;
      }
      frame.set(chain, HDR);
      if (this.#activePairs > 1) {
        const n = frame.peek(this.#head);
        const h = flowHash(this.#head, n);
        if (h >= 0) this.#flows[h & (FLOW_TABLE_SIZE - 1)] = k + 1;
      }
      if (this.backend.send(frame)) {
        m.packets++;
        m.bytes += len;
      } else {
        m.backendDrops++;
        m.drops++;
      }
    } catch (e) {
      if (!(e instanceof DmaFault) || e.access !== DmaAccess.Read) throw e;
      m.dmaFaults++;
      m.errors++;
      m.drops++;
    }
  }

  /** Reads the 12-byte header, in place when the first segment holds it. */
  #readTxHeader(chain: DescriptorChain, header: NetHeader): void {
    const t = this.#t;
    if (chain.lengths[0] >= HDR) {
      chain.dma.translate(chain.addrs[0], HDR, DmaAccess.Read, t);
      if (t.length >= HDR) {
        header.decode(t.bytes, t.offset);
        return;
      }
    }
    const reader = chain.reader;
    reader.rewind();
    reader.read(this.#hdrBytes);
    header.decode(this.#hdrBytes, 0);
  }

  /** Checks a transmitted header against what was negotiated and the frame; sanitises flags. */
  #txHeaderValid(h: NetHeader, len: number): boolean {
    h.flags &= NetHdrFlag.NEEDS_CSUM; // unknown and RX-only flags are ignored
    if (h.needsCsum) {
      if (!this.#hostCsum || h.csumStart + h.csumOffset + 2 > len) return false;
    } else {
      h.csumStart = 0;
      h.csumOffset = 0;
    }
    if (h.gsoType === NetGso.NONE) {
      h.gsoSize = 0;
      return true;
    }
    const base = h.gsoType & ~NetGso.ECN;
    if (
      (base !== NetGso.TCPV4 && base !== NetGso.TCPV6 && base !== NetGso.UDP &&
        base !== NetGso.UDP_L4) || (this.#hostGso & (1 << base)) === 0
    ) {
      return false;
    }
    if ((h.gsoType & NetGso.ECN) !== 0 && (this.#hostGso & NetGso.ECN) === 0) return false;
    return h.needsCsum && h.gsoSize > 0;
  }

  // ---------------------------------------------------------------- receive

  /** {@linkcode NetPort.receive}. */
  #receive(frame: NetFrame, mayDefer: boolean): boolean {
    const m0 = this.#rx[0].metrics;
    if (!this.#live || this.#broken || (this.#status & NetStatus.LINK_UP) === 0) {
      if (mayDefer && !this.#live && !this.#broken && this.linkUp) {
        m0.deferred++;
        return false;
      }
      m0.linkDown++;
      m0.drops++;
      return true;
    }
    const len = frame.length;
    if (len < ETH_HLEN || len > MAX_FRAME_SIZE) {
      m0.malformedFrames++;
      m0.errors++;
      m0.drops++;
      return true;
    }
    const h = frame.header;
    const filter = this.#filter;
    const steer = this.#activePairs > 1;
    let headLen = 0;
    if (steer) headLen = frame.peek(this.#head);
    else if (filter.active || (h.gsoType & ~NetGso.ECN) === NetGso.UDP_L4) {
      headLen = frame.peek(this.#headVlan);
    }
    let rxq = this.#rx[0];
    if (steer) rxq = this.#rx[this.#steer(headLen)];
    const m = rxq.metrics;
    if (filter.active && !filter.accepts(this.#mac, this.#head, headLen)) {
      m.filtered++;
      m.drops++;
      return true;
    }
    const fix = this.#rxHeaderFor(frame, headLen);
    if (fix === DROP) return this.#dropOffload(m, h);
    if (fix === MALFORMED) {
      m.malformedFrames++;
      m.errors++;
      m.drops++;
      return true;
    }
    if (this.#fill(rxq, frame, fix) === CONSUMED) return true;
    if (mayDefer) {
      m.deferred++;
      return false;
    }
    m.noRxAvailBuffer++;
    m.drops++;
    return true;
  }

  #dropOffload(m: NetRxQueueMetrics, h: NetHeader): boolean {
    if (h.isGso) m.offloadDrops++;
    else m.oversize++;
    m.drops++;
    return true;
  }

  /** The receive queue pair for a frame: its flow's transmit pair, else its hash. */
  #steer(headLen: number): number {
    const h = flowHash(this.#head, headLen);
    if (h < 0) return 0;
    const pair = this.#flows[h & (FLOW_TABLE_SIZE - 1)] - 1;
    if (pair >= 0 && pair < this.#activePairs) return pair;
    return h % this.#activePairs;
  }

  /**
   * Builds the receive header in `#rxHeader` from the sender's metadata.
   * Returns where to store a checksum the device must finish, `NO_FIX`,
   * `DROP` when the driver cannot take the frame, or `MALFORMED` when the
   * metadata (from a backend, so untrusted) does not fit the frame.
   */
  #rxHeaderFor(frame: NetFrame, headLen: number): number {
    const h = frame.header;
    const len = frame.length;
    const out = this.#rxHeader;
    out.clear();
    const needsCsum = (h.flags & NetHdrFlag.NEEDS_CSUM) !== 0;
    if (needsCsum && h.csumStart + h.csumOffset + 2 > len) return MALFORMED;
    if (h.isGso) {
      if (!needsCsum || h.gsoSize === 0) return MALFORMED;
      let base = h.gsoType & ~NetGso.ECN;
      if (base === NetGso.UDP_L4) base = this.#isIpv6(headLen) ? 6 : 5;
      else if (base !== NetGso.TCPV4 && base !== NetGso.TCPV6 && base !== NetGso.UDP) return DROP;
      if ((this.#rxGso & (1 << base)) === 0) return DROP;
      if ((h.gsoType & NetGso.ECN) !== 0 && (this.#rxGso & NetGso.ECN) === 0) return DROP;
      out.copyFrom(h);
      out.flags = NetHdrFlag.NEEDS_CSUM;
      return NO_FIX;
    }
    if (this.#mtuLimit !== 0 && len > this.#mtuLimit) {
      // A VLAN tag may add 4 bytes to the Ethernet header.
      if (len > this.#mtuLimit + 4) return DROP;
      if (headLen < 14) headLen = frame.peek(this.#headVlan);
      if (this.#head[12] !== 0x81 || this.#head[13] !== 0x00) return DROP;
    }
    if (!needsCsum) return NO_FIX;
    if (this.#rxCsum) {
      out.flags = NetHdrFlag.NEEDS_CSUM;
      out.csumStart = h.csumStart;
      out.csumOffset = h.csumOffset;
      return NO_FIX;
    }
    return h.csumStart + h.csumOffset;
  }

  #isIpv6(headLen: number): boolean {
    const head = this.#head;
    if (headLen < 14) return false;
    let type = (head[12] << 8) | head[13];
    if (type === 0x8100 && headLen >= 18) type = (head[16] << 8) | head[17];
    return type === 0x86dd;
  }

  /** Pops one more receive chain into the pool; false when the ring is empty or broken. */
  #popRx(rxq: RxQueue): boolean {
    const q = rxq.queue!;
    const pool = rxq.pool;
    if (rxq.held === pool.length) pool.push(new DescriptorChain(this.#dma!, RX_CHAIN_SEGMENTS));
    try {
      if (!q.pop(pool[rxq.held])) return false;
    } catch (e) {
      if (!(e instanceof GuestFault)) throw e;
      this.#fail(e.message);
      return false;
    }
    rxq.held++;
    return true;
  }

  /** Forgets the first `k` held chains (they were pushed). */
  #consume(rxq: RxQueue, k: number): void {
    const p = rxq.pool;
    const rest = rxq.held - k;
    for (let i = 0; i < rest; i++) {
      const t = p[i];
      p[i] = p[i + k];
      p[i + k] = t;
    }
    rxq.held = rest;
  }

  /** Writes a frame into receive buffers. Returns `CONSUMED` (delivered or dropped) or `NO_BUFFER`. */
  #fill(rxq: RxQueue, frame: NetFrame, fix: number): number {
    const q = rxq.queue;
    const m = rxq.metrics;
    if (q === null) return NO_BUFFER;
    const len = frame.length;
    const need = HDR + len;
    const mrg = this.#mrg;
    let k = 0;
    let cap = 0;
    for (;;) {
      if (k === rxq.held) {
        if (k === MAX_RX_BUFFERS_PER_FRAME) {
          m.frameTooBig++;
          m.drops++;
          return CONSUMED;
        }
        if (!this.#popRx(rxq)) {
          if (!this.#broken) return NO_BUFFER;
          m.drops++;
          return CONSUMED;
        }
      }
      const w = rxq.pool[k].writableLength;
      if (k === 0 && w < (mrg ? HDR : HDR + ETH_HLEN)) {
        // A buffer that cannot hold a header is of no use: return it empty.
        if (!this.#pushRx(rxq, 0, 0)) return CONSUMED;
        m.badBuffers++;
        m.errors++;
        this.#consume(rxq, 1);
        continue;
      }
      if (!mrg) {
        if (w < need) {
          m.frameTooBig++;
          m.drops++;
          return CONSUMED; // the chain stays posted for a smaller frame
        }
        k = 1;
        break;
      }
      cap += w;
      k++;
      if (cap >= need) break;
    }
    rxq.count = k;
    rxq.cur = 0;
    for (let i = 0; i < k; i++) rxq.pool[i].writer.rewind();
    const hdr = this.#hdrBytes;
    this.#rxHeader.encode(hdr, 0, mrg ? k : 1);
    try {
      frame.rewind();
      rxq.pool[0].writer.write(hdr);
      if (fix < 0) {
        this.#copy(rxq, frame, len);
      } else {
        const c = foldChecksum(frame.sum(frame.header.csumStart));
        frame.rewind();
        this.#copy(rxq, frame, fix);
        this.#csumBytes[0] = c >>> 8;
        this.#csumBytes[1] = c & 0xff;
        this.#write(rxq, this.#csumBytes);
        frame.skip(2);
        this.#copy(rxq, frame, len - fix - 2);
      }
    } catch (e) {
      if (!(e instanceof DmaFault) || e.access !== DmaAccess.Write) throw e; // the sender's fault
      for (let i = 0; i < k; i++) if (!this.#pushRx(rxq, i, 0)) return CONSUMED;
      this.#consume(rxq, k);
      m.dmaFaults++;
      m.errors++;
      m.drops++;
      return CONSUMED;
    }
    for (let i = 0; i < k; i++) {
      if (!this.#pushRx(rxq, i, rxq.pool[i].writer.written)) return CONSUMED;
    }
    this.#consume(rxq, k);
    m.packets++;
    m.bytes += len;
    m.buffers += k;
    return CONSUMED;
  }

  #pushRx(rxq: RxQueue, i: number, written: number): boolean {
    try {
      rxq.queue!.push(rxq.pool[i].token, written);
    } catch (e) {
      if (!(e instanceof GuestFault)) throw e;
      this.#fail(e.message);
      return false;
    }
    rxq.dirty = true;
    return true;
  }

  /** Copies `n` frame bytes across the chains of the frame being written. */
  #copy(rxq: RxQueue, frame: NetFrame, n: number): void {
    const pool = rxq.pool;
    while (n > 0 && rxq.cur < rxq.count) {
      const w = pool[rxq.cur].writer;
      const room = w.remaining;
      if (room === 0) {
        rxq.cur++;
        continue;
      }
      const done = frame.copyTo(w, n < room ? n : room);
      if (done === 0) return;
      n -= done;
    }
  }

  /** Writes host bytes across the chains of the frame being written. */
  #write(rxq: RxQueue, bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length;) {
      if (rxq.cur >= rxq.count) return;
      const w = rxq.pool[rxq.cur].writer;
      if (w.remaining === 0) {
        rxq.cur++;
        continue;
      }
      w.writeU8(bytes[i++]);
    }
  }

  /** {@linkcode NetPort.flush}: publishes every receive queue that got frames. */
  #flushRx(): void {
    for (let i = 0; i < this.#pairsAvailable; i++) {
      const rxq = this.#rx[i];
      if (!rxq.dirty || rxq.queue === null) continue;
      rxq.dirty = false;
      if (this.#publish(rxq.queue)) this.#host?.interrupt(2 * i);
    }
  }

  /** Publishes used entries; a ring error fails the device. */
  #publish(q: DeviceQueue): boolean {
    try {
      return q.publishUsed();
    } catch (e) {
      if (!(e instanceof GuestFault)) throw e;
      this.#fail(e.message);
      return false;
    }
  }

  // ---------------------------------------------------------------- control

  #processCtrl(): void {
    const q = this.#ctrlQueue;
    const chain = this.#ctrlChain;
    if (q === null || chain === null) return;
    try {
      let budget = q.size;
      while (budget-- > 0 && q.pop(chain)) {
        if (chain.writableLength < 1) {
          throw new VirtioNetError(
            `control request at head ${chain.head} has no device-writable ack byte`,
          );
        }
        const ack = this.#command(chain);
        chain.writer.writeU8(ack);
        q.push(chain.token, 1);
        const cm: NetCtrlMetrics = this.metrics.ctrl;
        cm.commands++;
        if (ack !== NetAck.OK) cm.errAcks++;
      }
    } catch (e) {
      if (!(e instanceof GuestFault)) throw e;
      this.#fail(e.message);
      return;
    }
    if (this.#publish(q)) this.#host?.interrupt(this.#ctrlIndex);
  }

  /** Runs one control command; returns the ack. */
  #command(chain: DescriptorChain): number {
    const r = chain.reader;
    if (chain.readableLength < 2) return NetAck.ERR;
    const cls = r.readU8();
    const cmd = r.readU8();
    const f = this.#features;
    switch (cls) {
      case NetCtrl.RX:
        return this.#ctrlRx(cmd, chain);
      case NetCtrl.MAC:
        if (cmd === NetCtrl.MAC_TABLE_SET && hasFeature(f, F.CTRL_RX)) {
          return this.#ctrlMacTable(chain);
        }
        if (cmd === NetCtrl.MAC_ADDR_SET && hasFeature(f, F.CTRL_MAC_ADDR)) {
          if (r.remaining !== 6) return NetAck.ERR;
          r.read(this.#mac);
          this.#writeConfig();
          this.metrics.ctrl.macAddressUpdates++;
          this.#host?.configChanged();
          return NetAck.OK;
        }
        return NetAck.ERR;
      case NetCtrl.VLAN: {
        if (!hasFeature(f, F.CTRL_VLAN) || r.remaining !== 2) return NetAck.ERR;
        const vid = r.readU16();
        if (vid >= MAX_VLAN) return NetAck.ERR;
        if (cmd === NetCtrl.VLAN_ADD) this.#filter.addVlan(vid);
        else if (cmd === NetCtrl.VLAN_DEL) this.#filter.deleteVlan(vid);
        else return NetAck.ERR;
        return NetAck.OK;
      }
      case NetCtrl.ANNOUNCE:
        if (
          !hasFeature(f, F.GUEST_ANNOUNCE) || cmd !== NetCtrl.ANNOUNCE_ACK || r.remaining !== 0 ||
          (this.#status & NetStatus.ANNOUNCE) === 0
        ) {
          return NetAck.ERR;
        }
        this.#status &= ~NetStatus.ANNOUNCE;
        this.#writeConfig();
        this.#host?.configChanged();
        return NetAck.OK;
      case NetCtrl.MQ: {
        if (!hasFeature(f, F.MQ) || cmd !== NetCtrl.MQ_VQ_PAIRS_SET || r.remaining !== 2) {
          return NetAck.ERR;
        }
        const pairs = r.readU16();
        if (pairs < 1 || pairs > this.maxQueuePairs) return NetAck.ERR;
        this.#activePairs = pairs;
        this.#flows.fill(0);
        return NetAck.OK;
      }
      case NetCtrl.GUEST_OFFLOADS: {
        if (
          !hasFeature(f, F.CTRL_GUEST_OFFLOADS) || cmd !== NetCtrl.GUEST_OFFLOADS_SET ||
          r.remaining !== 8
        ) {
          return NetAck.ERR;
        }
        const offloads = r.readU64();
        if ((offloads & ~(f & GUEST_OFFLOAD_MASK)) !== 0n) return NetAck.ERR;
        this.#guestOffloads = offloads;
        this.#applyGuestOffloads();
        return NetAck.OK;
      }
      default:
        return NetAck.ERR;
    }
  }

  #ctrlRx(cmd: number, chain: DescriptorChain): number {
    const f = this.#features;
    const r = chain.reader;
    if (!hasFeature(f, F.CTRL_RX) || r.remaining !== 1) return NetAck.ERR;
    const on = r.readU8() !== 0;
    const filter = this.#filter;
    switch (cmd) {
      case NetCtrl.RX_PROMISC:
        filter.promisc = on;
        return NetAck.OK;
      case NetCtrl.RX_ALLMULTI:
        filter.allmulti = on;
        return NetAck.OK;
    }
    if (!hasFeature(f, F.CTRL_RX_EXTRA)) return NetAck.ERR;
    switch (cmd) {
      case NetCtrl.RX_ALLUNI:
        filter.alluni = on;
        return NetAck.OK;
      case NetCtrl.RX_NOMULTI:
        filter.nomulti = on;
        return NetAck.OK;
      case NetCtrl.RX_NOUNI:
        filter.nouni = on;
        return NetAck.OK;
      case NetCtrl.RX_NOBCAST:
        filter.nobcast = on;
        return NetAck.OK;
    }
    return NetAck.ERR;
  }

  /** MAC_TABLE_SET: le32 n + n addresses, twice; applied only when well formed. */
  #ctrlMacTable(chain: DescriptorChain): number {
    const r = chain.reader;
    const uniCount = r.readU32();
    if (uniCount < 0 || uniCount * 6 > r.remaining) return NetAck.ERR;
    const uni = new Uint8Array(Math.min(uniCount, MAC_TABLE_ENTRIES) * 6);
    r.read(uni);
    r.skip(uniCount * 6 - uni.length);
    const multiCount = r.readU32();
    if (multiCount < 0 || multiCount * 6 !== r.remaining) return NetAck.ERR;
    const multi = new Uint8Array(Math.min(multiCount, MAC_TABLE_ENTRIES) * 6);
    r.read(multi);
    this.#filter.setTable(uni, uniCount, multi, multiCount);
    return NetAck.OK;
  }
}

function featureName(bit: number): string {
  const name = Object.entries(F).find(([, b]) => b === bit)?.[0] ?? String(bit);
  return `VIRTIO_NET_F_${name}`;
}
