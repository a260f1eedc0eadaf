/**
 * The command-line options for observability and the layers they choose:
 * `--metrics HOST:PORT` (Prometheus metrics at `http://HOST:PORT/metrics`),
 * `--log-format text|json`, and tracing, which the standard `OTEL_*` environment turns
 * on (see {@link Tracing.layerFromEnv}).
 *
 * @since 0.3.0
 */
import * as Options from "@effect/cli/Options"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as LogFormat from "../observability/LogFormat.ts"
import type * as PrometheusExporter from "../observability/PrometheusExporter.ts"
import * as Tracing from "../observability/Tracing.ts"
import * as Server from "../server/Server.ts"

/**
 * `--metrics HOST:PORT`.
 *
 * @since 0.3.0
 */
export const metrics = Options.text("metrics").pipe(
  Options.optional,
  Options.withDescription(
    "Serve Prometheus metrics at http://HOST:PORT/metrics (HOST:PORT, [IPv6]:PORT, or :PORT for 127.0.0.1; port 0 picks one)"
  )
)

/**
 * `--log-format text|json`.
 *
 * @since 0.3.0
 */
export const logFormat = Options.choice("log-format", LogFormat.formats).pipe(
  Options.withDefault("text" as LogFormat.LogFormat),
  Options.withDescription("Logs on standard error as text, or as JSON, one object per line")
)

/**
 * The options, to spread into a command's options.
 *
 * @since 0.3.0
 */
export const options = { metrics, logFormat }

/**
 * The parsed options.
 *
 * @since 0.3.0
 */
export interface ObservabilityOptions {
  readonly metrics: Option.Option<string>
  readonly logFormat: LogFormat.LogFormat
}

/**
 * Parses `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (on 127.0.0.1).
 *
 * @since 0.3.0
 */
export const parseHostPort = (text: string): Either.Either<PrometheusExporter.ExporterOptions, string> => {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim())
  const port = match === null ? NaN : Number(match[3])
  if (match === null || port > 65535) return Either.left(`--metrics: '${text}' is not HOST:PORT`)
  const host = match[1] ?? match[2] ?? ""
  return Either.right({ host: host === "" ? "127.0.0.1" : host, port })
}

/** What the exporter serves: the server's metrics, and any other metric of Effect's global registry. */
const snapshotOf = (server: Server.NbdServer["Type"]) =>
  Effect.zipWith(server.metrics.snapshot, Metric.snapshot, (own, global) => [...own, ...global])

/**
 * The Prometheus exporter of the server in context, listening where `--metrics` says
 * (its HTTP server is loaded only then: it weighs on start-up).
 */
const exporter = (address: string): Layer.Layer<never, Error, Server.NbdServer> =>
  Layer.unwrapEffect(Effect.gen(function*() {
    const listen = yield* Either.match(parseHostPort(address), {
      onLeft: (message) => Effect.fail(new Error(message)),
      onRight: Effect.succeed
    })
    const server = yield* Server.NbdServer
    const Prometheus = yield* Effect.promise(() => import("../observability/PrometheusExporter.ts"))
    return Prometheus.layer(listen, snapshotOf(server)).pipe(
      Layer.tap((context) => {
        const bound = Context.get(context, Prometheus.PrometheusExporter).address
        const where = bound._tag === "TcpAddress"
          ? `http://${bound.hostname.includes(":") ? `[${bound.hostname}]` : bound.hostname}:${bound.port}/metrics`
          : bound.path
        return Effect.logInfo(`serving metrics at ${where}`)
      }),
      Layer.mapError((e) => new Error(`cannot serve metrics on ${address}: ${e.cause instanceof Error ? e.cause.message : String(e.cause)}`))
    )
  }))

/**
 * The server layer, with the Prometheus exporter beside it when `--metrics` is given.
 *
 * @since 0.3.0
 */
export const withExporter = <E, R>(
  options: ObservabilityOptions,
  server: Layer.Layer<Server.NbdServer, E, R>
): Layer.Layer<Server.NbdServer, E | Error, R> =>
  Option.match(options.metrics, {
    onNone: () => server,
    onSome: (address) => Layer.provideMerge(exporter(address), server)
  })

/**
 * The logger of `--log-format` and tracing as the `OTEL_*` environment asks.
 *
 * @since 0.3.0
 */
export const layer = (options: ObservabilityOptions): Layer.Layer<never> =>
  Layer.merge(LogFormat.layer(options.logFormat), Tracing.layerFromEnv)
