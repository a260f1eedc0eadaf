import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Prometheus from "../../src/observability/Prometheus.ts"
import * as PrometheusExporter from "../../src/observability/PrometheusExporter.ts"
import * as Metrics from "../../src/server/Metrics.ts"

describe("Prometheus text format", () => {
  it("renders counters, gauges and histograms with escaped labels", () => {
    const metrics = Metrics.make({ labels: { server: "a \"quoted\"\\name\nnext" } })
    metrics.connectionAccepted(1)
    const disk = metrics.forExport("disk")
    disk.request(1)
    disk.written(4096)
    disk.latency(1, 0.00002)
    disk.latency(1, 3)
    disk.error(1, "ENOSPC")
    const text = Prometheus.render(metrics.registry.snapshot())
    const server = `server="a \\"quoted\\"\\\\name\\nnext"`
    expect(text).toContain(`# TYPE nbd_connections_total counter\nnbd_connections_total{${server}} 1\n`)
    expect(text).toContain(`# TYPE nbd_sessions_active gauge\nnbd_sessions_active{${server}} 1\n`)
    expect(text).toContain(`nbd_written_bytes_total{${server},export="disk"} 4096\n`)
    expect(text).toContain(`nbd_request_errors_total{${server},export="disk",command="WRITE",errno="ENOSPC"} 1\n`)
    const write = `${server},export="disk",command="WRITE"`
    expect(text).toContain("# TYPE nbd_request_duration_seconds histogram\n")
    expect(text).toContain(
      [
        `nbd_request_duration_seconds_bucket{${write},le="0.00001"} 0`,
        `nbd_request_duration_seconds_bucket{${write},le="0.000025"} 1`
      ].join("\n")
    )
    expect(text).toContain(
      [
        `nbd_request_duration_seconds_bucket{${write},le="2.5"} 1`,
        `nbd_request_duration_seconds_bucket{${write},le="5"} 2`,
        `nbd_request_duration_seconds_bucket{${write},le="10"} 2`,
        `nbd_request_duration_seconds_bucket{${write},le="+Inf"} 2`,
        `nbd_request_duration_seconds_sum{${write}} 3.00002`,
        `nbd_request_duration_seconds_count{${write}} 2`
      ].join("\n")
    )
    // One HELP and one TYPE line per metric name, whatever the number of label sets.
    expect(text.match(/^# TYPE nbd_requests_total /gm)).toHaveLength(1)
    expect(text.match(/^# HELP /gm)?.length).toBe(text.match(/^# TYPE /gm)?.length)
  })

  it("formats special values", () => {
    expect([Prometheus.formatValue(Infinity), Prometheus.formatValue(-Infinity), Prometheus.formatValue(NaN)])
      .toEqual(["+Inf", "-Inf", "NaN"])
    expect(Prometheus.formatValue(BigInt("12345678901234567890"))).toBe("12345678901234567890")
  })

  it.scoped("the layer serves GET /metrics and nothing else", () =>
    Effect.gen(function*() {
      const metrics = Metrics.make()
      metrics.forExport("x").read(512)
      const context = yield* Layer.build(PrometheusExporter.layer({ host: "127.0.0.1", port: 0 }, metrics.snapshot))
      const address = Context.get(context, PrometheusExporter.PrometheusExporter).address
      if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
      const base = `http://127.0.0.1:${address.port}`
      const [found, missing] = yield* Effect.promise(() => Promise.all([fetch(`${base}/metrics`), fetch(`${base}/other`)]))
      const body = yield* Effect.promise(() => found.text())
      yield* Effect.promise(() => missing.arrayBuffer())
      expect(found.status).toBe(200)
      expect(found.headers.get("content-type")).toBe(Prometheus.CONTENT_TYPE)
      expect(body).toContain(`nbd_read_bytes_total{export="x"} 512\n`)
      expect(missing.status).toBe(404)
    }))
})
