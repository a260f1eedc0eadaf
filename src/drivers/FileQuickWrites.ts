/**
 * Writes of the file driver made at once on the event loop, for files served through the
 * page cache. While the kernel absorbs writes into dirty pages, a `pwritev` of a few
 * pages takes microseconds, far less than a round trip through libuv's thread pool; but
 * it can block for milliseconds once the kernel throttles writers (too many dirty pages),
 * or when a partial page must first be read from the disk. So every write made here is
 * timed, and after one that was slow (over {@link SLOW_WRITE_MS}: page reclaim alone makes a
 * few writes take 2 to 6 ms, a throttled writer waits tens of them) the driver sends its
 * writes through the thread pool for a while: 100 ms at first, twice as long after each
 * slow write that follows within four such pauses (at most 10 s), back to 100 ms after a
 * quiet time.
 *
 * Writes larger than {@link QUICK_WRITE_MAX} always go through the thread pool, where
 * their copy into the page cache runs on another core.
 *
 * @since 0.2.0
 */
import { performance } from "node:perf_hooks"
import type { ProtocolError } from "../Errors.ts"
import { systemFailure, writePiecesNow } from "./FileIo.ts"

/** The largest write made on the event loop (bytes). */
export const QUICK_WRITE_MAX = 1024 * 1024
/** A write on the event loop that took longer than this (ms) sends writes to the thread pool for a while. */
export const SLOW_WRITE_MS = 10
const FIRST_PAUSE_MS = 100
const LONGEST_PAUSE_MS = 10_000

/** Writes at once, or says to take the thread pool instead (see the module's description). */
export interface QuickWrites {
  /** `true` when written, `false` when nothing was written (use the thread pool), or the write's error. */
  readonly write: (offset: number, pieces: ReadonlyArray<Uint8Array>) => boolean | ProtocolError
  /** Whether writes are paused at `now` (ms, the clock's), for tests. */
  readonly paused: (now: number) => boolean
}

/**
 * Quick writes to `fd`. `write` does the writing (by default {@link writePiecesNow}) and
 * `now` is the clock in milliseconds, both replaceable in tests.
 */
export const make = (
  fd: number,
  options?: {
    readonly write?: ((fd: number, offset: number, pieces: ReadonlyArray<Uint8Array>) => void) | undefined
    readonly now?: (() => number) | undefined
  }
): QuickWrites => {
  const writeNow = options?.write ?? writePiecesNow
  const now = options?.now ?? (() => performance.now())
  let resumeAt = -Infinity
  let lastSlow = -Infinity
  let pause = FIRST_PAUSE_MS
  const slow = (at: number) => {
    pause = at - lastSlow < 4 * pause ? Math.min(2 * pause, LONGEST_PAUSE_MS) : FIRST_PAUSE_MS
    lastSlow = at
    resumeAt = at + pause
  }
  return {
    write: (offset, pieces) => {
      let length = 0
      for (const piece of pieces) length += piece.length
      if (length > QUICK_WRITE_MAX) return false
      const start = now()
      if (start < resumeAt) return false
      let outcome: true | ProtocolError = true
      try {
        writeNow(fd, offset, pieces)
      } catch (error) {
        outcome = systemFailure("write")(error as NodeJS.ErrnoException)
      }
      const end = now()
      if (end - start > SLOW_WRITE_MS) slow(end) // a slow failure (a device retrying) pauses too
      return outcome
    },
    paused: (at) => at < resumeAt
  }
}
