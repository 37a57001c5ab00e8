import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  decodeConfigData,
  decodeDevConfig,
  decodeDevRequest,
  decodeDevResponse,
  decodeIoc,
  decodeIotlbEntry,
  decodeIotlbEntryV2,
  decodeIovaInfo,
  decodeIovaUmem,
  decodeName,
  decodeU32,
  decodeU64,
  decodeVqConfig,
  decodeVqEventfd,
  decodeVqInfo,
  decodeVqState,
  encodeConfigData,
  encodeDevConfig,
  encodeDevRequest,
  encodeDevResponse,
  encodeIotlbEntry,
  encodeIotlbEntryV2,
  encodeIovaInfo,
  encodeIovaUmem,
  encodeName,
  encodeU32,
  encodeU64,
  encodeVqConfig,
  encodeVqEventfd,
  encodeVqInfo,
  encodeVqState,
  ioc,
  IOC_READ,
  IOC_WRITE,
  U64_MAX,
  u64ToAddress,
  VDUSE_DEV_CONFIG_SIZE,
  VDUSE_IOTLB_ENTRY_SIZE,
  VDUSE_IOTLB_ENTRY_V2_SIZE,
  VDUSE_IOTLB_GET_FD2_PRERELEASE,
  VDUSE_IOVA_INFO_SIZE,
  VDUSE_IOVA_UMEM_SIZE,
  VDUSE_MSG_SIZE,
  VDUSE_VQ_CONFIG_SIZE,
  VDUSE_VQ_EVENTFD_SIZE,
  VDUSE_VQ_INFO_SIZE,
  VDUSE_VQ_STATE_SIZE,
  VduseIoctl,
  VduseReqType,
} from "../../../transports/vduse/uapi.ts";
import { errnoName, LinuxErrno } from "../../../transports/vduse/errno.ts";

/** The table of §2 of the VDUSE fact sheet (x86_64 values). */
const REFERENCE: Record<keyof typeof VduseIoctl, number> = {
  GET_API_VERSION: 0x80088100,
  SET_API_VERSION: 0x40088101,
  CREATE_DEV: 0x41508102,
  DESTROY_DEV: 0x41008103,
  IOTLB_GET_FD: 0xC0208110,
  DEV_GET_FEATURES: 0x80088111,
  DEV_SET_CONFIG: 0x40088112,
  DEV_INJECT_CONFIG_IRQ: 0x00008113,
  VQ_SETUP: 0x40208114,
  VQ_GET_INFO: 0xC0308115,
  VQ_SETUP_KICKFD: 0x40088116,
  VQ_INJECT_IRQ: 0x40048117,
  IOTLB_REG_UMEM: 0x40308118,
  IOTLB_DEREG_UMEM: 0x40308119,
  IOTLB_GET_INFO: 0xC030811A,
  IOTLB_GET_FD2: 0xC050811B,
};

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

Deno.test("VduseIoctl numbers", async (t) => {
  await t.step("match the reference table", () => {
    for (const [name, value] of Object.entries(REFERENCE)) {
      assertEquals(
        VduseIoctl[name as keyof typeof VduseIoctl].toString(16),
        value.toString(16),
        name,
      );
    }
    assertEquals(Object.keys(VduseIoctl).length, Object.keys(REFERENCE).length);
    assertEquals(VDUSE_IOTLB_GET_FD2_PRERELEASE, 0xC058811B);
  });

  await t.step("ioc() and decodeIoc() are inverse and validate", () => {
    const n = ioc(IOC_READ | IOC_WRITE, 0x81, 0x15, 48);
    assertEquals(decodeIoc(n), { dir: 3, type: 0x81, nr: 0x15, size: 48 });
    assertThrows(() => ioc(4, 0x81, 0, 0), RangeError);
    assertThrows(() => ioc(IOC_WRITE, 0x81, 0, 1 << 14), RangeError);
    assertThrows(() => ioc(IOC_WRITE, 0x100, 0, 0), RangeError);
  });

  await t.step("match <linux/vduse.h> when gcc and linux-libc-dev are installed", async () => {
    let out: Deno.CommandOutput;
    const dir = await Deno.makeTempDir();
    try {
      const src = new URL("./uapi_header_check.c", import.meta.url).pathname;
      const compile = await new Deno.Command("gcc", { args: ["-o", `${dir}/check`, src] })
        .output().catch(() => null);
      if (compile === null || !compile.success) {
        console.log("  (skipped: gcc or /usr/include/linux/vduse.h not available)");
        return;
      }
      out = await new Deno.Command(`${dir}/check`).output();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    const c = JSON.parse(new TextDecoder().decode(out.stdout)) as Record<string, number>;
    for (const name of Object.keys(REFERENCE)) {
      const key = `VDUSE_${name}`;
      if (key in c) assertEquals(VduseIoctl[name as keyof typeof VduseIoctl], c[key], key);
    }
    assertEquals(c["sizeof vduse_dev_config"], VDUSE_DEV_CONFIG_SIZE);
    assertEquals(c["sizeof vduse_vq_config"], VDUSE_VQ_CONFIG_SIZE);
    assertEquals(c["sizeof vduse_vq_info"], VDUSE_VQ_INFO_SIZE);
    assertEquals(c["sizeof vduse_vq_eventfd"], VDUSE_VQ_EVENTFD_SIZE);
    assertEquals(c["sizeof vduse_iotlb_entry"], VDUSE_IOTLB_ENTRY_SIZE);
    assertEquals(c["sizeof vduse_vq_state"], VDUSE_VQ_STATE_SIZE);
    assertEquals(c["sizeof vduse_dev_request"], VDUSE_MSG_SIZE);
    assertEquals(c["sizeof vduse_dev_response"], VDUSE_MSG_SIZE);
    if ("sizeof vduse_iova_umem" in c) {
      assertEquals(c["sizeof vduse_iova_umem"], VDUSE_IOVA_UMEM_SIZE);
      assertEquals(c["sizeof vduse_iova_info"], VDUSE_IOVA_INFO_SIZE);
    }
    if ("sizeof vduse_iotlb_entry_v2" in c) {
      assertEquals(c["sizeof vduse_iotlb_entry_v2"], VDUSE_IOTLB_ENTRY_V2_SIZE);
    }
    assertEquals(c["offsetof vduse_dev_config.config_size"], 332);
    assertEquals(c["offsetof vduse_vq_info.ready"], 40);
    assertEquals(c["VDUSE_API_VERSION"], 0);
  });
});

Deno.test("VDUSE struct codecs", async (t) => {
  await t.step("vduse_dev_config: offsets, config blob, round trip", () => {
    const config = new Uint8Array([1, 2, 3, 4, 5, 6]);
    const bytes = encodeDevConfig({
      name: "vduse-net0",
      vendorId: 0x1af4,
      deviceId: 1,
      features: (1n << 32n) | (1n << 33n) | 0x20n,
      vqNum: 3,
      vqAlign: 4096,
      ngroups: 2,
      nas: 2,
      config,
    });
    assertEquals(bytes.length, 336 + 6);
    const d = dv(bytes);
    assertEquals(bytes[6], 0x6e); // "n" of "net0"
    assertEquals(bytes[10], 0);
    assertEquals(d.getUint32(256, true), 0x1af4);
    assertEquals(d.getUint32(260, true), 1);
    assertEquals(d.getBigUint64(264, true), 0x3_0000_0020n);
    assertEquals(d.getUint32(272, true), 3);
    assertEquals(d.getUint32(276, true), 4096);
    assertEquals(d.getUint32(280, true), 2);
    assertEquals(d.getUint32(284, true), 2);
    assertEquals(d.getUint32(332, true), 6);
    assertEquals(bytes.subarray(336), config);
    const back = decodeDevConfig(bytes);
    assertEquals(back.name, "vduse-net0");
    assertEquals(back.features, 0x3_0000_0020n);
    assertEquals(back.config, config);
    assertEquals(back.reserved, new Array(11).fill(0));
    assertEquals(encodeDevConfig(back), bytes);
    // A short blob decodes to what is there.
    assertEquals(decodeDevConfig(bytes.subarray(0, 338)).config, new Uint8Array([1, 2]));
    assertThrows(() => decodeDevConfig(new Uint8Array(335)), RangeError);
  });

  await t.step("names: NUL padded, byte 255 ignored, 255 bytes at most", () => {
    const n = encodeName("a".repeat(255));
    assertEquals(n.length, 256);
    assertEquals(n[255], 0);
    n[255] = 0x41;
    assertEquals(decodeName(n), "a".repeat(255));
    assertThrows(() => encodeName("a".repeat(256)), RangeError);
    assertEquals(decodeName(new Uint8Array(256)), "");
  });

  await t.step("vduse_vq_config", () => {
    const b = encodeVqConfig({ index: 5, maxSize: 1024, group: 1 });
    assertEquals(b.length, 32);
    assertEquals(dv(b).getUint16(4, true), 1024);
    assertEquals(dv(b).getUint32(8, true), 1);
    assertEquals(decodeVqConfig(b), {
      index: 5,
      maxSize: 1024,
      group: 1,
      reserved1: 0,
      reserved2: new Array(10).fill(0),
    });
    const bad = encodeVqConfig({ index: 0, maxSize: 1, group: 0, reserved1: 7, reserved2: [0, 9] });
    assertEquals(decodeVqConfig(bad).reserved1, 7);
    assertEquals(decodeVqConfig(bad).reserved2![1], 9);
  });

  await t.step("vduse_vq_info: split and packed views of the union", () => {
    const b = encodeVqInfo({
      index: 1,
      num: 256,
      descAddr: 0x4000_0000n,
      driverAddr: 0x4000_1000n,
      deviceAddr: U64_MAX,
      packed: { lastAvailCounter: 1, lastAvailIdx: 2, lastUsedCounter: 1, lastUsedIdx: 4 },
      ready: true,
    });
    assertEquals(b.length, 48);
    assertEquals(dv(b).getBigUint64(24, true), U64_MAX);
    assertEquals(dv(b).getUint16(38, true), 4);
    assertEquals(b[40], 1);
    const i = decodeVqInfo(b);
    assertEquals(i.split.availIndex, 1);
    assertEquals(i.packed.lastUsedIdx, 4);
    assertEquals(i.deviceAddr, U64_MAX);
    assertEquals(u64ToAddress(i.descAddr), 0x4000_0000);
    assert(Number.isNaN(u64ToAddress(i.deviceAddr)));
    assertEquals(encodeVqInfo(i), b);
    const s = decodeVqInfo(encodeVqInfo({
      index: 0,
      num: 8,
      descAddr: 0n,
      driverAddr: 0n,
      deviceAddr: 0n,
      split: { availIndex: 0x1234 },
      ready: false,
    }));
    assertEquals(s.split.availIndex, 0x1234);
    assertEquals(s.ready, false);
  });

  await t.step("vduse_vq_eventfd keeps a signed fd", () => {
    const b = encodeVqEventfd({ index: 2, fd: -1 });
    assertEquals(b, new Uint8Array([2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]));
    assertEquals(decodeVqEventfd(b), { index: 2, fd: -1 });
  });

  await t.step("vduse_iotlb_entry (32 bytes) and vduse_iotlb_entry_v2 (80 bytes)", () => {
    const e = { offset: 0x4000_0000n, start: 0x4000_0000n, last: 0x4000_0fffn, perm: 3 };
    const b = encodeIotlbEntry(e);
    assertEquals(b.length, 32);
    assertEquals(b[24], 3);
    assertEquals(b.subarray(25), new Uint8Array(7));
    assertEquals(decodeIotlbEntry(b), e);
    const v2 = encodeIotlbEntryV2({ ...e, asid: 7 });
    assertEquals(v2.length, 80);
    assertEquals(v2.subarray(0, 32), b);
    assertEquals(dv(v2).getUint32(32, true), 7);
    const back = decodeIotlbEntryV2(v2);
    assertEquals(back.asid, 7);
    assertEquals(back.reserved, new Array(11).fill(0));
    const bad = encodeIotlbEntryV2({ ...e, asid: 0, reserved: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5] });
    assertEquals(dv(bad).getUint32(76, true), 5);
  });

  await t.step("vduse_config_data, u64 and u32 arguments", () => {
    const b = encodeConfigData({ offset: 4, buffer: new Uint8Array([9, 8]) });
    assertEquals(b, new Uint8Array([4, 0, 0, 0, 2, 0, 0, 0, 9, 8]));
    assertEquals(decodeConfigData(b), { offset: 4, length: 2, buffer: new Uint8Array([9, 8]) });
    assertEquals(decodeU64(encodeU64(U64_MAX)), U64_MAX);
    assertEquals(decodeU64(encodeU64(1)), 1n);
    assertEquals(decodeU32(encodeU32(0xffff_ffff)), 0xffff_ffff);
  });

  await t.step("vduse_iova_umem and vduse_iova_info", () => {
    const u = { uaddr: 0x7f00_0000_0000n, iova: 0n, size: 0x400_0000n, asid: 1 };
    const ub = encodeIovaUmem(u);
    assertEquals(ub.length, 48);
    assertEquals(dv(ub).getUint32(24, true), 1);
    assertEquals(decodeIovaUmem(ub), { ...u, reserved: [0, 0, 0, 0, 0] });
    const i = { start: 0n, last: 0x3ff_ffffn, capability: 1n, asid: 0 };
    const ib = encodeIovaInfo(i);
    assertEquals(ib.length, 48);
    assertEquals(dv(ib).getBigUint64(16, true), 1n);
    assertEquals(decodeIovaInfo(ib), { ...i, reserved: [0, 0, 0, 0, 0] });
  });

  await t.step("vduse_vq_state", () => {
    const b = encodeVqState({ index: 3, split: { availIndex: 77 } });
    assertEquals(b.length, 12);
    assertEquals(decodeVqState(b).split.availIndex, 77);
  });
});

Deno.test("VDUSE message codecs", async (t) => {
  await t.step("every request union member at offset 24", () => {
    const gs = encodeDevRequest({
      type: VduseReqType.GET_VQ_STATE,
      requestId: 1,
      vqState: { index: 4 },
    });
    assertEquals(gs.length, 152);
    assertEquals(dv(gs).getUint32(24, true), 4);
    assertEquals(decodeDevRequest(gs).vqState, { index: 4 });

    const ss = encodeDevRequest({ type: VduseReqType.SET_STATUS, requestId: 2, status: 0x0f });
    assertEquals(ss[24], 0x0f);
    assertEquals(decodeDevRequest(ss).status, 0x0f);

    const up = encodeDevRequest({
      type: VduseReqType.UPDATE_IOTLB,
      requestId: 0xffff_ffff,
      iova: { start: 0n, last: U64_MAX, asid: 1 },
    });
    assertEquals(dv(up).getBigUint64(32, true), U64_MAX);
    assertEquals(dv(up).getUint32(40, true), 1);
    const upd = decodeDevRequest(up);
    assertEquals(upd.requestId, 0xffff_ffff);
    assertEquals(upd.iova, { start: 0n, last: U64_MAX, asid: 1 });

    const ga = encodeDevRequest({
      type: VduseReqType.SET_VQ_GROUP_ASID,
      requestId: 3,
      vqGroupAsid: { group: 1, asid: 2 },
    });
    assertEquals(dv(ga).getUint32(28, true), 2);
    assertEquals(decodeDevRequest(ga).vqGroupAsid, { group: 1, asid: 2 });

    const unknown = new Uint8Array(152);
    dv(unknown).setUint32(0, 9, true);
    unknown[24] = 0xaa;
    const u = decodeDevRequest(unknown);
    assertEquals(u.type, 9);
    assertEquals(u.padding!.length, 128);
    assertEquals(encodeDevRequest(u), unknown);
    assertThrows(() => decodeDevRequest(new Uint8Array(151)), RangeError);
  });

  await t.step("responses: result, reserved, vq_state reply", () => {
    const r = encodeDevResponse({
      requestId: 5,
      result: 1,
      vqState: {
        index: 2,
        packed: { lastAvailCounter: 1, lastAvailIdx: 3, lastUsedCounter: 0, lastUsedIdx: 3 },
      },
    });
    assertEquals(r.length, 152);
    assertEquals(dv(r).getUint32(4, true), 1);
    assertEquals(dv(r).getUint32(24, true), 2);
    assertEquals(dv(r).getUint16(30, true), 3);
    const d = decodeDevResponse(r);
    assertEquals(d.requestId, 5);
    assertEquals(d.reserved, [0, 0, 0, 0]);
    assertEquals(d.vqState.packed!.lastAvailIdx, 3);
    const out = new Uint8Array(152).fill(0xee);
    encodeDevResponse({ requestId: 1, result: 0, reserved: [0, 0, 0, 1] }, out);
    assertEquals(dv(out).getUint32(20, true), 1);
    assertEquals(out[151], 0);
  });

  await t.step("errno names", () => {
    assertEquals(errnoName(-LinuxErrno.EINVAL), "-EINVAL");
    assertEquals(errnoName(LinuxErrno.EPERM), "EPERM");
    assertEquals(errnoName(0), "0");
    assertEquals(errnoName(-LinuxErrno.EACCES), "-EACCES");
    assertEquals(errnoName(-200), "-errno 200");
  });
});
