/**
 * The transport-independent virtio state machine shared by virtio-pci,
 * virtio-mmio and VDUSE.
 *
 * @module
 */
export {
  QueueArea,
  QueueRegisters,
  type RingFeatureOptions,
  VirtioCore,
  type VirtioCoreOptions,
  type VirtioDiagnostics,
} from "./virtio_core.ts";
