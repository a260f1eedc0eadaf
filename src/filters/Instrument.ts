/**
 * Watching requests as they pass through a handle: each operation is timed with Effect's
 * `Clock` and its outcome reported to an observer once it completes. The shared piece of
 * the filters that look at traffic without changing it (`log`, `stats`).
 *
 * @since 0.2.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import type * as Driver from "../Driver.ts"
import type { ErrnoName, ProtocolError } from "../Errors.ts"

/** The NBD commands a handle serves, by their protocol names. */
export const Commands = [
  "READ",
  "WRITE",
  "FLUSH",
  "TRIM",
  "WRITE_ZEROES",
  "CACHE",
  "BLOCK_STATUS",
  "RESIZE"
] as const

/** One of {@link Commands}. */
export type Command = (typeof Commands)[number]

/** Request flags worth reporting. */
export type Flag = "fua" | "no-hole" | "fast-zero"

/**
 * How a request ended: `ok`, the errno sent back (a defect counts as `EIO`, which is what
 * the client receives), or `interrupted` (abandoned, e.g. at disconnect: no reply sent).
 */
export type Result = "ok" | ErrnoName | "interrupted"

/** A request that completed. FLUSH has offset and length 0; RESIZE has offset 0 and the new size as length. */
export interface Completed {
  readonly command: Command
  readonly offset: number
  readonly length: number
  readonly flags: ReadonlyArray<Flag>
  /** When the request started: `Clock` time in nanoseconds since the epoch. */
  readonly startNanos: bigint
  /** How long it took, in microseconds (`Clock` time). */
  readonly micros: number
  readonly result: Result
}

/** The {@link Result} of an operation's exit. */
export const resultOf = (exit: Exit.Exit<unknown, ProtocolError>): Result => {
  if (Exit.isSuccess(exit)) return "ok"
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) return failure.value.errno
  return Cause.isInterruptedOnly(exit.cause) ? "interrupted" : "EIO"
}

const NO_FLAGS: ReadonlyArray<Flag> = []

const flagsOf = (options: Driver.WriteOptions & Partial<Driver.ZeroOptions>): ReadonlyArray<Flag> => {
  if (!options.fua && !options.noHole && !options.fastZero) return NO_FLAGS
  const flags: Array<Flag> = []
  if (options.fua) flags.push("fua")
  if (options.noHole) flags.push("no-hole")
  if (options.fastZero) flags.push("fast-zero")
  return flags
}

/**
 * Overrides of every I/O operation of `handle` that run it unchanged and report each
 * completion to `observe`. Reads and writes are overridden, so the handle's synchronous
 * fast path is dropped unless the caller gives its own `sync`; reads into the server's
 * buffers (`readInto`) are kept, timed as READ.
 */
export const instrument = (
  handle: Driver.DriverHandle,
  observe: (completed: Completed) => Effect.Effect<void>
): Driver.HandleOverrides => {
  const timed = <A>(
    command: Command,
    offset: number,
    length: number,
    flags: ReadonlyArray<Flag>,
    operation: Effect.Effect<A, ProtocolError>
  ): Effect.Effect<A, ProtocolError> =>
    Effect.flatMap(Clock.currentTimeNanos, (startNanos) =>
      Effect.onExit(operation, (exit) =>
        Effect.flatMap(Clock.currentTimeNanos, (endNanos) =>
          observe({
            command,
            offset,
            length,
            flags,
            startNanos,
            micros: Number(endNanos - startNanos) / 1000,
            result: resultOf(exit)
          }))))
  return {
    read: (offset, length) => timed("READ", offset, length, NO_FLAGS, handle.read(offset, length)),
    readInto: handle.readInto === undefined
      ? undefined
      : (offset, target) => timed("READ", offset, target.length, NO_FLAGS, handle.readInto!(offset, target)),
    write: (offset, data, options) =>
      timed("WRITE", offset, data.length, flagsOf(options), handle.write(offset, data, options)),
    writeCopies: handle.writeCopies, // the data goes below as it is
    flush: timed("FLUSH", 0, 0, NO_FLAGS, handle.flush),
    trim: (offset, length, options) =>
      timed("TRIM", offset, length, flagsOf(options), handle.trim(offset, length, options)),
    writeZeroes: (offset, length, options) =>
      timed("WRITE_ZEROES", offset, length, flagsOf(options), handle.writeZeroes(offset, length, options)),
    cache: (offset, length) => timed("CACHE", offset, length, NO_FLAGS, handle.cache(offset, length)),
    blockStatus: (offset, length) =>
      timed("BLOCK_STATUS", offset, length, NO_FLAGS, handle.blockStatus(offset, length)),
    resize: (size) => timed("RESIZE", 0, size, NO_FLAGS, handle.resize(size))
  }
}
