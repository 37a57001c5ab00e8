/**
 * Guest physical memory: RAM regions over `ArrayBuffer` or `SharedArrayBuffer`,
 * zero-copy views, little-endian accessors and {@linkcode MemoryFault}.
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */
export { GuestMemory, MemoryRegion, type RamRegionOptions } from "./guest_memory.ts";
export { MemoryFault, type MemoryFaultReason } from "./memory_fault.ts";
