/**
 * Writes protocol frames (replies, requests) to a Node.js stream.
 *
 * A frame is a list of chunks (a header and the payload, never concatenated) written
 * in one synchronous step, so the frames of concurrent requests never interleave.
 * Frames written in the same tick are corked together and leave in one `writev`.
 * Writes are not awaited one by one; instead the request parser stops taking work
 * while too many bytes are queued (`isFull`) and resumes once they drain.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type { Duplex } from "node:stream"

/** A frame writer over one connection. */
export interface FrameWriter {
  /** Queues the chunks of one frame, in order and uninterrupted by other frames. */
  readonly send: (chunks: ReadonlyArray<Uint8Array>) => Effect.Effect<void>
  /** {@link send}, as a plain function (for synchronous hot paths). */
  readonly write: (chunks: ReadonlyArray<Uint8Array>) => void
  /** Sends what was written in this tick now rather than at the end of the tick. */
  readonly flush: () => void
  /** True while more than the high-water mark of bytes is queued. */
  readonly isFull: () => boolean
  /** Calls `listener` once the queue drains below the high-water mark or the stream closes. */
  readonly onceDrained: (listener: () => void) => void
  /** Ends the stream once queued bytes are sent (or after a timeout), then closes it. */
  readonly end: Effect.Effect<void>
}

/** Options of {@link make}. */
export interface FrameWriterOptions {
  /** Queued reply bytes above which the request loop stops taking requests. */
  readonly highWaterMark?: number | undefined
  /** How long `end` waits for queued bytes to be sent before closing anyway. */
  readonly endTimeoutMillis?: number | undefined
}

/** Completes on the first of `events` (listeners are removed either way); `then` runs once listening. */
const firstEvent = (stream: Duplex, events: ReadonlyArray<string>, then?: () => void): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    const done = () => {
      for (const event of events) stream.off(event, done)
      resume(Effect.void)
    }
    for (const event of events) stream.on(event, done)
    then?.()
    return Effect.sync(() => {
      for (const event of events) stream.off(event, done)
    })
  })

/** Makes a frame writer over a stream. */
export const make = (stream: Duplex, options: FrameWriterOptions = {}): FrameWriter => {
  const highWaterMark = options.highWaterMark ?? 16 * 1024 * 1024
  const endTimeoutMillis = options.endTimeoutMillis ?? 5_000
  const writable = () => !stream.destroyed && !stream.writableEnded

  // Frames written in the same tick are corked together and leave in one system call.
  let corked = false
  const uncork = () => {
    if (!corked) return
    corked = false
    stream.uncork()
  }

  const write = (chunks: ReadonlyArray<Uint8Array>) => {
    if (!writable()) return
    if (!corked) {
      corked = true
      stream.cork()
      process.nextTick(uncork)
    }
    for (const chunk of chunks) {
      if (chunk.length > 0) stream.write(chunk)
    }
  }

  const send = (chunks: ReadonlyArray<Uint8Array>) => Effect.sync(() => write(chunks))

  // Full only once the stream itself waits for a drain: it emits "drain" only then, so a mark
  // below the stream's own (16 KiB for sockets) acts as the stream's.
  const isFull = () => writable() && stream.writableLength > highWaterMark && stream.writableNeedDrain

  // Waiters for the queue to drain: one pair of stream listeners however often they ask.
  const drainWaiters = new Set<() => void>()
  const drained = () => {
    stream.off("drain", drained)
    stream.off("close", drained)
    const waiters = [...drainWaiters]
    drainWaiters.clear()
    for (const waiter of waiters) waiter()
  }
  const onceDrained = (listener: () => void) => {
    if (!isFull()) return listener()
    if (drainWaiters.size === 0) {
      stream.on("drain", drained)
      stream.on("close", drained)
    }
    drainWaiters.add(listener)
  }

  const finished = Effect.suspend(() =>
    stream.destroyed || stream.writableFinished
      ? Effect.void
      : firstEvent(stream, ["finish", "close"], () => {
        if (!stream.writableEnded) stream.end()
      })
  )

  const end = finished.pipe(
    Effect.interruptible, // `end` runs as a finalizer: let the timeout cut the wait
    Effect.timeout(endTimeoutMillis),
    Effect.ignore,
    Effect.zipRight(Effect.sync(() => stream.destroy()))
  )

  return { send, write, flush: uncork, isFull, onceDrained, end }
}
