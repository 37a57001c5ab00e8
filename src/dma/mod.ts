/**
 * The device's view of memory: the {@linkcode DmaSpace} interface, the direct
 * (identity) space, and {@linkcode DmaFault}.
 *
 * @module
 */
export { DmaAccess } from "./dma_access.ts";
export { DmaFault, type DmaFaultReason } from "./dma_fault.ts";
export {
  type DmaInvalidationListener,
  type DmaSpace,
  DmaTranslation,
  TranslatingDmaSpace,
} from "./dma_space.ts";
export { DirectDmaSpace } from "./direct_dma_space.ts";
