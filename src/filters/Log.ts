/**
 * The `log` filter: appends one line to a file for every request, and one when a
 * connection opens the export and when it closes it, as nbdkit's log filter does (in a
 * format of our own). Requests pass through unchanged; the synchronous fast path of the
 * driver below is not used (every request goes through the filter to be logged).
 *
 * The file is opened once, when the stack is built (a failure to open it fails the
 * stack), and closed with the stack's scope; lines go through a buffered append stream
 * and are written, synced and closed before the scope finishes closing. Times come from
 * Effect's `Clock`.
 *
 * Line format: `key=value` pairs separated by single spaces, always in the order below.
 * A value is written bare when it only holds `A-Z a-z 0-9 . _ : @ + , / -`, and as a
 * JSON string (double quotes, JSON escapes) otherwise, so a line never holds a raw
 * newline and splits unambiguously ({@link parseLine} reads it back). Every line starts
 * with `time` (ISO 8601, UTC), `conn` (connection id), `export` (export name), `event`:
 *
 * - `event=open transport=tcp address=ADDR port=PORT tls=no`; instead of the address and
 *   port, `transport=unix path=PATH` or `transport=in-process`; with TLS, `tls=yes`
 *   followed by `tls-subject=SUBJECT` and/or `tls-psk=IDENTITY` when known.
 * - `event=request command=CMD offset=N length=N flags=F result=R us=N`: CMD is one of
 *   READ WRITE FLUSH TRIM WRITE_ZEROES CACHE BLOCK_STATUS RESIZE (FLUSH has offset and
 *   length 0, RESIZE offset 0 and the new size as length); F is `-` or a comma list of
 *   `fua`, `no-hole`, `fast-zero`; R is `ok`, the errno name sent back (`EIO`, `EPERM`, ...)
 *   or `interrupted`; `us` is the duration in whole microseconds; `time` is when the
 *   request started.
 * - `event=close requests=N errors=N`: the connection's completed requests and failures.
 *
 * Parameters:
 * - file=PATH (required): the file to append to (created if missing).
 *
 * @since 0.2.0
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Driver from "../Driver.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import * as AppendFile from "./AppendFile.ts"
import { type Completed, instrument } from "./Instrument.ts"

/** Options of the log filter. */
export interface LogOptions {
  /** The file to append to. */
  readonly file: string
}

const BARE = /^[A-Za-z0-9._:@+,/-]+$/

/** A value as written in a line: bare when it is a plain token, a JSON string otherwise. */
export const formatValue = (value: string | number): string =>
  typeof value === "number" ? String(value) : BARE.test(value) ? value : JSON.stringify(value)

const FIELD = /([a-z-]+)=("(?:[^"\\]|\\.)*"|[^\s"]+)(?: |$)/y

const unquote = (raw: string): string | undefined => {
  if (!raw.startsWith("\"")) return raw
  try {
    return JSON.parse(raw) as string
  } catch {
    return undefined
  }
}

/** Reads a line back into its fields, in order; `undefined` if it is not in the log's format. */
export const parseLine = (line: string): ReadonlyMap<string, string> | undefined => {
  const fields = new Map<string, string>()
  const field = new RegExp(FIELD)
  while (field.lastIndex < line.length) {
    const start = field.lastIndex
    const match = field.exec(line)
    if (match === null || field.lastIndex === start) return undefined
    const value = unquote(match[2]!)
    if (value === undefined) return undefined
    fields.set(match[1]!, value)
  }
  return fields
}

const fields = (pairs: ReadonlyArray<readonly [string, string | number]>): string =>
  pairs.map(([key, value]) => `${key}=${formatValue(value)}`).join(" ")

const isoTime = (millis: number): string => new Date(millis).toISOString()

const transportFields = (client: Driver.ClientInfo): string => {
  const transport = client.transport
  const where = transport._tag === "Tcp"
    ? fields([["transport", "tcp"], ["address", transport.address], ["port", transport.port]])
    : transport._tag === "Unix"
    ? fields([["transport", "unix"], ["path", transport.path]])
    : fields([["transport", "in-process"]])
  if (Option.isNone(client.tls)) return `${where} tls=no`
  const { psk, subject } = client.tls.value
  const tls: Array<readonly [string, string]> = [["tls", "yes"]]
  if (Option.isSome(subject)) tls.push(["tls-subject", subject.value])
  if (Option.isSome(psk)) tls.push(["tls-psk", psk.value])
  return `${where} ${fields(tls)}`
}

const requestLine = (who: string, completed: Completed): string =>
  `time=${isoTime(Number(completed.startNanos / 1_000_000n))} ${who} ` + fields([
    ["event", "request"],
    ["command", completed.command],
    ["offset", completed.offset],
    ["length", completed.length],
    ["flags", completed.flags.length === 0 ? "-" : completed.flags.join(",")],
    ["result", completed.result],
    ["us", Math.round(completed.micros)]
  ]) + "\n"

/** Writes a line stamped with the current `Clock` time. */
const stamped = (file: AppendFile.AppendFile, who: string, rest: string) =>
  Effect.flatMap(Clock.currentTimeMillis, (millis) => file.write(`time=${isoTime(millis)} ${who} ${rest}\n`))

/** One connection: logs its opening, its requests, and its closing when its scope closes. */
const connection = (
  file: AppendFile.AppendFile,
  handle: Driver.DriverHandle,
  request: Driver.OpenRequest
): Effect.Effect<Driver.HandleOverrides, never, Scope.Scope> =>
  Effect.gen(function*() {
    const who = fields([["conn", request.client.connectionId], ["export", request.exportName]])
    const counts = { requests: 0, errors: 0 }
    yield* stamped(file, who, `event=open ${transportFields(request.client)}`)
    yield* Effect.addFinalizer(() =>
      stamped(file, who, fields([["event", "close"], ["requests", counts.requests], ["errors", counts.errors]]))
    )
    return instrument(handle, (completed) => {
      counts.requests++
      if (completed.result !== "ok" && completed.result !== "interrupted") counts.errors++
      return file.write(requestLine(who, completed))
    })
  })

/** The log filter: opens the file in the stack's scope (failing the stack if it cannot). */
export const make = (options: LogOptions): Driver.Filter<AppendFile.AppendFileError> => (below) =>
  Effect.map(AppendFile.open(options.file), (file) =>
    Driver.filter(below, {
      name: "log",
      open: (handle, request) => connection(file, handle, request)
    }))

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (
  options: LogOptions
): Layer.Layer<Driver.NbdDriver, AppendFile.AppendFileError, Driver.NbdDriver> => Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "file", description: "the file to append log lines to (created if missing)" }
]

/** The filter by name, for the command line: `--filter log:file=PATH`. */
export const plugin: FilterPlugin = {
  name: "log",
  summary: "appends a line per request, connection and disconnection to a file",
  parameters,
  make: (pairs) => Params.decode("log", pairs, parameters, (reader) => make({ file: reader.string("file") }))
}
