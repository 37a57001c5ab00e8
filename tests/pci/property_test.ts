import { assertEquals } from "@std/assert";
import fc from "fast-check";
import {
  assignBars,
  PciCapabilityId,
  PciCommand,
  PciFunction,
  PciHostBridge,
} from "../../src/pci/mod.ts";
import { recordingHost, testFunction } from "./_helpers.ts";

const SEED = 0x5eed_0c1;
const RUNS = runs(300);

function runs(fallback: number): number {
  const granted = Deno.permissions.querySync({ name: "env", variable: "VIREO_FUZZ_RUNS" });
  if (granted.state !== "granted") return fallback;
  return Number(Deno.env.get("VIREO_FUZZ_RUNS") ?? fallback) || fallback;
}

const ECAM = 0xb000_0000;

function machine() {
  const { host, log } = recordingHost();
  const bridge = new PciHostBridge({ host, ecamBase: ECAM });
  const a = testFunction();
  const pcie = new PciFunction({ vendorId: 0x1b36, deviceId: 0x000d, configSize: 4096 });
  pcie.defineBar(0, { kind: "mem64", size: 0x2000 });
  pcie.addCapability(PciCapabilityId.EXP, 0x3c);
  pcie.addMsix({ vectors: 70, tableBar: 0, pbaOffset: 0x1000 });
  pcie.config.addExtendedCapability(1, 1, 0x40);
  bridge.attach(a.fn, 1);
  bridge.attach(pcie, 2);
  assignBars(bridge, 0xfe00_0000, 0xc000);
  for (const d of [1, 2]) {
    bridge.configWrite(0, d, 0, 4, 2, bridge.configRead(0, d, 0, 4, 2) | PciCommand.MASTER);
  }
  return { bridge, fns: [a.fn, pcie], log };
}

const size = fc.constantFrom(1, 2, 4, 1, 2, 4, 0, 3, 8, -1, NaN);
const weird = fc.constantFrom(NaN, Infinity, -Infinity, -1, -0, 0.5, 2 ** 32, 2 ** 53, 1e300);
const offset = fc.oneof(fc.integer({ min: 0, max: 0x1003 }), fc.integer(), weird);
const value = fc.oneof(
  fc.integer({ min: 0, max: 0xffff_ffff }),
  fc.constantFrom(0, 0xffff_ffff, 0x8000, 0xc000, 0x4000, 1),
  fc.integer(),
  weird,
);
const address = fc.oneof(
  fc.integer({ min: 0xfe00_0000, max: 0xfe00_a000 }),
  fc.integer({ min: ECAM, max: ECAM + 0x20_0000 }),
  fc.integer({ min: 0, max: 0xffff_ffff }),
  weird,
);
const port = fc.oneof(
  fc.integer({ min: 0xc000, max: 0xc040 }),
  fc.integer({ min: 0xcf8, max: 0xcff }),
  fc.integer({ min: 0, max: 0xffff }),
  weird,
);
const big = fc.oneof(fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }), fc.constant(-1n));

type Op =
  | { t: "cfgR" | "fnBarR"; fn: number; bar: number; off: number; size: number }
  | { t: "cfgW" | "fnBarW"; fn: number; bar: number; off: number; size: number; v: number }
  | { t: "memR" | "ioR"; a: number; size: number }
  | { t: "memW" | "ioW"; a: number; size: number; v: number }
  | { t: "mem64R"; a: number }
  | { t: "mem64W"; a: number; v: bigint }
  | { t: "ecamR"; off: number; size: number }
  | { t: "ecamW"; off: number; size: number; v: number }
  | { t: "notify"; fn: number; vector: number }
  | { t: "intx"; fn: number; level: boolean }
  | { t: "reset"; fn: number }
  | { t: "msixCtl" | "command"; fn: number; v: number }
  | { t: "msixTable"; fn: number; off: number; size: number; v: number };

const fnIndex = fc.integer({ min: 0, max: 1 });
const barIndex = fc.oneof(fc.integer({ min: -1, max: 7 }), weird);
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      t: fc.constant("cfgR" as const),
      fn: fnIndex,
      bar: fc.constant(0),
      off: offset,
      size,
    }),
  },
  {
    weight: 8,
    arbitrary: fc.record({
      t: fc.constant("cfgW" as const),
      fn: fnIndex,
      bar: fc.constant(0),
      off: offset,
      size,
      v: value,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("fnBarR" as const),
      fn: fnIndex,
      bar: barIndex,
      off: offset,
      size,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("fnBarW" as const),
      fn: fnIndex,
      bar: barIndex,
      off: offset,
      size,
      v: value,
    }),
  },
  { weight: 5, arbitrary: fc.record({ t: fc.constant("memR" as const), a: address, size }) },
  {
    weight: 8,
    arbitrary: fc.record({ t: fc.constant("memW" as const), a: address, size, v: value }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("ioR" as const), a: port, size }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant("ioW" as const), a: port, size, v: value }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("mem64R" as const), a: address }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("mem64W" as const), a: address, v: big }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("ecamR" as const), off: offset, size }) },
  {
    weight: 2,
    arbitrary: fc.record({ t: fc.constant("ecamW" as const), off: offset, size, v: value }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("notify" as const),
      fn: fnIndex,
      vector: fc.integer({ min: 0, max: 4 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ t: fc.constant("intx" as const), fn: fnIndex, level: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("reset" as const), fn: fnIndex }) },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("msixCtl" as const),
      fn: fnIndex,
      v: fc.constantFrom(0, 0x4000, 0x8000, 0xc000, 0x8000),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("command" as const),
      fn: fnIndex,
      v: fc.constantFrom(0x6, 0x7, 0x406, 0x4, 0),
    }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      t: fc.constant("msixTable" as const),
      fn: fnIndex,
      off: fc.oneof(
        fc.integer({ min: 0, max: 19 }).map((i) => 4 * i),
        fc.integer({ min: 0, max: 0x4f }),
      ),
      size: fc.constantFrom(1, 2, 4, 4, 4),
      v: fc.oneof(fc.constant(0), fc.constant(0xfee0_0000), value),
    }),
  },
);

function isReadValue(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
}

Deno.test("PCI config and BAR accesses with random guest values never throw", () => {
  fc.assert(
    fc.property(fc.array(op, { minLength: 10, maxLength: 200, size: "max" }), (ops) => {
      const { bridge, fns, log } = machine();
      for (const o of ops) {
        const fn = "fn" in o ? fns[o.fn] : fns[0];
        switch (o.t) {
          case "cfgR":
            if (!isReadValue(fn.configRead(o.off, o.size))) return false;
            break;
          case "cfgW":
            fn.configWrite(o.off, o.size, o.v);
            break;
          case "fnBarR":
            if (!isReadValue(fn.barRead(o.bar, o.off, o.size))) return false;
            break;
          case "fnBarW":
            fn.barWrite(o.bar, o.off, o.size, o.v);
            break;
          case "memR":
            if (!isReadValue(bridge.memRead(o.a, o.size))) return false;
            break;
          case "memW":
            bridge.memWrite(o.a, o.size, o.v);
            break;
          case "ioR":
            if (!isReadValue(bridge.ioRead(o.a, o.size))) return false;
            break;
          case "ioW":
            bridge.ioWrite(o.a, o.size, o.v);
            break;
          case "mem64R": {
            const v = bridge.memRead64(o.a);
            if (v < 0n || v >= 1n << 64n) return false;
            break;
          }
          case "mem64W":
            bridge.memWrite64(o.a, o.v);
            break;
          case "ecamR":
            if (!isReadValue(bridge.ecamRead(o.off, o.size))) return false;
            break;
          case "ecamW":
            bridge.ecamWrite(o.off, o.size, o.v);
            break;
          case "notify": {
            const msix = fn.msix!;
            const delivered = msix.notify(o.vector % msix.vectors);
            if (!delivered) fn.setIntx(true);
            break;
          }
          case "intx":
            fn.setIntx(o.level);
            break;
          case "reset":
            fn.reset();
            break;
          case "msixCtl":
            fn.configWrite(fn.msix!.offset + 2, 2, o.v);
            break;
          case "command":
            fn.configWrite(0x04, 2, o.v);
            break;
          case "msixTable":
            fn.barWrite(fn.msix!.tableBar, fn.msix!.tableOffset + o.off, o.size, o.v);
            break;
        }
      }
      // Invariants: identity and capability structure never change.
      assertEquals(bridge.configRead(0, 1, 0, 0, 4), 0x5678_1234);
      assertEquals(bridge.configRead(0, 2, 0, 0, 4), 0x000d_1b36);
      assertEquals(bridge.configRead(0, 1, 0, 0x0e, 1), 0);
      for (const f of fns) {
        assertEquals(f.configRead(6, 2) & 0x10, 0x10);
        assertEquals(f.config.findCapability(PciCapabilityId.MSIX), f.msix!.offset);
        assertEquals(f.configRead(f.msix!.offset + 2, 2) & 0x7ff, f.msix!.vectors - 1);
        assertEquals(f.configRead(0x04, 2) & ~0x0547, 0);
        for (const bar of f.bars) {
          const low = f.configRead(0x10 + 4 * bar.index, 4);
          const typeBits = bar.kind === "io" ? low & 3 : low & 0xf;
          assertEquals(
            typeBits,
            bar.kind === "io" ? 1 : (bar.kind === "mem64" ? 4 : 0) | (bar.prefetchable ? 8 : 0),
          );
          assertEquals(low % Math.min(bar.size, 2 ** 32), typeBits);
        }
        assertEquals(f.intxAsserted, f.intxLevel && !f.intxDisabled && !f.msix!.enabled);
      }
      assertEquals(fns[1].configRead(0x100, 4), 0x0001_0001);
      for (const [addr] of log.msi) if (!(addr >= 0 && addr < 2 ** 53)) return false;
      return true;
    }),
    { seed: SEED, numRuns: RUNS },
  );
});

Deno.test("PCI MSI-X delivers each signalled vector at most once per notify, whatever the guest does", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.record({
            t: fc.constant("ctl" as const),
            v: fc.constantFrom(0, 0x4000, 0x8000, 0xc000, 0x8000),
          }),
          fc.record({
            t: fc.constant("mask" as const),
            vector: fc.integer({ min: 0, max: 3 }),
            m: fc.boolean(),
          }),
          fc.record({ t: fc.constant("notify" as const), vector: fc.integer({ min: 0, max: 3 }) }),
        ),
        { minLength: 5, maxLength: 80, size: "max" },
      ),
      (ops) => {
        const { host, log } = recordingHost();
        const { fn } = testFunction();
        fn.bind(host);
        fn.configWrite(4, 2, PciCommand.MEMORY | PciCommand.MASTER);
        for (let v = 0; v < 4; v++) fn.barWrite(1, 16 * v + 8, 4, v);
        const msix = fn.msix!;
        let signalled = 0;
        let pendingModel = 0;
        for (const o of ops) {
          if (o.t === "ctl") fn.configWrite(msix.offset + 2, 2, o.v);
          else if (o.t === "mask") fn.barWrite(1, 16 * o.vector + 12, 4, o.m ? 1 : 0);
          else if (msix.notify(o.vector)) signalled++;
          pendingModel = 0;
          for (let v = 0; v < 4; v++) if (msix.isPending(v)) pendingModel++;
          // Every accepted signal is either delivered or pending (pending bits coalesce).
          if (log.msi.length > signalled) return false;
          if (log.msi.length + pendingModel > signalled) return false;
          // A vector that is deliverable now is never left pending.
          for (let v = 0; v < 4; v++) {
            if (msix.isPending(v) && msix.enabled && !msix.functionMasked && !msix.isMasked(v)) {
              return false;
            }
          }
        }
        for (const [, data] of log.msi) if (!(data >= 0 && data < 4)) return false;
        return true;
      },
    ),
    { seed: SEED, numRuns: RUNS },
  );
});
