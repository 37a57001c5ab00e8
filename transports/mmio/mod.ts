/**
 * The virtio-mmio (version 2) transport, for emulators without a PCI bus.
 *
 * @module
 */
export {
  MMIO_MAGIC,
  MMIO_VENDOR_ID,
  MmioRegister,
  VirtioMmio,
  type VirtioMmioOptions,
} from "./virtio_mmio.ts";
