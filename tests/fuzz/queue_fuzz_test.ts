/**
 * Fuzzes the device side of both ring layouts with a hostile driver: plausible
 * chains written the way a driver would, then random bytes over the rings,
 * the indirect tables and the rest of memory, before and between device
 * operations. The device may only ever throw VirtqueueError or DmaFault, and
 * every pop must return promptly.
 *
 * `VIREO_FUZZ_RUNS` sets the number of runs (300 by default; `deno task fuzz`
 * runs many more) and `VIREO_FUZZ_SEED` the seed (fixed by default, so a
 * failure is reproducible). A finding becomes a `regression` test in
 * tests/queue/malformed_test.ts with a line on the seed and path it came from.
 */
import { assert, assertEquals } from "@std/assert";
import fc from "fast-check";
import { DirectDmaSpace } from "../../src/dma/direct_dma_space.ts";
import { DmaFault } from "../../src/dma/dma_fault.ts";
import { GuestMemory } from "../../src/memory/guest_memory.ts";
import { createDeviceQueue } from "../../src/queue/create_device_queue.ts";
import { DescriptorChain } from "../../src/queue/descriptor_chain.ts";
import { VirtqueueError } from "../../src/queue/virtqueue_error.ts";
import {
  F_INDIRECT,
  F_NEXT,
  F_WRITE,
  PackedDriver,
  type Seg,
  SplitDriver,
  writePackedTable,
  writeSplitTable,
} from "../queue/ring_writer.ts";

const RUNS = Number(Deno.env.get("VIREO_FUZZ_RUNS") ?? 300);
const SEED = Number(Deno.env.get("VIREO_FUZZ_SEED") ?? 0x5eed_7a11);
const MEM_SIZE = 0x10000;
const TABLES = 0x4000;
/** Generous bound on one pop; a real one takes microseconds. */
const POP_BUDGET_MS = 1000;

const addrArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0x8000, max: MEM_SIZE - 1 }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 2 ** 53 - 1 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, MEM_SIZE - 1, MEM_SIZE, 2 ** 53 - 1, TABLES) },
);
const lenArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 256 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff_ffff }) },
);
const segArb: fc.Arbitrary<Seg> = fc.record({ addr: addrArb, len: lenArb, write: fc.boolean() });
/** A chain the driver adds; mostly well formed, sometimes not (the `dice` decide). */
const chainArb = fc.record({
  segs: fc.array(segArb, { minLength: 1, maxLength: 6 }),
  indirect: fc.boolean(),
  id: fc.integer({ min: 0, max: 40 }),
  /** 0: readable after writable allowed; 1: indirect even if not negotiated; 2: raw id. */
  dice: fc.integer({ min: 0, max: 29 }),
});
const pokeArb = fc.record({
  area: fc.constantFrom("desc", "driver", "device", "tables", "any"),
  offset: fc.nat(),
  bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
});
/** A hostile edit of one descriptor field (links, flags, ids) rather than random bytes. */
const fieldArb = fc.record({
  table: fc.boolean(),
  index: fc.nat(),
  field: fc.constantFrom(12, 14),
  value: fc.oneof(
    fc.integer({ min: 0, max: 40 }),
    fc.constantFrom(F_NEXT, F_NEXT | F_WRITE, F_INDIRECT, F_NEXT | F_INDIRECT, 0x80 | F_NEXT),
    fc.integer({ min: 0, max: 0xffff }),
  ),
});
type Field = typeof fieldArb extends fc.Arbitrary<infer T> ? T : never;
type Poke = typeof pokeArb extends fc.Arbitrary<infer T> ? T : never;
const opArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ op: "pop" as const }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("push" as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.constant({ op: "publish" as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("notify" as const), on: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("add" as const), chain: chainArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("poke" as const), poke: pokeArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("field" as const), field: fieldArb }) },
  { weight: 1, arbitrary: fc.constant({ op: "touch" as const }) },
);
const scenarioArb = fc.record({
  packed: fc.boolean(),
  sizeLog: fc.integer({ min: 0, max: 5 }),
  sizeExtra: fc.integer({ min: 0, max: 7 }),
  eventIdx: fc.boolean(),
  indirect: fc.boolean(),
  inOrder: fc.boolean(),
  capacity: fc.integer({ min: 1, max: 48 }),
  /** Where guest RAM is cut in two adjacent regions (rings may straddle it). */
  cut: fc.option(fc.integer({ min: 1, max: MEM_SIZE / 16 - 1 }).map((n) => n * 16)),
  /** Ring base: usually the usual place, sometimes anywhere (even outside RAM). */
  ringBase: fc.oneof(
    { weight: 4, arbitrary: fc.constant(0x1000) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: MEM_SIZE + 0x100 }) },
  ),
  noise: fc.option(fc.integer()),
  chains: fc.array(chainArb, { maxLength: 12 }),
  pokes: fc.array(pokeArb, { maxLength: 4 }),
  fields: fc.array(fieldArb, { maxLength: 4 }),
  ops: fc.array(opArb, { minLength: 1, maxLength: 80 }),
});
type Scenario = typeof scenarioArb extends fc.Arbitrary<infer T> ? T : never;

function isGuestError(e: unknown): boolean {
  return e instanceof VirtqueueError || e instanceof DmaFault;
}

/** Runs `f`; a VirtqueueError or DmaFault is the guest's fault and fine, anything else fails. */
function guest<T>(what: string, f: () => T): T | undefined {
  try {
    return f();
  } catch (e) {
    if (isGuestError(e)) return undefined;
    throw new Error(`${what} threw a non-guest error: ${e}`, { cause: e });
  }
}

function run(s: Scenario): void {
  const mem = new GuestMemory(
    s.cut === null
      ? [{ base: 0, size: MEM_SIZE }]
      : [{ base: 0, size: s.cut }, { base: s.cut, size: MEM_SIZE - s.cut }],
  );
  if (s.noise !== null) fillNoise(mem, s.noise);
  const dma = new DirectDmaSpace(mem);
  const size = s.packed ? Math.max(1, (1 << s.sizeLog) + s.sizeExtra) : 1 << s.sizeLog;
  const base = s.ringBase;
  const split = s.packed ? null : new SplitDriver(mem, size, base);
  const pk = s.packed ? new PackedDriver(mem, size, base) : null;
  const config = (split ?? pk)!.config({
    eventIdx: s.eventIdx,
    indirect: s.indirect,
    inOrder: s.inOrder,
  });
  const areas = {
    desc: [config.descAddr, 16 * size],
    driver: [config.driverAddr, s.packed ? 4 : 6 + 2 * size],
    device: [config.deviceAddr, s.packed ? 4 : 6 + 8 * size],
    tables: [TABLES, 0x1000],
    any: [0, MEM_SIZE],
  } as const;
  let tableSlot = 0;

  const add = (c: Scenario["chains"][number]): void => {
    // The driver model itself may fault on hostile addresses (>= 2^53, outside RAM): skip those.
    const segs = c.dice === 0
      ? c.segs
      : [...c.segs.filter((g) => !g.write), ...c.segs.filter((g) => g.write)];
    const id = c.dice === 2 ? c.id : c.id % size;
    try {
      if (c.indirect && (s.indirect || c.dice === 1)) {
        const table = TABLES + 0x100 * (tableSlot++ % 16);
        const entries = segs.map((g, i) => ({
          addr: g.addr,
          len: g.len,
          flags: (g.write ? F_WRITE : 0) | (!s.packed && i < segs.length - 1 ? F_NEXT : 0),
          next: i + 1,
        }));
        if (s.packed) {
          writePackedTable(mem, table, entries);
          pk!.addIndirect(table, 16 * entries.length, id);
        } else {
          writeSplitTable(mem, table, entries);
          const head = split!.writeChain([{ addr: table, len: 16 * entries.length }]);
          split!.setDesc(head, table, 16 * entries.length, F_INDIRECT);
          split!.publish(head);
        }
      } else if (s.packed) {
        pk!.add(segs, id);
      } else {
        split!.add(segs);
      }
    } catch {
      // not the device's problem
    }
  };
  const poke = (p: Poke): void => {
    const [start, len] = areas[p.area];
    const addr = start + (p.offset % Math.max(1, len));
    for (let i = 0; i < p.bytes.length; i++) {
      if (mem.isRam(addr + i, 1)) mem.write8(addr + i, p.bytes[i]);
    }
  };

  const field = (f: Field): void => {
    const addr = f.table
      ? TABLES + 16 * (f.index % 256) + f.field
      : config.descAddr + 16 * (f.index % size) + f.field;
    if (mem.isRam(addr, 2)) mem.write16(addr, f.value);
  };

  for (const c of s.chains) add(c);
  for (const p of s.pokes) poke(p);
  for (const f of s.fields) field(f);

  const q = guest("createDeviceQueue", () => createDeviceQueue(config, dma, s.packed))!;
  const chain = new DescriptorChain(dma, s.capacity);
  const inFlight: number[] = [];
  let popped = false;
  for (const o of s.ops) {
    switch (o.op) {
      case "pop": {
        const t0 = performance.now();
        const got = guest("pop", () => q.pop(chain));
        assert(performance.now() - t0 < POP_BUDGET_MS, "pop took too long");
        if (got === true) {
          popped = true;
          checkChain(chain, size, s.packed);
          assert(!inFlight.includes(chain.token), "a token in flight was handed out again");
          inFlight.push(chain.token);
          assertEquals(q.inFlight, inFlight.length);
          assert(q.inFlight <= size);
        }
        break;
      }
      case "push": {
        if (inFlight.length === 0) break;
        const i = s.inOrder ? 0 : o.pick % inFlight.length;
        const token = inFlight.splice(i, 1)[0];
        guest("push", () => q.push(token, o.pick % 4096));
        break;
      }
      case "publish":
        guest("publishUsed", () => q.publishUsed());
        break;
      case "notify":
        guest("setNotification", () => q.setNotification(o.on));
        break;
      case "add":
        add(o.chain);
        break;
      case "poke":
        poke(o.poke);
        break;
      case "field":
        field(o.field);
        break;
      case "touch":
        if (popped) {
          guest("reader", () => chain.reader.read(new Uint8Array(64)));
          guest("writer", () => chain.writer.fill(32, 0xa5));
        }
        break;
    }
  }
  q.detach();
}

function checkChain(chain: DescriptorChain, size: number, packed: boolean): void {
  assert(chain.segmentCount <= chain.capacity);
  assert(chain.readableCount <= chain.segmentCount);
  assert(chain.ringSlots >= 1 && chain.ringSlots <= size);
  assert(chain.head >= 0 && chain.head < size);
  assertEquals(chain.token, packed ? chain.ringSlots * 0x10000 + chain.head : chain.head);
  let r = 0;
  let w = 0;
  for (let i = 0; i < chain.segmentCount; i++) {
    assert(Number.isSafeInteger(chain.addrs[i]) && chain.addrs[i] + chain.lengths[i] <= 2 ** 53);
    if (i < chain.readableCount) r += chain.lengths[i];
    else w += chain.lengths[i];
  }
  assertEquals(r, chain.readableLength);
  assertEquals(w, chain.writableLength);
}

/** Fills memory with xorshift noise from `seed`. */
function fillNoise(mem: GuestMemory, seed: number): void {
  let x = seed | 1;
  for (const r of mem.regions) {
    const b = r.bytes;
    for (let i = 0; i < b.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b[i] = x;
    }
  }
}

Deno.test("DeviceQueue.pop() under random ring contents throws only VirtqueueError or DmaFault", () => {
  fc.assert(fc.property(scenarioArb, run), { seed: SEED, numRuns: RUNS });
});

Deno.test("DeviceQueue.pop() on pure noise terminates for both layouts", () => {
  fc.assert(
    fc.property(
      fc.boolean(),
      fc.integer({ min: 0, max: 5 }),
      fc.integer(),
      fc.integer({ min: 1, max: 64 }),
      fc.boolean(),
      (packed, sizeLog, seed, capacity, indirect) => {
        const mem = new GuestMemory([{ base: 0, size: MEM_SIZE }]);
        fillNoise(mem, seed);
        const dma = new DirectDmaSpace(mem);
        const size = 1 << sizeLog;
        const q = createDeviceQueue(
          {
            index: 0,
            size,
            descAddr: 0x1000,
            driverAddr: 0x3000,
            deviceAddr: 0x4000,
            eventIdx: (seed & 1) === 0,
            indirect,
            inOrder: false,
          },
          dma,
          packed,
        );
        const chain = new DescriptorChain(dma, capacity);
        // At most 2*size chains can come out before the queue is full or broken.
        for (let i = 0; i < 2 * size + 4; i++) {
          const got = guest("pop", () => q.pop(chain));
          if (got === true) guest("push", () => q.push(chain.token, 0));
          guest("publishUsed", () => q.publishUsed());
          if (got !== true) break;
        }
        q.detach();
      },
    ),
    { seed: SEED + 1, numRuns: RUNS },
  );
});
