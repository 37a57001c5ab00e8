import { GuestFault, hex } from "../guest_fault.ts";

/** Why a guest memory access failed. */
export type MemoryFaultReason =
  /** Some byte of the range lies outside every RAM region (a hole or past the end). */
  | "unmapped"
  /** The address or length is not a non-negative integer below 2^53. */
  | "invalid"
  /** A 64-bit value read from memory is at or above 2^53 and cannot be a `number`. */
  | "unrepresentable";

/**
 * A guest memory access that cannot be performed.
 *
 * @example
 * ```ts
 * import { GuestMemory, MemoryFault } from "@vireo/vireo";
 * const mem = new GuestMemory([{ base: 0, size: 4096 }]);
 * try {
 *   mem.read32(4094);
 * } catch (e) {
 *   console.log(e instanceof MemoryFault); // true
 * }
 * ```
 */
export class MemoryFault extends GuestFault {
  /** First guest physical address of the failed access. */
  readonly address: number;
  /** Length in bytes of the failed access. */
  readonly length: number;
  /** Why it failed. */
  readonly reason: MemoryFaultReason;

  /** Creates a fault for `length` bytes at `address`. */
  constructor(address: number, length: number, reason: MemoryFaultReason = "unmapped") {
    super(describe(address, length, reason));
    this.address = address;
    this.length = length;
    this.reason = reason;
  }
}

function describe(address: number, length: number, reason: MemoryFaultReason): string {
  switch (reason) {
    case "unmapped":
      return `Cannot access ${length} bytes at ${hex(address)}: outside guest RAM`;
    case "invalid":
      return `Cannot access ${length} bytes at ${hex(address)}: not a valid address range`;
    case "unrepresentable":
      return `Cannot read the 64-bit value at ${hex(address)}: it is at or above 2^53`;
  }
}
