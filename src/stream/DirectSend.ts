/**
 * Sending straight to a connected socket's descriptor, beside Node.js's write path: a
 * reply header with `send(MSG_MORE)`, then its payload by a driver's own call (the file
 * driver's `sendfile`, which hands the page cache's pages to the socket without copying
 * them through the process). {@link FrameWriter} uses it only while nothing of its own is
 * queued, so the bytes leave in the order the replies were made.
 *
 * The descriptor is the accepted socket's handle's `fd` (not public API); {@link load}
 * returns `undefined` where koffi cannot be loaded, off Linux, or with
 * `EFFECT_NBD_DIRECT_SEND=0`, and {@link descriptorOf} returns `undefined` for a stream
 * without one (TLS, in-process pipes): replies then take the usual path.
 *
 * @since 0.2.0
 */
import { createRequire } from "node:module"
import * as Net from "node:net"
import { TLSSocket } from "node:tls"

/** `send` flags (linux/socket.h). */
const MSG_DONTWAIT = 0x40
const MSG_NOSIGNAL = 0x4000
const MSG_MORE = 0x8000

/** The bound call. */
export interface DirectSend {
  /**
   * Sends as much of `data` as the socket takes now, telling the kernel that more follows
   * (`MSG_MORE`): the bytes sent, or a negative errno (`-EAGAIN` when none fit).
   */
  readonly sendMore: (fd: number, data: Uint8Array) => number
}

type Koffi = typeof import("koffi")

const bind = (koffi: Koffi): DirectSend => {
  const libc = koffi.load("libc.so.6")
  const send = libc.func("int64_t send(int fd, const uint8_t *buf, uint64_t len, int flags)")
  return {
    sendMore: (fd, data) => {
      const result = Number(send(fd, data, data.length, MSG_MORE | MSG_DONTWAIT | MSG_NOSIGNAL))
      return result < 0 ? -koffi.errno() : result
    }
  }
}

let loaded: DirectSend | null | undefined

/** Binds the call once; `undefined` where it is unavailable. */
export const load = (): DirectSend | undefined => {
  if (loaded !== undefined) return loaded ?? undefined
  loaded = null
  if (process.platform === "linux" && process.env.EFFECT_NBD_DIRECT_SEND !== "0") {
    try {
      loaded = bind(createRequire(import.meta.url)("koffi") as Koffi)
    } catch {
      loaded = null
    }
  }
  return loaded ?? undefined
}

/** What this module reads of a socket's handle. */
interface HandleInternals {
  readonly fd?: unknown
  /** Bytes libuv has yet to write. */
  readonly writeQueueSize?: unknown
}

/**
 * The descriptor of a plain TCP or Unix socket with nothing left to write, `undefined`
 * for any other stream, a closed socket, or one with bytes queued in Node.js or libuv.
 */
export const idleDescriptorOf = (stream: unknown): number | undefined => {
  if (!(stream instanceof Net.Socket) || stream instanceof TLSSocket || stream.writableLength > 0) return undefined
  const handle = (stream as unknown as { _handle?: HandleInternals | null })._handle
  const fd = handle?.fd
  if (typeof fd !== "number" || fd < 0 || handle?.writeQueueSize !== 0) return undefined
  return fd
}
