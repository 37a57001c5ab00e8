/**
 * The modern virtio-pci transport: a PCI function for any virtio device.
 *
 * @module
 */
export {
  COMMON_CFG_LENGTH,
  CommonCfg,
  MSIX_BAR,
  VIRTIO_BAR,
  VIRTIO_MSI_NO_VECTOR,
  VirtioPci,
  VirtioPciCapType,
  VirtioPciLayout,
  type VirtioPciOptions,
} from "./virtio_pci.ts";
