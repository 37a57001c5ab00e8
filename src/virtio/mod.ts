/**
 * Virtio basics: device status bits, feature bits and their arithmetic, device
 * type ids, and the {@linkcode VirtioDevice} contract that device models implement.
 *
 * @module
 */
export { describeStatus, DeviceStatus } from "./status.ts";
export { VirtioDeviceId } from "./device_id.ts";
export {
  bitList,
  checkAcceptedFeatures,
  featureMask,
  featureWord,
  hasFeature,
  TRANSPORT_FEATURE_BITS,
  VirtioFeature,
  withFeatureWord,
} from "./features.ts";
export type { ActivateContext, VirtioDevice, VirtioDeviceHost } from "./device.ts";
