/**
 * Feature bits and the arithmetic on 64-bit (or wider) feature words.
 *
 * Feature words are `bigint` (a cold path: they change only during
 * negotiation); devices turn the bits they need into booleans at activation.
 *
 * @module
 */

/** Transport and ring feature bits reserved by the spec (virtio 1.x §6), as bit numbers. */
export const VirtioFeature = {
  /** Descriptors may point at indirect descriptor tables. */
  INDIRECT_DESC: 28,
  /** used_event / avail_event fields suppress notifications. */
  EVENT_IDX: 29,
  /** A modern (virtio 1.x) device; required by modern transports. */
  VERSION_1: 32,
  /** The device's DMA goes through a platform IOMMU (or VDUSE's domain). */
  ACCESS_PLATFORM: 33,
  /** The packed virtqueue layout. */
  RING_PACKED: 34,
  /** Buffers are used in the order they were made available. */
  IN_ORDER: 35,
  /** Memory accesses must be ordered as the platform orders them. */
  ORDER_PLATFORM: 36,
  /** Single-root I/O virtualisation. */
  SR_IOV: 37,
  /** The driver passes extra data (ring position) in notifications. */
  NOTIFICATION_DATA: 38,
  /** The driver uses the device-provided notification config data. */
  NOTIF_CONFIG_DATA: 39,
  /** Individual virtqueues can be reset. */
  RING_RESET: 40,
  /** Administration virtqueues. */
  ADMIN_VQ: 41,
} as const;

/** The inclusive range of transport feature bits (everything else is device-type specific). */
export const TRANSPORT_FEATURE_BITS: readonly [number, number] = [28, 41];

/** A feature word with the given bit numbers set. */
export function featureMask(...bits: readonly number[]): bigint {
  let mask = 0n;
  for (const bit of bits) {
    if (!Number.isInteger(bit) || bit < 0 || bit > 127) {
      throw new RangeError(`Cannot make a feature mask: bit ${bit} is not in 0..127`);
    }
    mask |= 1n << BigInt(bit);
  }
  return mask;
}

/** True when `features` has bit number `bit` set. */
export function hasFeature(features: bigint, bit: number): boolean {
  return ((features >> BigInt(bit)) & 1n) === 1n;
}

/** The 32-bit window `select` of a feature word (`select` 0 = bits 0..31). */
export function featureWord(features: bigint, select: number): number {
  if (!Number.isInteger(select) || select < 0 || select > 0xffff_ffff) return 0;
  return Number((features >> BigInt(select * 32)) & 0xffff_ffffn);
}

/** `features` with its 32-bit window `select` replaced by `word`. */
export function withFeatureWord(features: bigint, select: number, word: number): bigint {
  const shift = BigInt(select * 32);
  const cleared = features & ~(0xffff_ffffn << shift);
  return cleared | (BigInt(word >>> 0) << shift);
}

/**
 * Checks the feature set a driver accepted against what the device offered:
 * returns `null` when acceptable, else a sentence saying why not.
 */
export function checkAcceptedFeatures(offered: bigint, accepted: bigint): string | null {
  const extra = accepted & ~offered;
  if (extra !== 0n) {
    return `the driver accepted features the device did not offer: ${bitList(extra)}`;
  }
  if (!hasFeature(accepted, VirtioFeature.VERSION_1)) {
    return "the driver did not accept VIRTIO_F_VERSION_1";
  }
  return null;
}

/** Lists the bit numbers set in `features`: `"1, 5, 32"`. */
export function bitList(features: bigint): string {
  const bits: number[] = [];
  for (let i = 0; features >> BigInt(i) !== 0n; i++) {
    if (hasFeature(features, i)) bits.push(i);
  }
  return bits.join(", ");
}
