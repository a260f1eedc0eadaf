import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Logger from "effect/Logger"
import { parseHostPort } from "../../src/cli/ObservabilityOptions.ts"
import * as LogFormat from "../../src/observability/LogFormat.ts"

describe("--log-format json", () => {
  it.effect("lines parse and carry the annotations", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const capture = Logger.replace(Logger.defaultLogger, Logger.map(LogFormat.jsonLogger, (line) => void lines.push(line)))
      yield* Effect.gen(function*() {
        yield* Effect.logWarning("closing connection: bad magic").pipe(
          Effect.annotateLogs({ connection: 7, remote: "127.0.0.1:5000", export: "disk", level: "spoofed" })
        )
        yield* Effect.logError("driver defect", Cause.die(new Error("boom")))
        yield* Effect.logInfo("line\nwith \"quotes\"", 42n)
      }).pipe(Effect.provide(capture))
      const records = lines.map((line) => JSON.parse(line) as Record<string, unknown>)
      expect(lines.every((line) => !line.includes("\n"))).toBe(true)
      expect(records[0]).toMatchObject({
        level: "WARN",
        message: "closing connection: bad magic",
        connection: 7,
        remote: "127.0.0.1:5000",
        export: "disk"
      })
      expect(Number.isNaN(Date.parse(String(records[0]!.timestamp)))).toBe(false)
      expect(records[1]).toMatchObject({ level: "ERROR", message: "driver defect" })
      expect(String(records[1]!.cause)).toContain("boom")
      expect(records[2]).toMatchObject({ level: "INFO", message: "line\nwith \"quotes\" 42" })
    }))
})

describe("--metrics HOST:PORT", () => {
  it("parses host and port", () => {
    const parse = (text: string) => Either.getOrUndefined(parseHostPort(text))
    expect(parse("127.0.0.1:9100")).toEqual({ host: "127.0.0.1", port: 9100 })
    expect(parse(":9100")).toEqual({ host: "127.0.0.1", port: 9100 })
    expect(parse("[::1]:0")).toEqual({ host: "::1", port: 0 })
    expect(parse("0.0.0.0:80")).toEqual({ host: "0.0.0.0", port: 80 })
    for (const bad of ["9100", "host:", "host:70000", "::1:9100", "host:port"]) {
      expect(Either.isLeft(parseHostPort(bad)), bad).toBe(true)
    }
  })
})
