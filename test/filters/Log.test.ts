import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as fs from "node:fs"
import * as path from "node:path"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Log from "../../src/filters/Log.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { lines, tempDir } from "./TempDir.ts"

const START = Date.UTC(2026, 10, 23, 12, 0, 0)
const memory = () => MemoryDriver.fromStore(new MemoryDriver.SparseMemory(1 << 20))

const tcpClient: Driver.ClientInfo = {
  connectionId: 7,
  transport: { _tag: "Tcp", address: "127.0.0.1", port: 40123 },
  tls: Option.none()
}

/** Parses every line, failing the test on one that is not in the format. */
const parsed = (file: string) =>
  lines(file).map((line) => {
    const fields = Log.parseLine(line)
    if (fields === undefined) expect.fail(`not a log line: ${line}`)
    return fields
  })

/** A driver that reads into the server's buffers (as the file driver does), filling them with 9. */
const readingInto = () =>
  Driver.make({
    name: "into",
    size: Effect.succeed(1 << 20),
    read: (_offset, length) => Effect.succeed(new Uint8Array(length)),
    readInto: (_offset, target) => Effect.sync(() => void target.fill(9))
  })

describe("log filter", () => {
  it.scoped("keeps reads into the server's buffers, logged as READ", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(START)
      const file = path.join(yield* tempDir, "nbd.log")
      yield* Effect.scoped(Effect.gen(function*() {
        const handle = yield* Testing.open(yield* Log.make({ file })(readingInto()), Testing.openRequest("disk", tcpClient))
        const target = new Uint8Array(300)
        yield* handle.readInto!(4096, target)
        expect(target.every((b) => b === 9)).toBe(true)
      }))
      const requests = parsed(file).filter((f) => f.get("event") === "request")
      expect(requests.map((f) => [f.get("command"), f.get("offset"), f.get("length")])).toEqual([["READ", "4096", "300"]])
    }))

  it.scoped("writes one line per request, between the open and close lines of the connection", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(START)
      const file = path.join(yield* tempDir, "nbd.log")
      yield* Effect.scoped(Effect.gen(function*() {
        const driver = yield* Log.make({ file })(memory())
        const handle = yield* Testing.open(driver, Testing.openRequest("disk", tcpClient))
        expect(handle.sync).toBeUndefined()
        yield* handle.write(512, new Uint8Array(1024).fill(3), { fua: true })
        expect((yield* handle.read(512, 1024))[0]).toBe(3)
        yield* handle.flush
        yield* handle.trim(0, 4096, { fua: false })
        yield* handle.writeZeroes(8192, 4096, { fua: false, noHole: true, fastZero: true })
        yield* handle.cache(0, 65536)
        yield* handle.blockStatus(0, 1 << 20)
        expect((yield* Effect.flip(handle.resize(Number.MAX_SAFE_INTEGER))).errno).toBe("ENOSPC")
      }))
      const all = parsed(file)
      expect(all.map((f) => f.get("event"))).toEqual(["open", ...Array(8).fill("request"), "close"])
      for (const fields of all) {
        expect(fields.get("time")).toBe("2026-11-23T12:00:00.000Z")
        expect(fields.get("conn")).toBe("7")
        expect(fields.get("export")).toBe("disk")
      }
      expect([...all[0]!]).toEqual([
        ["time", "2026-11-23T12:00:00.000Z"],
        ["conn", "7"],
        ["export", "disk"],
        ["event", "open"],
        ["transport", "tcp"],
        ["address", "127.0.0.1"],
        ["port", "40123"],
        ["tls", "no"]
      ])
      const requests = all.slice(1, -1).map((f) =>
        [f.get("command"), f.get("offset"), f.get("length"), f.get("flags"), f.get("result"), f.get("us")].join(" ")
      )
      expect(requests).toEqual([
        "WRITE 512 1024 fua ok 0",
        "READ 512 1024 - ok 0",
        "FLUSH 0 0 - ok 0",
        "TRIM 0 4096 - ok 0",
        "WRITE_ZEROES 8192 4096 no-hole,fast-zero ok 0",
        "CACHE 0 65536 - ok 0",
        "BLOCK_STATUS 0 1048576 - ok 0",
        `RESIZE 0 ${Number.MAX_SAFE_INTEGER} - ENOSPC 0`
      ])
      expect(lines(file).at(-1)).toBe("time=2026-11-23T12:00:00.000Z conn=7 export=disk event=close requests=8 errors=1")
    }))

  it.scoped("stamps each request with its start time and its Clock duration in microseconds", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(START)
      const file = path.join(yield* tempDir, "nbd.log")
      const slow = Driver.make({
        size: Effect.succeed(1 << 20),
        read: (_, length) => Effect.as(Effect.sleep("3 millis"), new Uint8Array(length))
      })
      yield* Effect.scoped(Effect.gen(function*() {
        const handle = yield* Testing.open(yield* Log.make({ file })(slow))
        yield* TestClock.adjust("1 second")
        const reading = yield* Effect.fork(handle.read(0, 4096))
        yield* TestClock.adjust("5 millis")
        yield* Fiber.join(reading)
      }))
      const request = parsed(file)[1]!
      expect(request.get("time")).toBe("2026-11-23T12:00:01.000Z")
      expect(request.get("us")).toBe("3000")
      expect(parsed(file)[2]!.get("time")).toBe("2026-11-23T12:00:01.005Z")
    }))

  it.scoped("names the transport and TLS identity, quoting values that are not plain tokens", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(START)
      const file = path.join(yield* tempDir, "nbd.log")
      const clients: Array<[string, Driver.ClientInfo]> = [
        ["my disk", { connectionId: 1, transport: { _tag: "Unix", path: "/run/nbd.sock" }, tls: Option.none() }],
        ["", { connectionId: 2, transport: { _tag: "InProcess" }, tls: Option.none() }],
        ["a\"b\nc", {
          connectionId: 3,
          transport: { _tag: "Tcp", address: "::1", port: 10809 },
          tls: Option.some({ subject: Option.some("CN=alice, O=Example"), psk: Option.none() })
        }],
        ["psk", {
          connectionId: 4,
          transport: { _tag: "Tcp", address: "10.0.0.1", port: 1 },
          tls: Option.some({ subject: Option.none(), psk: Option.some("bob") })
        }]
      ]
      yield* Effect.scoped(Effect.gen(function*() {
        const driver = yield* Log.make({ file })(memory())
        for (const [name, client] of clients) yield* Effect.scoped(Testing.open(driver, Testing.openRequest(name, client)))
      }))
      const raw = lines(file)
      expect(raw).toHaveLength(8)
      const t = "time=2026-11-23T12:00:00.000Z"
      expect(raw[0]).toBe(`${t} conn=1 export="my disk" event=open transport=unix path=/run/nbd.sock tls=no`)
      expect(raw[2]).toBe(`${t} conn=2 export="" event=open transport=in-process tls=no`)
      expect(raw[4]).toBe(
        `${t} conn=3 export="a\\"b\\nc" event=open transport=tcp address=::1 port=10809 tls=yes tls-subject="CN=alice, O=Example"`
      )
      expect(raw[6]).toBe(`${t} conn=4 export=psk event=open transport=tcp address=10.0.0.1 port=1 tls=yes tls-psk=bob`)
      expect(Log.parseLine(raw[4]!)?.get("export")).toBe("a\"b\nc")
      expect(Log.parseLine(raw[4]!)?.get("tls-subject")).toBe("CN=alice, O=Example")
      expect(Log.parseLine(raw[5]!)?.get("event")).toBe("close")
    }))

  it.scoped("records defects as EIO and abandoned requests as interrupted", () =>
    Effect.gen(function*() {
      const file = path.join(yield* tempDir, "nbd.log")
      const below = Driver.make({
        size: Effect.succeed(4096),
        read: () => Effect.never,
        write: () => Effect.die("bug"),
        flush: Effect.void
      })
      yield* Effect.scoped(Effect.gen(function*() {
        const handle = yield* Testing.open(yield* Log.make({ file })(below))
        const reading = yield* Effect.fork(handle.read(0, 512))
        yield* Effect.yieldNow()
        yield* Fiber.interrupt(reading)
        yield* Effect.exit(handle.write(0, new Uint8Array(1), { fua: false }))
      }))
      const all = parsed(file)
      expect(all.slice(1, -1).map((f) => `${f.get("command")} ${f.get("result")}`)).toEqual([
        "READ interrupted",
        "WRITE EIO"
      ])
      expect(all.at(-1)?.get("errors")).toBe("1")
      expect(all.at(-1)?.get("requests")).toBe("2")
    }))

  it.scoped("appends to an existing file, and interleaves connections sharing it", () =>
    Effect.gen(function*() {
      const file = path.join(yield* tempDir, "nbd.log")
      fs.writeFileSync(file, "earlier line\n")
      yield* Effect.scoped(Effect.gen(function*() {
        const driver = yield* Log.make({ file })(memory())
        const one = yield* Testing.open(driver, Testing.openRequest("x", Testing.inProcessClient(1)))
        const two = yield* Testing.open(driver, Testing.openRequest("x", Testing.inProcessClient(2)))
        yield* one.read(0, 1)
        yield* two.read(1, 2)
        yield* one.read(3, 4)
      }))
      const raw = lines(file)
      expect(raw[0]).toBe("earlier line")
      const requests = raw.slice(1).map((line) => Log.parseLine(line)!).filter((f) => f.get("event") === "request")
      expect(requests.map((f) => `${f.get("conn")}:${f.get("offset")}+${f.get("length")}`)).toEqual(["1:0+1", "2:1+2", "1:3+4"])
      expect(raw.filter((line) => line.includes("event=close"))).toHaveLength(2)
    }))

  it.scoped("fails to build when the file cannot be opened", () =>
    Effect.gen(function*() {
      const file = path.join(yield* tempDir, "missing", "nbd.log")
      const error = yield* Effect.flip(Log.make({ file })(memory()))
      expect(error._tag).toBe("AppendFileError")
      expect(error.path).toBe(file)
      expect(error.message).toMatch(/ENOENT/)
    }))
})

describe("log plugin", () => {
  it.scoped("requires file= and builds the filter from it", () =>
    Effect.gen(function*() {
      expect(Either.isLeft(Log.plugin.make(new Map()))).toBe(true)
      expect(Either.isLeft(Log.plugin.make(new Map([["file", "/x"], ["level", "debug"]])))).toBe(true)
      const file = path.join(yield* tempDir, "nbd.log")
      const filter = Either.getOrThrow(Log.plugin.make(new Map([["file", file]])))
      yield* Effect.scoped(Effect.flatMap(filter(memory()), (driver) => Effect.scoped(Testing.open(driver))))
      expect(parsed(file).map((f) => f.get("event"))).toEqual(["open", "close"])
      expect(Log.plugin.name).toBe("log")
    }))
})

describe("log line format", () => {
  it("reads back what it writes, and refuses what is not in the format", () => {
    const values = ["disk", "", "a b", "quote\"d", "new\nline", "tab\t", "ünïcode", "=", "x=y z=w", "\\"]
    for (const value of values) {
      const line = `export=${Log.formatValue(value)} n=${Log.formatValue(42)}`
      expect(line).not.toMatch(/\n/)
      expect([...Log.parseLine(line)!]).toEqual([["export", value], ["n", "42"]])
    }
    expect(Log.formatValue("127.0.0.1")).toBe("127.0.0.1")
    expect(Log.parseLine("no pairs here")).toBeUndefined()
    expect(Log.parseLine("a=1  b=2")).toBeUndefined()
    expect(Log.parseLine("a=\"\\x\"")).toBeUndefined()
  })
})
