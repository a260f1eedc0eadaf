/**
 * The counters behind the `stats` filter: per-command operations, bytes, errors and a
 * latency histogram with fixed log2 buckets in microseconds, read out as a plain
 * {@link Statistics} value.
 *
 * @since 0.2.0
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import type { ErrnoName } from "../Errors.ts"
import { type Command, Commands, type Result } from "./Instrument.ts"

/** Number of latency buckets. */
export const BUCKETS = 32

/**
 * The bucket of a latency: 0 below 1 µs, `i` for `[2^(i-1), 2^i)` µs; the last bucket
 * (from 2^30 µs, about 18 minutes) also holds everything longer.
 */
export const bucketOf = (micros: number): number =>
  micros < 1 ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log2(micros)) + 1)

/** The lower bound of bucket `i`, in µs. */
export const bucketStart = (i: number): number => (i === 0 ? 0 : 2 ** (i - 1))

/** Commands whose successful requests count bytes (their range length). */
export const ByteCommands: ReadonlySet<Command> = new Set<Command>(["READ", "WRITE", "TRIM", "WRITE_ZEROES", "CACHE"])

/** Latency of one command's requests, in microseconds (all 0 when there were none). */
export interface LatencyStatistics {
  readonly minMicros: number
  readonly meanMicros: number
  readonly maxMicros: number
  /** Requests per bucket (see {@link bucketOf}); {@link BUCKETS} entries. */
  readonly buckets: ReadonlyArray<number>
}

/** One command's figures. */
export interface CommandStatistics {
  /** Completed requests, failed ones included (interrupted ones are not counted). */
  readonly ops: number
  readonly errors: number
  /** Bytes of the successful requests (0 for FLUSH, BLOCK_STATUS and RESIZE). */
  readonly bytes: number
  /** `bytes` over the elapsed time (0 when no time elapsed). */
  readonly bytesPerSecond: number
  readonly latency: LatencyStatistics
}

/** A snapshot of the statistics of a stack. */
export interface Statistics {
  /** `Clock` time since the collector started, in seconds. */
  readonly elapsedSeconds: number
  readonly commands: { readonly [C in Command]: CommandStatistics }
  readonly bytes: { readonly read: number; readonly written: number; readonly zeroed: number; readonly trimmed: number }
  /** Failed requests by the errno sent back. */
  readonly errors: { readonly [E in ErrnoName]?: number }
}

class Counter {
  ops = 0
  errors = 0
  bytes = 0
  totalMicros = 0
  minMicros = Infinity
  maxMicros = 0
  readonly buckets: Array<number> = new Array<number>(BUCKETS).fill(0)

  snapshot(elapsedSeconds: number): CommandStatistics {
    return {
      ops: this.ops,
      errors: this.errors,
      bytes: this.bytes,
      bytesPerSecond: elapsedSeconds > 0 ? this.bytes / elapsedSeconds : 0,
      latency: {
        minMicros: this.ops === 0 ? 0 : this.minMicros,
        meanMicros: this.ops === 0 ? 0 : this.totalMicros / this.ops,
        maxMicros: this.maxMicros,
        buckets: [...this.buckets]
      }
    }
  }
}

/** Mutable counters shared by every connection of a stack (or of several stacks, if given to each). */
export class Collector {
  private readonly counters = Object.fromEntries(Commands.map((c) => [c, new Counter()])) as Record<Command, Counter>
  private readonly errnos = new Map<ErrnoName, number>()

  /** `startMillis`: the `Clock` time from which elapsed time counts. */
  constructor(readonly startMillis: number) {}

  /** Counts a completed request of `length` bytes that took `micros`; interrupted ones are ignored. */
  record(command: Command, length: number, micros: number, result: Result): void {
    if (result === "interrupted") return
    const counter = this.counters[command]
    counter.ops++
    if (result === "ok") {
      if (ByteCommands.has(command)) counter.bytes += length
    } else {
      counter.errors++
      this.errnos.set(result, (this.errnos.get(result) ?? 0) + 1)
    }
    counter.totalMicros += micros
    counter.minMicros = Math.min(counter.minMicros, micros)
    counter.maxMicros = Math.max(counter.maxMicros, micros)
    counter.buckets[bucketOf(micros)]!++
  }

  /** The figures as of `nowMillis` (`Clock` time). */
  snapshot(nowMillis: number): Statistics {
    const elapsedSeconds = Math.max(0, nowMillis - this.startMillis) / 1000
    const commands = Object.fromEntries(
      Commands.map((c) => [c, this.counters[c].snapshot(elapsedSeconds)])
    ) as Statistics["commands"]
    return {
      elapsedSeconds,
      commands,
      bytes: {
        read: commands.READ.bytes,
        written: commands.WRITE.bytes,
        zeroed: commands.WRITE_ZEROES.bytes,
        trimmed: commands.TRIM.bytes
      },
      errors: Object.fromEntries(this.errnos)
    }
  }
}

/** A new collector, counting elapsed time from now. */
export const makeCollector: Effect.Effect<Collector> = Effect.map(Clock.currentTimeMillis, (now) => new Collector(now))

/** The statistics gathered so far. */
export const current = (collector: Collector): Effect.Effect<Statistics> =>
  Effect.map(Clock.currentTimeMillis, (now) => collector.snapshot(now))
