/**
 * An ordered queue of chunks written to a stream one write at a time: runs of small
 * chunks are merged into one buffer, large chunks are written as they are.
 *
 * This is the frame writer's strategy for TLS sockets. There, Node's batched path (cork,
 * or writes that pile up behind one in progress, both ending in `_writev`) first copies
 * every queued chunk into one new buffer before encrypting it, so a 1 MiB READ payload
 * is copied once more than on a plain socket. Keeping one write in flight means the
 * stream never holds more than one chunk and never batches: a large payload goes to
 * the encryption as it is, and only smaller chunks (headers, short payloads, the 32 KiB
 * pages of the memory store) are copied, into a merge buffer that the queue owns and
 * reuses once its write completed (a fresh buffer per write would hand the garbage
 * collector megabytes of external memory per second).
 *
 * Merging the 32 KiB pages of a READ reply costs a copy but saves a write (and its turn of
 * the event loop) per page: copies out over TLS, interleaved, took 20-30% less server CPU
 * per GiB and went 14-22% faster with four connections, and 3-8% slower with one (a
 * coarser write keeps the client waiting longer for its first bytes). Writes are capped
 * at {@link MERGE_AT_MOST} for that reason.
 *
 * @since 0.1.0
 */
import type { Duplex } from "node:stream"

/** Chunks shorter than this are merged with their neighbours; longer ones are written alone. */
export const MERGE_BELOW = 64 * 1024

/** A merged write holds at most this many bytes. */
export const MERGE_AT_MOST = 128 * 1024

/** The first size of a queue's merge buffer (it doubles as needed, up to {@link MERGE_AT_MOST}). */
const MERGE_BUFFER_START = 64 * 1024

/** A queue over one stream. */
export interface WriteQueue {
  /**
   * Queues a chunk behind those queued before; writes start at {@link kick}. `sent` is
   * called once the queue and the stream are done with the chunk (after its write
   * completed, or once it was merged into the queue's own buffer); never if writing fails.
   */
  readonly push: (chunk: Uint8Array, sent?: () => void) => void
  /** Starts writing queued chunks if no write is in flight. */
  readonly kick: () => void
  /** Bytes queued and not yet handed to the stream. */
  readonly queuedBytes: () => number
  /** Called after each completed write (and when writing stops because the stream closed). */
  readonly onProgress: (listener: () => void) => void
}

/** Makes a write queue over a stream. */
export const make = (stream: Duplex): WriteQueue => {
  let chunks: Array<Uint8Array> = []
  /** The `sent` callback of each queued chunk, by the same index. */
  let callbacks: Array<(() => void) | undefined> = []
  /** The callback of the write in flight. */
  let inFlightSent: (() => void) | undefined
  let head = 0
  let queued = 0
  let inFlight = false
  let mergeBuffer: Buffer | undefined
  const listeners: Array<() => void> = []

  /** The merge buffer, grown to hold `size` bytes; free again once the write in flight completed. */
  const mergeSpace = (size: number): Buffer => {
    if (mergeBuffer === undefined || mergeBuffer.length < size) {
      let length = mergeBuffer?.length ?? MERGE_BUFFER_START
      while (length < size) length *= 2
      mergeBuffer = Buffer.allocUnsafeSlow(length)
    }
    return mergeBuffer.subarray(0, size)
  }

  /** Takes the next write off the queue: one large chunk, or a run of small ones merged. */
  const take = (): Uint8Array => {
    inFlightSent = callbacks[head]
    const first = chunks[head++]!
    if (first.length >= MERGE_BELOW) return first
    let end = head
    let size = first.length
    while (end < chunks.length && chunks[end]!.length < MERGE_BELOW && size + chunks[end]!.length <= MERGE_AT_MOST) {
      size += chunks[end]!.length
      end++
    }
    if (end === head) return first
    const merged = mergeSpace(size)
    merged.set(first, 0)
    let at = first.length
    const copied = [inFlightSent]
    for (; head < end; head++) {
      merged.set(chunks[head]!, at)
      at += chunks[head]!.length
      copied.push(callbacks[head])
    }
    inFlightSent = undefined
    for (const sent of copied) sent?.() // their bytes are in the merge buffer now
    return merged
  }

  const compact = () => {
    if (head === chunks.length) {
      chunks = []
      callbacks = []
      head = 0
    } else if (head > 1024) {
      chunks = chunks.slice(head)
      callbacks = callbacks.slice(head)
      head = 0
    }
  }

  /** Forgets every queued chunk (the stream failed or closed): their callbacks are never called. */
  const dropQueued = () => {
    chunks = []
    callbacks = []
    head = 0
    queued = 0
  }

  const progressed = () => {
    for (const listener of listeners) listener()
  }

  const written = (error?: Error | null) => {
    inFlight = false
    const sent = inFlightSent
    inFlightSent = undefined
    if (error != null) dropQueued()
    else sent?.()
    kick()
    progressed()
  }

  const kick = () => {
    if (inFlight || head === chunks.length) return
    if (stream.destroyed || stream.writableEnded) {
      dropQueued()
      return progressed()
    }
    const chunk = take()
    compact()
    queued -= chunk.length
    inFlight = true
    stream.write(chunk, written)
  }

  return {
    push: (chunk, sent) => {
      chunks.push(chunk)
      callbacks.push(sent)
      queued += chunk.length
    },
    kick,
    queuedBytes: () => queued,
    onProgress: (listener) => {
      listeners.push(listener)
    }
  }
}
