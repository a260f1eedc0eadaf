/**
 * What the block-granular filters (`cache`, `cow`) share: block sizes, splitting a byte
 * range into per-block pieces, per-block locks, and reads and writes of the driver below
 * that respect its block-size constraints.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { DriverHandle, WriteOptions } from "../Driver.ts"
import type { ProtocolError } from "../Errors.ts"

/** Smallest block size of the block-granular filters. */
export const MIN_BLOCK_SIZE = 512

/** Largest block size of the block-granular filters (the default largest payload). */
export const MAX_BLOCK_SIZE = 32 * 1024 * 1024

/** Why a block size is refused, or `undefined` when it is a power of two in range. */
export const blockSizeProblem = (blockSize: number): string | undefined =>
  Number.isSafeInteger(blockSize) && blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE &&
    (blockSize & (blockSize - 1)) === 0
    ? undefined
    : `block size ${blockSize} must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`

/** One block's share of a byte range. */
export interface Piece {
  /** Block number. */
  readonly index: number
  /** Offset of the piece in its block. */
  readonly inBlock: number
  readonly length: number
  /** Bytes of the range before the piece. */
  readonly done: number
}

/** Calls `f` for each block-sized piece of `[offset, offset + length)`, in order. */
export const forEachPiece = (offset: number, length: number, blockSize: number, f: (piece: Piece) => void): void => {
  let done = 0
  while (done < length) {
    const at = offset + done
    const index = Math.floor(at / blockSize)
    const inBlock = at - index * blockSize
    const n = Math.min(blockSize - inBlock, length - done)
    f({ index, inBlock, length: n, done })
    done += n
  }
}

/** Bytes of block `index` inside an export of `size` bytes (the last block may be short). */
export const blockLength = (index: number, blockSize: number, size: number): number =>
  Math.max(0, Math.min(blockSize, size - index * blockSize))

/**
 * A mutual-exclusion lock per block number, created on first use and dropped when no
 * fiber holds or waits for it. A fiber that holds one lock may take others only with
 * {@link BlockLocks.ifFree} (never waiting), so no two fibers can wait on each other.
 */
export class BlockLocks {
  private readonly locks = new Map<number, { readonly semaphore: Effect.Semaphore; users: number }>()

  /** Whether a fiber holds or waits for the lock of block `index`. */
  isHeld(index: number): boolean {
    return this.locks.has(index)
  }

  /** Runs `effect` holding the lock of block `index` (waiting for it). */
  with<A, E, R>(index: number, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.suspend(() => {
      const lock = this.enter(index)
      return Effect.ensuring(lock.semaphore.withPermits(1)(effect), Effect.sync(() => this.leave(index, lock)))
    })
  }

  /** Runs `effect` holding the lock of block `index` if nobody holds it; `None` (and nothing run) otherwise. */
  ifFree<A, E, R>(index: number, effect: Effect.Effect<A, E, R>): Effect.Effect<Option.Option<A>, E, R> {
    return Effect.suspend(() => {
      if (this.locks.has(index)) return Effect.succeedNone
      const lock = this.enter(index)
      return Effect.ensuring(
        lock.semaphore.withPermitsIfAvailable(1)(effect),
        Effect.sync(() => this.leave(index, lock))
      )
    })
  }

  private enter(index: number) {
    let lock = this.locks.get(index)
    if (lock === undefined) {
      lock = { semaphore: Effect.unsafeMakeSemaphore(1), users: 0 }
      this.locks.set(index, lock)
    }
    lock.users++
    return lock
  }

  private leave(index: number, lock: { users: number }) {
    if (--lock.users === 0) this.locks.delete(index)
  }
}

/** `[offset, offset + length)` widened to multiples of `minimum`, its end clipped to `size`. */
export const widen = (offset: number, length: number, minimum: number, size = Infinity) => {
  const start = offset - (offset % minimum)
  return { start, end: Math.min(Math.ceil((offset + length) / minimum) * minimum, size) }
}

/** The largest multiple of `minimum` not above `maximum` (at least `minimum`). */
const step = (minimum: number, maximum: number) => Math.max(minimum, maximum - (maximum % minimum))

/**
 * Reads `[offset, offset + length)` from the handle below, widened to its minimum block
 * size (clamped to the export's end) and split at its maximum payload.
 */
export const readBelow = (
  below: DriverHandle,
  offset: number,
  length: number
): Effect.Effect<Uint8Array, ProtocolError> => {
  const { maximum, minimum } = below.capabilities.blockSize
  if (minimum === 1 && length <= maximum) return below.read(offset, length)
  return Effect.gen(function*() {
    const { end, start } = widen(offset, length, minimum, yield* below.size)
    const out = new Uint8Array(end - start)
    const chunk = step(minimum, maximum)
    for (let at = start; at < end; at += chunk) out.set(yield* below.read(at, Math.min(chunk, end - at)), at - start)
    return out.subarray(offset - start, offset - start + length)
  })
}

/**
 * {@link readBelow} into `target` (all of it, from `offset`): straight into it where the
 * handle below reads into buffers and takes the range as it is, else read and copied.
 */
export const readBelowInto = (
  below: DriverHandle,
  offset: number,
  target: Uint8Array
): Effect.Effect<void, ProtocolError> => {
  const { maximum, minimum } = below.capabilities.blockSize
  if (below.readInto !== undefined && minimum === 1 && target.length <= maximum) return below.readInto(offset, target)
  return Effect.map(readBelow(below, offset, target.length), (bytes) => target.set(bytes))
}

/** Writes to the handle below, split at its maximum payload (callers keep writes aligned to its minimum). */
export const writeBelow = (
  below: DriverHandle,
  offset: number,
  data: Uint8Array,
  options: WriteOptions
): Effect.Effect<void, ProtocolError> => {
  const { maximum, minimum } = below.capabilities.blockSize
  if (data.length <= maximum) return below.write(offset, data, options)
  const chunk = step(minimum, maximum)
  return Effect.gen(function*() {
    for (let at = 0; at < data.length; at += chunk) {
      yield* below.write(offset + at, data.subarray(at, Math.min(at + chunk, data.length)), options)
    }
  })
}
