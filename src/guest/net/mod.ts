/**
 * The guest's virtio-net driver (a model of Linux's `virtio_net`) and a
 * minimal IPv4 host (Ethernet, ARP, IPv4, ICMP, UDP) to ping and move data
 * with it. Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */
export {
  GOOD_PACKET_LEN,
  type NetReceivedFrame,
  type NetRxInfo,
  type NetRxMode,
  type NetTxOptions,
  VIRTIO_NET_DRIVER_FEATURES,
  VIRTIO_NET_TRANSPORT_FEATURES,
  VirtioNetDriver,
  type VirtioNetDriverOptions,
  type VirtioNetDriverStats,
} from "./virtio_net_driver.ts";
export type { NetGuestDevice, NetQueueSpec } from "./net_guest_device.ts";
export {
  NET_ERR,
  NET_HDR_F_DATA_VALID,
  NET_HDR_F_NEEDS_CSUM,
  NET_HDR_LEN,
  NET_OK,
  NET_S_ANNOUNCE,
  NET_S_LINK_UP,
  NetConfigOffset,
  NetCtrlCmd,
  NetFeature,
  NetGsoType,
} from "./virtio_net_uapi.ts";
export {
  type ArpPacket,
  BROADCAST_MAC,
  buildArp,
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  buildUdp,
  bytesToMac,
  type EthernetFrame,
  EtherType,
  formatIpv4,
  type FrameInfo,
  type FrameLink,
  type IcmpEcho,
  InetHost,
  type InetHostStats,
  internetChecksum,
  IpProto,
  type Ipv4Packet,
  macToBytes,
  onesSum,
  parseArp,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
  parseIpv4Packet,
  parseUdp,
  pseudoHeaderSum,
  type UdpDatagram,
} from "./inet.ts";
