/**
 * Parameters of drivers and filters as `KEY=VALUE` pairs (the command line's
 * `--filter delay:read=100ms,write=1s`), with typed readers and the documentation of
 * each parameter, so that every driver and filter can be built from text and lists what
 * it accepts.
 *
 * A value may contain commas: a segment without `=` continues the previous value
 * (`ops=read,write,rate=1` gives `ops` = `read,write`).
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import { parseSize } from "./Size.ts"

/** A parameter was missing, unknown or malformed. */
export class ParameterError extends Data.TaggedError("ParameterError")<{ readonly message: string }> {}

/** Documentation of one parameter. */
export interface ParameterDoc {
  readonly name: string
  /** The default, as text; absent when the parameter is required or has no default. */
  readonly default?: string | undefined
  readonly description: string
}

/** Parses `KEY=VALUE,KEY=VALUE` text into pairs, in order. */
export const parsePairs = (text: string): Either.Either<ReadonlyMap<string, string>, string> => {
  const pairs = new Map<string, string>()
  if (text.trim() === "") return Either.right(pairs)
  let last: string | undefined
  for (const segment of text.split(",")) {
    const equals = segment.indexOf("=")
    if (equals <= 0) {
      if (last === undefined) return Either.left(`'${segment}' is not KEY=VALUE`)
      pairs.set(last, `${pairs.get(last)},${segment}`)
      continue
    }
    last = segment.slice(0, equals)
    if (pairs.has(last)) return Either.left(`'${last}' is given twice`)
    pairs.set(last, segment.slice(equals + 1))
  }
  return Either.right(pairs)
}

const DURATION = /^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$/

/** Parses a duration: `100ms`, `1.5s`, `10us`, `2m`; a bare number is seconds (as nbdkit). */
export const parseDuration = (text: string): Either.Either<Duration.Duration, string> => {
  const match = DURATION.exec(text)
  if (match === null) return Either.left(`'${text}' is not a duration (examples: 100ms, 1.5s, 10us, 2m)`)
  const value = Number(match[1])
  switch (match[2]) {
    case "us":
    case "µs":
      return Either.right(Duration.micros(BigInt(Math.round(value))))
    case "ms":
      return Either.right(Duration.millis(value))
    case "m":
      return Either.right(Duration.minutes(value))
    case "h":
      return Either.right(Duration.hours(value))
    default:
      return Either.right(Duration.seconds(value))
  }
}

/** Typed access to the parameters of one driver or filter; a failed read throws a {@link ParameterError}. */
export interface Reader {
  /** The raw text of a parameter, if given. */
  readonly text: (name: string) => string | undefined
  readonly string: (name: string, fallback?: string) => string
  readonly size: (name: string, fallback?: number) => number
  readonly duration: (name: string, fallback?: Duration.Duration) => Duration.Duration
  readonly number: (name: string, fallback?: number, range?: { readonly min?: number; readonly max?: number }) => number
  readonly integer: (name: string, fallback?: number, range?: { readonly min?: number; readonly max?: number }) => number
  readonly boolean: (name: string, fallback?: boolean) => boolean
  readonly choice: <const C extends string>(name: string, choices: ReadonlyArray<C>, fallback?: C) => C
  /** A comma-separated list (empty when absent). */
  readonly list: (name: string) => ReadonlyArray<string>
}

/**
 * Reads parameters: `owner` names the driver or filter in messages, `docs` lists what it
 * accepts (anything else is refused), `read` builds the result from a {@link Reader}.
 */
export const decode = <A>(
  owner: string,
  pairs: ReadonlyMap<string, string>,
  docs: ReadonlyArray<ParameterDoc>,
  read: (reader: Reader) => A
): Either.Either<A, ParameterError> => {
  const accepted = docs.map((doc) => doc.name)
  for (const key of pairs.keys()) {
    if (!accepted.includes(key)) {
      const known = accepted.length === 0 ? "it takes no parameters" : `accepted: ${accepted.join(", ")}`
      return Either.left(new ParameterError({ message: `${owner}: unknown parameter '${key}' (${known})` }))
    }
  }
  const fail = (message: string): never => {
    throw new ParameterError({ message: `${owner}: ${message}` })
  }
  const get = <B>(name: string, fallback: B | undefined, parse: (text: string) => B): B => {
    const text = pairs.get(name)
    if (text !== undefined) return parse(text)
    if (fallback === undefined) return fail(`parameter '${name}' is required`)
    return fallback
  }
  const bounded = (name: string, value: number, range: { readonly min?: number; readonly max?: number } = {}) => {
    if (Number.isNaN(value)) return fail(`'${name}' must be a number`)
    if (range.min !== undefined && value < range.min) return fail(`'${name}' must be at least ${range.min}`)
    if (range.max !== undefined && value > range.max) return fail(`'${name}' must be at most ${range.max}`)
    return value
  }
  const reader: Reader = {
    text: (name) => pairs.get(name),
    string: (name, fallback) => get(name, fallback, (text) => text),
    size: (name, fallback) =>
      get(name, fallback, (text) => Either.getOrElse(parseSize(text), (message) => fail(`'${name}': ${message}`))),
    duration: (name, fallback) =>
      get(name, fallback, (text) => Either.getOrElse(parseDuration(text), (message) => fail(`'${name}': ${message}`))),
    number: (name, fallback, range) =>
      bounded(name, get(name, fallback, (text) => (text.trim() === "" ? NaN : Number(text))), range),
    integer: (name, fallback, range) => {
      const value = bounded(name, get(name, fallback, (text) => (text.trim() === "" ? NaN : Number(text))), range)
      return Number.isInteger(value) ? value : fail(`'${name}' must be a whole number`)
    },
    boolean: (name, fallback) =>
      get(name, fallback, (text) => {
        if (["1", "true", "yes", "on"].includes(text)) return true
        if (["0", "false", "no", "off"].includes(text)) return false
        return fail(`'${name}' must be true or false`)
      }),
    choice: (name, choices, fallback) =>
      get(name, fallback, (text) =>
        (choices as ReadonlyArray<string>).includes(text)
          ? (text as (typeof choices)[number])
          : fail(`'${name}' must be one of ${choices.join(", ")}`)),
    list: (name) => {
      const text = pairs.get(name)
      return text === undefined || text === "" ? [] : text.split(",").map((item) => item.trim())
    }
  }
  try {
    return Either.right(read(reader))
  } catch (error) {
    if (error instanceof ParameterError) return Either.left(error)
    throw error
  }
}
