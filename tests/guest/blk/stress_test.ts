import { assertEquals } from "@std/assert";
import { VirtioFeature } from "../../../src/virtio/features.ts";
import { RandomDelayBackend } from "../../devices/blk/helpers/test_backends.ts";
import { blkMachine, pattern, RING_MATRIX } from "./helpers/blk_machine.ts";

const DISK = 4 << 20;
const REGION = 64 * 1024;

for (const { name, transport, ring, msi } of RING_MATRIX) {
  Deno.test(`VirtioBlkDriver random workload over ${name} rings matches a model disk`, async () => {
    const backend = new RandomDelayBackend(DISK, 7);
    const { driver, device } = blkMachine({
      transport,
      ring,
      msi,
      device: { backend, numQueues: 2, queueSize: 16, segMax: 6, queueDepth: 3 },
      driver: { segmentSize: 4096 },
    });
    assertEquals(driver.hasFeature(VirtioFeature.RING_PACKED), ring.packed === true);
    assertEquals(driver.hasFeature(VirtioFeature.EVENT_IDX), ring.eventIdx === true);
    assertEquals(driver.hasFeature(VirtioFeature.INDIRECT_DESC), ring.indirect === true);
    const model = new Uint8Array(DISK);
    let seed = 99;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    for (let round = 0; round < 12; round++) {
      // Each concurrent op owns a distinct region, so completion order cannot matter.
      const regions = Array.from({ length: DISK / REGION }, (_, i) => i)
        .sort(() => rand(3) - 1)
        .slice(0, 10);
      const ops = regions.map(async (r, i) => {
        const sector = (r * REGION) / 512 + rand(64) * 2;
        const sectors = 1 + rand(Math.min(48, (REGION / 512) - (sector % (REGION / 512))));
        const len = sectors * 512;
        switch (rand(4)) {
          case 0: {
            const data = pattern(len, round * 100 + i);
            await driver.write(sector, data);
            model.set(data, sector * 512);
            break;
          }
          case 1: {
            const got = await driver.read(sector, len);
            assertEquals(got, model.slice(sector * 512, sector * 512 + len));
            break;
          }
          case 2:
            await driver.writeZeroes(sector, sectors, { unmap: rand(2) === 0 });
            model.fill(0, sector * 512, sector * 512 + len);
            break;
          default:
            await driver.flush();
        }
      });
      await Promise.all(ops);
    }
    assertEquals(await driver.read(0, DISK), model);
    assertEquals(driver.inFlight, 0);
    await device.idle();
    assertEquals(device.stats.ioErrors + device.stats.unsupported, 0);
    assertEquals(device.stats.deviceErrors, 0);
    assertEquals(device.stats.throttled > 0, true, "the in-flight bound was reached");
  });
}
