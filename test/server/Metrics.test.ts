import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Metrics from "../../src/server/Metrics.ts"
import { exportsOf, serverStream } from "../support/InProcess.ts"

const count = (metric: Metric.Metric.Counter<number>) => Effect.map(Metric.value(metric), (state) => state.count)

describe("metrics", () => {
  it.layer(exportsOf(MemoryDriver.layer({ size: 1024 * 1024 })))((it) => {
    it.scoped("requests, errors and bytes are counted", () =>
      Effect.gen(function*() {
        const reads = Metrics.requests.pipe(Metric.tagged("command", "READ"))
        const enospc = Metrics.errors.pipe(Metric.tagged("errno", "ENOSPC"))
        const before = yield* Effect.all([count(reads), count(enospc), count(Metrics.bytesRead), count(Metrics.bytesWritten)])
        const client = yield* Client.connect(yield* serverStream())
        yield* client.write(0, new Uint8Array(1000))
        yield* client.read(0, 4096)
        yield* client.read(0, 4096)
        yield* Effect.flip(client.write(1024 * 1024, new Uint8Array(1)))
        const after = yield* Effect.all([count(reads), count(enospc), count(Metrics.bytesRead), count(Metrics.bytesWritten)])
        expect(after.map((n, i) => n - before[i]!)).toEqual([2, 1, 8192, 1000])
      }))
  })
})
