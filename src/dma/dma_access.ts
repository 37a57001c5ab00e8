/**
 * The direction of a device's access to memory, as a bit set so that it can be
 * compared with mapping permissions (`(perm & access) === access`).
 */
export const DmaAccess = {
  /** The device reads memory (the driver's TO_DEVICE direction). */
  Read: 1,
  /** The device writes memory (the driver's FROM_DEVICE direction). */
  Write: 2,
  /** Both (a BIDIRECTIONAL mapping). */
  ReadWrite: 3,
} as const;

/** One of the {@linkcode DmaAccess} values. */
export type DmaAccess = typeof DmaAccess[keyof typeof DmaAccess];
