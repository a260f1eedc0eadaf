/**
 * A connection's reusable READ buffers, for handles that read into buffers the server
 * gives them (`readInto`). A reply's buffer goes back to the pool only once the socket
 * is done with it (the frame writer's completion callback); one whose reply never went
 * out (the connection closed, the request was interrupted while the driver may still be
 * writing into it) is simply never given back and left to the garbage collector.
 *
 * Buffers come in power-of-two sizes from {@link SMALLEST} to {@link LARGEST}; a read
 * takes a view of the first `length` bytes of one. Longer reads get a buffer of their
 * own that is not kept. At most {@link IDLE_BYTES} of free buffers are kept.
 *
 * @since 0.2.0
 */

/** The smallest buffer kept (shorter reads use one of this size). */
export const SMALLEST = 4096
/** The largest buffer kept. */
export const LARGEST = 4 * 1024 * 1024
/**
 * Bytes of free buffers kept per connection; more are dropped when given back. Free
 * buffers never exceed what was in flight at once (replies queued up to the writer's
 * high-water mark, 4 MiB by default, and the requests running), so this is about the
 * most a busy connection holds between bursts.
 */
export const IDLE_BYTES = 32 * 1024 * 1024

/** A pool of read buffers (one connection's). */
export interface ReadBuffers {
  /** A buffer of `length` bytes (contents undefined). */
  readonly take: (length: number) => Uint8Array
  /** Returns a buffer from {@link take} once nothing refers to it any more. */
  readonly give: (buffer: Uint8Array) => void
  /** Bytes of free buffers held (for tests). */
  readonly idleBytes: () => number
}

/** The size of the buffer that serves a read of `length` bytes. */
const sizeFor = (length: number): number => {
  let size = SMALLEST
  while (size < length) size *= 2
  return size
}

/** Makes an empty pool. */
export const make = (): ReadBuffers => {
  /** Free buffers (whole, of their power-of-two size) by size. */
  const free = new Map<number, Array<ArrayBuffer>>()
  let idle = 0
  return {
    take: (length) => {
      if (length > LARGEST) return Buffer.allocUnsafeSlow(length)
      const size = sizeFor(length)
      const memory = free.get(size)?.pop()
      if (memory === undefined) return Buffer.allocUnsafeSlow(size).subarray(0, length)
      idle -= size
      return Buffer.from(memory, 0, length)
    },
    give: (buffer) => {
      const memory = buffer.buffer
      const size = memory.byteLength
      if (size > LARGEST || size !== sizeFor(size) || idle + size > IDLE_BYTES || !(memory instanceof ArrayBuffer)) return
      idle += size
      const list = free.get(size)
      if (list === undefined) free.set(size, [memory])
      else list.push(memory)
    },
    idleBytes: () => idle
  }
}
