import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { protocolError } from "../../src/Errors.ts"
import * as Offset from "../../src/filters/Offset.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

const K = 1024
const BELOW = 1024 * K
const AT = 64 * K
const RANGE = 256 * K

/** A memory store below the offset filter, the stack opened. */
const openWindow = (options: Offset.OffsetOptions, size = BELOW) =>
  Effect.gen(function*() {
    const store = new MemoryDriver.SparseMemory(size)
    const driver = yield* Offset.make(options)(MemoryDriver.fromStore(store))
    const handle = yield* Testing.open(driver)
    return { store, handle, driver }
  })

/** Concatenates the pieces of a synchronous read. */
const flatten = (pieces: ReadonlyArray<Uint8Array | number>): Uint8Array => {
  const total = pieces.reduce<number>((n, p) => n + (typeof p === "number" ? p : p.length), 0)
  const out = new Uint8Array(total)
  let at = 0
  for (const piece of pieces) {
    if (typeof piece !== "number") out.set(piece, at)
    at += typeof piece === "number" ? piece : piece.length
  }
  return out
}

/** A seeded generator of integers in [0, n). */
const random = (seed: number) => (n: number) => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31
  return Math.floor((seed / 2 ** 31) * n)
}

describe("offset filter", () => {
  it.scoped("behaves as the window of a flat buffer under random writes, zeroes, trims (Effect and sync paths)", () =>
    Effect.gen(function*() {
      const { handle, store } = yield* openWindow({ offset: AT, range: RANGE })
      const model = new Uint8Array(BELOW)
      store.write(0, pattern(BELOW, 7))
      model.set(pattern(BELOW, 7))
      const next = random(42)
      for (let i = 0; i < 200; i++) {
        const offset = next(RANGE)
        const length = 1 + next(Math.min(40 * K, RANGE - offset))
        const op = next(5)
        if (op === 0) {
          const data = pattern(length, i)
          yield* handle.write(offset, data, { fua: false })
          model.set(data, AT + offset)
        } else if (op === 1) {
          const data = pattern(length, i + 1000)
          handle.sync!.write(offset, data)
          model.set(data, AT + offset)
        } else if (op === 2) {
          yield* handle.writeZeroes(offset, length, { fua: false, noHole: false, fastZero: false })
          model.fill(0, AT + offset, AT + offset + length)
        } else if (op === 3) {
          yield* handle.trim(offset, length, { fua: false })
          model.fill(0, AT + offset, AT + offset + length)
        } else {
          expectBytes(yield* handle.read(offset, length), model.subarray(AT + offset, AT + offset + length), "read")
          expectBytes(flatten(handle.sync!.read(offset, length)), model.subarray(AT + offset, AT + offset + length), "sync read")
        }
      }
      // Outside the window nothing changed; inside, the store is the model.
      expectBytes(store.read(0, BELOW), model, "store")
    }))

  it.scoped("shifts readInto, readNow and the fast path's readInto by the window's start, and clips readNow's size", () =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      const below = Driver.make({
        name: "below",
        size: Effect.succeed(BELOW),
        read: (_offset, length) => Effect.succeed(new Uint8Array(length)),
        readInto: (offset, target) => Effect.sync(() => void seen.push(`into ${offset} ${target.length}`)),
        readNow: { size: () => BELOW, into: (offset, target) => (seen.push(`now ${offset} ${target.length}`), true) },
        sync: {
          size: () => BELOW,
          read: (_offset, length) => [new Uint8Array(length)],
          write: () => {},
          readInto: (offset, target) => void seen.push(`sync into ${offset} ${target.length}`)
        }
      })
      const handle = yield* Testing.open(yield* Offset.make({ offset: AT, range: RANGE })(below))
      yield* handle.readInto!(10, new Uint8Array(5))
      expect(handle.readNow!.into(20, new Uint8Array(6))).toBe(true)
      expect(handle.readNow!.size()).toBe(RANGE)
      handle.sync!.readInto!(30, new Uint8Array(7))
      expect(seen).toEqual([`into ${AT + 10} 5`, `now ${AT + 20} 6`, `sync into ${AT + 30} 7`])
    }))

  it.scoped("reports range as its size, or what follows the offset (recomputed), and offers no RESIZE", () =>
    Effect.gen(function*() {
      const windowed = yield* openWindow({ offset: AT, range: RANGE })
      expect(yield* windowed.handle.size).toBe(RANGE)
      expect(windowed.handle.sync!.size()).toBe(RANGE)
      expect(windowed.handle.capabilities.resize).toBe(false)
      const error = yield* Effect.flip(windowed.handle.resize(2 * RANGE))
      expect(error.errno).toBe("EINVAL")

      const rest = yield* openWindow({ offset: AT })
      expect(yield* rest.handle.size).toBe(BELOW - AT)
      rest.store.resize(2 * BELOW)
      expect(yield* rest.handle.size).toBe(2 * BELOW - AT)
      expect(rest.handle.sync!.size()).toBe(2 * BELOW - AT)

      // A driver below that shrinks after open clips the window (the server then refuses requests past it).
      windowed.store.resize(AT + 1000)
      expect(yield* windowed.handle.size).toBe(1000)
      windowed.store.resize(AT - 10)
      expect(windowed.handle.sync!.size()).toBe(0)
    }))

  it.scoped("keeps the capabilities below except RESIZE", () =>
    Effect.gen(function*() {
      const { handle } = yield* openWindow({ offset: AT })
      const below = yield* Testing.open(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(BELOW)))
      expect(handle.capabilities).toEqual({ ...below.capabilities, resize: false })
    }))

  it.scoped("block status, flush and cache are asked of the shifted range", () =>
    Effect.gen(function*() {
      const { handle, store } = yield* openWindow({ offset: AT, range: RANGE })
      const page = MemoryDriver.PAGE_SIZE
      store.write(AT + 2 * page, new Uint8Array(page).fill(1))
      expect(yield* handle.blockStatus(0, 4 * page)).toEqual([
        { length: 2 * page, flags: Driver.HOLE_ZERO },
        { length: page, flags: 0 },
        { length: page, flags: Driver.HOLE_ZERO }
      ])
      yield* handle.cache(0, RANGE)
      yield* handle.flush
    }))

  it.scoped("shifts the offset of a failure below back into the window", () =>
    Effect.gen(function*() {
      const failing = Driver.make({
        size: Effect.succeed(BELOW),
        read: (offset) => Effect.fail(protocolError("EIO", "bad sector", offset + 10))
      })
      const handle = yield* Testing.open(yield* Offset.make({ offset: AT })(failing))
      const error = yield* Effect.flip(handle.read(500, 100))
      expect(error.errno).toBe("EIO")
      expect(error.offset).toBe(510)
    }))

  it.scoped("refuses a client when the window does not fit or is misaligned below", () =>
    Effect.gen(function*() {
      const tooLong = yield* Effect.flip(openWindow({ offset: AT, range: BELOW }))
      expect(tooLong._tag === "OptionReplyError" && tooLong.reply).toBe("INVALID")
      expect(tooLong.message).toContain("does not fit")
      const pastEnd = yield* Effect.flip(openWindow({ offset: BELOW + 1 }))
      expect(pastEnd._tag === "OptionReplyError" && pastEnd.reply).toBe("INVALID")
      // The whole device and an empty window at its end are fine.
      const whole = yield* openWindow({ offset: 0, range: BELOW })
      expect(yield* whole.handle.size).toBe(BELOW)
      const empty = yield* openWindow({ offset: BELOW })
      expect(yield* empty.handle.size).toBe(0)

      const aligned4k = Driver.filter(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(BELOW)), {
        name: "4k",
        open: () => ({ capabilities: (caps) => ({ ...caps, blockSize: { minimum: 4096, preferred: 4096, maximum: 65536 } }) })
      })
      const misaligned = yield* Effect.flip(Testing.open(yield* Offset.make({ offset: 512 })(aligned4k)))
      expect(misaligned.reply).toBe("INVALID")
      expect(misaligned.message).toContain("multiple of the minimum block size 4096")
      const ok = yield* Testing.open(yield* Offset.make({ offset: 8192 })(aligned4k))
      expect(ok.capabilities.blockSize.minimum).toBe(4096)
    }))

  it.scoped("plugin: parses offset and range as sizes", () =>
    Effect.gen(function*() {
      const filter = Either.getOrThrow(Offset.plugin.make(new Map([["offset", "64K"], ["range", "256K"]])))
      const driver = yield* filter(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(BELOW)))
      expect(driver.name).toBe("offset+memory")
      const handle = yield* Testing.open(driver)
      expect(yield* handle.size).toBe(RANGE)

      const defaults = yield* Either.getOrThrow(Offset.plugin.make(new Map()))(
        MemoryDriver.fromStore(new MemoryDriver.SparseMemory(BELOW))
      )
      expect(yield* (yield* Testing.open(defaults)).size).toBe(BELOW)
    }))

  it("plugin: refuses unknown parameters naming the accepted ones, and malformed sizes", () => {
    const unknown = Offset.plugin.make(new Map([["ofset", "1M"]]))
    if (Either.isRight(unknown)) return expect.fail("an unknown parameter was accepted")
    const error = unknown.left
    expect(error._tag).toBe("ParameterError")
    expect(error.message).toContain("unknown parameter 'ofset'")
    expect(error.message).toContain("accepted: offset, range")
    const malformed = Offset.plugin.make(new Map([["range", "lots"]]))
    expect(Either.isLeft(malformed) && malformed.left.message).toContain("'range'")
    expect(Offset.plugin.parameters.map((p) => p.name)).toEqual(["offset", "range"])
  })
})
