import { assertEquals } from "@std/assert";
import {
  createMachine,
  MachineInterrupts,
  MMIO_BASE,
  MMIO_LINE_BASE,
  MSI_ADDRESS,
  pciIntxLine,
} from "../../../src/machine.ts";
import { PciFunction } from "../../../src/pci/pci_function.ts";
import { runEmbedExample } from "../../../examples/embed.ts";
import { EchoDevice } from "../../helpers/echo_device.ts";

Deno.test("createMachine() wires devices, transports and the guest", async (t) => {
  await t.step("PCI devices take slots 1.., MMIO devices windows and lines in order", () => {
    const m = createMachine({
      devices: [
        new EchoDevice(),
        { device: new EchoDevice(), transport: "mmio" },
        new EchoDevice(),
      ],
    });
    assertEquals(m.entries.map((e) => [e.kind, e.slot, e.mmioBase, e.irqLine]), [
      ["pci", 1, -1, pciIntxLine(1, 1)],
      ["mmio", -1, MMIO_BASE, MMIO_LINE_BASE],
      ["pci", 2, -1, pciIntxLine(2, 1)],
    ]);
    assertEquals(m.pciDevices.map((d) => d.slotName), ["00:01.0", "00:02.0"]);
    assertEquals([0, 1, 2].map((i) => m.guest(i).transport), ["pci", "mmio", "pci"]);
    for (const i of [0, 1, 2]) assertEquals(m.guest(i).getStatus(), 1, "reset, then ACKNOWLEDGE");
    assertEquals(m.entries[0].pciFunction!.busMaster, true, "pci_set_master");
  });
  await t.step("the page allocator leaves the reserved low memory alone", () => {
    const m = createMachine({ memorySize: 4 << 20 });
    assertEquals(m.pages.base, 1 << 20);
    assertEquals(m.pages.size, 3 << 20);
    const small = createMachine({ memorySize: 1 << 20 });
    assertEquals(small.pages.base, 256 << 10);
  });
  await t.step("a raw PCI function is enumerated and probed; a failure is kept", () => {
    const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1041 });
    const m = createMachine({ pciFunctions: [fn] });
    assertEquals(m.entries[0].probeError?.errno, -19);
    let thrown = "";
    try {
      m.guest(0);
    } catch (e) {
      thrown = (e as Error).name;
    }
    assertEquals(thrown, "VirtioDriverError");
  });
  await t.step("bad options throw at once", () => {
    const names: string[] = [];
    for (const bad of [{ memorySize: 1000 }, { transport: "usb" }, { reservedMemory: 3 }]) {
      try {
        createMachine(bad as never);
      } catch (e) {
        names.push((e as Error).name);
      }
    }
    assertEquals(names, ["RangeError", "TypeError", "RangeError"]);
  });
});

Deno.test("MachineInterrupts delivers lines and messages between accesses", async (t) => {
  await t.step("a message waits while the guest is inside an access", () => {
    const irq = new MachineInterrupts();
    const seen: number[] = [];
    const [m] = irq.allocMsi(1, (_a, d) => {
      seen.push(d);
      return true;
    })!;
    assertEquals(m.address, MSI_ADDRESS);
    irq.enter();
    irq.raiseMsi(m.address, m.data);
    assertEquals(seen, []);
    irq.exit();
    assertEquals(seen, [m.data]);
    irq.raiseMsi(m.address, m.data + 1);
    assertEquals(irq.stats.unhandledMsi, 1);
  });
  await t.step("a line asserted before a handler exists is delivered on request_irq", () => {
    const irq = new MachineInterrupts();
    const source = {};
    irq.setLine(5, source, true);
    let runs = 0;
    irq.requestIrq(5, () => {
      runs++;
      irq.setLine(5, source, false);
      return true;
    });
    assertEquals(runs, 1);
  });
  await t.step("a line nobody clears is given up on", () => {
    const irq = new MachineInterrupts();
    irq.requestIrq(7, () => true);
    irq.setLine(7, "stuck", true);
    assertEquals(irq.stats.stuckLines, 1);
    const quiet = new MachineInterrupts();
    quiet.requestIrq(8, () => false);
    quiet.setLine(8, "other", true);
    assertEquals(quiet.stats.unhandledLine, 1);
  });
});

Deno.test("examples/embed.ts", async (t) => {
  await t.step("the example's logic: both interrupt paths echo and see config changes", () => {
    const lines: string[] = [];
    const s = runEmbedExample((l) => lines.push(l));
    assertEquals(s.echoedMsix, "hello from guest 0");
    assertEquals(s.echoedIntx, "hello from guest 1");
    assertEquals(s.modes, ["msix-per-vq", "intx"]);
    assertEquals(s.configChanges, 2);
    assertEquals(lines.some((l) => l.includes("now decodes")), true);
    assertEquals(lines.some((l) => l.includes("stopped decoding")), true);
  });
  await t.step("`deno run examples/embed.ts` exits 0 without permissions", async () => {
    const url = new URL("../../../examples/embed.ts", import.meta.url);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", url.pathname],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assertEquals(text.trim().split("\n").at(-1)?.startsWith("done:"), true, text);
  });
});
