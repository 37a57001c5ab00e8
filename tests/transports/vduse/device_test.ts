import { assert, assertEquals } from "@std/assert";
import { DmaDirection } from "../../../src/guest/dma/dma_api.ts";
import { featureMask, VirtioFeature } from "../../../src/virtio/features.ts";
import { LinuxErrno } from "../../../transports/vduse/errno.ts";
import { POLLERR, POLLIN, POLLOUT } from "../../../transports/vduse/kernel/msg_channel.ts";
import type { VduseDev } from "../../../transports/vduse/kernel/vduse_dev.ts";
import {
  decodeIotlbEntry,
  decodeIotlbEntryV2,
  decodeIovaInfo,
  decodeU64,
  decodeVqInfo,
  encodeConfigData,
  encodeDevResponse,
  encodeIotlbEntry,
  encodeIotlbEntryV2,
  encodeIovaInfo,
  encodeIovaUmem,
  encodeU32,
  encodeVqConfig,
  encodeVqEventfd,
  encodeVqInfo,
  U64_MAX,
  VDUSE_IOVA_CAP_UMEM,
  VDUSE_MSG_SIZE,
  VduseIoctl,
  VduseReqType,
} from "../../../transports/vduse/uapi.ts";
import {
  autoReply,
  blkConfig,
  createAndOpen,
  type Fixture,
  readRequest,
  reply,
  setup,
} from "./helpers.ts";

const { EINVAL, EPERM, ENOENT, EIO, EAGAIN, EFAULT, ENOTTY, EBADF, EEXIST } = LinuxErrno;
const S_OK = 0x0f;

/** A v0 blk device with `vqNum` queues, opened and attached; returns the device fd and the vDPA side. */
function attached(f: Fixture, vqNum = 2, version = 0, extra = {}): { fd: number; dev: VduseDev } {
  const fd = createAndOpen(
    f,
    blkConfig({ vqNum, ...(version === 1 ? { ngroups: 2, nas: 2 } : {}), ...extra }),
    version,
  );
  const dev = f.kernel.vdpaDevAdd("blk0") as VduseDev;
  return { fd, dev };
}

function vqInfo(f: Fixture, fd: number, index: number) {
  const arg = encodeVqInfo({
    index,
    num: 0,
    descAddr: 0n,
    driverAddr: 0n,
    deviceAddr: 0n,
    ready: false,
  });
  const r = f.backend.ioctl(fd, VduseIoctl.VQ_GET_INFO, arg);
  return { r, info: decodeVqInfo(arg) };
}

Deno.test("VDUSE messages", async (t) => {
  await t.step("SET_STATUS: applied only when userspace answers OK", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    dev.setStatus(1);
    assertEquals(dev.getStatus(), 0); // not answered yet
    assertEquals(f.backend.poll(fd), POLLIN);
    const req = readRequest(f, fd)!;
    assertEquals([req.type, req.status, req.requestId], [VduseReqType.SET_STATUS, 1, 0]);
    assertEquals(f.backend.poll(fd), POLLOUT);
    assertEquals(reply(f, fd, req.requestId), VDUSE_MSG_SIZE);
    assertEquals(dev.getStatus(), 1);
    dev.setStatus(3);
    const r2 = readRequest(f, fd)!;
    assertEquals(r2.requestId, 1);
    reply(f, fd, r2.requestId, 1); // FAILED: the status stays
    assertEquals(dev.getStatus(), 1);
  });

  await t.step("read/write errors: short buffers, nothing pending, unknown id, reserved", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    assertEquals(f.backend.read(fd, new Uint8Array(151)), -EINVAL);
    assertEquals(f.backend.read(fd, new Uint8Array(152)), -EAGAIN);
    dev.setStatus(1);
    const req = readRequest(f, fd)!;
    assertEquals(f.backend.write(fd, new Uint8Array(100)), -EINVAL);
    assertEquals(reply(f, fd, req.requestId + 1), -ENOENT);
    const withReserved = encodeDevResponse({ requestId: req.requestId, result: 0, reserved: [1] });
    assertEquals(f.backend.write(fd, withReserved), -EINVAL);
    assertEquals(reply(f, fd, req.requestId), 152);
    assertEquals(reply(f, fd, req.requestId), -ENOENT); // answered already
  });

  await t.step("closing with unanswered requests re-queues them for the next opener", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    dev.setStatus(1);
    const first = readRequest(f, fd)!;
    f.backend.close(fd);
    const fd2 = f.backend.openDevice("blk0");
    const again = readRequest(f, fd2)!;
    assertEquals(again, first);
    reply(f, fd2, again.requestId);
    assertEquals(dev.getStatus(), 1);
  });

  await t.step("a timeout marks the device broken: -EPERM ioctls, -EIO messages, POLLERR", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const woken: number[] = [];
    f.backend.watch(fd, () => woken.push(f.backend.poll(fd)));
    const msg = dev.sendStatus(1)!;
    readRequest(f, fd); // read but never answered
    f.timers.advance(29_999);
    assertEquals(dev.broken, false);
    f.timers.advance(1);
    assertEquals(dev.broken, true);
    assertEquals(msg.timedOut, true);
    assertEquals(msg.status, -EIO);
    assertEquals(dev.getStatus(), 0);
    assertEquals(woken, [POLLIN, POLLERR]);
    assertEquals(f.backend.poll(fd) & POLLERR, POLLERR);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DEV_GET_FEATURES, new Uint8Array(8)), -EPERM);
    assertEquals(f.backend.ioctl(fd, 0x1234, null), -EPERM);
    assertEquals(dev.sendStatus(1), null);
    assertEquals(dev.reset(), -EIO);
    assertEquals(dev.setGroupAsid(0, 0), -EINVAL); // v0 device
    assertEquals(f.backend.read(fd, new Uint8Array(152)), -EAGAIN);
    assertEquals(f.timers.pending, 0);
  });

  await t.step(
    "other outstanding messages fail when the device breaks; msg_timeout 0 waits forever",
    () => {
      const f = setup();
      const { fd, dev } = attached(f);
      const a = dev.sendStatus(1)!;
      f.timers.advance(10_000);
      const b = dev.sendStatus(3)!;
      f.timers.advance(20_000);
      assertEquals([a.completed, b.completed, b.timedOut], [true, true, false]);
      assertEquals(b.status, -EIO);
      assertEquals(f.backend.read(fd, new Uint8Array(152)), -EAGAIN);

      const g = setup();
      const d2 = attached(g).dev;
      assertEquals(g.kernel.setMsgTimeout("blk0", 0), 0);
      d2.sendStatus(1);
      g.timers.advance(1e9);
      assertEquals(d2.broken, false);
    },
  );

  await t.step("reset sends SET_STATUS(0) and resets whatever the reply", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const { log } = autoReply(f, fd, (r) => r.status === 0 ? 1 : 0);
    dev.setStatus(S_OK);
    dev.setDriverFeatures(featureMask(VirtioFeature.VERSION_1));
    dev.setVqNum(0, 16);
    dev.setVqReady(0, true);
    const gen = dev.getGeneration();
    assertEquals(dev.reset(), -EIO);
    assertEquals(log.map((r) => r.status), [S_OK, 0]);
    assertEquals(dev.getStatus(), 0);
    assertEquals(dev.getDriverFeatures(), 0n);
    assertEquals(dev.getVqReady(0), false);
    assertEquals(dev.getVqSize(0), 64);
    assertEquals(dev.getGeneration(), gen + 1);
  });

  await t.step("GET_VQ_STATE: split index, packed values masked", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    f.backend.watch(fd, () => {
      const r = readRequest(f, fd);
      if (r === null) return;
      assertEquals(r.vqState?.index, 1);
      f.backend.write(
        fd,
        encodeDevResponse({
          requestId: r.requestId,
          result: 0,
          vqState: {
            index: 1,
            packed: {
              lastAvailCounter: 3,
              lastAvailIdx: 0xffff,
              lastUsedCounter: 2,
              lastUsedIdx: 0x8001,
            },
          },
        }),
      );
    });
    assertEquals(dev.getVqState(1), { split: { availIndex: 3 } });
    dev.setDriverFeatures(featureMask(VirtioFeature.RING_PACKED));
    assertEquals(dev.getVqState(1), {
      packed: { lastAvailCounter: 1, lastAvailIdx: 0x7fff, lastUsedCounter: 0, lastUsedIdx: 1 },
    });
    assertEquals(dev.getVqState(9), -EINVAL);
  });
});

Deno.test("VDUSE device ioctls", async (t) => {
  await t.step("unknown commands are -ENOTTY; bad fds -EBADF", () => {
    const f = setup();
    const { fd } = attached(f);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.CREATE_DEV, new Uint8Array(400)), -ENOTTY);
    assertEquals(f.backend.ioctl(99, VduseIoctl.DEV_GET_FEATURES, new Uint8Array(8)), -EBADF);
  });

  await t.step("VQ_SETUP: index, reserved, groups (v0 and v1), DRIVER_OK", () => {
    const f = setup();
    const fd = createAndOpen(f, blkConfig({ vqNum: 2 }), 0);
    const setup0 = (c: Parameters<typeof encodeVqConfig>[0]) =>
      f.backend.ioctl(fd, VduseIoctl.VQ_SETUP, encodeVqConfig(c));
    assertEquals(setup0({ index: 2, maxSize: 8, group: 0 }), -EINVAL);
    assertEquals(setup0({ index: 0, maxSize: 8, group: 0, reserved1: 1 }), -EINVAL);
    assertEquals(setup0({ index: 0, maxSize: 8, group: 0, reserved2: [0, 0, 1] }), -EINVAL);
    assertEquals(setup0({ index: 0, maxSize: 8, group: 1 }), -EINVAL);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.VQ_SETUP, new Uint8Array(31)), -EFAULT);
    assertEquals(setup0({ index: 1, maxSize: 8, group: 0 }), 0);

    const g = setup();
    const { fd: fd1, dev } = attached(g, 2, 1);
    const setup1 = (c: Parameters<typeof encodeVqConfig>[0]) =>
      g.backend.ioctl(fd1, VduseIoctl.VQ_SETUP, encodeVqConfig(c));
    assertEquals(setup1({ index: 1, maxSize: 8, group: 2 }), -EINVAL);
    assertEquals(setup1({ index: 1, maxSize: 8, group: 1 }), 0);
    assertEquals(dev.getVqGroup(1), 1);
    assertEquals(dev.getVqMap(1), dev.groups[1]);
    autoReply(g, fd1);
    dev.setStatus(S_OK);
    assertEquals(setup1({ index: 1, maxSize: 8, group: 0 }), -EINVAL);
  });

  await t.step("VQ_GET_INFO reports what the driver set", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    assertEquals(vqInfo(f, fd, 2).r, -EINVAL);
    dev.setVqNum(1, 32);
    dev.setVqAddress(1, 0x4000_0000, 0x4000_1000, 0x4000_2000);
    dev.setVqState(1, { split: { availIndex: 5 } });
    dev.setVqReady(1, true);
    const { r, info } = vqInfo(f, fd, 1);
    assertEquals(r, 0);
    assertEquals(info.num, 32);
    assertEquals(info.descAddr, 0x4000_0000n);
    assertEquals(info.deviceAddr, 0x4000_2000n);
    assertEquals(info.split.availIndex, 5);
    assertEquals(info.ready, true);
    dev.setDriverFeatures(featureMask(VirtioFeature.RING_PACKED));
    dev.setVqState(1, {
      packed: { lastAvailCounter: 1, lastAvailIdx: 2, lastUsedCounter: 1, lastUsedIdx: 4 },
    });
    assertEquals(vqInfo(f, fd, 1).info.packed.lastUsedIdx, 4);
  });

  await t.step("VQ_SETUP_KICKFD: latched kicks, deassign, bad fds", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const kicks: number[] = [];
    const efd = f.backend.eventfd(() => kicks.push(0));
    const kickfd = (index: number, fd2: number) =>
      f.backend.ioctl(fd, VduseIoctl.VQ_SETUP_KICKFD, encodeVqEventfd({ index, fd: fd2 }));
    assertEquals(kickfd(2, efd), -EINVAL);
    assertEquals(kickfd(0, 77), -EBADF);
    assertEquals(kickfd(0, fd), -EINVAL); // not an eventfd
    dev.kickVq(0); // not ready: dropped
    dev.setVqReady(0, true);
    dev.kickVq(0); // no fd: latched
    assertEquals(kicks.length, 0);
    assertEquals(kickfd(0, efd), 0);
    assertEquals(kicks.length, 1); // the latched kick is delivered
    dev.kickVq(0);
    assertEquals(kicks.length, 2);
    assertEquals(kickfd(0, -5), 0); // other negative fds: ignored
    dev.kickVq(0);
    assertEquals(kicks.length, 3);
    assertEquals(kickfd(0, -1), 0); // deassign
    dev.kickVq(0);
    assertEquals(kicks.length, 3);
    assertEquals(dev.vqs[0].kicked, true);
  });

  await t.step(
    "VQ_INJECT_IRQ and DEV_INJECT_CONFIG_IRQ need DRIVER_OK; callbacks run as work",
    () => {
      const f = setup();
      const { fd, dev } = attached(f);
      const irqs: string[] = [];
      dev.setVqCb(0, () => irqs.push("vq0"));
      dev.setVqCb(1, () => irqs.push("vq1"));
      dev.setConfigCb(() => irqs.push("config"));
      assertEquals(f.backend.ioctl(fd, VduseIoctl.VQ_INJECT_IRQ, encodeU32(0)), -EINVAL);
      assertEquals(f.backend.ioctl(fd, VduseIoctl.DEV_INJECT_CONFIG_IRQ, null), -EINVAL);
      autoReply(f, fd);
      dev.setStatus(S_OK);
      dev.setVqReady(0, true);
      assertEquals(f.backend.ioctl(fd, VduseIoctl.VQ_INJECT_IRQ, encodeU32(5)), -EINVAL);
      assertEquals(f.backend.ioctl(fd, VduseIoctl.VQ_INJECT_IRQ, encodeU32(0)), 0);
      assertEquals(f.backend.ioctl(fd, VduseIoctl.VQ_INJECT_IRQ, encodeU32(1)), 0); // not ready
      assertEquals(f.backend.ioctl(fd, VduseIoctl.DEV_INJECT_CONFIG_IRQ, null), 0);
      assertEquals(irqs, []);
      f.flush();
      assertEquals(irqs, ["vq0", "config"]);
    },
  );

  await t.step("DEV_SET_CONFIG bounds; get_config zero-fills; driver writes are ignored", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const set = (offset: number, buffer: Uint8Array, length?: number) =>
      f.backend.ioctl(fd, VduseIoctl.DEV_SET_CONFIG, encodeConfigData({ offset, buffer, length }));
    assertEquals(set(9, new Uint8Array([1])), -EINVAL);
    assertEquals(set(0, new Uint8Array(0)), -EINVAL);
    assertEquals(set(4, new Uint8Array(5)), -EINVAL);
    assertEquals(set(0, new Uint8Array(2), 4), -EFAULT);
    assertEquals(set(6, new Uint8Array([7, 8])), 0);
    const out = new Uint8Array(12).fill(0xff);
    dev.getConfig(4, out);
    assertEquals(out, new Uint8Array([0, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]));
    dev.setConfig(0, new Uint8Array([9]));
    dev.getConfig(0, out.subarray(0, 1));
    assertEquals(out[0], 0);
    dev.getConfig(100, out);
    assertEquals(out, new Uint8Array(12));
  });

  await t.step("DEV_GET_FEATURES mirrors the driver's features", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    dev.setDriverFeatures(0x1_0000_0001n);
    const arg = new Uint8Array(8);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DEV_GET_FEATURES, arg), 0);
    assertEquals(decodeU64(arg), 0x1_0000_0001n);
    assertEquals(f.backend.ioctl(fd, VduseIoctl.DEV_GET_FEATURES, new Uint8Array(4)), -EFAULT);
  });
});

Deno.test("VDUSE IOTLB ioctls", async (t) => {
  const getFd = (f: Fixture, fd: number, start: bigint, last: bigint) => {
    const arg = encodeIotlbEntry({ offset: 0n, start, last, perm: 0 });
    return { r: f.backend.ioctl(fd, VduseIoctl.IOTLB_GET_FD, arg), e: decodeIotlbEntry(arg) };
  };

  await t.step("GET_FD before attach, with start > last, or on a gap: -EINVAL", () => {
    const f = setup();
    const fd = createAndOpen(f, blkConfig(), 0);
    assertEquals(getFd(f, fd, 0n, 0n).r, -EINVAL);
    f.kernel.vdpaDevAdd("blk0");
    assertEquals(getFd(f, fd, 5n, 4n).r, -EINVAL);
    assertEquals(getFd(f, fd, 0n, U64_MAX).r, -EINVAL); // empty IOTLB
    assertEquals(f.backend.ioctl(fd, VduseIoctl.IOTLB_GET_FD, new Uint8Array(16)), -EFAULT);
  });

  await t.step("bounce region: offset 0, RW, mmap shows the bounce pages", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    f.memory.write(0x1000, new Uint8Array([1, 2, 3]));
    const iova = dev.mapOps.mapPage(dev.getVqMap(0), 0x1000, 3, DmaDirection.TO_DEVICE, 0);
    const { r, e } = getFd(f, fd, BigInt(iova), BigInt(iova + 1));
    assert(r >= 0);
    assertEquals([e.offset, e.start, e.last, e.perm], [0n, 0n, BigInt((1 << 20) - 1), 3]);
    const view = f.backend.mmap(r, 0, 1 << 20, 3) as Uint8Array;
    assertEquals(view.subarray(iova, iova + 3), new Uint8Array([1, 2, 3]));
    f.backend.close(r);
    assertEquals(f.backend.mmap(r, 0, 1, 3), -EBADF);
  });

  await t.step("coherent region: offset == IOVA, the region may start before `start`", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const ring = dev.mapOps.alloc(dev.getVqMap(0), 8192)!;
    f.memory.write8(ring.cpuAddr + 4097, 0x42);
    const { r, e } = getFd(f, fd, BigInt(ring.dmaAddr + 4096), BigInt(ring.dmaAddr + 4096));
    assert(r >= 0);
    assertEquals(e.start, BigInt(ring.dmaAddr));
    assertEquals(e.offset, BigInt(ring.dmaAddr));
    assertEquals(e.last, BigInt(ring.dmaAddr + 8191));
    const view = f.backend.mmap(r, ring.dmaAddr, 8192, 3) as Uint8Array;
    assertEquals(view[4097], 0x42);
    view[0] = 7; // shared, not copied
    assertEquals(f.memory.read8(ring.cpuAddr), 7);
  });

  await t.step("GET_FD2: ENOTTY on v0; reserved and asid checked on v1", () => {
    const f = setup();
    const { fd } = attached(f);
    const arg = encodeIotlbEntryV2({ offset: 0n, start: 0n, last: 0n, perm: 0, asid: 0 });
    assertEquals(f.backend.ioctl(fd, VduseIoctl.IOTLB_GET_FD2, arg), -ENOTTY);
    const g = setup();
    const { fd: fd1, dev } = attached(g, 2, 1);
    const fd2 = (asid: number, reserved?: number[]) =>
      g.backend.ioctl(
        fd1,
        VduseIoctl.IOTLB_GET_FD2,
        encodeIotlbEntryV2({ offset: 0n, start: 0n, last: U64_MAX, perm: 0, asid, reserved }),
      );
    assertEquals(fd2(2), -EINVAL);
    assertEquals(fd2(0, [1]), -EINVAL);
    assertEquals(fd2(1), -EINVAL); // nothing mapped in AS 1
    const ring = dev.mapOps.alloc(dev.groups[1], 100)!; // every group starts in AS 0
    assert(fd2(0) >= 0);
    assertEquals(fd2(1), -EINVAL);
    dev.groups[1].as = dev.as[1];
    const ring1 = dev.mapOps.alloc(dev.groups[1], 100)!;
    const arg1 = encodeIotlbEntryV2({ offset: 0n, start: 0n, last: U64_MAX, perm: 0, asid: 1 });
    assert(g.backend.ioctl(fd1, VduseIoctl.IOTLB_GET_FD2, arg1) >= 0);
    assertEquals(decodeIotlbEntryV2(arg1).start, BigInt(ring1.dmaAddr));
    assertEquals(decodeIotlbEntryV2(arg1).asid, 1);
    assert(ring.dmaAddr > 0);
  });

  await t.step("GET_INFO: the merged code's -EFAULT quirk, UMEM capability", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const info = (o: Partial<Parameters<typeof encodeIovaInfo>[0]> = {}) => {
      const arg = encodeIovaInfo({ start: 0n, last: U64_MAX, capability: 0n, asid: 0, ...o });
      return { r: f.backend.ioctl(fd, VduseIoctl.IOTLB_GET_INFO, arg), i: decodeIovaInfo(arg) };
    };
    assertEquals(info({ reserved: [1] }).r, -EFAULT);
    assertEquals(info({ asid: 1 }).r, -EFAULT);
    assertEquals(info({ start: 2n, last: 1n }).r, -EINVAL);
    assertEquals(info().r, -EINVAL);
    dev.mapOps.mapPage(dev.vmap, 0x1000, 1, DmaDirection.TO_DEVICE, 0);
    const ring = dev.mapOps.alloc(dev.vmap, 64)!;
    const bounce = info();
    assertEquals(bounce.r, 0);
    assertEquals(bounce.i.capability, BigInt(VDUSE_IOVA_CAP_UMEM));
    const coherent = info({ start: BigInt(ring.dmaAddr), last: BigInt(ring.dmaAddr) });
    assertEquals([coherent.i.start, coherent.i.capability], [BigInt(ring.dmaAddr), 0n]);
  });

  await t.step("REG_UMEM / DEREG_UMEM rules", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const mem = f.backend.allocUserMemory(1 << 20);
    const umem = (req: number, o: Partial<Parameters<typeof encodeIovaUmem>[0]> = {}) =>
      f.backend.ioctl(
        fd,
        req,
        encodeIovaUmem({
          uaddr: BigInt(mem.uaddr),
          iova: 0n,
          size: BigInt(1 << 20),
          asid: 0,
          ...o,
        }),
      );
    const REG = VduseIoctl.IOTLB_REG_UMEM;
    const DEREG = VduseIoctl.IOTLB_DEREG_UMEM;
    assertEquals(umem(REG), -EINVAL); // no bounce window yet
    f.memory.write8(0x1000, 0x99);
    const iova = dev.mapOps.mapPage(dev.vmap, 0x1000, 1, DmaDirection.BIDIRECTIONAL, 0);
    assertEquals(umem(REG, { reserved: [1] }), -EINVAL);
    assertEquals(umem(REG, { asid: 1 }), -EINVAL);
    assertEquals(umem(REG, { size: 4096n }), -EINVAL);
    assertEquals(umem(REG, { iova: 4096n }), -EINVAL);
    assertEquals(umem(REG, { uaddr: BigInt(mem.uaddr + 1) }), -EINVAL);
    assertEquals(umem(DEREG), -ENOENT);
    assertEquals(umem(REG), 0);
    assertEquals(umem(REG), -EEXIST);
    assertEquals(mem.bytes[iova], 0x99);
    assertEquals(umem(DEREG, { size: 4096n }), -EINVAL);
    assertEquals(umem(DEREG), 0);
    assertEquals(umem(REG), 0);
    f.backend.close(fd); // release deregisters
    assertEquals(dev.as[0].umem, null);
  });

  await t.step("UPDATE_IOTLB (set_map): the IOTLB is replaced; a FAILED reply rolls back", () => {
    const f = setup();
    const { fd, dev } = attached(f);
    const { log } = autoReply(f, fd, () => log.length > 1 ? 1 : 0);
    assertEquals(dev.setMap(0, [{ iova: 0x10_0000, size: 0x2000, phys: 0x8000, perm: 1 }]), 0);
    assertEquals(log[0].type, VduseReqType.UPDATE_IOTLB);
    assertEquals(log[0].iova, { start: 0n, last: U64_MAX, asid: 0 });
    const { r, e } = getFd(f, fd, 0x10_1000n, 0x10_1000n);
    assertEquals([e.start, e.offset, e.perm], [0x10_0000n, 0x8000n, 1]);
    assert(r >= 0);
    assertEquals(dev.setMap(0, [{ iova: 0, size: 0x1000, phys: 0, perm: 3 }]), -EIO);
    assertEquals(getFd(f, fd, 0n, U64_MAX).r, -EINVAL); // rolled back (the old map was deleted)
  });
});

Deno.test("VDUSE address spaces (API v1)", async (t) => {
  await t.step("SET_VQ_GROUP_ASID: sent, applied on OK, refused on FAILED or bad ids", () => {
    const f = setup();
    const { fd, dev } = attached(f, 2, 1);
    let result = 0;
    const { log } = autoReply(f, fd, () => result);
    assertEquals(dev.setGroupAsid(1, 1), 0);
    assertEquals(log[0].vqGroupAsid, { group: 1, asid: 1 });
    assertEquals(dev.groups[1].as, dev.as[1]);
    result = 1;
    assertEquals(dev.setGroupAsid(1, 0), -EIO);
    assertEquals(dev.groups[1].as, dev.as[1]);
    assertEquals(dev.setGroupAsid(2, 0), -EINVAL);
    assertEquals(dev.setGroupAsid(0, 2), -EINVAL);
    const g = setup();
    assertEquals(attached(g).dev.setGroupAsid(0, 0), -EINVAL); // API v0
  });

  await t.step("each AS has its own domain with bounce_size / nas", () => {
    const f = setup();
    const { dev } = attached(f, 2, 1);
    assertEquals(dev.as[0].domain!.bounceSize, 512 << 10);
    assert(dev.as[0].domain !== dev.as[1].domain);
  });
});
