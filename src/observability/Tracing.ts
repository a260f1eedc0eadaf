/**
 * Tracing of sessions and requests with Effect's tracer, exported to OpenTelemetry by
 * `@effect/opentelemetry`.
 *
 * With {@link RequestTracing} enabled, every session is a span (`nbd.session`:
 * connection id, client address, export) and every request a child span of it
 * (`nbd.request`: export, command, offset, length, and the errno when it failed, as
 * `nbd.*` attributes). Disabled (the default), the request path creates no span and keeps
 * its synchronous fast path: tracing costs nothing.
 *
 * {@link layerFromEnv} enables it when the standard OpenTelemetry environment asks for
 * traces, exporting them over OTLP/HTTP:
 * - `OTEL_TRACES_EXPORTER` (default: unset): `otlp` turns tracing on, `console` prints spans
 *   to standard output, `none` turns it off.
 * - `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (default: unset):
 *   where spans are sent; either set turns tracing on (with `otlp`).
 * - `OTEL_SDK_DISABLED` (default false): `true` turns everything off.
 * - `OTEL_SERVICE_NAME` (default `effect-nbd`), `OTEL_RESOURCE_ATTRIBUTES`, and the OTLP
 *   exporter's own variables (`OTEL_EXPORTER_OTLP_HEADERS`, ...), read by the SDK.
 *
 * The OpenTelemetry SDK is loaded only when traces are exported (it weighs on start-up).
 *
 * @since 0.3.0
 */
import type { SpanExporter } from "@opentelemetry/sdk-trace-base"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"

/** Whether sessions and requests are traced. */
export interface TracingSettings {
  readonly enabled: boolean
}

/** Whether the server creates spans for sessions and requests (off by default). */
export class RequestTracing extends Context.Reference<RequestTracing>()("effect-nbd/Tracing/RequestTracing", {
  defaultValue: (): TracingSettings => ({ enabled: false })
}) {}

/** Turns session and request spans on (provide a tracer too, e.g. `NodeSdk.layer`). */
export const layerEnabled: Layer.Layer<never> = Layer.succeed(RequestTracing, { enabled: true })

/** The name of a session's span. */
export const SESSION_SPAN = "nbd.session"

/** The name of a request's span. */
export const REQUEST_SPAN = "nbd.request"

/** Where spans go, as the OpenTelemetry environment says; none when it does not ask for traces. */
export type TraceExport = "otlp" | "console"

/** Reads the standard `OTEL_*` variables: which span exporter, if any, they ask for. */
export const exporterFromEnv: Effect.Effect<Option.Option<TraceExport>> = Effect.gen(function*() {
  const optional = (name: string) => Config.option(Config.string(name))
  const disabled = yield* Config.withDefault(Config.boolean("OTEL_SDK_DISABLED"), false)
  const exporter = yield* optional("OTEL_TRACES_EXPORTER")
  const endpoint = yield* optional("OTEL_EXPORTER_OTLP_ENDPOINT")
  const tracesEndpoint = yield* optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
  if (disabled) return Option.none()
  if (Option.isSome(exporter)) {
    const names = exporter.value.split(",").map((name) => name.trim())
    if (names.includes("none")) return Option.none()
    if (names.includes("otlp")) return Option.some("otlp" as const)
    if (names.includes("console")) return Option.some("console" as const)
  }
  return Option.isSome(endpoint) || Option.isSome(tracesEndpoint) ? Option.some("otlp" as const) : Option.none()
}).pipe(Effect.orElseSucceed(() => Option.none()))

/** The OpenTelemetry SDK exporting spans with `exporter` in batches, and spans turned on. */
export const layerExporter = (exporter: SpanExporter, serviceName?: string): Layer.Layer<never> =>
  Layer.unwrapEffect(Effect.promise(async () => {
    const [NodeSdk, { BatchSpanProcessor }] = await Promise.all([
      import("@effect/opentelemetry/NodeSdk"),
      import("@opentelemetry/sdk-trace-base")
    ])
    const sdk = NodeSdk.layer(() => ({
      spanProcessor: new BatchSpanProcessor(exporter),
      ...(serviceName === undefined ? {} : { resource: { serviceName } })
    }))
    return Layer.merge(sdk, layerEnabled)
  }))

/**
 * Tracing as the `OTEL_*` environment asks: an OTLP/HTTP (or console) exporter and spans
 * turned on, or nothing at all.
 */
export const layerFromEnv: Layer.Layer<never> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const exporter = yield* exporterFromEnv
    if (Option.isNone(exporter)) return Layer.empty
    const serviceName = yield* Config.option(Config.string("OTEL_SERVICE_NAME")).pipe(Effect.orElseSucceed(() => Option.none()))
    const spans: SpanExporter = yield* Effect.promise(async () =>
      exporter.value === "otlp"
        ? new (await import("@opentelemetry/exporter-trace-otlp-http")).OTLPTraceExporter()
        : new (await import("@opentelemetry/sdk-trace-base")).ConsoleSpanExporter()
    )
    return layerExporter(spans, Option.isSome(serviceName) ? undefined : "effect-nbd")
  })
)
