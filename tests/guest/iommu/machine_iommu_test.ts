/**
 * The virtio-iommu driver and dma-iommu over vireo's real transports: the
 * virtio-iommu device on virtio-mmio (or virtio-pci), an echo device on
 * virtio-pci behind the IOMMU, all wired by `createMachine`.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { createMachine, type MachineTransport } from "../../../src/machine.ts";
import { Iommu } from "../../../src/iommu/iommu.ts";
import { GuestMemory } from "../../../src/memory/guest_memory.ts";
import { DmaFault } from "../../../src/dma/dma_fault.ts";
import { VirtioFeature } from "../../../src/virtio/features.ts";
import { DeferredDmaApi } from "../../../src/guest/dma/deferred_dma.ts";
import type { DmaIommu } from "../../../src/guest/dma/dma_iommu.ts";
import { VirtioIommuDriver } from "../../../src/guest/iommu/virtio_iommu_driver.ts";
import { VirtioIommu } from "../../../devices/iommu/virtio_iommu.ts";
import { EchoDevice } from "../../helpers/echo_device.ts";
import { settle } from "./viommu_harness.ts";

function machine(viommuTransport: MachineTransport) {
  const memory = new GuestMemory([{ base: 0, size: 16 << 20 }]);
  const iommu = new Iommu({ memory });
  // The echo device's PCI requester id: slot 1 of bus 0 (0x08), or slot 2
  // (0x10) when the virtio-iommu takes slot 1.
  const epId = viommuTransport === "pci" ? 0x10 : 0x08;
  const ep = iommu.addEndpoint(epId);
  const viommuDevice = new VirtioIommu(iommu);
  const echo = new EchoDevice(1);
  const deferred = new DeferredDmaApi();
  const m = createMachine({
    memory,
    devices: [{ device: viommuDevice, transport: viommuTransport }, {
      device: echo,
      transport: "pci",
    }],
    iommu: {
      deviceDma: (i) => (i === 1 ? ep : undefined),
      guestDma: (i) => (i === 1 ? deferred : undefined),
    },
  });
  const viommu = VirtioIommuDriver.probe(m.guest(0));
  const dma: DmaIommu = viommu.setupDma(epId, { name: "echo" });
  deferred.target = dma;
  assertEquals(m.entries[1].slot << 3, epId);
  return { m, iommu, ep, epId, viommuDevice, echo, viommu, dma };
}

for (const transport of ["mmio", "pci"] as const) {
  Deno.test(`virtio-iommu on virtio-${transport} translates an echo device on virtio-pci`, async (t) => {
    await t.step("rings and buffers go through MAP requests; the device sees IOVAs", () => {
      const { m, viommu, echo, iommu } = machine(transport);
      assertEquals(viommu.stats.probe, 1);
      assertEquals(viommu.stats.attach, 1);
      const g = m.guest(1);
      g.negotiate(0n);
      assert(g.hasFeature(VirtioFeature.ACCESS_PLATFORM));
      const [vq] = g.setupQueues<string>([{ name: "echo", callback: () => {} }]);
      g.setDriverOk();
      assert(vq.descAddr >= 0xf000_0000, "the ring is at an IOVA just under 4 GiB");
      m.memory.write(0x2000, new TextEncoder().encode("hello iommu"));
      assertEquals(
        vq.addSgs([{ addr: 0x2000, length: 11 }], [{ addr: 0x3000, length: 32 }], "x"),
        0,
      );
      vq.kick();
      assertEquals(echo.echoed, 1);
      assertEquals(vq.getBuf()?.token, "x");
      const out = new Uint8Array(11);
      m.memory.read(0x3000, out);
      assertEquals(new TextDecoder().decode(out), "hello iommu");
      assert(iommu.domain(0)!.size >= 1, "the ring stays mapped; the buffers were unmapped");
    });

    await t.step(
      "a device fault comes back as an event through the transport's interrupt",
      async () => {
        const { viommu, ep, epId } = machine(transport);
        assertThrows(() => ep.read32(0x1234_0000), DmaFault);
        await settle();
        assertEquals(viommu.faults.at(-1), {
          reason: 2,
          flags: 0x101,
          endpoint: epId,
          address: 0x1234_0000,
        });
      },
    );
  });
}
