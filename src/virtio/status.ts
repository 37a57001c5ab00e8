/**
 * Device status bits (virtio 1.x §2.1), written by the driver and read back.
 */
export const DeviceStatus = {
  /** The guest found the device. */
  ACKNOWLEDGE: 1,
  /** The guest has a driver for it. */
  DRIVER: 2,
  /** The driver is set up and ready to drive the device. */
  DRIVER_OK: 4,
  /** The driver accepted the features; the device confirms by keeping the bit. */
  FEATURES_OK: 8,
  /** The driver suspended the device (virtio 1.4, with VIRTIO_F_SUSPEND). */
  SUSPEND: 16,
  /** The device hit an error it cannot recover from without a reset. */
  DEVICE_NEEDS_RESET: 64,
  /** The driver gave up on the device. */
  FAILED: 128,
} as const;

/** Names the bits set in a status byte, for diagnostics: `"ACKNOWLEDGE|DRIVER"`. */
export function describeStatus(status: number): string {
  if (status === 0) return "RESET";
  const names = Object.entries(DeviceStatus)
    .filter(([, bit]) => (status & bit) !== 0)
    .map(([name]) => name);
  const unknown = status & ~Object.values(DeviceStatus).reduce((a, b) => a | b, 0);
  if (unknown !== 0) names.push(`0x${unknown.toString(16)}`);
  return names.join("|");
}
