/**
 * PCI configuration-space register offsets and bits, named after Linux's
 * `include/uapi/linux/pci_regs.h` (`PCI_COMMAND_MEMORY` is
 * `PciCommand.MEMORY`).
 *
 * @module
 */

/** Offsets of the type-0 header fields in configuration space. */
export const PciConfigOffset = {
  /** Vendor ID, 16 bits, read-only. */
  VENDOR_ID: 0x00,
  /** Device ID, 16 bits, read-only. */
  DEVICE_ID: 0x02,
  /** Command register, 16 bits ({@linkcode PciCommand}). */
  COMMAND: 0x04,
  /** Status register, 16 bits ({@linkcode PciStatus}). */
  STATUS: 0x06,
  /** Revision ID, 8 bits, read-only. */
  REVISION_ID: 0x08,
  /** Class code, 24 bits (programming interface, subclass, base class), read-only. */
  CLASS_CODE: 0x09,
  /** Cache line size, 8 bits, read-write scratch. */
  CACHE_LINE_SIZE: 0x0c,
  /** Latency timer, 8 bits (hard-wired 0 here). */
  LATENCY_TIMER: 0x0d,
  /** Header type, 8 bits: bit 7 = multi-function device, bits 6:0 = layout (0). */
  HEADER_TYPE: 0x0e,
  /** BIST, 8 bits (hard-wired 0 here). */
  BIST: 0x0f,
  /** BAR 0; BAR n is at `BAR_0 + 4 * n`, n = 0..5. */
  BAR_0: 0x10,
  /** Subsystem vendor ID, 16 bits, read-only. */
  SUBSYSTEM_VENDOR_ID: 0x2c,
  /** Subsystem ID, 16 bits, read-only. */
  SUBSYSTEM_ID: 0x2e,
  /** Expansion ROM BAR (hard-wired 0 here: no ROM). */
  ROM_ADDRESS: 0x30,
  /** Capabilities pointer, 8 bits: offset of the first capability. */
  CAPABILITY_LIST: 0x34,
  /** Interrupt line, 8 bits, read-write scratch for firmware. */
  INTERRUPT_LINE: 0x3c,
  /** Interrupt pin, 8 bits: 0 = none, 1..4 = INTA#..INTD#. */
  INTERRUPT_PIN: 0x3d,
  /** Min_Gnt, 8 bits (0). */
  MIN_GNT: 0x3e,
  /** Max_Lat, 8 bits (0). */
  MAX_LAT: 0x3f,
} as const;

/** Bits of the command register (offset 0x04). */
export const PciCommand = {
  /** Decode I/O BARs. */
  IO: 0x0001,
  /** Decode memory BARs. */
  MEMORY: 0x0002,
  /** The function may master the bus (DMA, MSI writes). */
  MASTER: 0x0004,
  /** Parity error response. */
  PARITY: 0x0040,
  /** SERR# enable. */
  SERR: 0x0100,
  /** INTx emulation disable: the function must not assert its INTx pin. */
  INTX_DISABLE: 0x0400,
} as const;

/** Bits of the status register (offset 0x06). */
export const PciStatus = {
  /** INTx interrupt status: the function wants its INTx pin asserted (read-only). */
  INTERRUPT: 0x0008,
  /** The function has a capability list (read-only). */
  CAP_LIST: 0x0010,
  /** Master data parity error (write 1 to clear). */
  PARITY: 0x0100,
  /** Signaled target abort (write 1 to clear). */
  SIG_TARGET_ABORT: 0x0800,
  /** Received target abort (write 1 to clear). */
  REC_TARGET_ABORT: 0x1000,
  /** Received master abort (write 1 to clear). */
  REC_MASTER_ABORT: 0x2000,
  /** Signaled system error (write 1 to clear). */
  SIG_SYSTEM_ERROR: 0x4000,
  /** Detected parity error (write 1 to clear). */
  DETECTED_PARITY: 0x8000,
} as const;

/** The write-1-to-clear error bits of the status register. */
export const PCI_STATUS_ERROR_BITS = 0xf900;

/** Command bits a function lets the guest write; the others read 0. */
export const PCI_COMMAND_WRITABLE_BITS = 0x0547;

/** Capability IDs (the byte at +0 of each capability). */
export const PciCapabilityId = {
  /** Power management. */
  PM: 0x01,
  /** MSI. */
  MSI: 0x05,
  /** Vendor-specific (virtio uses this for its structures). */
  VENDOR: 0x09,
  /** PCI Express. */
  EXP: 0x10,
  /** MSI-X. */
  MSIX: 0x11,
} as const;
