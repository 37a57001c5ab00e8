/** The kinds of guest mistakes and lost events that PCI code counts instead of throwing. */
export type PciDiagnosticKind =
  /** A config access with a bad size, crossing a dword, or outside config space. */
  | "invalidConfigAccess"
  /** A BAR or bus access with a bad size, outside its BAR, to an unimplemented BAR, or misaligned. */
  | "invalidBarAccess"
  /** An access that no region of a BAR (or no BAR on a bus) claims. */
  | "unclaimedAccess"
  /** An interrupt message that could not be delivered. */
  | "droppedInterrupt";

/**
 * Counters for every access PCI code ignored and every interrupt it dropped,
 * with the latest reason as text: guest mistakes are counted, never thrown.
 *
 * @example
 * ```ts
 * import { PciFunction } from "@vireo/vireo";
 * const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041 });
 * console.log(fn.configRead(0x3e, 4).toString(16)); // "ffffffff": it crosses a dword
 * console.log(fn.diagnostics.invalidConfigAccesses); // 1
 * ```
 */
export class PciDiagnostics {
  /** Config accesses ignored: bad size, crossing a dword, or outside config space. */
  invalidConfigAccesses = 0;
  /** BAR accesses ignored: bad size, outside the BAR, unimplemented BAR, misaligned. */
  invalidBarAccesses = 0;
  /** Accesses that hit no region inside a BAR, or no decoded BAR on a bus. */
  unclaimedAccesses = 0;
  /** MSI/MSI-X messages dropped (bus mastering off, bad address, no host). */
  droppedInterrupts = 0;
  /** The most recent diagnostic, for logs; empty when there was none. */
  lastMessage = "";

  /** Counts one event of `kind` and remembers `message`. */
  record(kind: PciDiagnosticKind, message: string): void {
    switch (kind) {
      case "invalidConfigAccess":
        this.invalidConfigAccesses++;
        break;
      case "invalidBarAccess":
        this.invalidBarAccesses++;
        break;
      case "unclaimedAccess":
        this.unclaimedAccesses++;
        break;
      case "droppedInterrupt":
        this.droppedInterrupts++;
        break;
    }
    this.lastMessage = message;
  }

  /** The sum of all counters. */
  get total(): number {
    return this.invalidConfigAccesses + this.invalidBarAccesses + this.unclaimedAccesses +
      this.droppedInterrupts;
  }
}
