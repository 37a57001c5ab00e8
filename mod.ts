/**
 * vireo: virtio devices (net, blk) for JavaScript machine emulators, with
 * virtio-pci behind an emulated IOMMU, VDUSE, and a model of Linux's drivers.
 *
 * This module is the public API. Everything here runs unchanged in Deno,
 * browsers and Node.
 *
 * @example
 * ```ts
 * import { DirectDmaSpace, GuestMemory } from "@vireo/vireo";
 * const memory = new GuestMemory([{ base: 0, size: 1 << 20 }]);
 * const dma = new DirectDmaSpace(memory);
 * dma.write32(0x1000, 0x12345678);
 * console.log(memory.read16(0x1002).toString(16)); // "1234"
 * ```
 *
 * @module
 */
export { GuestFault } from "./src/guest_fault.ts";
export * from "./src/memory/mod.ts";
export * from "./src/dma/mod.ts";
export * from "./src/virtio/mod.ts";
export * from "./src/queue/mod.ts";
export * from "./src/pci/mod.ts";
export * from "./src/iommu/mod.ts";
export * from "./src/guest/mod.ts";
export * from "./src/machine.ts";
export * from "./transports/core/mod.ts";
export * from "./transports/pci/mod.ts";
export * from "./transports/mmio/mod.ts";
export * from "./devices/iommu/mod.ts";
