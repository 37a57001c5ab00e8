/**
 * Sends COUNT UDP datagrams of SIZE bytes to HOST:PORT (an echo service), at
 * most WINDOW outstanding, and checks every echo byte for byte. Prints one
 * line: `udp_echo: N/COUNT echoed, B bytes, T ms`; exits 1 unless every
 * datagram came back intact within the time limit.
 *
 * Usage: `deno run -A udp_echo_client.ts HOST PORT COUNT SIZE WINDOW`
 *
 * @module
 */
import dgram from "node:dgram";

const [host, portText, countText, sizeText, windowText] = Deno.args;
const port = Number(portText);
const count = Number(countText);
const size = Number(sizeText);
const window = Number(windowText);

function payload(i: number): Uint8Array {
  const b = new Uint8Array(size);
  let x = (i + 1) * 2654435761 >>> 0;
  for (let j = 0; j < size; j++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[j] = x >>> 24;
  }
  b[0] = i & 0xff;
  b[1] = (i >> 8) & 0xff;
  return b;
}

const socket = dgram.createSocket("udp4");
let sent = 0;
let echoed = 0;
let bad = 0;
const start = performance.now();
const done = Promise.withResolvers<void>();
const send = (): void => {
  while (sent < count && sent - echoed - bad < window) socket.send(payload(sent++), port, host);
};
socket.on("message", (msg: Uint8Array) => {
  const i = msg[0] | (msg[1] << 8);
  const want = payload(i);
  if (msg.length === size && want.every((v, j) => msg[j] === v)) echoed++;
  else bad++;
  if (echoed + bad === count) done.resolve();
  else send();
});
const timer = setTimeout(() => done.resolve(), 20_000);
send();
await done.promise;
clearTimeout(timer);
const ms = Math.round(performance.now() - start);
console.log(
  `udp_echo: ${echoed}/${count} echoed, ${bad} corrupt, ${echoed * size} bytes, ${ms} ms`,
);
socket.close();
Deno.exit(echoed === count ? 0 : 1);
