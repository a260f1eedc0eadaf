/**
 * A Prometheus exporter: `GET /metrics` on @effect/platform's HTTP server (Node.js),
 * answering with Effect metric pairs in the text exposition format ({@link render}).
 *
 * @since 0.3.0
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import type { ServeError } from "@effect/platform/HttpServerError"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as MetricPair from "effect/MetricPair"
import * as http from "node:http"
import { CONTENT_TYPE, render } from "./Prometheus.ts"

/** A running exporter. */
export class PrometheusExporter extends Context.Tag("effect-nbd/Prometheus/PrometheusExporter")<PrometheusExporter, {
  /** Where it listens (the real port when port 0 was asked). */
  readonly address: HttpServer.Address
}>() {}

/** Where the exporter listens. */
export interface ExporterOptions {
  readonly host: string
  readonly port: number
}

/** The `GET /metrics` route answering with what `snapshot` reads, rendered. */
export const router = (snapshot: Effect.Effect<ReadonlyArray<MetricPair.MetricPair.Untyped>>): HttpRouter.HttpRouter =>
  HttpRouter.empty.pipe(
    HttpRouter.get("/metrics", Effect.map(snapshot, (pairs) => HttpServerResponse.text(render(pairs), { contentType: CONTENT_TYPE })))
  )

/**
 * Serves `GET /metrics` on `host:port` for as long as the layer lives, from what
 * `snapshot` reads at each request (e.g. `NbdServer`'s `metrics.snapshot`).
 */
export const layer = (
  options: ExporterOptions,
  snapshot: Effect.Effect<ReadonlyArray<MetricPair.MetricPair.Untyped>>
): Layer.Layer<PrometheusExporter, ServeError> =>
  Layer.scoped(
    PrometheusExporter,
    Effect.gen(function*() {
      const server = yield* NodeHttpServer.make(() => http.createServer(), { host: options.host, port: options.port })
      yield* HttpServer.serveEffect(router(snapshot)).pipe(Effect.provideService(HttpServer.HttpServer, server))
      return PrometheusExporter.of({ address: server.address })
    })
  )
