/**
 * Log formats of the command line, written to standard error: `text` (Effect's pretty
 * logger) or `json`, one object per line for log collectors.
 *
 * A JSON line holds `timestamp` (ISO 8601), `level` (`DEBUG`, `INFO`, `WARN`, `ERROR`,
 * ...), `message`, then every log annotation as a field of its own (a session's lines carry
 * `connection`, `remote` and `export`), `spans` (their durations in milliseconds) when
 * any, and `cause` (pretty-printed) when the line has one. An annotation never replaces
 * `timestamp`, `level` or `message`.
 *
 * @since 0.3.0
 */
import * as Cause from "effect/Cause"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as List from "effect/List"
import * as Logger from "effect/Logger"

/** The formats. */
export type LogFormat = "text" | "json"

/** The names of the formats, for options. */
export const formats: ReadonlyArray<LogFormat> = ["text", "json"]

/** A value as JSON can hold it (bigints and errors as text). */
const jsonable = (value: unknown): unknown => {
  if (typeof value === "bigint") return value.toString()
  if (value instanceof Error) return value.message
  return value
}

const messageText = (message: unknown): string => {
  const parts = Array.isArray(message) ? message : [message]
  return parts.map((part) => (typeof part === "string" ? part : String(jsonable(part)))).join(" ")
}

/** The object a log line becomes. */
export const jsonRecord = (options: Logger.Logger.Options<unknown>): Record<string, unknown> => {
  const record: Record<string, unknown> = {
    timestamp: options.date.toISOString(),
    level: options.logLevel.label,
    message: messageText(options.message)
  }
  for (const [key, value] of HashMap.toEntries(options.annotations)) {
    if (!(key in record)) record[key] = jsonable(value)
  }
  const now = options.date.getTime()
  const spans = List.toArray(options.spans)
  if (spans.length > 0) record.spans = Object.fromEntries(spans.map((span) => [span.label, now - span.startTime]))
  if (!Cause.isEmpty(options.cause)) record.cause = Cause.pretty(options.cause, { renderErrorCause: true })
  return record
}

/** One JSON object per line. */
export const jsonLogger: Logger.Logger<unknown, string> = Logger.make((options) => {
  try {
    return JSON.stringify(jsonRecord(options))
  } catch {
    // A value JSON cannot hold (a cycle): the line without its annotations.
    return JSON.stringify({ timestamp: options.date.toISOString(), level: options.logLevel.label, message: messageText(options.message) })
  }
})

/** Writes a string logger's lines to standard error. */
const toStderr = (logger: Logger.Logger<unknown, string>): Logger.Logger<unknown, void> =>
  Logger.map(logger, (line) => {
    process.stderr.write(`${line}\n`)
  })

/** The logger of a format, writing to standard error. */
export const logger = (format: LogFormat): Logger.Logger<unknown, void> =>
  format === "json" ? toStderr(jsonLogger) : Logger.prettyLogger({ stderr: true })

/** Replaces Effect's default logger with the one of `format`. */
export const layer = (format: LogFormat): Layer.Layer<never> => Logger.replace(Logger.defaultLogger, logger(format))
