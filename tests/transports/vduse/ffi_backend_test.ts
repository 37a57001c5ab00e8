/**
 * The FFI backend's system calls on ordinary Linux files and eventfds (the
 * real /dev/vduse is exercised by tests/e2e/vduse under QEMU): errno values
 * come back negated, mmap views share the file's pages, kicks and watches run
 * their callbacks from the poll loop, and shutdown leaves nothing behind.
 */
import { assert, assertEquals } from "@std/assert";
import { FfiVduseBackend } from "../../../transports/vduse/ffi_backend_deno.ts";
import { LinuxErrno } from "../../../transports/vduse/errno.ts";
import { PROT_READ, PROT_WRITE } from "../../../transports/vduse/backend.ts";
import { VduseDaemon } from "../../../transports/vduse/daemon.ts";
import { VduseIoctl } from "../../../transports/vduse/uapi.ts";
import { EchoDevice } from "../../helpers/echo_device.ts";

const linux = Deno.build.os === "linux";

function until(check: () => boolean, what: string, ms = 5000): Promise<void> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (check()) resolve();
      else if (Date.now() - start > ms) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 2);
    };
    tick();
  });
}

Deno.test({ name: "FFI VDUSE backend on plain files", ignore: !linux }, async (t) => {
  const dir = Deno.makeTempDirSync({ prefix: "vireo-ffi-" });
  const backend = FfiVduseBackend.open({ devDir: dir, pollTimeoutMs: 50, unmapGraceMs: 10 });
  try {
    await t.step("a missing control file is -ENOENT, as without the vduse module", async () => {
      assertEquals(backend.openControl(), -LinuxErrno.ENOENT);
      const missing = FfiVduseBackend.open({ devDir: `${dir}/nope` });
      assertEquals(missing.openDevice("vda"), -LinuxErrno.ENOENT);
      await missing.shutdown();
    });

    await t.step("a device path through a regular file is -ENOTDIR", async () => {
      Deno.writeFileSync(`${dir}/file`, new Uint8Array(1));
      const odd = FfiVduseBackend.open({ devDir: `${dir}/file` });
      assertEquals(odd.openControl(), -LinuxErrno.ENOTDIR);
      await odd.shutdown();
    });

    await t.step(
      "ioctl on a file that is no VDUSE device is -ENOTTY; close twice is -EBADF",
      () => {
        Deno.writeFileSync(`${dir}/control`, new Uint8Array(16));
        const fd = backend.openControl();
        assert(fd >= 0, `open returned ${fd}`);
        assertEquals(
          backend.ioctl(fd, VduseIoctl.GET_API_VERSION, new Uint8Array(8)),
          -LinuxErrno.ENOTTY,
        );
        assertEquals(backend.ioctl(fd, VduseIoctl.DEV_INJECT_CONFIG_IRQ, null), -LinuxErrno.ENOTTY);
        assertEquals(backend.close(fd), 0);
        assertEquals(backend.close(fd), -LinuxErrno.EBADF);
        assertEquals(backend.read(fd, new Uint8Array(4)), -LinuxErrno.EBADF);
      },
    );

    await t.step("read and write move real bytes", () => {
      Deno.writeFileSync(`${dir}/dev0`, new Uint8Array(0));
      const fd = backend.openDevice("dev0");
      assertEquals(backend.write(fd, new Uint8Array([1, 2, 3, 4])), 4);
      backend.close(fd);
      const again = backend.openDevice("dev0");
      const buf = new Uint8Array(8);
      assertEquals(backend.read(again, buf), 4);
      assertEquals([...buf.subarray(0, 4)], [1, 2, 3, 4]);
      backend.close(again);
    });

    await t.step("mmap shares the file's pages both ways; munmap releases them", () => {
      const bytes = new Uint8Array(8192);
      bytes[4096] = 0x5a;
      Deno.writeFileSync(`${dir}/iotlb`, bytes);
      const fd = backend.openDevice("iotlb");
      const mapped = backend.mmap(fd, 4096, 4096, PROT_READ | PROT_WRITE);
      if (typeof mapped === "number") throw new Error(`mmap returned ${mapped}`);
      const view = mapped;
      assertEquals(view.length, 4096);
      assertEquals(view[0], 0x5a);
      view[1] = 0xa5;
      assertEquals(Deno.readFileSync(`${dir}/iotlb`)[4097], 0xa5);
      assertEquals(backend.mappings, 1);
      backend.munmap(view);
      assertEquals(backend.mappings, 0);
      // A late write (an async backend op finishing after UPDATE_IOTLB) hits scratch pages.
      view[2] = 0x77;
      assertEquals(Deno.readFileSync(`${dir}/iotlb`)[4098], 0);
      assertEquals(backend.mmap(fd, 1, 4096, PROT_READ), -LinuxErrno.EINVAL); // unaligned offset
      assertEquals(backend.mmap(fd, 0, 0, PROT_READ), -LinuxErrno.EINVAL);
      backend.close(fd);
      assertEquals(backend.mmap(fd, 0, 4096, PROT_READ), -LinuxErrno.EBADF);
    });

    await t.step("a kick eventfd runs its callback once per poll wakeup, drained", async () => {
      let kicks = 0;
      const fd = backend.eventfd(() => kicks++);
      assert(fd >= 0);
      assertEquals(backend.signal(fd), 8);
      await until(() => kicks === 1, "the first kick");
      assertEquals(backend.read(fd, new Uint8Array(8)), -LinuxErrno.EAGAIN); // drained
      backend.signal(fd);
      await until(() => kicks === 2, "the second kick");
      assertEquals(backend.close(fd), 0);
      await backend.idle; // nothing watched: the loop ends
    });

    await t.step("quiesce returns once the poll in flight has come back", async () => {
      assertEquals(await backend.quiesce(), undefined); // no loop: at once
      let kicks = 0;
      const fd = backend.eventfd(() => kicks++);
      const before = backend.polls;
      await backend.quiesce(); // wakes the sleeping poll (timeout 50 ms) and waits for it
      assert(backend.polls > before);
      assertEquals(kicks, 0);
      backend.close(fd);
      await backend.idle;
    });

    await t.step("watch calls back while readable and stops when unwatched", async () => {
      Deno.writeFileSync(`${dir}/dev1`, new Uint8Array(4));
      const fd = backend.openDevice("dev1");
      let ready = 0;
      const stop = backend.watch(fd, () => {
        ready++;
        if (ready === 3) stop();
      });
      await backend.idle;
      assertEquals(ready, 3);
      backend.close(fd);
    });

    await t.step("a daemon on a host without VDUSE fails with the errno named", async () => {
      const none = FfiVduseBackend.open({ devDir: `${dir}/no-vduse` });
      const daemon = new VduseDaemon(none, new EchoDevice(1, 64), { name: "echo" });
      assertEquals(daemon.start(), -LinuxErrno.ENOENT);
      assertEquals(daemon.lastError, "open /dev/vduse/control failed: -ENOENT");
      await none.shutdown();
    });
  } finally {
    await backend.shutdown();
    Deno.removeSync(dir, { recursive: true });
  }
});
