/**
 * The virtio-net device model and its portable backends: a virtual cable
 * between two devices ({@linkcode createPair}), a pcap recorder, and the
 * {@linkcode NetBackend} interface for writing more. The Deno-only backends
 * live in `backends/udp_deno.ts` (frames over UDP) and
 * `backends/pcap_deno.ts` (a pcap file sink).
 *
 * @example
 * ```ts
 * import { createPair, VirtioNet } from "@vireo/vireo/net";
 * const [a, b] = createPair();
 * const left = new VirtioNet({ mac: "52:54:00:00:00:01", backend: a });
 * const right = new VirtioNet({ mac: "52:54:00:00:00:02", backend: b, queuePairs: 2 });
 * console.log(left.numQueues, right.numQueues); // 3 5
 * ```
 *
 * @module
 */
export {
  ETH_HLEN,
  MAC_TABLE_ENTRIES,
  MAX_FRAME_SIZE,
  MAX_VLAN,
  NET_SPEED_UNKNOWN,
  NetAck,
  NetConfig,
  NetCtrl,
  NetDuplex,
  NetGso,
  NetHdr,
  NetHdrFlag,
  NetStatus,
  VirtioNetFeature,
} from "./constants.ts";
export { addChecksum, finishChecksum, foldChecksum } from "./checksum.ts";
export { FLOW_HEAD_BYTES, flowHash } from "./flow.ts";
export { formatMac, parseMac } from "./mac.ts";
export { NetCtrlMetrics, NetMetrics, NetRxQueueMetrics, NetTxQueueMetrics } from "./metrics.ts";
export { NetHeader } from "./net_header.ts";
export { BufferFrame, ChainFrame, NetFrame } from "./net_frame.ts";
export { RxFilter } from "./rx_filter.ts";
export {
  VirtioNet,
  VirtioNetError,
  type VirtioNetOptions,
  type VirtioNetState,
} from "./virtio_net.ts";
export { type NetBackend, type NetPort, NullBackend } from "./backends/net_backend.ts";
export { FrameBacklog } from "./backends/frame_backlog.ts";
export { createPair, PairBackend, type PairOptions, type PairStats } from "./backends/pair.ts";
export {
  PCAP_FILE_HEADER_SIZE,
  PCAP_LINKTYPE_ETHERNET,
  PCAP_MAGIC,
  PCAP_RECORD_HEADER_SIZE,
  type PcapOptions,
  PcapRecorder,
  type PcapSink,
} from "./backends/pcap.ts";
