import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as MetricState from "effect/MetricState"
import * as net from "node:net"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Metrics from "../../src/server/Metrics.ts"
import * as Server from "../../src/server/Server.ts"
import { exportsOf, serverStream } from "../support/InProcess.ts"

/** The number a counter or gauge holds (0 when absent). */
const valueOf = (metrics: Metrics.ServerMetrics, name: string, labels: Record<string, string> = {}) =>
  Effect.map(metrics.snapshot, (snapshot) => {
    const state = Metrics.find(snapshot, name, labels)
    if (state === undefined) return 0
    if (MetricState.isCounterState(state)) return Number(state.count)
    if (MetricState.isGaugeState(state)) return Number(state.value)
    if (MetricState.isHistogramState(state)) return state.count
    throw new Error(`${name} is neither a counter, a gauge nor a histogram`)
  })

/** A client over TCP, disconnected when the scope closes. */
const tcpClient = (port: number) =>
  Effect.flatMap(
    Effect.acquireRelease(
      Effect.async<net.Socket>((resume) => {
        const socket = net.connect(port, "127.0.0.1", () => resume(Effect.succeed(socket)))
      }),
      (socket) => Effect.sync(() => socket.destroy())
    ),
    (socket) => Client.connect(socket)
  )

describe("metrics", () => {
  it.layer(exportsOf(MemoryDriver.layer({ size: 1024 * 1024 })))((it) => {
    it.scoped("requests, errors, bytes and latencies are counted by export and command", () =>
      Effect.gen(function*() {
        const metrics = Metrics.make()
        const client = yield* Client.connect(yield* Effect.provideService(serverStream(), Metrics.CurrentMetrics, metrics))
        yield* client.write(0, new Uint8Array(1000))
        yield* client.read(0, 4096)
        yield* client.read(0, 4096)
        yield* Effect.flip(client.write(1024 * 1024, new Uint8Array(1)))
        yield* client.flush
        const exp = { export: "" }
        const values = yield* Effect.all([
          valueOf(metrics, "nbd_requests_total", { ...exp, command: "READ" }),
          valueOf(metrics, "nbd_requests_total", { ...exp, command: "WRITE" }),
          valueOf(metrics, "nbd_request_errors_total", { ...exp, command: "WRITE", errno: "ENOSPC" }),
          valueOf(metrics, "nbd_read_bytes_total", exp),
          valueOf(metrics, "nbd_written_bytes_total", exp),
          valueOf(metrics, "nbd_request_duration_seconds", { ...exp, command: "READ" }),
          valueOf(metrics, "nbd_request_duration_seconds", { ...exp, command: "FLUSH" }),
          valueOf(metrics, "nbd_requests_in_flight", exp)
        ])
        expect(values).toEqual([2, 2, 1, 8192, 1000, 2, 1, 0])
      }))
  })

  it.scoped("two servers in one process count apart", () =>
    Effect.gen(function*() {
      const exports = exportsOf(MemoryDriver.layer({ size: 1024 * 1024 }))
      const start = Effect.map(
        Layer.build(Server.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(exports))),
        (context) => Context.get(context, Server.NbdServer)
      )
      const [a, b] = yield* Effect.all([start, start])
      const first = yield* tcpClient(a.port!)
      const second = yield* tcpClient(b.port!)
      yield* first.read(0, 512)
      yield* first.read(0, 512)
      yield* second.read(0, 512)
      const sessions = yield* Effect.all([a, b].map((server) => valueOf(server.metrics, "nbd_sessions_active")))
      const reads = yield* Effect.all(
        [a, b].map((server) => valueOf(server.metrics, "nbd_requests_total", { export: "", command: "READ" }))
      )
      expect(sessions).toEqual([1, 1])
      expect(reads).toEqual([2, 1])
    }))
})
