/**
 * virtio-net device statistics: one named counter for every delivery, drop
 * and error path, per queue, in the manner of Firecracker's `NetDeviceMetrics`
 * (its snake_case name is given where one exists). Counters are cumulative:
 * a device reset does not clear them.
 *
 * @module
 */

/** Counters of one receive queue. */
export class NetRxQueueMetrics {
  /** Frames delivered to the guest (`rx_packets_count`). */
  packets = 0;
  /** Frame bytes delivered, without virtio_net_hdr (`rx_bytes_count`). */
  bytes = 0;
  /** Receive buffers used (one per frame without MRG_RXBUF). */
  buffers = 0;
  /** Frames dropped for any reason: the sum of the drop counters below. */
  drops = 0;
  /** Errors (guest buffers the device could not use): `dmaFaults + badBuffers + malformedFrames`. */
  errors = 0;
  /** Frames dropped because the guest had posted no (or not enough) receive buffers (`no_rx_avail_buffer`). */
  noRxAvailBuffer = 0;
  /** Frames dropped because one receive chain was too small without MRG_RXBUF, or more buffers than allowed were needed. */
  frameTooBig = 0;
  /** Frames dropped by the MAC, broadcast, multicast or VLAN filter. */
  filtered = 0;
  /** GSO frames dropped because the guest did not accept that offload (vireo does not segment). */
  offloadDrops = 0;
  /** Non-GSO frames longer than the negotiated MTU allows. */
  oversize = 0;
  /** Frames dropped while the link is down or the device is not running. */
  linkDown = 0;
  /**
   * Times the device asked a backend to hold a frame for later because the
   * guest had no receive buffer (not a drop; the backend retries at `rxReady`).
   */
  deferred = 0;
  /** Frames dropped because writing a receive buffer faulted (a guest mapping error). */
  dmaFaults = 0;
  /** Receive buffers returned empty because they could not hold even a header. */
  badBuffers = 0;
  /** Frames a backend offered that are shorter than an Ethernet header or longer than 64 KiB. */
  malformedFrames = 0;
}

/** Counters of one transmit queue. */
export class NetTxQueueMetrics {
  /** Frames handed to the backend (`tx_packets_count`). */
  packets = 0;
  /** Frame bytes handed to the backend, without virtio_net_hdr (`tx_bytes_count`). */
  bytes = 0;
  /** Transmit chains processed (`tx_count`). */
  chains = 0;
  /** Frames not transmitted: the sum of the drop counters below. */
  drops = 0;
  /** Errors: `malformedFrames + dmaFaults`. */
  errors = 0;
  /**
   * Chains that are not a valid frame: shorter than header plus Ethernet
   * header, over 64 KiB, or offload metadata that was not negotiated or does
   * not fit the frame (`tx_malformed_frames`).
   */
  malformedFrames = 0;
  /** Frames whose buffers could not be read (a guest mapping error). */
  dmaFaults = 0;
  /** Frames dropped because the link is down. */
  linkDown = 0;
  /** Frames the backend refused (`tx_fails`). */
  backendDrops = 0;
  /** Driver notifications of this queue (`tx_queue_event_count`). */
  kicks = 0;
}

/** Counters of the control queue. */
export class NetCtrlMetrics {
  /** Commands completed. */
  commands = 0;
  /** Commands answered VIRTIO_NET_ERR (unknown, not negotiated, or malformed). */
  errAcks = 0;
  /** MAC address changes by MAC_ADDR_SET (`mac_address_updates`). */
  macAddressUpdates = 0;
}

/** All counters of a virtio-net device. */
export class NetMetrics {
  /** One entry per receive queue (rx0, rx1, ...). */
  readonly rx: readonly NetRxQueueMetrics[];
  /** One entry per transmit queue. */
  readonly tx: readonly NetTxQueueMetrics[];
  /** The control queue. */
  readonly ctrl: NetCtrlMetrics = new NetCtrlMetrics();
  /** Driver writes to the read-only config space (`cfg_fails`). */
  cfgFails = 0;
  /** Times the device marked itself broken (DEVICE_NEEDS_RESET). */
  deviceErrors = 0;

  /** Counters for `pairs` queue pairs. */
  constructor(pairs: number) {
    this.rx = Array.from({ length: pairs }, () => new NetRxQueueMetrics());
    this.tx = Array.from({ length: pairs }, () => new NetTxQueueMetrics());
  }

  /** The sum over every receive queue. */
  rxTotal(): NetRxQueueMetrics {
    return sum(new NetRxQueueMetrics(), this.rx);
  }

  /** The sum over every transmit queue. */
  txTotal(): NetTxQueueMetrics {
    return sum(new NetTxQueueMetrics(), this.tx);
  }
}

function sum<T extends object>(total: T, parts: readonly T[]): T {
  const out = total as Record<string, number>;
  for (const part of parts) {
    for (const [key, value] of Object.entries(part)) out[key] = (out[key] ?? 0) + value;
  }
  return total;
}
