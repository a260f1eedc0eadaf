/**
 * Reads exact byte counts from a Node.js stream, incrementally and with bounded memory.
 *
 * Bytes are buffered as they arrive; a read takes exactly `n` bytes, as a view of the
 * received chunk when it lies inside one (no copy). When more than `highWaterMark`
 * bytes wait unread, the stream is paused until the reader catches up, so a client
 * that floods the connection cannot grow the buffer without bound.
 *
 * Over a socket adopted by {@link OwnedReceive} the bytes arrive in a buffer that the next
 * read reuses: the reader hands them on while they are valid and copies only what stays
 * unread, into one buffer per awaited frame (a write payload arrives whole in it), reused
 * for the next frame once consumed. `read` and `tryRead` then return copies, and the
 * pieces of `tryReadChunks` are borrowed ({@link FrameReader.borrowed}).
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { Duplex } from "node:stream"
import * as OwnedReceive from "./OwnedReceive.ts"

/** Why a stream stopped delivering bytes. */
export type CloseReason =
  /** The peer ended its side cleanly (FIN). */
  | "end-of-stream"
  /** The stream was closed or destroyed without an end. */
  | "closed"
  /** The stream failed (reset, TLS error...); `detail` says how. */
  | "error"

/** The peer closed the connection (or it failed) before the bytes asked for arrived. */
export class ConnectionClosed extends Data.TaggedError("ConnectionClosed")<{
  readonly reason: CloseReason
  /** The underlying error's message, for `error`. */
  readonly detail?: string | undefined
  /** Bytes still missing from the read that failed. */
  readonly missing: number
}> {
  /** A readable account of the close, for logs. */
  get description(): string {
    return this.detail === undefined ? this.reason : `${this.reason}: ${this.detail}`
  }
}

/** How a stream closed: the reason and, for errors, the message. */
export interface Closed {
  readonly reason: CloseReason
  readonly detail?: string | undefined
}

/** A reader of exact byte counts. */
export interface FrameReader {
  /** The next `n` bytes. */
  readonly read: (n: number) => Effect.Effect<Uint8Array, ConnectionClosed>
  /** Reads and drops the next `n` bytes without holding them all in memory. */
  readonly skip: (n: number) => Effect.Effect<void, ConnectionClosed>
  /** Bytes received and not read yet. */
  readonly buffered: () => number
  /** The next `n` bytes if they are buffered already, else `undefined` (for push-style parsers). */
  readonly tryRead: (n: number) => Uint8Array | undefined
  /** Drops up to `n` buffered bytes without copying them; returns how many were dropped. */
  readonly discard: (n: number) => number
  /**
   * {@link tryRead} as the received pieces (views, never copied). When {@link borrowed},
   * they are valid only until control returns to the event loop: a consumer copies what it keeps.
   */
  readonly tryReadChunks: (n: number) => ReadonlyArray<Uint8Array> | undefined
  /**
   * Up to `max` of the buffered bytes as the received pieces (none when nothing is
   * buffered), borrowed as those of {@link tryReadChunks}: for a consumer that takes a
   * payload as it arrives instead of waiting for all of it.
   */
  readonly takeChunks: (max: number) => ReadonlyArray<Uint8Array>
  /** Declares that the consumer cannot progress before `n` bytes are buffered (keeps the stream flowing). */
  readonly want: (n: number) => void
  /** Calls `listener` whenever bytes arrive or the stream closes; returns a function that stops it. */
  readonly onReadable: (listener: () => void) => () => void
  /** How the stream closed, once it has. */
  readonly closedReason: () => Closed | undefined
  /** Stops listening to the stream (before handing it over, as for STARTTLS). */
  readonly detach: () => void
  /** Whether the pieces of `tryReadChunks` are views of a buffer that later reads reuse. */
  readonly borrowed: boolean
}

/** Options of {@link make}. */
export interface FrameReaderOptions {
  /** Pause the stream while more than this many bytes wait unread. */
  readonly highWaterMark?: number | undefined
}

/** The buffer frames are copied into, kept for the next frame; larger frames get their own. */
const SPARE_MAX = 4 * 1024 * 1024

const SKIP_CHUNK = 1024 * 1024
const EMPTY = new Uint8Array(0)

interface Waiter {
  readonly n: number
  readonly resume: (effect: Effect.Effect<Uint8Array, ConnectionClosed>) => void
}

/** Attaches a reader to a stream for the life of the scope. */
export const make = (stream: Duplex, options: FrameReaderOptions = {}): Effect.Effect<FrameReader, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.sync(() => attach(stream, options)), (reader) => Effect.sync(reader.detach))

/** Attaches a reader to a stream; call `detach` when done. */
export const attach = (stream: Duplex, options: FrameReaderOptions = {}): FrameReader => {
  const highWaterMark = options.highWaterMark ?? 4 * 1024 * 1024
  const chunks: Array<Buffer> = []
  let head = 0 // bytes of chunks[0] already consumed
  let total = 0 // bytes buffered and unread
  let closed: Closed | undefined
  let waiter: Waiter | undefined
  let paused = false
  let wanted = 0
  const listeners = new Set<() => void>()
  const notify = () => {
    for (const listener of listeners) listener()
  }

  /** Consumes `n` buffered bytes, handing each piece (a view of a received chunk) to `f`. */
  const consume = (n: number, f?: (piece: Uint8Array) => void): void => {
    total -= n
    let left = n
    while (left > 0) {
      const chunk = chunks[0]!
      const m = Math.min(chunk.length - head, left)
      f?.(chunk.subarray(head, head + m))
      left -= m
      head += m
      if (head === chunk.length) {
        chunks.shift()
        head = 0
      }
    }
  }

  const source = OwnedReceive.sourceOf(stream)
  const borrowed = source !== undefined

  /** The next `n` buffered bytes: a view when they lie in one chunk (never when borrowed), else a copy. */
  const take = (n: number): Uint8Array => {
    if (n === 0) return EMPTY
    if (!borrowed && chunks[0]!.length - head >= n) {
      let view: Uint8Array = EMPTY
      consume(n, (piece) => (view = piece))
      return view
    }
    const out = Buffer.allocUnsafe(n)
    let filled = 0
    consume(n, (piece) => {
      out.set(piece, filled)
      filled += piece.length
    })
    return out
  }

  const pauseIfFull = () => {
    if (!paused && total >= Math.max(highWaterMark, wanted) && (waiter === undefined || total >= waiter.n)) {
      paused = true
      stream.pause()
    }
  }

  const resumeIfDrained = () => {
    if (paused && (total < Math.max(highWaterMark, wanted) || waiter !== undefined)) {
      paused = false
      stream.resume()
    }
  }

  /** Hands the waiting read its bytes once enough have arrived. */
  const wakeWaiter = () => {
    if (waiter !== undefined && total >= waiter.n) {
      const w = waiter
      waiter = undefined
      w.resume(Effect.succeed(take(w.n)))
    }
  }

  const onData = (chunk: Buffer) => {
    if (chunk.length === 0) return
    chunks.push(chunk)
    total += chunk.length
    wakeWaiter()
    pauseIfFull()
    notify()
  }

  const onClose = (reason: CloseReason, detail?: string) => () => {
    if (closed !== undefined) return
    closed = { reason, detail }
    if (waiter !== undefined) {
      const w = waiter
      waiter = undefined
      w.resume(Effect.fail(new ConnectionClosed({ reason, detail, missing: w.n - total })))
    }
    notify()
  }
  const onEnd = onClose("end-of-stream")
  const onStreamClose = onClose("closed")
  const onError = (error: Error) => onClose("error", error.message)()

  // ---- an owned receive buffer: keep only what stays unread, copied -----------------------
  /** The buffer unread bytes are being copied into (its view is the last chunk while it has unread bytes). */
  let frame: Buffer | undefined
  let frameFill = 0
  let spare: Buffer | undefined

  const frameIsLast = (): boolean => {
    const last = chunks.at(-1)
    return frame !== undefined && last !== undefined && last.buffer === frame.buffer && last.byteOffset === frame.byteOffset
  }
  /** A buffer for at least `size` bytes: the spare one when free and large enough. */
  const newFrame = (size: number): Buffer => {
    const spareFree = spare !== undefined && !chunks.some((chunk) => chunk.buffer === spare!.buffer)
    if (spareFree && spare!.length >= size) return spare!.subarray(0, size)
    if (size > SPARE_MAX) return Buffer.allocUnsafeSlow(size)
    if (spare === undefined || (spareFree && spare.length < size)) {
      spare = Buffer.allocUnsafeSlow(Math.max(size, 64 * 1024))
      return spare.subarray(0, size)
    }
    return Buffer.allocUnsafe(size)
  }
  /** Copies bytes that stay unread into the current frame, or a new one sized for what the consumer waits for. */
  const keep = (bytes: Uint8Array): void => {
    if (bytes.length === 0) return
    if (!frameIsLast() || frameFill + bytes.length > frame!.length) {
      frame = newFrame(Math.max(bytes.length, Math.max(wanted, waiter?.n ?? 0) - total))
      frameFill = 0
      chunks.push(frame.subarray(0, 0))
    }
    frame!.set(bytes, frameFill)
    frameFill += bytes.length
    chunks[chunks.length - 1] = frame!.subarray(0, frameFill)
    total += bytes.length
  }
  /** The bytes of one read: into the frame being filled, the rest handed on as a view, then the unread part kept. */
  const onOwned = (bytes: Buffer): boolean => {
    if (closed !== undefined) return true
    let rest = bytes
    if (frameIsLast() && frameFill < frame!.length) {
      const n = Math.min(frame!.length - frameFill, rest.length)
      keep(rest.subarray(0, n))
      rest = rest.subarray(n)
    }
    const transient = rest
    if (transient.length > 0) {
      chunks.push(transient)
      total += transient.length
    }
    wakeWaiter()
    notify()
    // What of this read is still unread must be copied before the buffer is reused.
    const last = chunks.at(-1)
    if (transient.length > 0 && last !== undefined && last.buffer === transient.buffer && last.byteOffset >= transient.byteOffset) {
      const unread = chunks.length === 1 ? last.subarray(head) : last
      chunks.pop()
      if (chunks.length === 0) head = 0
      total -= unread.length
      keep(unread)
    }
    pauseIfFull()
    return true
  }

  if (source !== undefined) {
    source.setSink(onOwned)
  } else {
    stream.on("data", onData)
  }
  stream.on("end", onEnd)
  stream.on("close", onStreamClose)
  stream.on("error", onError)
  if (stream.readableEnded) onEnd()
  else if (stream.destroyed) onStreamClose()

  const read = (n: number): Effect.Effect<Uint8Array, ConnectionClosed> =>
    Effect.suspend(() => {
      if (total >= n) {
        const out = take(n)
        resumeIfDrained()
        return Effect.succeed(out)
      }
      if (closed !== undefined) {
        return Effect.fail(new ConnectionClosed({ ...closed, missing: n - total }))
      }
      return Effect.async<Uint8Array, ConnectionClosed>((resume) => {
        waiter = { n, resume }
        resumeIfDrained()
        return Effect.sync(() => {
          waiter = undefined
        })
      })
    })

  const skip = (n: number): Effect.Effect<void, ConnectionClosed> =>
    Effect.gen(function*() {
      let left = n
      while (left > 0) {
        const m = Math.min(left, SKIP_CHUNK)
        yield* read(m)
        left -= m
      }
    })

  const tryRead = (n: number): Uint8Array | undefined => {
    if (total < n) return undefined
    wanted = 0
    const out = take(n)
    resumeIfDrained()
    return out
  }

  const takeChunks = (max: number): ReadonlyArray<Uint8Array> => {
    wanted = 0
    const out: Array<Uint8Array> = []
    consume(Math.min(max, total), (piece) => out.push(piece))
    resumeIfDrained()
    return out
  }

  const tryReadChunks = (n: number): ReadonlyArray<Uint8Array> | undefined => (total < n ? undefined : takeChunks(n))

  const discard = (n: number): number => {
    const dropped = Math.min(n, total)
    consume(dropped)
    resumeIfDrained()
    return dropped
  }

  const want = (n: number) => {
    wanted = n
    resumeIfDrained()
  }

  const onReadable = (listener: () => void) => {
    listeners.add(listener)
    return () => {
      listeners.delete(listener)
    }
  }

  const detach = () => {
    listeners.clear()
    source?.setSink(undefined)
    stream.off("data", onData)
    stream.off("end", onEnd)
    stream.off("close", onStreamClose)
    stream.off("error", onError)
  }

  return {
    read,
    skip,
    buffered: () => total,
    tryRead,
    tryReadChunks,
    takeChunks,
    discard,
    want,
    onReadable,
    closedReason: () => closed,
    detach,
    borrowed
  }
}
