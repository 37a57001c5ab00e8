import { MAC_TABLE_ENTRIES, MAX_VLAN } from "./constants.ts";

const ETH_P_8021Q = 0x8100;

/**
 * The receive filter a virtio-net driver programs through the control queue:
 * RX modes (CTRL_RX, CTRL_RX_EXTRA), the MAC filter table (MAC_TABLE_SET) and
 * the VLAN filter (CTRL_VLAN). Decisions follow QEMU's `receive_filter`.
 *
 * After reset the filter is promiscuous with empty tables, as in QEMU: a
 * driver that never uses CTRL_RX receives everything; Linux turns
 * promiscuous mode off when it opens the interface.
 */
export class RxFilter {
  /** Accept every frame (VLAN filter included). */
  promisc = true;
  /** Accept every multicast frame. */
  allmulti = false;
  /** Accept every unicast frame. */
  alluni = false;
  /** Drop every multicast frame but broadcast. */
  nomulti = false;
  /** Drop every unicast frame. */
  nouni = false;
  /** Drop broadcast frames. */
  nobcast = false;
  /** The unicast table overflowed: accept every unicast frame. */
  uniOverflow = false;
  /** The multicast table overflowed: accept every multicast frame. */
  multiOverflow = false;
  /** Unicast entries in {@linkcode RxFilter.table}. */
  uniCount = 0;
  /** Multicast entries in {@linkcode RxFilter.table}, after the unicast ones. */
  multiCount = 0;
  /** The MAC table: unicast entries then multicast entries, 6 bytes each. */
  readonly table: Uint8Array = new Uint8Array(MAC_TABLE_ENTRIES * 6);
  /** Filter tagged frames by {@linkcode RxFilter.vlans} (CTRL_VLAN negotiated). */
  vlanFiltering = false;
  /** One bit per VLAN id that is accepted. */
  readonly vlans: Uint32Array = new Uint32Array(MAX_VLAN / 32);

  /** Back to the reset state: promiscuous, empty tables, no VLAN. */
  reset(): void {
    this.promisc = true;
    this.allmulti =
      this.alluni =
      this.nomulti =
      this.nouni =
      this.nobcast =
        false;
    this.uniOverflow = this.multiOverflow = false;
    this.uniCount = this.multiCount = 0;
    this.table.fill(0);
    this.vlans.fill(0);
  }

  /** True when the filter may drop something, so the device must look at frames. */
  get active(): boolean {
    return !this.promisc;
  }

  /** Accepts VLAN id `vid` (0..4095). */
  addVlan(vid: number): void {
    this.vlans[vid >>> 5] |= 1 << (vid & 31);
  }

  /** Stops accepting VLAN id `vid` (0..4095). */
  deleteVlan(vid: number): void {
    this.vlans[vid >>> 5] &= ~(1 << (vid & 31));
  }

  /** True when VLAN id `vid` is accepted. */
  hasVlan(vid: number): boolean {
    return (this.vlans[vid >>> 5] & (1 << (vid & 31))) !== 0;
  }

  /**
   * Replaces the MAC table. Lists longer than the table set the matching
   * overflow flag instead (QEMU's behaviour).
   *
   * @param uni unicast addresses, 6 bytes each, concatenated
   * @param multi multicast addresses, 6 bytes each, concatenated
   */
  setTable(uni: Uint8Array, uniCount: number, multi: Uint8Array, multiCount: number): void {
    this.table.fill(0);
    this.uniOverflow = uniCount > MAC_TABLE_ENTRIES;
    this.uniCount = this.uniOverflow ? 0 : uniCount;
    if (!this.uniOverflow) this.table.set(uni.subarray(0, uniCount * 6));
    this.multiOverflow = multiCount > MAC_TABLE_ENTRIES - this.uniCount;
    this.multiCount = this.multiOverflow ? 0 : multiCount;
    if (!this.multiOverflow) this.table.set(multi.subarray(0, multiCount * 6), this.uniCount * 6);
  }

  /**
   * Decides whether a frame is for this device.
   *
   * @param mac the device's own address (6 bytes)
   * @param head the frame's first bytes (at least 6; 16 to see a VLAN tag)
   * @param headLength how many bytes of `head` are valid
   */
  accepts(mac: Uint8Array, head: Uint8Array, headLength: number): boolean {
    if (this.promisc) return true;
    if (
      this.vlanFiltering && headLength >= 16 && ((head[12] << 8) | head[13]) === ETH_P_8021Q
    ) {
      const vid = ((head[14] << 8) | head[15]) & 0xfff;
      if (!this.hasVlan(vid)) return false;
    }
    if ((head[0] & 1) !== 0) {
      if (
        head[0] === 0xff && head[1] === 0xff && head[2] === 0xff && head[3] === 0xff &&
        head[4] === 0xff && head[5] === 0xff
      ) {
        return !this.nobcast;
      }
      if (this.nomulti) return false;
      if (this.allmulti || this.multiOverflow) return true;
      return this.#inTable(head, this.uniCount, this.uniCount + this.multiCount);
    }
    if (this.nouni) return false;
    if (this.alluni || this.uniOverflow) return true;
    if (sameMac(head, 0, mac)) return true;
    return this.#inTable(head, 0, this.uniCount);
  }

  #inTable(head: Uint8Array, from: number, to: number): boolean {
    for (let i = from; i < to; i++) {
      if (sameMac(this.table, i * 6, head)) return true;
    }
    return false;
  }
}

/** True when `a[offset..offset+6)` equals `b[0..6)`. */
function sameMac(a: Uint8Array, offset: number, b: Uint8Array): boolean {
  return a[offset] === b[0] && a[offset + 1] === b[1] && a[offset + 2] === b[2] &&
    a[offset + 3] === b[3] && a[offset + 4] === b[4] && a[offset + 5] === b[5];
}
