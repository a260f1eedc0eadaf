import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { ProtocolError } from "../../src/Errors.ts"
import * as ErrorFilter from "../../src/filters/Error.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { expected, readingInto } from "./ReadingInto.ts"

const memory = () => MemoryDriver.fromStore(new MemoryDriver.SparseMemory(1024 * 1024))

const openWith = (options: ErrorFilter.ErrorOptions) =>
  Effect.flatMap(ErrorFilter.make(options)(memory()), (driver) => Testing.open(driver))

/** Which of `n` reads fail ("x") and which succeed ("."). */
const failurePattern = (handle: Driver.DriverHandle, n: number) =>
  Effect.gen(function*() {
    let out = ""
    for (let i = 0; i < n; i++) out += Either.isLeft(yield* Effect.either(handle.read(0, 512))) ? "x" : "."
    return out
  })

describe("error filter", () => {
  it.scoped("rate=1 ops=write fails every write with the errno; reads and flushes still work", () =>
    Effect.gen(function*() {
      const store = new MemoryDriver.SparseMemory(1024 * 1024)
      store.write(0, pattern(4096, 3))
      const driver = yield* ErrorFilter.make({ error: "ENOSPC", ops: ["write"] })(MemoryDriver.fromStore(store))
      const handle = yield* Testing.open(driver)
      for (let i = 0; i < 5; i++) {
        const error = yield* Effect.flip(handle.write(i * 512, pattern(512, 9), { fua: false }))
        expect(error).toBeInstanceOf(ProtocolError)
        expect(error.errno).toBe("ENOSPC")
        expect(error.message).toBe("injected error")
      }
      expectBytes(yield* handle.read(0, 4096), pattern(4096, 3)) // nothing reached the store
      yield* handle.flush
      yield* handle.writeZeroes(0, 512, { fua: false, noHole: false, fastZero: false })
      expect(handle.sync).toBeUndefined() // writes go through the filter
    }))

  it.scoped("operations outside `ops` pass through, with the fast path when reads and writes are untouched", () =>
    Effect.gen(function*() {
      const handle = yield* openWith({ ops: ["flush", "extents"] })
      expect(handle.sync).toBeDefined()
      yield* handle.write(0, pattern(512, 1), { fua: false })
      expectBytes(yield* handle.read(0, 512), pattern(512, 1))
      expect((yield* Effect.flip(handle.flush)).errno).toBe("EIO")
      expect((yield* Effect.flip(handle.blockStatus(0, 512))).errno).toBe("EIO")
    }))

  it.scoped("reads into the server's buffers fail as reads do where `ops` has read, and are kept either way", () =>
    Effect.gen(function*() {
      const failing = yield* Testing.open(yield* ErrorFilter.make({ ops: ["read"] })(readingInto().driver))
      expect((yield* Effect.flip(failing.readInto!(0, new Uint8Array(10)))).errno).toBe("EIO")
      const below = readingInto()
      const passing = yield* Testing.open(yield* ErrorFilter.make({ ops: ["write"] })(below.driver))
      const target = new Uint8Array(10)
      yield* passing.readInto!(5, target)
      expectBytes(target, expected(5, 10))
      expect(below.calls).toEqual({ read: 0, readInto: 1 })
    }))

  it.scoped("by default every operation fails with EIO", () =>
    Effect.gen(function*() {
      const handle = yield* openWith({})
      const zero = { fua: false, noHole: false, fastZero: false }
      const errors = yield* Effect.all([
        Effect.flip(handle.read(0, 1)),
        Effect.flip(handle.write(0, new Uint8Array(1), { fua: false })),
        Effect.flip(handle.writeZeroes(0, 1, zero)),
        Effect.flip(handle.trim(0, 1, { fua: false })),
        Effect.flip(handle.flush),
        Effect.flip(handle.cache(0, 1)),
        Effect.flip(handle.blockStatus(0, 1))
      ])
      expect(errors.map((e) => e.errno)).toEqual(Array(7).fill("EIO"))
      expect(yield* handle.size).toBe(1024 * 1024) // size is not an operation of `ops`
    }))

  it.scoped("rate=0.5 seed=1 fails the same requests on two fresh stacks", () =>
    Effect.gen(function*() {
      const first = yield* failurePattern(yield* openWith({ rate: 0.5, seed: 1 }), 64)
      const second = yield* failurePattern(yield* openWith({ rate: 0.5, seed: 1 }), 64)
      expect(second).toBe(first)
      const failures = first.split("x").length - 1
      expect(failures).toBeGreaterThan(16)
      expect(failures).toBeLessThan(48)
      expect(yield* failurePattern(yield* openWith({ rate: 0.5, seed: 2 }), 64)).not.toBe(first)
      expect(yield* failurePattern(yield* openWith({ rate: 0 }), 16)).toBe(".".repeat(16))
    }))

  it.scoped("the connections of a stack draw from one sequence", () =>
    Effect.gen(function*() {
      const alone = yield* failurePattern(yield* openWith({ rate: 0.5, seed: 7 }), 32)
      const driver = yield* ErrorFilter.make({ rate: 0.5, seed: 7 })(memory())
      const a = yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(1)))
      const b = yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(2)))
      let shared = ""
      for (let i = 0; i < 16; i++) {
        shared += yield* failurePattern(a, 1)
        shared += yield* failurePattern(b, 1)
      }
      expect(shared).toBe(alone)
    }))

  it.scoped("file= arms the filter only while the file exists", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-error-"))),
        (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
      )
      const file = path.join(dir, "armed")
      const handle = yield* openWith({ file, error: "EPERM" })
      expect(yield* failurePattern(handle, 3)).toBe("...")
      fs.writeFileSync(file, "")
      expect(yield* failurePattern(handle, 3)).toBe("xxx")
      expect((yield* Effect.flip(handle.read(0, 1))).errno).toBe("EPERM")
      fs.rmSync(file)
      expect(yield* failurePattern(handle, 3)).toBe("...")
    }))

  it.scoped("armed: a switch written in code, as a test layer", () =>
    Effect.gen(function*() {
      const armed = yield* Ref.make(false)
      const handle = yield* Effect.flatMap(Driver.NbdDriver, Testing.open).pipe(
        Effect.provide(
          ErrorFilter.layer({ armed: Ref.get(armed) }).pipe(Layer.provide(Layer.succeed(Driver.NbdDriver, memory())))
        )
      )
      expect(yield* failurePattern(handle, 2)).toBe("..")
      yield* Ref.set(armed, true)
      expect(yield* failurePattern(handle, 2)).toBe("xx")
    }))

  it.scoped("plugin: parameters from text", () =>
    Effect.gen(function*() {
      const filter = Either.getOrThrow(
        ErrorFilter.plugin.make(new Map([["error", "ENOSPC"], ["ops", "write,zero"], ["rate", "1"], ["seed", "3"]]))
      )
      const handle = yield* Testing.open(yield* Effect.orDie(filter(memory())))
      expect((yield* Effect.flip(handle.write(0, new Uint8Array(1), { fua: false }))).errno).toBe("ENOSPC")
      yield* handle.read(0, 1)
      yield* handle.trim(0, 1, { fua: false })
    }))

  it("plugin: unknown and malformed parameters are refused", () => {
    const message = (pairs: Array<[string, string]>) => {
      const result = ErrorFilter.plugin.make(new Map(pairs))
      return Either.isLeft(result) ? result.left.message : "accepted"
    }
    expect(message([["probability", "1"]])).toMatch(/error: unknown parameter 'probability'/)
    expect(message([["error", "EAGAIN"]])).toMatch(/'error' must be one of EPERM, EIO/)
    expect(message([["rate", "1.5"]])).toMatch(/'rate' must be at most 1/)
    expect(message([["ops", "read,resize"]])).toMatch(/unknown operation 'resize'/)
    expect(message([["seed", "x"]])).toMatch(/'seed' must be a number/)
    expect(message([["error", "EIO"], ["rate", "0.1"], ["seed", "5"], ["file", "/tmp/x"]])).toBe("accepted")
  })
})
