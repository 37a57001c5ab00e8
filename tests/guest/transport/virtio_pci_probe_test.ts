import { assertEquals } from "@std/assert";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { createMachine } from "../../../src/machine.ts";
import { DeviceStatus } from "../../../src/virtio/status.ts";
import type { VirtioPciModernDriver } from "../../../src/guest/pci/virtio_pci_modern.ts";
import { VirtioDriverError } from "../../../src/guest/virtio/virtio_guest_device.ts";
import { type CapSpec, collector, goodCaps, handBuiltFunction } from "./_rig.ts";

const EINVAL = -22;
const ENODEV = -19;
const ENOMEM = -12;

/** Builds a hand-made function into a machine and returns the guest's probe outcome. */
function probe(
  caps: CapSpec[],
  extra: Omit<Parameters<typeof handBuiltFunction>[0], "caps" | "memory"> = {},
) {
  const memory = new GuestMemory([{ base: 0, size: 8 << 20 }]);
  const built = handBuiltFunction({ ...extra, caps, memory });
  const m = createMachine({ memory, pciFunctions: [built.fn] });
  const e = m.entries[0];
  return { ...built, m, error: e.probeError, drv: e.guest as VirtioPciModernDriver | null };
}

function expectError(error: VirtioDriverError | null, errno: number, text: string): void {
  assertEquals(error instanceof VirtioDriverError, true, "the probe should fail");
  assertEquals(error!.errno, errno, error!.message);
  assertEquals(error!.message.includes(text), true, error!.message);
}

function without(type: number): CapSpec[] {
  return goodCaps().filter((c) => c.type !== type);
}

function withCap(type: number, change: Partial<CapSpec>): CapSpec[] {
  return goodCaps().map((c) => (c.type === type ? { ...c, ...change } : c));
}

Deno.test("probeVirtioPciModern() binds a well-formed hand-built function", async (t) => {
  await t.step("it probes, negotiates, and echoes through INTx (no MSI-X capability)", () => {
    const { drv, m, error } = probe(goodCaps());
    assertEquals(error, null);
    assertEquals(drv!.getStatus(), DeviceStatus.ACKNOWLEDGE);
    assertEquals(drv!.commonLength, 0x40);
    assertEquals(drv!.deviceLength, 8);
    drv!.negotiate(1n);
    const c = collector<string>();
    const [vq] = drv!.setupQueues<string>([{ name: "echo", callback: c.callback }]);
    drv!.setDriverOk();
    assertEquals(drv!.irqMode, "intx");
    m.memory.write(0x1000, new Uint8Array([1, 2, 3]));
    vq.addSgs([{ addr: 0x1000, length: 3 }], [{ addr: 0x2000, length: 8 }], "x");
    vq.kick();
    assertEquals(c.got, [{ token: "x", len: 3 }]);
  });
});

Deno.test("probeVirtioPciModern() rejects what Linux's vp_modern_probe rejects", async (t) => {
  await t.step("a vendor other than 0x1AF4 is not a virtio function", () => {
    expectError(probe(goodCaps(), { vendorId: 0x8086 }).error, ENODEV, "not a virtio function");
  });
  await t.step("a device ID outside 0x1000..0x107F is left alone", () => {
    expectError(probe(goodCaps(), { deviceId: 0x1100 }).error, ENODEV, "not a virtio ID");
  });
  await t.step("without COMMON_CFG it leaves the device to the legacy driver", () => {
    expectError(probe(without(1)).error, ENODEV, "leaving for legacy driver");
  });
  await t.step("COMMON_CFG without ISR_CFG fails", () => {
    expectError(probe(without(3)).error, EINVAL, "missing capabilities");
  });
  await t.step("COMMON_CFG without NOTIFY_CFG fails", () => {
    expectError(probe(without(2)).error, EINVAL, "missing capabilities");
  });
  await t.step("a misaligned common config fails", () => {
    expectError(probe(withCap(1, { offset: 0x2 })).error, EINVAL, "offset 2 not aligned to 4");
  });
  await t.step("a common config shorter than the 56-byte 1.0 structure fails", () => {
    expectError(probe(withCap(1, { length: 0x30 })).error, EINVAL, "bad capability len 48");
  });
  await t.step("a structure past the end of its BAR fails", () => {
    expectError(
      probe(withCap(1, { offset: 0x3ff0 })).error,
      EINVAL,
      "out of range on bar 4",
    );
  });
  await t.step("a zero-length device config fails", () => {
    expectError(probe(withCap(4, { length: 0 })).error, EINVAL, "bad capability len 0");
  });
  await t.step("a misaligned notify structure fails", () => {
    expectError(
      probe(withCap(2, { offset: 0x3001, length: 0x100 })).error,
      EINVAL,
      "not aligned to 2",
    );
  });
  await t.step("the first cap of a type is taken even when a later one would map", () => {
    const caps = [{ type: 1, bar: 4, offset: 0x6, length: 0x40 }, ...goodCaps()];
    expectError(probe(caps).error, EINVAL, "not aligned to 4");
  });
  await t.step("a function that fails the probe never gets bus mastering", () => {
    const { fn } = probe(withCap(1, { offset: 0x2 }));
    assertEquals(
      fn.memoryEnabled,
      true,
      "pci_enable_device ran; pci_disable_device keeps decoding",
    );
    assertEquals(fn.busMaster, false);
  });
});

Deno.test("probeVirtioPciModern() skips capabilities Linux ignores", async (t) => {
  await t.step("a cap naming a reserved BAR (> 5) is skipped for the next usable one", () => {
    const caps = [{ type: 1, bar: 7, offset: 0x3, length: 1 }, ...goodCaps()];
    const { error, drv } = probe(caps);
    assertEquals(error, null);
    assertEquals(drv!.commonLength, 0x40);
  });
  await t.step("a cap naming an unimplemented BAR is skipped", () => {
    const caps = [{ type: 3, bar: 2, offset: 0, length: 1 }, ...goodCaps()];
    assertEquals(probe(caps).error, null);
  });
  await t.step("only a cap on an unimplemented BAR counts as missing", () => {
    const caps = [...without(3), { type: 3, bar: 2, offset: 0, length: 1 }];
    expectError(probe(caps).error, EINVAL, "missing capabilities");
  });
  await t.step("a device without DEVICE_CFG probes; config access then throws", () => {
    const { error, drv } = probe(without(4));
    assertEquals(error, null);
    assertEquals(drv!.deviceLength, 0);
    let thrown = "";
    try {
      drv!.readConfig8(0);
    } catch (e) {
      thrown = (e as Error).name;
    }
    assertEquals(thrown, "RangeError");
  });
});

Deno.test("virtio-pci driver checks made after the probe", async (t) => {
  await t.step("config accesses are bounded by device_len", () => {
    const { drv } = probe(goodCaps());
    assertEquals(drv!.readConfig32(4), 0);
    let thrown = "";
    try {
      drv!.readConfig32(6);
    } catch (e) {
      thrown = (e as Error).name;
    }
    assertEquals(thrown, "RangeError");
  });
  await t.step("a queue whose notify offset leaves the notify structure fails to set up", () => {
    // Room for queue 0's doorbell only: queue 1 sits at 1 x 4 + 2 > 2.
    const { drv, m, vp } = probe(withCap(2, { length: 2 }));
    drv!.negotiate(0n);
    const before = m.pages.freeCount;
    let err: VirtioDriverError | null = null;
    try {
      drv!.setupQueues([{ name: "a", callback: () => {} }, { name: "b", callback: () => {} }]);
    } catch (e) {
      err = e as VirtioDriverError;
    }
    expectError(err, ENOMEM, "bad notification offset 1 (x 4) for queue 1 > 2");
    assertEquals(m.pages.freeCount, before, "the first queue's ring is freed again");
    assertEquals(vp.core.queues[0].enabled, false, "queue_enable is written only at the end");
    assertEquals(drv!.vqs.length, 0);
  });
  await t.step("a notify structure larger than a page is mapped per queue", () => {
    const { drv, m } = probe(withCap(2, { length: 0x1001 }));
    drv!.negotiate(0n);
    const c = collector<string>();
    const [, vq] = drv!.setupQueues<string>([{ name: "a" }, { name: "b", callback: c.callback }]);
    drv!.setDriverOk();
    vq.addSgs([{ addr: 0x1000, length: 4 }], [{ addr: 0x2000, length: 4 }], "b");
    vq.kick();
    assertEquals(c.got, [{ token: "b", len: 4 }]);
    assertEquals(m.entries[0].pciFunction !== null, true);
  });
  await t.step("a device without VERSION_1 fails feature finalization", () => {
    let vpRef: { pci: { barRead(b: number, o: number, s: number): number } } | null = null;
    const built = probe(goodCaps(), {
      // device_feature with device_feature_select = 1: hide VERSION_1 (bit 32).
      tamper: (off, _s, v) => (off === 4 && vpRef!.pci.barRead(4, 0, 4) === 1 ? v & ~1 : v),
    });
    vpRef = built.vp;
    let err: VirtioDriverError | null = null;
    try {
      built.drv!.negotiate(1n);
    } catch (e) {
      err = e as VirtioDriverError;
    }
    expectError(err, EINVAL, "does not have VIRTIO_F_VERSION_1");
    assertEquals(built.drv!.getStatus() & DeviceStatus.FAILED, DeviceStatus.FAILED);
    assertEquals(built.drv!.getStatus() & DeviceStatus.FEATURES_OK, 0);
  });
  await t.step("RING_RESET needs a common config that reaches queue_reset", () => {
    const short = probe(withCap(1, { length: 0x38 }));
    let err: VirtioDriverError | null = null;
    try {
      short.drv!.negotiate(0n);
    } catch (e) {
      err = e as VirtioDriverError;
    }
    expectError(err, EINVAL, "not enough space to use feature 40 (queue_reset), maximum space 56");
    const noReset = probe(withCap(1, { length: 0x38 }), { pci: { ringReset: false } });
    assertEquals(typeof noReset.drv!.negotiate(0n), "bigint");
  });
});
