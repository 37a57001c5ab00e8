import { assertEquals, assertThrows } from "@std/assert";
import {
  bitList,
  checkAcceptedFeatures,
  describeStatus,
  DeviceStatus,
  featureMask,
  featureWord,
  hasFeature,
  VirtioFeature,
  withFeatureWord,
} from "../../src/virtio/mod.ts";

Deno.test("feature words", async (t) => {
  const offered = featureMask(VirtioFeature.VERSION_1, VirtioFeature.RING_PACKED, 0, 5);

  await t.step("featureMask and hasFeature agree on bit numbers", () => {
    assertEquals(offered, (1n << 32n) | (1n << 34n) | 1n | 32n);
    assertEquals(hasFeature(offered, 34), true);
    assertEquals(hasFeature(offered, 33), false);
    assertThrows(() => featureMask(128), RangeError);
  });

  await t.step("32-bit windows read and replace the selected half", () => {
    assertEquals(featureWord(offered, 0), 0x21);
    assertEquals(featureWord(offered, 1), 0b101);
    assertEquals(featureWord(offered, 2), 0);
    assertEquals(featureWord(offered, -1), 0);
    const f = withFeatureWord(offered, 1, 0x1);
    assertEquals(f, (1n << 32n) | 0x21n);
    assertEquals(withFeatureWord(0n, 0, 0xffffffff), 0xffff_ffffn);
  });

  await t.step("accepted features must be offered and include VERSION_1", () => {
    assertEquals(checkAcceptedFeatures(offered, featureMask(32, 0)), null);
    assertEquals(
      checkAcceptedFeatures(offered, featureMask(32, 1, 2)),
      "the driver accepted features the device did not offer: 1, 2",
    );
    assertEquals(
      checkAcceptedFeatures(offered, featureMask(0)),
      "the driver did not accept VIRTIO_F_VERSION_1",
    );
    assertEquals(bitList(0n), "");
  });
});

Deno.test("describeStatus names the bits of a status byte", () => {
  assertEquals(describeStatus(0), "RESET");
  assertEquals(
    describeStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK),
    "ACKNOWLEDGE|DRIVER|FEATURES_OK",
  );
  assertEquals(describeStatus(DeviceStatus.DEVICE_NEEDS_RESET | 32), "DEVICE_NEEDS_RESET|0x20");
});
