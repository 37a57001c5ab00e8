import { GuestFault, hex } from "../guest_fault.ts";
import { DmaAccess } from "./dma_access.ts";

/** Why a device DMA failed. */
export type DmaFaultReason =
  /** No mapping (or no RAM) covers the address. */
  | "unmapped"
  /** A mapping exists but does not allow this access (a write to a read-only page). */
  | "permission"
  /** The address or length is not a non-negative integer below 2^53. */
  | "invalid"
  /** A 64-bit value read by DMA is at or above 2^53. */
  | "unrepresentable";

/**
 * A device DMA that the device's address space refused.
 *
 * Devices catch it and report their own error: NEEDS_RESET for ring accesses,
 * IOERR for a block request's data, a dropped frame for the network.
 */
export class DmaFault extends GuestFault {
  /** First device (bus) address of the failed access. */
  readonly address: number;
  /** Length in bytes of the failed access. */
  readonly length: number;
  /** The access the device attempted. */
  readonly access: DmaAccess;
  /** Why it failed. */
  readonly reason: DmaFaultReason;

  /** Creates a fault for `length` bytes at device address `address`. */
  constructor(
    address: number,
    length: number,
    access: DmaAccess,
    reason: DmaFaultReason,
    options?: ErrorOptions,
  ) {
    super(
      `DMA ${access === DmaAccess.Write ? "write" : "read"} of ${length} bytes at ${
        hex(address)
      } failed: ${reason}`,
      options,
    );
    this.address = address;
    this.length = length;
    this.access = access;
    this.reason = reason;
  }
}
