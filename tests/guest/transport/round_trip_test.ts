import { assertEquals } from "@std/assert";
import { createMachine, type MachineTransport } from "../../../src/machine.ts";
import type { VirtioGuestDevice } from "../../../src/guest/virtio/virtio_guest_device.ts";
import { VirtioDriverError } from "../../../src/guest/virtio/virtio_guest_device.ts";
import type { Virtqueue } from "../../../src/guest/virtio/virtqueue.ts";
import type { VirtioMmio } from "../../../transports/mmio/virtio_mmio.ts";
import { probeVirtioMmio } from "../../../src/guest/virtio_mmio_driver.ts";
import { EchoDevice } from "../../helpers/echo_device.ts";
import { FlakyConfigDevice } from "./_rig.ts";

const CASES: { transport: MachineTransport; packed: boolean; msi: boolean }[] = [
  { transport: "pci", packed: false, msi: true },
  { transport: "pci", packed: true, msi: true },
  { transport: "pci", packed: false, msi: false },
  { transport: "pci", packed: true, msi: false },
  { transport: "mmio", packed: false, msi: true },
  { transport: "mmio", packed: true, msi: true },
];

/** Sends `rounds` messages of varied sizes through echo queue 1 and checks every reply. */
function echoRounds(
  drv: VirtioGuestDevice,
  vq: Virtqueue<number>,
  got: { token: number; len: number }[],
  rounds: number,
): void {
  const memory = drv.memory;
  const inBase = 0x1_0000;
  const outBase = 0x8_0000;
  for (let i = 0; i < rounds; i++) {
    const len = 1 + ((i * 37) % 200);
    const src = new Uint8Array(len).map((_, k) => (i + k) & 0xff);
    memory.write(inBase, src);
    memory.fill(outBase, 256, 0);
    assertEquals(
      vq.addSgs([{ addr: inBase, length: len }], [{ addr: outBase, length: 256 }], i),
      0,
    );
    vq.kick();
    assertEquals(got.at(-1), { token: i, len }, `round ${i}`);
    assertEquals(memory.view(outBase, len), src);
  }
}

Deno.test("echo round trips through the machine", async (t) => {
  for (const c of CASES) {
    const name = `${c.transport}, ${c.packed ? "packed" : "split"}, ${
      c.transport === "mmio" ? "line" : c.msi ? "MSI-X" : "INTx"
    }`;
    await t.step(`${name}: 300 buffers (the ring wraps) with an interrupt each`, () => {
      const device = new EchoDevice(2, 32);
      const m = createMachine({
        transport: c.transport,
        msi: c.msi,
        devices: [{ device, ring: { packed: c.packed } }],
      });
      const drv = m.guest(0);
      drv.negotiate(0n);
      const got: { token: number; len: number }[] = [];
      const [, vq] = drv.setupQueues<number>([{ name: "rx" }, {
        name: "echo",
        callback: (q) => {
          for (let b = q.getBuf(); b !== null; b = q.getBuf()) got.push({ ...b });
        },
      }]);
      drv.setDriverOk();
      assertEquals(vq.layout, c.packed ? "packed" : "split");
      echoRounds(drv, vq, got, 300);
      assertEquals(device.echoed, 300);
      assertEquals(drv.diagnostics.interrupts >= 1, true);
    });
  }
  await t.step(
    "a callback that kicks again is not re-entered (interrupts wait for the access)",
    () => {
      const m = createMachine({ devices: [new EchoDevice(1, 16)] });
      const drv = m.guest(0);
      drv.negotiate(0n);
      let depth = 0;
      let maxDepth = 0;
      let count = 0;
      const [vq] = drv.setupQueues<number>([{
        name: "pingpong",
        callback: (q) => {
          depth++;
          maxDepth = Math.max(maxDepth, depth);
          for (let b = q.getBuf(); b !== null; b = q.getBuf()) {
            if (++count < 500) {
              q.addSgs([{ addr: 0x1000, length: 8 }], [{ addr: 0x2000, length: 8 }], count);
              q.kick();
            }
          }
          depth--;
        },
      }]);
      drv.setDriverOk();
      vq.addSgs([{ addr: 0x1000, length: 8 }], [{ addr: 0x2000, length: 8 }], 0);
      vq.kick();
      assertEquals(count, 500);
      assertEquals(maxDepth, 1);
    },
  );
});

Deno.test("VirtioGuestDevice.resetQueue() over virtio-pci (RING_RESET)", async (t) => {
  const setup = (ringReset = true) => {
    const device = new EchoDevice(2, 32);
    const m = createMachine({ devices: [{ device, ring: { ringReset } }] });
    const drv = m.guest(0);
    drv.negotiate(0n);
    const got: number[] = [];
    const [vq0, vq1] = drv.setupQueues<number>([
      {
        name: "a",
        callback: (q) => {
          for (let b = q.getBuf(); b; b = q.getBuf()) got.push(b.token);
        },
      },
      {
        name: "b",
        callback: (q) => {
          for (let b = q.getBuf(); b; b = q.getBuf()) got.push(b.token);
        },
      },
    ]);
    drv.setDriverOk();
    return { device, m, drv, vq0, vq1, got };
  };
  await t.step(
    "unused buffers are recycled, the device resets the queue, and it works again",
    () => {
      const { device, drv, vq1, got, m } = setup();
      // Three buffers made available but never kicked: the device has not seen them.
      for (const token of [1, 2, 3]) {
        vq1.addSgs([{ addr: 0x1000, length: 4 }], [{ addr: 0x2000, length: 4 }], token);
      }
      const recycled: number[] = [];
      assertEquals(drv.resetQueue(vq1, (t) => recycled.push(t)), 0);
      assertEquals(recycled.sort(), [1, 2, 3]);
      assertEquals(device.queueResets, [1]);
      assertEquals(vq1.numFree, vq1.size);
      const vp = m.entries[0].pci!;
      assertEquals(vp.core.queues[1].enabled, true, "re-enabled");
      // The vector is programmed again.
      assertEquals((drv as unknown as { queueVectors: number[] }).queueVectors, [1, 2]);
      vq1.addSgs([{ addr: 0x1000, length: 4 }], [{ addr: 0x2000, length: 4 }], 9);
      vq1.kick();
      assertEquals(got, [9]);
    },
  );
  await t.step("the other queue keeps running through the reset", () => {
    const { drv, vq0, vq1, got } = setup();
    assertEquals(drv.resetQueue(vq1), 0);
    vq0.addSgs([{ addr: 0x1000, length: 4 }], [{ addr: 0x2000, length: 4 }], 7);
    vq0.kick();
    assertEquals(got, [7]);
  });
  await t.step("without RING_RESET the reset is refused with -ENOENT", () => {
    const { drv, vq1 } = setup(false);
    assertEquals(drv.hasFeature(40), false);
    assertEquals(drv.resetQueue(vq1), -2);
  });
});

Deno.test("config reads retry while config_generation changes", async (t) => {
  for (const transport of ["pci", "mmio"] as const) {
    await t.step(`${transport}: readConfig() and readConfig64() read again after a change`, () => {
      const device = new FlakyConfigDevice();
      const m = createMachine({ transport, devices: [device] });
      const drv = m.guest(0);
      device.flips = 3;
      const bytes = drv.readConfig(0, 8);
      const dv = new DataView(bytes.buffer);
      assertEquals(dv.getUint32(0, true), dv.getUint32(4, true), "one consistent snapshot");
      assertEquals(dv.getUint32(0, true), device.value);
      assertEquals(drv.diagnostics.configRetries >= 1, true);
      device.flips = 1;
      const wide = drv.readConfig64(0);
      assertEquals(Number(wide >> 32n), Number(wide & 0xffff_ffffn));
      // A single 32-bit field is read once, without the generation loop (virtio_cread32).
      const retries = drv.diagnostics.configRetries;
      device.flips = 1;
      drv.readConfig32(0);
      assertEquals(drv.diagnostics.configRetries, retries);
    });
  }
  await t.step("a generation that never settles gives up after a bounded number of reads", () => {
    const device = new FlakyConfigDevice();
    const m = createMachine({ transport: "mmio", devices: [device] });
    const drv = m.guest(0);
    device.flips = 1_000_000;
    drv.readConfig(0, 4);
    assertEquals(drv.diagnostics.configRetries, 64);
    assertEquals(drv.diagnostics.lastError.includes("kept changing"), true);
  });
});

Deno.test("probeVirtioMmio() rejects what virtio_mmio_probe rejects", async (t) => {
  const fake = (regs: Record<number, number>) => ({
    memRead: (a: number) => regs[a - 0x1000] ?? 0,
    memWrite: () => {},
  });
  const pages = createMachine({ memorySize: 1 << 20 }).pages;
  const errnoOf = (regs: Record<number, number>): [number, string] => {
    try {
      probeVirtioMmio({ bus: fake(regs), base: 0x1000, pages });
    } catch (e) {
      if (e instanceof VirtioDriverError) return [e.errno, e.message];
      throw e;
    }
    return [0, ""];
  };
  await t.step("a wrong magic value", () => {
    const [errno, message] = errnoOf({ 0: 0x12345678, 4: 2, 8: 1 });
    assertEquals(errno, -19);
    assertEquals(message.includes("Wrong magic value 0x12345678!"), true, message);
  });
  await t.step("a legacy (version 1) or unknown version", () => {
    assertEquals(errnoOf({ 0: 0x74726976, 4: 1, 8: 1 })[0], -6);
    assertEquals(errnoOf({ 0: 0x74726976, 4: 3, 8: 1 })[0], -6);
  });
  await t.step("a placeholder with device ID 0", () => {
    assertEquals(errnoOf({ 0: 0x74726976, 4: 2, 8: 0 })[0], -19);
  });
});

Deno.test("virtio-mmio driver registers and interrupts", async (t) => {
  const traced = () => {
    const device = new EchoDevice(2, 16);
    const m = createMachine({ transport: "mmio", probe: false, devices: [device] });
    const log: [string, number, number][] = [];
    const base = m.entries[0].mmioBase;
    const bus = {
      memRead: (a: number, s: number) => {
        const v = m.bus.memRead(a, s);
        log.push(["r", a - base, v]);
        return v;
      },
      memWrite: (a: number, s: number, v: number) => {
        log.push(["w", a - base, v]);
        m.bus.memWrite(a, s, v);
      },
    };
    const drv = probeVirtioMmio({
      bus,
      base,
      pages: m.pages,
      irq: m.irq,
      irqLine: m.entries[0].irqLine,
    });
    return { device, m, log, drv, mmio: m.entries[0].mmio as VirtioMmio };
  };
  await t.step("queue setup: select, QueueReady must be 0, max, num, six halves, ready", () => {
    const { drv, log } = traced();
    drv.negotiate(0n);
    log.length = 0;
    const [vq] = drv.setupQueues([{ name: "q" }]);
    assertEquals(log.map(([op, reg]) => `${op}${reg.toString(16)}`), [
      "w30",
      "r44",
      "r34",
      "w30",
      "w38",
      "w80",
      "w84",
      "w90",
      "w94",
      "wa0",
      "wa4",
      "w44",
    ]);
    assertEquals(log[4][2], vq.size);
    assertEquals(vq.deviceAddr % 4096, 0, "VIRTIO_MMIO_VRING_ALIGN is a page");
  });
  await t.step("features: four windows each way; RING_RESET is dropped as Linux does", () => {
    const { drv, log } = traced();
    const f = drv.negotiate(0n);
    assertEquals(log.filter(([op, reg]) => op === "w" && reg === 0x14).map((e) => e[2]), [
      3,
      2,
      1,
      0,
    ]);
    assertEquals(log.filter(([op, reg]) => op === "w" && reg === 0x24).map((e) => e[2]), [
      3,
      2,
      1,
      0,
    ]);
    assertEquals(drv.deviceFeatures >> 40n & 1n, 1n);
    assertEquals(f >> 40n & 1n, 0n);
  });
  await t.step("an absent queue fails and the others are torn down", () => {
    const { drv, m } = traced();
    drv.negotiate(0n);
    const before = m.pages.freeCount;
    let errno = 0;
    try {
      drv.setupQueues([{ name: "a" }, { name: "b" }, { name: "c" }]);
    } catch (e) {
      errno = (e as VirtioDriverError).errno;
    }
    assertEquals(errno, -2);
    assertEquals(m.pages.freeCount, before);
    assertEquals(m.entries[0].mmio!.core.queues[0].enabled, false);
  });
  await t.step("the handler acknowledges exactly what InterruptStatus showed", () => {
    const { drv, log, device } = traced();
    drv.negotiate(0n);
    const seen: number[] = [];
    drv.onConfigChange(() => seen.push(1));
    const [vq] = drv.setupQueues<number>([{ name: "q", callback: (q) => void q.getBuf() }]);
    drv.setDriverOk();
    log.length = 0;
    vq.addSgs([{ addr: 0x1000, length: 1 }], [{ addr: 0x2000, length: 1 }], 1);
    vq.kick();
    const status = log.find(([op, reg]) => op === "r" && reg === 0x60)!;
    const ack = log.find(([op, reg]) => op === "w" && reg === 0x64)!;
    assertEquals([status[2], ack[2]], [1, 1]);
    device.changeConfig(3);
    assertEquals(seen, [1]);
  });
  await t.step("with ringReset the queue resets through QueueReset", () => {
    const device = new EchoDevice(1, 16);
    const m = createMachine({ transport: "mmio", probe: false, devices: [device] });
    const e = m.entries[0];
    const drv = probeVirtioMmio({
      bus: m.bus,
      base: e.mmioBase,
      pages: m.pages,
      irq: m.irq,
      irqLine: e.irqLine,
      ringReset: true,
    });
    drv.negotiate(0n);
    assertEquals(drv.hasFeature(40), true);
    const got: number[] = [];
    const [vq] = drv.setupQueues<number>([{
      name: "q",
      callback: (q) => {
        for (let b = q.getBuf(); b; b = q.getBuf()) got.push(b.token);
      },
    }]);
    drv.setDriverOk();
    vq.addSgs([{ addr: 0x1000, length: 1 }], [{ addr: 0x2000, length: 1 }], 1);
    const recycled: number[] = [];
    assertEquals(drv.resetQueue(vq, (t) => recycled.push(t)), 0);
    assertEquals(recycled, [1]);
    assertEquals(device.queueResets, [0]);
    vq.addSgs([{ addr: 0x1000, length: 1 }], [{ addr: 0x2000, length: 1 }], 2);
    vq.kick();
    assertEquals(got, [2]);
  });
});
