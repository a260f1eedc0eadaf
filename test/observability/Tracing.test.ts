import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Tracing from "../../src/observability/Tracing.ts"
import { exportsOf, serverStream } from "../support/InProcess.ts"

const SIZE = 1024 * 1024

/** Runs a client session against an in-process server whose spans land in `exporter`. */
const traced = (exporter: InMemorySpanExporter, enabled: boolean) =>
  Effect.gen(function*() {
    yield* Effect.scoped(Effect.gen(function*() {
      const client = yield* Client.connect(yield* serverStream())
      yield* client.write(0, new Uint8Array(4096).fill(7))
      yield* client.read(512, 1024)
      yield* Effect.flip(client.write(SIZE, new Uint8Array(1)))
      yield* client.disconnect
    }))
    // Read before the layer closes: shutting the SDK down empties the exporter.
    return exporter.getFinishedSpans()
  }).pipe(
    Effect.provide(Layer.mergeAll(
      exportsOf(MemoryDriver.layer({ size: SIZE }), { name: "disk" }),
      NodeSdk.layer(() => ({ spanProcessor: new SimpleSpanProcessor(exporter) })),
      enabled ? Tracing.layerEnabled : Layer.empty
    ))
  )

describe("tracing", () => {
  it.effect("one span per request with its attributes, children of the session's span", () =>
    Effect.gen(function*() {
      const exporter = new InMemorySpanExporter()
      const spans = yield* traced(exporter, true)
      const sessions = spans.filter((span) => span.name === Tracing.SESSION_SPAN)
      const requests = spans.filter((span) => span.name === Tracing.REQUEST_SPAN)
      expect(sessions).toHaveLength(1)
      const session = sessions[0]!
      expect(session.attributes["nbd.export"]).toBe("disk")
      expect(session.attributes["nbd.connection"]).toBe(1)
      expect(requests.map((span) => span.attributes)).toEqual([
        { "nbd.export": "disk", "nbd.command": "WRITE", "nbd.offset": 0, "nbd.length": 4096 },
        { "nbd.export": "disk", "nbd.command": "READ", "nbd.offset": 512, "nbd.length": 1024 },
        { "nbd.export": "disk", "nbd.command": "WRITE", "nbd.offset": SIZE, "nbd.length": 1, "nbd.errno": "ENOSPC" }
      ])
      for (const request of requests) {
        expect(request.parentSpanContext?.spanId).toBe(session.spanContext().spanId)
        expect(request.spanContext().traceId).toBe(session.spanContext().traceId)
      }
    }))

  it.effect("no span when tracing is off", () =>
    Effect.gen(function*() {
      const exporter = new InMemorySpanExporter()
      const spans = yield* traced(exporter, false)
      expect(spans.map((span) => span.name)).toEqual([])
    }))

  it.effect("the OTEL_* environment chooses the exporter", () =>
    Effect.gen(function*() {
      const withEnv = (env: Record<string, string>) =>
        Effect.withConfigProvider(Tracing.exporterFromEnv, ConfigProvider.fromMap(new Map(Object.entries(env))))
      const chosen = yield* Effect.all([
        withEnv({}),
        withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" }),
        withEnv({ OTEL_TRACES_EXPORTER: "otlp" }),
        withEnv({ OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" }),
        withEnv({ OTEL_SDK_DISABLED: "true", OTEL_TRACES_EXPORTER: "otlp" }),
        withEnv({ OTEL_TRACES_EXPORTER: "console" })
      ])
      expect(chosen.map(Option.getOrUndefined)).toEqual([undefined, "otlp", "otlp", undefined, undefined, "console"])
    }))
})
