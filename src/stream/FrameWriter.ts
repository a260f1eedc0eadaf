/**
 * Writes protocol frames (replies, requests) to a Node.js stream.
 *
 * A frame is a list of chunks (a header and the payload, never concatenated) written
 * in one synchronous step, so the frames of concurrent requests never interleave.
 * Frames written in the same tick are corked together and leave in one `writev`.
 * Over TLS, where Node's batched path copies everything it batches before encrypting,
 * frames go through a {@link WriteQueue} instead: one write in flight, small chunks
 * merged, large payloads written as they are.
 * Writes are not awaited one by one; instead the request parser stops taking work
 * while too many bytes are queued (`isFull`) and resumes once they drain.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type { Duplex } from "node:stream"
import { TLSSocket } from "node:tls"
import * as WriteQueue from "./WriteQueue.ts"

/** A frame writer over one connection. */
export interface FrameWriter {
  /** Queues the chunks of one frame, in order and uninterrupted by other frames. */
  readonly send: (chunks: ReadonlyArray<Uint8Array>) => Effect.Effect<void>
  /**
   * {@link send}, as a plain function (for synchronous hot paths). `sent` is called once
   * the stream is done with every chunk of the frame, so that their memory may be reused;
   * never if the stream fails or closes first.
   */
  readonly write: (chunks: ReadonlyArray<Uint8Array>, sent?: () => void) => void
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
  /**
   * Write through a {@link WriteQueue} rather than corking (default: for TLS sockets). The stream
   * must be done with a chunk once it calls back its write, as sockets are: the queue reuses its
   * merge buffer then.
   */
  readonly queued?: boolean | undefined
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

/** How frames reach the stream: corked per tick, or through a write queue. */
interface Strategy {
  readonly write: (chunks: ReadonlyArray<Uint8Array>, sent?: () => void) => void
  readonly flush: () => void
  /** Bytes not yet handed to the stream. */
  readonly held: () => number
  /** Calls `listener` whenever held bytes may have gone down. */
  readonly onProgress: (listener: () => void) => void
}

/**
 * Hands the non-empty chunks of a frame to `put` in order, `sent` with the last of them
 * (called at once when there is none).
 */
const eachChunk = (
  chunks: ReadonlyArray<Uint8Array>,
  sent: (() => void) | undefined,
  put: (chunk: Uint8Array, sent?: () => void) => void
): void => {
  let last = chunks.length - 1
  while (last >= 0 && chunks[last]!.length === 0) last--
  for (let i = 0; i < last; i++) {
    if (chunks[i]!.length > 0) put(chunks[i]!)
  }
  if (last < 0) sent?.()
  else put(chunks[last]!, sent)
}

/** Frames written in the same tick are corked together and leave in one system call. */
const corking = (stream: Duplex): Strategy => {
  let corked = false
  const uncork = () => {
    if (!corked) return
    corked = false
    stream.uncork()
  }
  const put = (chunk: Uint8Array, sent?: () => void) =>
    sent === undefined ? stream.write(chunk) : stream.write(chunk, (error) => error == null && sent())
  const write = (chunks: ReadonlyArray<Uint8Array>, sent?: () => void) => {
    if (!corked) {
      corked = true
      stream.cork()
      process.nextTick(uncork)
    }
    // The stream calls back writes in order: the last chunk's callback covers the frame.
    eachChunk(chunks, sent, put)
  }
  return { write, flush: uncork, held: () => 0, onProgress: () => {} }
}

/** Frames written in the same tick are queued and start leaving at the end of the tick. */
const queueing = (stream: Duplex): Strategy => {
  const queue = WriteQueue.make(stream)
  let scheduled = false
  const flush = () => {
    scheduled = false
    queue.kick()
  }
  const write = (chunks: ReadonlyArray<Uint8Array>, sent?: () => void) => {
    eachChunk(chunks, sent, queue.push)
    if (!scheduled) {
      scheduled = true
      process.nextTick(flush)
    }
  }
  return { write, flush, held: queue.queuedBytes, onProgress: queue.onProgress }
}

/** Makes a frame writer over a stream. */
export const make = (stream: Duplex, options: FrameWriterOptions = {}): FrameWriter => {
  const highWaterMark = options.highWaterMark ?? 16 * 1024 * 1024
  const endTimeoutMillis = options.endTimeoutMillis ?? 5_000
  const writable = () => !stream.destroyed && !stream.writableEnded
  const strategy = (options.queued ?? stream instanceof TLSSocket) ? queueing(stream) : corking(stream)

  const write = (chunks: ReadonlyArray<Uint8Array>, sent?: () => void) => {
    if (writable()) strategy.write(chunks, sent)
  }

  const send = (chunks: ReadonlyArray<Uint8Array>) => Effect.sync(() => write(chunks))

  // Full only once the stream itself waits for a drain or the queue holds more than the mark: the
  // stream emits "drain" only after it waited, so a mark below the stream's own (16 KiB for sockets)
  // acts as the stream's.
  const isFull = () => {
    if (!writable()) return false
    const held = strategy.held()
    return held > highWaterMark || (held + stream.writableLength > highWaterMark && stream.writableNeedDrain)
  }

  // Waiters for the queue to drain: one pair of stream listeners however often they ask.
  const drainWaiters = new Set<() => void>()
  const drained = () => {
    if (isFull()) return
    stream.off("drain", drained)
    stream.off("close", drained)
    const waiters = [...drainWaiters]
    drainWaiters.clear()
    for (const waiter of waiters) waiter()
  }
  strategy.onProgress(() => {
    if (drainWaiters.size > 0) drained()
    if (strategy.held() === 0) emptied()
  })
  const onceDrained = (listener: () => void) => {
    if (!isFull()) return listener()
    if (drainWaiters.size === 0) {
      stream.on("drain", drained)
      stream.on("close", drained)
    }
    drainWaiters.add(listener)
  }

  // Waiters for the write queue to hand everything to the stream (before ending it).
  const emptyWaiters = new Set<() => void>()
  const emptied = () => {
    const waiters = [...emptyWaiters]
    emptyWaiters.clear()
    for (const waiter of waiters) waiter()
  }
  const handedOver = Effect.async<void>((resume) => {
    const done = () => resume(Effect.void)
    strategy.flush()
    if (strategy.held() === 0 || !writable()) return done()
    emptyWaiters.add(done)
    return Effect.sync(() => emptyWaiters.delete(done))
  })

  const finished = Effect.suspend(() =>
    stream.destroyed || stream.writableFinished
      ? Effect.void
      : Effect.zipRight(
        handedOver,
        firstEvent(stream, ["finish", "close"], () => {
          if (!stream.writableEnded) stream.end()
        })
      )
  )

  const end = finished.pipe(
    Effect.interruptible, // `end` runs as a finalizer: let the timeout cut the wait
    Effect.timeout(endTimeoutMillis),
    Effect.ignore,
    Effect.zipRight(Effect.sync(() => stream.destroy()))
  )

  return { send, write, flush: strategy.flush, isFull, onceDrained, end }
}
