/**
 * virtio-net constants (virtio 1.x §5.1, Linux `include/uapi/linux/virtio_net.h`):
 * feature bits, config layout, `virtio_net_hdr` fields and values, and the
 * control queue's classes, commands and acks.
 *
 * @module
 */

/** virtio-net feature bits (virtio 1.x §5.1.3), as bit numbers. */
export const VirtioNetFeature = {
  /** The device finishes partial checksums of transmitted frames (NEEDS_CSUM on TX). */
  CSUM: 0,
  /** The driver accepts received frames with a partial checksum (NEEDS_CSUM on RX). */
  GUEST_CSUM: 1,
  /** The driver can change the receive offloads with GUEST_OFFLOADS_SET. */
  CTRL_GUEST_OFFLOADS: 2,
  /** The `mtu` config field is valid. */
  MTU: 3,
  /** The `mac` config field is valid. */
  MAC: 5,
  /** The driver accepts TCPv4 GSO frames. */
  GUEST_TSO4: 7,
  /** The driver accepts TCPv6 GSO frames. */
  GUEST_TSO6: 8,
  /** The driver accepts GSO frames with the ECN bit. */
  GUEST_ECN: 9,
  /** The driver accepts UFO frames. */
  GUEST_UFO: 10,
  /** The device accepts TCPv4 GSO frames. */
  HOST_TSO4: 11,
  /** The device accepts TCPv6 GSO frames. */
  HOST_TSO6: 12,
  /** The device accepts GSO frames with the ECN bit. */
  HOST_ECN: 13,
  /** The device accepts UFO frames. */
  HOST_UFO: 14,
  /** The driver can merge receive buffers (`num_buffers`). */
  MRG_RXBUF: 15,
  /** The `status` config field is valid. */
  STATUS: 16,
  /** The control virtqueue exists. */
  CTRL_VQ: 17,
  /** Control: PROMISC, ALLMULTI and the MAC filter table. */
  CTRL_RX: 18,
  /** Control: VLAN filtering. */
  CTRL_VLAN: 19,
  /** Control: ALLUNI, NOMULTI, NOUNI, NOBCAST. */
  CTRL_RX_EXTRA: 20,
  /** The driver can send gratuitous packets when asked (ANNOUNCE). */
  GUEST_ANNOUNCE: 21,
  /** Several queue pairs (`max_virtqueue_pairs`, VQ_PAIRS_SET). */
  MQ: 22,
  /** Control: set the MAC address (MAC_ADDR_SET). */
  CTRL_MAC_ADDR: 23,
  /** The driver accepts USO frames over IPv4. */
  GUEST_USO4: 54,
  /** The driver accepts USO frames over IPv6. */
  GUEST_USO6: 55,
  /** The device accepts USO frames. */
  HOST_USO: 56,
  /** The `speed` and `duplex` config fields are valid. */
  SPEED_DUPLEX: 63,
} as const;

/** Offsets and sizes in `struct virtio_net_config` (virtio 1.x §5.1.4). */
export const NetConfig = {
  /** 6-byte MAC address. */
  MAC: 0,
  /** le16 status (LINK_UP, ANNOUNCE). */
  STATUS: 6,
  /** le16 max_virtqueue_pairs. */
  MAX_VIRTQUEUE_PAIRS: 8,
  /** le16 mtu. */
  MTU: 10,
  /** le32 speed in Mbit/s. */
  SPEED: 12,
  /** u8 duplex. */
  DUPLEX: 16,
  /** u8 rss_max_key_size (RSS is not offered: reads 0). */
  RSS_MAX_KEY_SIZE: 17,
  /** le16 rss_max_indirection_table_length (reads 0). */
  RSS_MAX_INDIRECTION_TABLE_LENGTH: 18,
  /** le32 supported_hash_types (reads 0). */
  SUPPORTED_HASH_TYPES: 20,
  /** Bytes of config space vireo exposes. */
  SIZE: 24,
} as const;

/** Bits of the config `status` field. */
export const NetStatus = {
  /** The link is up. */
  LINK_UP: 1,
  /** The device asks the driver to announce itself (GUEST_ANNOUNCE). */
  ANNOUNCE: 2,
} as const;

/** `duplex` values (Linux uapi / ethtool: 1 full, 0 half, 0xff unknown). */
export const NetDuplex = {
  /** Half duplex. */
  HALF: 0,
  /** Full duplex. */
  FULL: 1,
  /** Unknown. */
  UNKNOWN: 0xff,
} as const;

/** `speed` value meaning unknown. */
export const NET_SPEED_UNKNOWN = 0xffff_ffff;

/** Offsets in `struct virtio_net_hdr_v1` (12 bytes). */
export const NetHdr = {
  /** u8 flags. */
  FLAGS: 0,
  /** u8 gso_type. */
  GSO_TYPE: 1,
  /** le16 hdr_len. */
  HDR_LEN: 2,
  /** le16 gso_size. */
  GSO_SIZE: 4,
  /** le16 csum_start. */
  CSUM_START: 6,
  /** le16 csum_offset. */
  CSUM_OFFSET: 8,
  /** le16 num_buffers. */
  NUM_BUFFERS: 10,
  /** Header size with VERSION_1 (no hash report, no tunnel). */
  SIZE: 12,
} as const;

/** `virtio_net_hdr.flags` bits. */
export const NetHdrFlag = {
  /** The checksum from csum_start to the end still has to be finished. */
  NEEDS_CSUM: 1,
  /** The checksum was validated (RX only). */
  DATA_VALID: 2,
  /** RSC information in csum fields (RSC_EXT only). */
  RSC_INFO: 4,
} as const;

/** `virtio_net_hdr.gso_type` values. */
export const NetGso = {
  /** Not a GSO frame. */
  NONE: 0,
  /** TCP over IPv4. */
  TCPV4: 1,
  /** UDP fragmentation offload. */
  UDP: 3,
  /** TCP over IPv6. */
  TCPV6: 4,
  /** UDP segmentation offload (IPv4 or IPv6). */
  UDP_L4: 5,
  /** OR-ed: the frame needs the ECN bit set on its segments. */
  ECN: 0x80,
} as const;

/** Control queue classes and commands (virtio 1.x §5.1.6.5). */
export const NetCtrl = {
  /** Class RX: receive filtering modes. */
  RX: 0,
  /** RX: promiscuous mode. */
  RX_PROMISC: 0,
  /** RX: all multicast. */
  RX_ALLMULTI: 1,
  /** RX: all unicast (CTRL_RX_EXTRA). */
  RX_ALLUNI: 2,
  /** RX: no multicast (CTRL_RX_EXTRA). */
  RX_NOMULTI: 3,
  /** RX: no unicast (CTRL_RX_EXTRA). */
  RX_NOUNI: 4,
  /** RX: no broadcast (CTRL_RX_EXTRA). */
  RX_NOBCAST: 5,
  /** Class MAC: filter table and address. */
  MAC: 1,
  /** MAC: replace the unicast and multicast filter tables. */
  MAC_TABLE_SET: 0,
  /** MAC: set the device's address (CTRL_MAC_ADDR). */
  MAC_ADDR_SET: 1,
  /** Class VLAN: VLAN filter. */
  VLAN: 2,
  /** VLAN: accept a VLAN id. */
  VLAN_ADD: 0,
  /** VLAN: stop accepting a VLAN id. */
  VLAN_DEL: 1,
  /** Class ANNOUNCE. */
  ANNOUNCE: 3,
  /** ANNOUNCE: the driver announced itself. */
  ANNOUNCE_ACK: 0,
  /** Class MQ. */
  MQ: 4,
  /** MQ: set the number of queue pairs in use. */
  MQ_VQ_PAIRS_SET: 0,
  /** MQ: RSS configuration (not offered). */
  MQ_RSS_CONFIG: 1,
  /** MQ: hash report configuration (not offered). */
  MQ_HASH_CONFIG: 2,
  /** Class GUEST_OFFLOADS. */
  GUEST_OFFLOADS: 5,
  /** GUEST_OFFLOADS: set the receive offloads in use. */
  GUEST_OFFLOADS_SET: 0,
} as const;

/** Control command acks. */
export const NetAck = {
  /** The command succeeded. */
  OK: 0,
  /** The command was refused or malformed. */
  ERR: 1,
} as const;

/** Entries of the MAC filter table (unicast plus multicast), as in QEMU; more set an overflow flag. */
export const MAC_TABLE_ENTRIES = 64;
/** VLAN ids are 12 bits. */
export const MAX_VLAN = 4096;
/** The Ethernet header length. */
export const ETH_HLEN = 14;
/** The largest frame a device carries: 64 KiB of GSO payload plus an Ethernet and a VLAN header. */
export const MAX_FRAME_SIZE: number = 65535 + ETH_HLEN + 4;
/** Default ring size of every queue. */
export const NET_QUEUE_SIZE = 256;
/** The most segments one descriptor chain may have (QEMU's VIRTQUEUE_MAX_SIZE). */
export const MAX_CHAIN_SEGMENTS = 1024;
/** The most receive buffers one mergeable frame may use. */
export const MAX_RX_BUFFERS_PER_FRAME = 256;
