/**
 * The generic PCI platform: type-0 config space with write masks and a
 * capability list, BARs with the sizing protocol, MSI-X, INTx, and a host
 * bridge with ECAM / 0xCF8 config access and BAR dispatch. Nothing here is
 * virtio-specific; the virtio-pci transport builds on it.
 *
 * An emulator with its own PCI bus embeds a {@linkcode PciFunction} directly:
 * it forwards config accesses to `configRead`/`configWrite`, accesses inside a
 * decoding BAR to `barRead`/`barWrite`, and binds a
 * {@linkcode PciFunctionHost} to receive MSI messages, INTx levels and BAR
 * moves. Without a bus of its own it uses {@linkcode PciHostBridge}.
 *
 * @example
 * ```ts
 * import { assignBars, PciCommand, PciFunction, PciHostBridge } from "@vireo/vireo";
 * const irqs: boolean[] = [];
 * const bridge = new PciHostBridge({ host: { intx: (_fn, asserted) => irqs.push(asserted) } });
 * const fn = new PciFunction({ vendorId: 0x1af4, deviceId: 0x1042 });
 * fn.defineBar(0, { kind: "io", size: 0x20 });
 * bridge.attach(fn, 2);
 * assignBars(bridge, 0xfe00_0000, 0xc000);
 * fn.setIntx(true);
 * bridge.configWrite(0, 2, 0, 0x04, 2, fn.command | PciCommand.INTX_DISABLE);
 * console.log(irqs); // [true, false]
 * ```
 *
 * @module
 */
export {
  PCI_COMMAND_WRITABLE_BITS,
  PCI_STATUS_ERROR_BITS,
  PciCapabilityId,
  PciCommand,
  PciConfigOffset,
  PciStatus,
} from "./registers.ts";
export { type PciConfigHook, PciConfigSpace } from "./config_space.ts";
export type { PciBar, PciBarKind, PciBarOptions, PciRegionHandler } from "./bar.ts";
export { type PciDiagnosticKind, PciDiagnostics } from "./diagnostics.ts";
export {
  MSIX_CAPABILITY_LENGTH,
  MSIX_ENTRY_SIZE,
  MsixCapability,
  MsixControl,
  type MsixOptions,
  msixPbaSize,
  type MsixSink,
} from "./msix.ts";
export {
  type PciCommandListener,
  PciFunction,
  type PciFunctionHost,
  type PciFunctionOptions,
  type PciFunctionState,
} from "./pci_function.ts";
export {
  assignBars,
  cf8Address,
  ecamOffset,
  type PciBarAssignment,
  PciHostBridge,
  type PciHostBridgeOptions,
  type PciSlot,
} from "./host_bridge.ts";
