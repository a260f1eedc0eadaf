/**
 * Prompt acknowledgements for a connection that receives in bulk (`TCP_QUICKACK`).
 *
 * Linux holds acknowledgements back on a connection it judges interactive (replies
 * follow requests, as NBD's do), to carry them on the replies, and while received data
 * waits unread. A server whose one event loop reads in bursts (after each wake-up, up to
 * a whole receive buffer at a time) so keeps a client that streams write payloads short
 * of acknowledgements: its congestion window runs out, it waits, and its retransmission
 * and pacing timers fire more often. `TCP_QUICKACK` sends an acknowledgement held back at
 * once and leaves that mode; Linux enters it again by itself, so it is asked for again
 * after each {@link BULK_READ} bytes received.
 *
 * Measured on loopback (nbdcopy 1 GiB file → memory export, one connection, interleaved):
 * 1,111-1,213 MiB/s with it against 1,046-1,167 without over five rounds; in an earlier set,
 * with it asked for on every read, 1,098-1,306 against 852-1,016, and the client's CPU per
 * GiB 720-890 ms against 960-1,160. Asking once per connection changed nothing (840-994).
 *
 * Node.js offers no such socket option, so `setsockopt` is called through koffi. {@link load}
 * returns `undefined` (connections are served without it) where that cannot be done: not
 * Linux, koffi missing, or `EFFECT_NBD_QUICKACK=0` in the environment.
 *
 * @since 0.2.0
 */
import { createRequire } from "node:module"

/**
 * Puts a TCP socket, given by its descriptor, in quick-ACK mode; failures (a closed
 * descriptor, a Unix socket) are ignored.
 *
 * @since 0.2.0
 * @category models
 */
export type QuickAck = (fd: number) => void

/**
 * Quick-ACK mode is asked for again each time a connection has received this many bytes
 * (one full loopback segment; dozens on Ethernet): on every read of a bulk transfer, and
 * rarely while requests are small, whose replies carry the acknowledgement anyway.
 *
 * @since 0.2.0
 * @category constants
 */
export const BULK_READ = 64 * 1024

const IPPROTO_TCP = 6
const TCP_QUICKACK = 12

const bind = (): QuickAck => {
  const koffi = createRequire(import.meta.url)("koffi") as typeof import("koffi")
  const setsockopt = koffi.load("libc.so.6").func("int setsockopt(int fd, int level, int name, void *value, uint32_t length)")
  const one = Buffer.alloc(4)
  one.writeInt32LE(1)
  return (fd) => void setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, one, 4)
}

let loaded: QuickAck | null | undefined

/** The quick-ACK call, bound once per process; `undefined` where unavailable (see the module's description). */
export const load = (): QuickAck | undefined => {
  if (loaded !== undefined) return loaded ?? undefined
  loaded = null
  if (process.platform !== "linux" || process.env.EFFECT_NBD_QUICKACK === "0") return undefined
  try {
    loaded = bind()
  } catch {
    loaded = null
  }
  return loaded ?? undefined
}
