/**
 * The guest's vDPA bus and `virtio_vdpa` transport driver: the
 * {@linkcode VdpaDevice} operations a vDPA parent (VDUSE) implements, and
 * {@linkcode VirtioVdpaDevice}, which presents such a device to the guest's
 * net and blk drivers with every mapping going through the device's map ops.
 *
 * Runs unchanged in Deno, browsers and Node.
 *
 * @module
 */
export type { VdpaCallback, VdpaDevice, VdpaVqState } from "./vdpa_device.ts";
export {
  probeVirtioVdpa,
  usesMapOps,
  VDPA_TRANSPORT_FEATURES,
  VirtioVdpaDevice,
  type VirtioVdpaOptions,
} from "./virtio_vdpa.ts";
