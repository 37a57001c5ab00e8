/**
 * The message channel of one VDUSE device: the kernel's requests queued for
 * userspace `read()`, the ones read and awaiting a `write()` reply, request
 * ids, the timeout that marks the device broken, and poll readiness.
 * Models `vduse_dev_msg_sync`, `vduse_dev_read_iter`, `vduse_dev_write_iter`,
 * `vduse_dev_poll` and `vduse_dev_broken`.
 *
 * The kernel thread that sends a message sleeps until the reply; here the
 * sender gets a {@linkcode VduseMessage} and a completion callback. Waiters
 * (the process polling the fd) are woken synchronously, so a daemon that
 * answers from its wakeup completes the message before `send` returns.
 *
 * @module
 */
import { LinuxErrno } from "../errno.ts";
import {
  decodeDevResponse,
  encodeDevRequest,
  VDUSE_MSG_SIZE,
  type VduseDevRequest,
  VduseReqResult,
} from "../uapi.ts";
import type { VduseTimers } from "./timers.ts";

/** `EPOLLIN`: a request can be read. */
export const POLLIN = 0x001;
/** `EPOLLOUT`: a request awaits its reply. */
export const POLLOUT = 0x004;
/** `EPOLLERR`: the device is broken. */
export const POLLERR = 0x008;

/** One request and, once completed, its reply (`struct vduse_dev_msg`). */
export class VduseMessage {
  /** The request as sent (with its id). */
  readonly request: VduseDevRequest;
  /** The encoded request, what `read()` copies out. */
  readonly bytes: Uint8Array;
  /** True once answered, failed by timeout or failed because the device broke. */
  completed = false;
  /** The reply's result field ({@linkcode VduseReqResult.FAILED} until answered). */
  result: number = VduseReqResult.FAILED;
  /** The raw reply, when userspace wrote one. */
  response: Uint8Array | null = null;
  /** Set when this message's timeout broke the device. */
  timedOut = false;
  #listeners: ((message: VduseMessage) => void)[] = [];
  /** @internal the pending timeout */
  timer: unknown = undefined;

  /** Wraps a request. */
  constructor(request: VduseDevRequest) {
    this.request = request;
    this.bytes = encodeDevRequest(request);
  }

  /** What `vduse_dev_msg_sync` returns: 0 when answered OK, else -EIO. */
  get status(): number {
    return this.completed && this.result === VduseReqResult.OK ? 0 : -LinuxErrno.EIO;
  }

  /** Calls `listener` on completion (at once when already complete). */
  onComplete(listener: (message: VduseMessage) => void): void {
    if (this.completed) listener(this);
    else this.#listeners.push(listener);
  }

  /** Resolves with {@linkcode VduseMessage.status} once completed. */
  done(): Promise<number> {
    return new Promise((resolve) => this.onComplete((m) => resolve(m.status)));
  }

  /** @internal completes the message and runs the listeners once */
  complete(result: number, response: Uint8Array | null): void {
    if (this.completed) return;
    this.completed = true;
    this.result = result;
    this.response = response;
    const listeners = this.#listeners;
    this.#listeners = [];
    for (const l of listeners) l(this);
  }
}

/** Options of a {@linkcode VduseMsgChannel}. */
export interface VduseMsgChannelOptions {
  /** The clock for timeouts. */
  timers: VduseTimers;
  /** The current `msg_timeout` in seconds (0 waits forever). */
  timeoutSeconds: () => number;
}

/**
 * The request/reply channel between the kernel and the daemon of one device.
 */
export class VduseMsgChannel {
  /** True once a message timed out: irreversible. */
  broken = false;
  /** Messages sent, for diagnostics. */
  sent = 0;
  /** Requests not yet read (`send_list`), oldest first. */
  readonly sendList: VduseMessage[] = [];
  /** Requests read and awaiting a reply (`recv_list`). */
  readonly recvList: VduseMessage[] = [];
  readonly #options: VduseMsgChannelOptions;
  #unique = 0;
  readonly #waiters = new Set<() => void>();

  /** Creates an empty channel. */
  constructor(options: VduseMsgChannelOptions) {
    this.#options = options;
  }

  /**
   * Sends a request (its `requestId` is assigned here) and wakes the readers.
   * Returns `null` on a broken device (the kernel's -EIO); otherwise the
   * message, possibly already completed by a synchronous reader.
   */
  send(request: Omit<VduseDevRequest, "requestId">): VduseMessage | null {
    if (this.broken) return null;
    const msg = new VduseMessage({ ...request, requestId: this.#unique });
    this.#unique = (this.#unique + 1) >>> 0;
    this.sent++;
    this.sendList.push(msg);
    const seconds = this.#options.timeoutSeconds();
    if (seconds > 0) {
      const timers = this.#options.timers;
      msg.timer = timers.setTimeout(() => this.#timeout(msg), seconds * 1000);
      msg.onComplete(() => timers.clearTimeout(msg.timer));
    }
    this.#wake();
    return msg;
  }

  /** Registers a poll waiter, called when a request arrives or the device breaks. */
  addWaiter(waiter: () => void): () => void {
    this.#waiters.add(waiter);
    return () => this.#waiters.delete(waiter);
  }

  /**
   * `read()`: copies the oldest pending request into `buf`; 152, or -EINVAL
   * for a short buffer, -EAGAIN when nothing is pending (reads never block here).
   */
  read(buf: Uint8Array): number {
    if (buf.byteLength < VDUSE_MSG_SIZE) return -LinuxErrno.EINVAL;
    const msg = this.sendList.shift();
    if (msg === undefined) return -LinuxErrno.EAGAIN;
    buf.set(msg.bytes);
    this.recvList.push(msg);
    return VDUSE_MSG_SIZE;
  }

  /**
   * `write()`: takes a 152-byte reply; 152, or -EINVAL (short, reserved not
   * zero), -ENOENT (no awaiting request has that id).
   */
  write(buf: Uint8Array): number {
    if (buf.byteLength < VDUSE_MSG_SIZE) return -LinuxErrno.EINVAL;
    const resp = decodeDevResponse(buf);
    if (resp.reserved.some((r) => r !== 0)) return -LinuxErrno.EINVAL;
    const at = this.recvList.findIndex((m) => m.request.requestId === resp.requestId);
    if (at < 0) return -LinuxErrno.ENOENT;
    const [msg] = this.recvList.splice(at, 1);
    msg.complete(resp.result, buf.slice(0, VDUSE_MSG_SIZE));
    return VDUSE_MSG_SIZE;
  }

  /** `poll()` readiness bits. */
  poll(): number {
    let mask = 0;
    if (this.broken) mask |= POLLERR;
    if (this.sendList.length > 0) mask |= POLLIN;
    if (this.recvList.length > 0) mask |= POLLOUT;
    return mask;
  }

  /** The device fd was closed: requests read but not answered go back to be read again. */
  requeueUnanswered(): void {
    this.sendList.unshift(...this.recvList.splice(0));
  }

  /** `vduse_dev_broken`: fails every outstanding message and wakes everyone. */
  markBroken(): void {
    if (this.broken) return;
    const all = [...this.recvList.splice(0), ...this.sendList.splice(0)];
    this.broken = true;
    for (const m of all) m.complete(VduseReqResult.FAILED, null);
    this.#wake();
  }

  #timeout(msg: VduseMessage): void {
    if (msg.completed) return;
    for (const list of [this.sendList, this.recvList]) {
      const i = list.indexOf(msg);
      if (i >= 0) list.splice(i, 1);
    }
    msg.timedOut = true;
    msg.complete(VduseReqResult.FAILED, null);
    this.markBroken();
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }
}
