import { assertEquals } from "@std/assert";
import { LinuxErrno } from "../../../transports/vduse/errno.ts";
import {
  decodeU64,
  encodeDevConfig,
  encodeName,
  encodeU64,
  encodeVqConfig,
  VduseIoctl,
} from "../../../transports/vduse/uapi.ts";
import { featureMask } from "../../../src/virtio/features.ts";
import { BASE_FEATURES, blkConfig, control, createDev, setup } from "./helpers.ts";

const SETUP0 = encodeVqConfig({ index: 0, maxSize: 64, group: 0 });
const { EINVAL, EPERM, EEXIST, EBUSY, EFAULT, ENODEV } = LinuxErrno;

function getVersion(f: ReturnType<typeof setup>, fd: number): bigint {
  const arg = new Uint8Array(8);
  assertEquals(f.backend.ioctl(fd, VduseIoctl.GET_API_VERSION, arg), 0);
  return decodeU64(arg);
}

Deno.test("VDUSE control: API version state machine", async (t) => {
  await t.step("GET_API_VERSION opts a fresh fd into v1", () => {
    const f = setup();
    const fd = control(f);
    assertEquals(getVersion(f, fd), 1n);
    // ...so a v0-style CREATE_DEV (ngroups = nas = 0) now fails.
    assertEquals(createDev(f, fd, blkConfig()), -EINVAL);
    assertEquals(createDev(f, fd, blkConfig({ ngroups: 1, nas: 1 })), 0);
    assertEquals(f.kernel.devices.get("blk0")!.apiVersion, 1);
  });

  await t.step("CREATE_DEV on an fd never asked is API v0", () => {
    const f = setup();
    const fd = control(f);
    assertEquals(createDev(f, fd, blkConfig({ ngroups: 1, nas: 1 })), -EINVAL);
    assertEquals(createDev(f, fd, blkConfig()), 0);
    assertEquals(f.kernel.devices.get("blk0")!.apiVersion, 0);
    assertEquals(getVersion(f, fd), 0n);
  });

  await t.step("SET_API_VERSION accepts 0 and 1, refuses 2, per fd", () => {
    const f = setup();
    const a = control(f);
    const b = control(f);
    assertEquals(f.backend.ioctl(a, VduseIoctl.SET_API_VERSION, encodeU64(0)), 0);
    assertEquals(f.backend.ioctl(a, VduseIoctl.SET_API_VERSION, encodeU64(2)), -EINVAL);
    assertEquals(getVersion(f, a), 0n);
    assertEquals(f.backend.ioctl(b, VduseIoctl.SET_API_VERSION, encodeU64(1)), 0);
    assertEquals(getVersion(f, b), 1n);
    assertEquals(f.backend.ioctl(a, VduseIoctl.SET_API_VERSION, new Uint8Array(4)), -EFAULT);
  });

  await t.step("unknown control commands are -EINVAL", () => {
    const f = setup();
    const fd = control(f);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.VQ_SETUP, new Uint8Array(32)), -EINVAL);
    assertEquals(f.backend.ioctl(fd, 0x1234, null), -EINVAL);
  });
});

Deno.test("VDUSE control: CREATE_DEV validation", async (t) => {
  const f = setup();
  const fd = control(f, 0);
  const bad = (name: string, r: number, overrides: Parameters<typeof blkConfig>[0]) =>
    assertEquals(createDev(f, fd, blkConfig(overrides)), r, name);

  await t.step("every -EINVAL rule", () => {
    bad("reserved", -EINVAL, { reserved: [0, 0, 0, 1] });
    bad("v0 ngroups", -EINVAL, { ngroups: 1 });
    bad("v0 nas", -EINVAL, { nas: 1 });
    bad("vq_align > PAGE_SIZE", -EINVAL, { vqAlign: 8192 });
    bad("config_size > PAGE_SIZE", -EINVAL, { config: new Uint8Array(4097) });
    bad("vq_num > 0xffff", -EINVAL, { vqNum: 0x10000 });
    bad("empty name", -EINVAL, { name: "" });
    bad("device id", -EINVAL, { deviceId: 3 });
    bad("no ACCESS_PLATFORM", -EINVAL, { features: featureMask(32) });
    bad("block CONFIG_WCE", -EINVAL, { features: BASE_FEATURES | featureMask(11) });
    bad("net CTRL_VQ", -EINVAL, { deviceId: 1, features: BASE_FEATURES | featureMask(17) });
    bad("net without VERSION_1", -EINVAL, { deviceId: 1, features: featureMask(33) });
    assertEquals(f.kernel.devices.size, 0);
  });

  await t.step(
    "what is not checked: vendor id, vq_num 0, vq_align 0, net with TSO4 (bit 11)",
    () => {
      bad("ok", 0, { name: "a", vendorId: 0xffff_ffff, vqNum: 0, vqAlign: 0 });
      bad("ok", 0, { name: "n", deviceId: 1, features: BASE_FEATURES | featureMask(11) });
      bad("fs", 0, { name: "fs", deviceId: 26 });
    },
  );

  await t.step("-EFAULT for a short header or config blob", () => {
    assertEquals(f.backend.ioctl(fd, VduseIoctl.CREATE_DEV, new Uint8Array(335)), -EFAULT);
    const bytes = encodeDevConfig(blkConfig({ name: "short", config: new Uint8Array(8) }));
    assertEquals(f.backend.ioctl(fd, VduseIoctl.CREATE_DEV, bytes.subarray(0, 340)), -EFAULT);
  });

  await t.step("-EEXIST for a duplicate name; -EPERM for net without CAP_NET_ADMIN", () => {
    bad("first", 0, { name: "dup" });
    bad("dup", -EEXIST, { name: "dup" });
    const g = setup({ capNetAdmin: false });
    const gfd = control(g, 0);
    assertEquals(createDev(g, gfd, blkConfig({ deviceId: 1 })), -EPERM);
    assertEquals(createDev(g, gfd, blkConfig({ deviceId: 2 })), 0);
  });

  await t.step("byte 255 of the name is forced to NUL", () => {
    const bytes = encodeDevConfig(blkConfig({ name: "x".repeat(255) }));
    bytes[255] = 0x79;
    assertEquals(f.backend.ioctl(fd, VduseIoctl.CREATE_DEV, bytes), 0);
    assertEquals(f.kernel.devices.has("x".repeat(255)), true);
  });
});

Deno.test("VDUSE control: CTRL_VQ opt-in (allowNetCtrlVq)", async (t) => {
  const net = { deviceId: 1, features: BASE_FEATURES | featureMask(17), vqNum: 3 };
  await t.step("off by default, even for API v1", () => {
    const f = setup();
    assertEquals(createDev(f, control(f, 1), blkConfig({ ...net, ngroups: 2, nas: 2 })), -EINVAL);
  });
  await t.step("with the option: accepted for API v1, still refused for v0", () => {
    const f = setup({ allowNetCtrlVq: true });
    assertEquals(createDev(f, control(f, 0), blkConfig(net)), -EINVAL);
    assertEquals(createDev(f, control(f, 1), blkConfig({ ...net, ngroups: 2, nas: 2 })), 0);
  });
});

Deno.test("VDUSE control: DESTROY_DEV and device nodes", async (t) => {
  await t.step("unknown name -EINVAL; open or attached -EBUSY; then gone", () => {
    const f = setup();
    const fd = control(f, 0);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DESTROY_DEV, encodeName("nope")), -EINVAL);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DESTROY_DEV, new Uint8Array(10)), -EFAULT);
    assertEquals(createDev(f, fd, blkConfig()), 0);
    const dev = f.backend.openDevice("blk0");
    assertEquals(f.backend.openDevice("blk0"), -EBUSY);
    assertEquals(f.backend.openDevice("other"), -ENODEV);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DESTROY_DEV, encodeName("blk0")), -EBUSY);
    f.backend.ioctl(dev, VduseIoctl.VQ_SETUP, SETUP0);
    const vdpa = f.kernel.vdpaDevAdd("blk0");
    assertEquals(typeof vdpa, "object");
    assertEquals(f.kernel.vdpaDevAdd("blk0"), -EEXIST);
    f.backend.close(dev);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DESTROY_DEV, encodeName("blk0")), -EBUSY);
    assertEquals(f.kernel.vdpaDevDel("blk0"), 0);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DESTROY_DEV, encodeName("blk0")), 0);
    assertEquals(f.kernel.devices.size, 0);
    assertEquals(createDev(f, fd, blkConfig()), 0); // the name is free again
  });

  await t.step("vdpa dev add needs VQ_SETUP on every queue", () => {
    const f = setup();
    assertEquals(createDev(f, control(f, 0), blkConfig({ vqNum: 2 })), 0);
    const dev = f.backend.openDevice("blk0");
    f.backend.ioctl(dev, VduseIoctl.VQ_SETUP, SETUP0);
    assertEquals(f.kernel.vdpaDevAdd("blk0"), -EINVAL);
    assertEquals(f.kernel.vdpaDevAdd("nope"), -EINVAL);
  });

  await t.step("sysfs bounce_size: range checked, frozen once domains exist", () => {
    const f = setup();
    assertEquals(createDev(f, control(f, 0), blkConfig()), 0);
    assertEquals(f.kernel.setBounceSize("blk0", 1000), -EINVAL);
    assertEquals(f.kernel.setBounceSize("blk0", (2 << 20) + 100), 0);
    assertEquals(f.kernel.devices.get("blk0")!.bounceSize, 2 << 20);
    const dev = f.backend.openDevice("blk0");
    f.backend.ioctl(dev, VduseIoctl.VQ_SETUP, SETUP0);
    f.kernel.vdpaDevAdd("blk0");
    assertEquals(f.kernel.setBounceSize("blk0", 1 << 20), -EPERM);
  });
});
