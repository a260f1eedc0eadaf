import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { HOLE_ZERO } from "../../src/Driver.ts"
import * as NullDriver from "../../src/drivers/Null.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes } from "../support/Bytes.ts"

const GiB = 1024 ** 3

describe("null driver", () => {
  it.scoped("reads zeroes, whatever was written, trimmed or zeroed", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(NullDriver.make({ size: GiB }))
      expect(yield* handle.size).toBe(GiB)
      yield* handle.write(4096, new Uint8Array(8192).fill(0xab), { fua: true })
      expectBytes(yield* handle.read(4000, 10_000), new Uint8Array(10_000))
      yield* handle.trim(0, GiB, { fua: false })
      yield* handle.writeZeroes(0, GiB, { fua: true, noHole: true, fastZero: true })
      yield* handle.cache(0, GiB)
      yield* handle.flush
      expectBytes(yield* handle.read(GiB - 512, 512), new Uint8Array(512))
    }))

  it.scoped("offers every write-side capability but resize", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(NullDriver.make({ size: GiB }))
      expect(handle.capabilities).toMatchObject({
        readOnly: false,
        flush: true,
        fua: true,
        trim: true,
        zero: true,
        fastZero: true,
        cache: true,
        multiConn: true,
        blockStatus: true,
        resize: false
      })
      const error = yield* Effect.flip(handle.resize(2 * GiB))
      expect(error.errno).toBe("EINVAL")
    }))

  it.scoped("reports everything as a hole that reads as zeroes", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(NullDriver.make({ size: NullDriver.MAX_SIZE }))
      expect(yield* handle.blockStatus(12345, 3 * GiB)).toEqual([{ length: 3 * GiB, flags: HOLE_ZERO }])
    }))

  it.scoped("the fast path reads one hole piece and ignores writes", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(NullDriver.make({ size: GiB }))
      const sync = handle.sync!
      expect(sync.size()).toBe(GiB)
      sync.write(0, new Uint8Array(100).fill(1))
      expect(sync.read(0, 65536)).toEqual([65536])
    }))

  it("refuses sizes that are not whole numbers of bytes up to 2^53-1", () => {
    expect(() => NullDriver.make({ size: -1 })).toThrow(RangeError)
    expect(() => NullDriver.make({ size: 1.5 })).toThrow(RangeError)
    expect(() => NullDriver.make({ size: 2 ** 53 })).toThrow(RangeError)
  })
})

describe("null plugin", () => {
  it.scoped("builds a driver of the SIZE given", () =>
    Effect.gen(function*() {
      const made = NullDriver.plugin.make("1G", new Map())
      const driver = yield* Either.getOrThrow(made)
      const handle = yield* Testing.open(driver)
      expect(yield* handle.size).toBe(GiB)
      expect(driver.name).toBe("null")
    }))

  it("refuses a missing or malformed SIZE and any parameter", () => {
    const message = (argument: string, pairs: ReadonlyMap<string, string> = new Map()) =>
      Either.match(NullDriver.plugin.make(argument, pairs), { onLeft: (e) => e.message, onRight: () => "built" })
    expect(message("")).toMatch(/null: a SIZE is required/)
    expect(message("lots")).toMatch(/null: 'lots' is not a size/)
    expect(message("1G", new Map([["size", "2G"]]))).toMatch(/unknown parameter 'size'/)
    expect(message("16E")).toMatch(/null: /)
    expect(NullDriver.plugin.argument?.name).toBe("SIZE")
    expect(NullDriver.plugin.parameters).toEqual([])
  })
})
