/**
 * The guest side of `include/uapi/linux/virtio_net.h`: what the guest's
 * virtio-net driver knows about the device (feature bits, config offsets,
 * header fields, control commands), restated here so the guest model does not
 * depend on vireo's device code.
 *
 * @module
 */

/** virtio-net feature bits (`VIRTIO_NET_F_*`). */
export const NetFeature = {
  /** `VIRTIO_NET_F_CSUM`. */
  CSUM: 0,
  /** `VIRTIO_NET_F_GUEST_CSUM`. */
  GUEST_CSUM: 1,
  /** `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS`. */
  CTRL_GUEST_OFFLOADS: 2,
  /** `VIRTIO_NET_F_MTU`. */
  MTU: 3,
  /** `VIRTIO_NET_F_MAC`. */
  MAC: 5,
  /** `VIRTIO_NET_F_GUEST_TSO4`. */
  GUEST_TSO4: 7,
  /** `VIRTIO_NET_F_GUEST_TSO6`. */
  GUEST_TSO6: 8,
  /** `VIRTIO_NET_F_GUEST_ECN`. */
  GUEST_ECN: 9,
  /** `VIRTIO_NET_F_GUEST_UFO`. */
  GUEST_UFO: 10,
  /** `VIRTIO_NET_F_HOST_TSO4`. */
  HOST_TSO4: 11,
  /** `VIRTIO_NET_F_HOST_TSO6`. */
  HOST_TSO6: 12,
  /** `VIRTIO_NET_F_HOST_ECN`. */
  HOST_ECN: 13,
  /** `VIRTIO_NET_F_HOST_UFO`. */
  HOST_UFO: 14,
  /** `VIRTIO_NET_F_MRG_RXBUF`. */
  MRG_RXBUF: 15,
  /** `VIRTIO_NET_F_STATUS`. */
  STATUS: 16,
  /** `VIRTIO_NET_F_CTRL_VQ`. */
  CTRL_VQ: 17,
  /** `VIRTIO_NET_F_CTRL_RX`. */
  CTRL_RX: 18,
  /** `VIRTIO_NET_F_CTRL_VLAN`. */
  CTRL_VLAN: 19,
  /** `VIRTIO_NET_F_CTRL_RX_EXTRA`. */
  CTRL_RX_EXTRA: 20,
  /** `VIRTIO_NET_F_GUEST_ANNOUNCE`. */
  GUEST_ANNOUNCE: 21,
  /** `VIRTIO_NET_F_MQ`. */
  MQ: 22,
  /** `VIRTIO_NET_F_CTRL_MAC_ADDR`. */
  CTRL_MAC_ADDR: 23,
  /** `VIRTIO_NET_F_GUEST_USO4`. */
  GUEST_USO4: 54,
  /** `VIRTIO_NET_F_GUEST_USO6`. */
  GUEST_USO6: 55,
  /** `VIRTIO_NET_F_HOST_USO`. */
  HOST_USO: 56,
  /** `VIRTIO_NET_F_SPEED_DUPLEX`. */
  SPEED_DUPLEX: 63,
} as const;

/** Offsets in `struct virtio_net_config`. */
export const NetConfigOffset = {
  /** `mac[6]`. */
  MAC: 0,
  /** `status`. */
  STATUS: 6,
  /** `max_virtqueue_pairs`. */
  MAX_VIRTQUEUE_PAIRS: 8,
  /** `mtu`. */
  MTU: 10,
  /** `speed`. */
  SPEED: 12,
  /** `duplex`. */
  DUPLEX: 16,
} as const;

/** `VIRTIO_NET_S_LINK_UP`. */
export const NET_S_LINK_UP = 1;
/** `VIRTIO_NET_S_ANNOUNCE`. */
export const NET_S_ANNOUNCE = 2;
/** `VIRTIO_NET_HDR_F_NEEDS_CSUM`. */
export const NET_HDR_F_NEEDS_CSUM = 1;
/** `VIRTIO_NET_HDR_F_DATA_VALID`. */
export const NET_HDR_F_DATA_VALID = 2;
/** `sizeof(struct virtio_net_hdr_mrg_rxbuf)`: the header with VERSION_1. */
export const NET_HDR_LEN = 12;

/** `VIRTIO_NET_HDR_GSO_*`. */
export const NetGsoType = {
  /** Not a GSO frame. */
  NONE: 0,
  /** TCPv4. */
  TCPV4: 1,
  /** UFO. */
  UDP: 3,
  /** TCPv6. */
  TCPV6: 4,
  /** USO. */
  UDP_L4: 5,
  /** The ECN bit. */
  ECN: 0x80,
} as const;

/** Control classes and commands (`VIRTIO_NET_CTRL_*`). */
export const NetCtrlCmd = {
  /** Class RX. */
  RX: 0,
  /** `VIRTIO_NET_CTRL_RX_PROMISC`. */
  RX_PROMISC: 0,
  /** `VIRTIO_NET_CTRL_RX_ALLMULTI`. */
  RX_ALLMULTI: 1,
  /** Class MAC. */
  MAC: 1,
  /** `VIRTIO_NET_CTRL_MAC_TABLE_SET`. */
  MAC_TABLE_SET: 0,
  /** `VIRTIO_NET_CTRL_MAC_ADDR_SET`. */
  MAC_ADDR_SET: 1,
  /** Class VLAN. */
  VLAN: 2,
  /** `VIRTIO_NET_CTRL_VLAN_ADD`. */
  VLAN_ADD: 0,
  /** `VIRTIO_NET_CTRL_VLAN_DEL`. */
  VLAN_DEL: 1,
  /** Class ANNOUNCE. */
  ANNOUNCE: 3,
  /** `VIRTIO_NET_CTRL_ANNOUNCE_ACK`. */
  ANNOUNCE_ACK: 0,
  /** Class MQ. */
  MQ: 4,
  /** `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`. */
  MQ_VQ_PAIRS_SET: 0,
  /** Class GUEST_OFFLOADS. */
  GUEST_OFFLOADS: 5,
  /** `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`. */
  GUEST_OFFLOADS_SET: 0,
} as const;

/** `VIRTIO_NET_OK`. */
export const NET_OK = 0;
/** `VIRTIO_NET_ERR`. */
export const NET_ERR = 1;
