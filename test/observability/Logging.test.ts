import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as MetricState from "effect/MetricState"
import * as net from "node:net"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Metrics from "../../src/server/Metrics.ts"
import * as Server from "../../src/server/Server.ts"
import { exportsOf } from "../support/InProcess.ts"

interface Line {
  readonly level: string
  readonly annotations: Record<string, unknown>
}

/** Serves an export over TCP; one client connects, reads and leaves; the session ends. Returns the lines logged. */
const oneConnection = Effect.gen(function*() {
  const lines: Array<Line> = []
  const capture = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ annotations, logLevel }) => {
      lines.push({ level: logLevel.label, annotations: Object.fromEntries(annotations) })
    })
  )
  yield* Effect.scoped(Effect.gen(function*() {
    const exports = exportsOf(MemoryDriver.layer({ size: 65536 }), { name: "disk" })
    const context = yield* Layer.build(Server.layer({ host: "127.0.0.1", port: 0 }).pipe(Layer.provide(exports)))
    const server = Context.get(context, Server.NbdServer)
    const socket = yield* Effect.acquireRelease(
      Effect.async<net.Socket>((resume) => {
        const s = net.connect(server.port!, "127.0.0.1", () => resume(Effect.succeed(s)))
      }),
      (s) => Effect.sync(() => s.destroy())
    )
    const client = yield* Client.connect(socket, { exportName: "disk" })
    yield* client.read(0, 512)
    yield* client.disconnect
    const open = Effect.map(server.metrics.snapshot, (pairs) => {
      const state = Metrics.find(pairs, "nbd_sessions_active")
      return state !== undefined && MetricState.isGaugeState(state) ? Number(state.value) : 0
    })
    while ((yield* open) > 0) yield* Effect.sleep(10)
  }).pipe(Effect.provide(capture)))
  return lines
})

describe("logs of connections", () => {
  it.live("at Effect's default level, a library user gets no line per connection", () =>
    Effect.gen(function*() {
      expect(yield* oneConnection).toEqual([])
    }))

  it.live("at debug level, every line of a connection carries its id, the client's address and the export", () =>
    Effect.gen(function*() {
      const lines = yield* oneConnection.pipe(Logger.withMinimumLogLevel(LogLevel.Debug))
      expect(lines.length).toBeGreaterThan(0)
      expect(lines.every((line) => line.level === "DEBUG")).toBe(true)
      expect(lines.every((line) => line.annotations.connection === 1)).toBe(true)
      const selected = lines.filter((line) => "export" in line.annotations)
      expect(selected.length).toBeGreaterThan(0)
      for (const line of selected) {
        expect(line.annotations).toMatchObject({ export: "disk", remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/) })
      }
    }))
})
