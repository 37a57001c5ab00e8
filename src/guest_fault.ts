/**
 * The base class of every error that a guest can cause by what it writes.
 *
 * A transport catches `GuestFault` from device code and turns it into
 * DEVICE_NEEDS_RESET plus a config interrupt; anything else that escapes is a
 * bug in vireo or misuse of its host API.
 *
 * @module
 */

/** An error caused by guest-controlled input (memory contents, registers, rings). */
export class GuestFault extends Error {
  /** Creates a guest fault with a readable message. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Formats a number as `0x…` for diagnostics. */
export function hex(value: number): string {
  return Number.isFinite(value) ? `0x${value.toString(16)}` : String(value);
}
