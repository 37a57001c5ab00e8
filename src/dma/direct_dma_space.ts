import type { GuestMemory } from "../memory/guest_memory.ts";
import { MemoryFault } from "../memory/memory_fault.ts";
import { DmaAccess } from "./dma_access.ts";
import { DmaFault } from "./dma_fault.ts";
import { type DmaTranslation, TranslatingDmaSpace } from "./dma_space.ts";

/**
 * The identity DMA space: device addresses are guest physical addresses.
 *
 * Used when VIRTIO_F_ACCESS_PLATFORM is not negotiated or no IOMMU translates
 * the device. Every guest RAM byte is readable and writable; holes fault.
 *
 * @example
 * ```ts
 * import { DirectDmaSpace, GuestMemory } from "@vireo/vireo";
 * const mem = new GuestMemory([{ base: 0, size: 4096 }]);
 * const dma = new DirectDmaSpace(mem);
 * dma.write32(0x10, 7);
 * console.log(mem.read32(0x10)); // 7
 * ```
 */
export class DirectDmaSpace extends TranslatingDmaSpace {
  /** The guest memory this space addresses. */
  readonly memory: GuestMemory;

  /** Creates an identity space over `memory`. */
  constructor(memory: GuestMemory) {
    super();
    this.memory = memory;
  }

  /** See {@linkcode DmaSpace.translate}. */
  translate(address: number, length: number, access: DmaAccess, out: DmaTranslation): void {
    const r = this.memory.regionOf(address, length > 0 ? 1 : 0);
    if (r === undefined || !Number.isSafeInteger(length) || length < 0) {
      throw new DmaFault(address, length, access, reason(address, length));
    }
    out.bytes = r.bytes;
    out.offset = address - r.base;
    const avail = r.end - address;
    out.length = length < avail ? length : avail;
  }

  /** See {@linkcode DmaSpace.view}. */
  override view(address: number, length: number, access: DmaAccess): Uint8Array | null {
    const r = this.memory.regionOf(address, length);
    if (r !== undefined) {
      const off = address - r.base;
      return r.bytes.subarray(off, off + length);
    }
    return super.view(address, length, access);
  }

  /** See {@linkcode DmaSpace.read}. */
  override read(address: number, dest: Uint8Array): void {
    try {
      this.memory.read(address, dest);
    } catch (e) {
      throw asDmaFault(e, DmaAccess.Read);
    }
  }

  /** See {@linkcode DmaSpace.write}. */
  override write(address: number, src: Uint8Array): void {
    try {
      this.memory.write(address, src);
    } catch (e) {
      throw asDmaFault(e, DmaAccess.Write);
    }
  }

  /** See {@linkcode DmaSpace.read16}. */
  override read16(address: number): number {
    const r = this.memory.regionOf(address, 2);
    if (r === undefined) throw new DmaFault(address, 2, DmaAccess.Read, reason(address, 2));
    return r.data.getUint16(address - r.base, true);
  }

  /** See {@linkcode DmaSpace.read32}. */
  override read32(address: number): number {
    const r = this.memory.regionOf(address, 4);
    if (r === undefined) throw new DmaFault(address, 4, DmaAccess.Read, reason(address, 4));
    return r.data.getUint32(address - r.base, true);
  }

  /** See {@linkcode DmaSpace.write16}. */
  override write16(address: number, value: number): void {
    const r = this.memory.regionOf(address, 2);
    if (r === undefined) throw new DmaFault(address, 2, DmaAccess.Write, reason(address, 2));
    r.data.setUint16(address - r.base, value, true);
  }

  /** See {@linkcode DmaSpace.write32}. */
  override write32(address: number, value: number): void {
    const r = this.memory.regionOf(address, 4);
    if (r === undefined) throw new DmaFault(address, 4, DmaAccess.Write, reason(address, 4));
    r.data.setUint32(address - r.base, value, true);
  }
}

function reason(address: number, length: number): "unmapped" | "invalid" {
  return Number.isSafeInteger(address) && address >= 0 && Number.isSafeInteger(length) &&
      length >= 0 && address + length <= 2 ** 53
    ? "unmapped"
    : "invalid";
}

function asDmaFault(e: unknown, access: DmaAccess): unknown {
  if (e instanceof MemoryFault) {
    return new DmaFault(
      e.address,
      e.length,
      access,
      e.reason === "invalid" ? "invalid" : "unmapped",
      {
        cause: e,
      },
    );
  }
  return e;
}
