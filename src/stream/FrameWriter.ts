/**
 * Writes protocol frames (replies, requests) to a Node.js stream.
 *
 * A frame is a list of chunks (a header and the payload, never concatenated) written
 * in one synchronous step, so the frames of concurrent requests never interleave.
 * Writes are not awaited one by one; instead the request loop waits for `drain`
 * before taking more work while too many bytes are queued.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type { Duplex } from "node:stream"

/** A frame writer over one connection. */
export interface FrameWriter {
  /** Queues the chunks of one frame, in order and uninterrupted by other frames. */
  readonly send: (chunks: ReadonlyArray<Uint8Array>) => Effect.Effect<void>
  /** Waits while more than the high-water mark of reply bytes is queued. */
  readonly awaitDrain: Effect.Effect<void>
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

/** Makes a frame writer over a stream. */
export const make = (stream: Duplex, options: FrameWriterOptions = {}): FrameWriter => {
  const highWaterMark = options.highWaterMark ?? 16 * 1024 * 1024
  const endTimeoutMillis = options.endTimeoutMillis ?? 5_000
  const writable = () => !stream.destroyed && !stream.writableEnded

  const send = (chunks: ReadonlyArray<Uint8Array>) =>
    Effect.sync(() => {
      if (!writable()) return
      if (chunks.length === 1) {
        stream.write(chunks[0]!)
        return
      }
      stream.cork()
      for (const chunk of chunks) {
        if (chunk.length > 0) stream.write(chunk)
      }
      stream.uncork()
    })

  const awaitDrain = Effect.suspend(() => {
    if (!writable() || stream.writableLength <= highWaterMark) return Effect.void
    return Effect.async<void>((resume) => {
      const done = () => {
        stream.off("drain", done)
        stream.off("close", done)
        resume(Effect.void)
      }
      stream.on("drain", done)
      stream.on("close", done)
      return Effect.sync(() => {
        stream.off("drain", done)
        stream.off("close", done)
      })
    })
  })

  const finished = Effect.async<void>((resume) => {
    if (stream.destroyed || stream.writableFinished) return resume(Effect.void)
    const done = () => {
      stream.off("finish", done)
      stream.off("close", done)
      resume(Effect.void)
    }
    stream.on("finish", done)
    stream.on("close", done)
    if (!stream.writableEnded) stream.end()
    return Effect.sync(() => {
      stream.off("finish", done)
      stream.off("close", done)
    })
  })

  const end = finished.pipe(
    Effect.interruptible, // `end` runs as a finalizer: let the timeout cut the wait
    Effect.timeout(endTimeoutMillis),
    Effect.ignore,
    Effect.zipRight(Effect.sync(() => stream.destroy()))
  )

  return { send, awaitDrain, end }
}
