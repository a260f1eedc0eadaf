import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as PatternDriver from "../../src/drivers/Pattern.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes } from "../support/Bytes.ts"

/** The pattern byte by byte from its definition: byte i is byte (i mod 8) of the big-endian word floor(i/8)*8. */
const reference = (offset: number, length: number): Uint8Array => {
  const out = new Uint8Array(length)
  for (let k = 0; k < length; k++) {
    const i = offset + k
    const word = BigInt(i - (i % 8))
    out[k] = Number((word >> BigInt(8 * (7 - (i % 8)))) & 0xffn)
  }
  return out
}

const SIZE = PatternDriver.MAX_SIZE

/** Offsets near the start, around 2^32 (where the high word changes) and near the end of the largest export. */
const offsets = FastCheck.oneof(
  FastCheck.integer({ min: 0, max: 100_000 }),
  FastCheck.integer({ min: 2 ** 32 - 2000, max: 2 ** 32 + 2000 }),
  FastCheck.integer({ min: SIZE - 10_000, max: SIZE - 4100 })
)

describe("pattern content", () => {
  it("each aligned word holds its offset, big-endian", () => {
    expectBytes(PatternDriver.bytesAt(0, 24), new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 16]))
    expectBytes(PatternDriver.bytesAt(0x123456789a0 + 3, 6), new Uint8Array([0x23, 0x45, 0x67, 0x89, 0xa0, 0]))
    expectBytes(PatternDriver.bytesAt(2 ** 32 - 8, 16), new Uint8Array([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xf8, 0, 0, 0, 1, 0, 0, 0, 0]))
  })

  it("matches the definition at unaligned offsets and lengths", () => {
    FastCheck.assert(
      FastCheck.property(offsets, FastCheck.integer({ min: 0, max: 4099 }), (offset, length) => {
        expectBytes(PatternDriver.bytesAt(offset, length), reference(offset, length), `[${offset}, +${length})`)
      }),
      { numRuns: 200 }
    )
  })

  it.scoped("the Effect read and the fast path read give the same bytes", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(PatternDriver.make({ size: SIZE }))
      for (const [offset, length] of [[0, 1], [7, 9], [2 ** 32 - 3, 17], [SIZE - 13, 13], [1000, 65536 + 5]] as const) {
        const expected = reference(offset, length)
        expectBytes(yield* handle.read(offset, length), expected)
        const pieces = handle.sync!.read(offset, length)
        expect(pieces.length).toBe(1)
        expectBytes(pieces[0] as Uint8Array, expected)
      }
    }))

  it.scoped("a size that is not a multiple of 8 cuts the last word", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(PatternDriver.make({ size: 20 }))
      expect(yield* handle.size).toBe(20)
      expectBytes(yield* handle.read(16, 4), new Uint8Array([0, 0, 0, 0]))
      expectBytes(yield* handle.read(8, 12), reference(8, 12))
    }))
})

describe("pattern driver", () => {
  it.scoped("is read-only: writes and zeroing are refused with EPERM", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(PatternDriver.make({ size: 1 << 20 }))
      expect(handle.capabilities).toMatchObject({
        readOnly: true,
        zero: false,
        trim: false,
        fastZero: false,
        resize: false,
        flush: false,
        cache: true,
        multiConn: true,
        blockStatus: true
      })
      expect((yield* Effect.flip(handle.write(0, new Uint8Array(8), { fua: false }))).errno).toBe("EPERM")
      expect((yield* Effect.flip(handle.writeZeroes(0, 8, { fua: false, noHole: false, fastZero: false }))).errno)
        .toBe("EPERM")
      expectBytes(yield* handle.read(0, 16), reference(0, 16))
      yield* handle.cache(0, 1 << 20)
    }))

  it.scoped("reports everything as data", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(PatternDriver.make({ size: 1 << 30 }))
      expect(yield* handle.blockStatus(3, 1 << 29)).toEqual([{ length: 1 << 29, flags: 0 }])
    }))

  it("refuses invalid sizes", () => {
    expect(() => PatternDriver.make({ size: -8 })).toThrow(RangeError)
    expect(() => PatternDriver.make({ size: 2 ** 60 })).toThrow(RangeError)
  })
})

describe("pattern plugin", () => {
  it.scoped("builds a driver of the SIZE given", () =>
    Effect.gen(function*() {
      const driver = yield* Either.getOrThrow(PatternDriver.plugin.make("64M", new Map()))
      const handle = yield* Testing.open(driver)
      expect(yield* handle.size).toBe(64 * 1024 * 1024)
      expectBytes(yield* handle.read(64 * 1024 * 1024 - 5, 5), reference(64 * 1024 * 1024 - 5, 5))
    }))

  it("refuses a missing SIZE and any parameter", () => {
    expect(Either.isLeft(PatternDriver.plugin.make("", new Map()))).toBe(true)
    expect(Either.isLeft(PatternDriver.plugin.make("1G", new Map([["seed", "1"]])))).toBe(true)
    expect(Either.isLeft(PatternDriver.plugin.make("1Q", new Map()))).toBe(true)
  })
})
