import { assertEquals } from "@std/assert";
import { packedNeedEvent, vringNeedEvent } from "../../src/queue/event_idx.ts";

Deno.test("vringNeedEvent() follows the spec's examples", async (t) => {
  await t.step("used_event 0 fires when the index becomes 1", () => {
    assertEquals(vringNeedEvent(0, 1, 0), true);
    assertEquals(vringNeedEvent(0, 2, 1), false);
  });
  await t.step("an empty batch never fires", () => {
    for (const i of [0, 1, 0x7fff, 0xffff]) assertEquals(vringNeedEvent(i, i, i), false);
  });
  await t.step("a batch that passes the event fires once", () => {
    assertEquals(vringNeedEvent(5, 10, 3), true);
    assertEquals(vringNeedEvent(5, 5, 3), false, "event 5 is passed when idx goes past it");
    assertEquals(vringNeedEvent(5, 6, 5), true);
    assertEquals(vringNeedEvent(5, 12, 6), false);
  });
  await t.step("is wrap-safe at 2^16", () => {
    assertEquals(vringNeedEvent(0xffff, 0, 0xfffe), true);
    assertEquals(vringNeedEvent(0xffff, 1, 0xffff), true);
    assertEquals(vringNeedEvent(0, 3, 0xfffe), true);
    assertEquals(vringNeedEvent(0xfffd, 3, 0xfffe), false);
  });
});

Deno.test("vringNeedEvent() fires exactly when the event lies in [old, new) modulo 2^16", () => {
  const olds = [0, 1, 100, 0x7fff, 0xfff0, 0xffff];
  for (const old of olds) {
    for (let n = 0; n <= 40; n++) {
      const newIdx = (old + n) & 0xffff;
      for (let d = -5; d < 45; d++) {
        const event = (old + d) & 0xffff;
        assertEquals(
          vringNeedEvent(event, newIdx, old),
          d >= 0 && d < n,
          `${event} ${newIdx} ${old}`,
        );
      }
    }
  }
});

Deno.test("packedNeedEvent() fires exactly when the batch writes the slot named by off_wrap", () => {
  for (let size = 1; size <= 9; size++) {
    for (let start = 0; start < 2 * size; start++) {
      // Position `start` in the cycle of 2*size: slot and wrap counter (starting at 1).
      const oldOff = start % size;
      const oldWrap = start < size ? 1 : 0;
      for (let n = 0; n <= size; n++) {
        let newOff = oldOff;
        let newWrap = oldWrap;
        const passed = new Set<number>();
        for (let i = 0; i < n; i++) {
          passed.add(newOff | (newWrap << 15));
          if (++newOff === size) {
            newOff = 0;
            newWrap ^= 1;
          }
        }
        for (let off = 0; off < size; off++) {
          for (const wrap of [0, 1]) {
            const offWrap = off | (wrap << 15);
            assertEquals(
              packedNeedEvent(offWrap, size, oldOff, oldWrap, newOff, newWrap),
              passed.has(offWrap),
              `size ${size} old ${oldOff}/${oldWrap} new ${newOff}/${newWrap} event ${off}/${wrap}`,
            );
          }
        }
      }
    }
  }
});

Deno.test("packedNeedEvent() tolerates an off_wrap beyond the ring", () => {
  // A hostile driver may name slot 0x7fff of an 8-slot ring: any boolean, no exception.
  assertEquals(typeof packedNeedEvent(0xffff, 8, 0, 1, 4, 1), "boolean");
  assertEquals(typeof packedNeedEvent(0x7fff, 8, 6, 1, 2, 0), "boolean");
});
