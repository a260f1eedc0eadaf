/**
 * The s3 driver against a real single-node Ceph (radosgw), in process: the object
 * layout, reads of holes, partial and whole-object writes, write-back and FLUSH, FUA,
 * trimming and zeroing (objects deleted), block status, a second driver over the same
 * export (read-only while the first holds the lease, then taking it over), and refused
 * parameters.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { randomBytes } from "node:crypto"
import type { DriverHandle } from "../../src/Driver.ts"
import * as Driver from "../../src/Driver.ts"
import * as S3 from "../../src/drivers/S3.ts"
import * as S3Bucket from "../../src/drivers/S3Bucket.ts"
import * as Objects from "../../src/drivers/S3Objects.ts"
import * as S3Store from "../../src/drivers/S3Store.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes } from "../support/Bytes.ts"
import * as Ceph from "./Ceph.ts"

const KiB = 1024
const MiB = 1024 * KiB
const OBJECT = 64 * KiB
const BUCKET = "effect-nbd-driver"

const haveCeph = Ceph.available()
let ceph: Ceph.Ceph | undefined

beforeAll(async () => {
  if (!haveCeph) return
  ceph = await Ceph.start()
  Object.assign(process.env, ceph.env)
})
afterAll(() => ceph?.stop())

let exports = 0
/** A fresh export location in the test bucket. */
const fresh = (): Objects.Location => ({ bucket: BUCKET, prefix: `t${exports++}` })

const store = () => S3Store.make({ bucket: BUCKET, endpoint: ceph!.endpoint })

/** The data objects the store holds for an export, by index. */
const storedObjects = (location: Objects.Location) =>
  Effect.map(
    Effect.orDie(store().list(Objects.dataPrefix(location), undefined, 1000)),
    (listed) => listed.map((o) => Objects.indexOfKey(location, o.key)!)
  )

const opened = (
  options: Partial<S3.S3Options> & { readonly location: Objects.Location }
): Effect.Effect<DriverHandle, unknown, Scope.Scope> =>
  Effect.flatMap(
    S3.make({ endpoint: ceph!.endpoint, objectSize: OBJECT, cacheSize: 1 * MiB, leaseTime: "4 seconds", ...options }),
    (driver) => Testing.open(driver)
  )

const write = { fua: false }
const fua = { fua: true }

describe.skipIf(!haveCeph)("s3 driver on Ceph", () => {
  it.scoped("creates the export and bucket, lays it out as objects, reads holes as zeroes", () =>
    Effect.gen(function*() {
      const location = fresh()
      const handle = yield* opened({ location, size: 10 * OBJECT + 100 })
      expect(yield* handle.size).toBe(10 * OBJECT + 100)
      expect(handle.capabilities).toMatchObject({ readOnly: false, flush: true, fua: true, trim: true, multiConn: true })
      const meta = yield* Effect.orDie(store().get(Objects.metadataKey(location)))
      expect(JSON.parse(new TextDecoder().decode(Option.getOrThrow(meta).data))).toEqual({
        format: 1,
        size: 10 * OBJECT + 100,
        objectSize: OBJECT
      })
      expectBytes(yield* handle.read(0, 3 * OBJECT), new Uint8Array(3 * OBJECT), "a new export")
      expect(yield* handle.blockStatus(0, 10 * OBJECT + 100)).toEqual([{ length: 10 * OBJECT + 100, flags: Driver.HOLE_ZERO }])
      expect(yield* storedObjects(location)).toEqual([])
    }))

  it.scoped("stores writes on FLUSH: partial writes fill the rest of the object with what was there", () =>
    Effect.gen(function*() {
      const location = fresh()
      const handle = yield* opened({ location, size: 8 * OBJECT })
      const data = randomBytes(OBJECT + 2 * KiB)
      yield* handle.write(OBJECT - KiB, data, write) // the end of object 0, all of 1, the start of 2
      expectBytes(yield* handle.read(OBJECT - KiB, data.length), data, "read back before FLUSH")
      yield* handle.flush
      expect(yield* storedObjects(location)).toEqual([0, 1, 2])
      const object0 = Option.getOrThrow(yield* Effect.orDie(store().get(Objects.dataKey(location, 0)))).data
      expect(object0.length).toBe(OBJECT)
      expectBytes(object0.subarray(0, OBJECT - KiB), new Uint8Array(OBJECT - KiB), "untouched part of object 0")
      expectBytes(object0.subarray(OBJECT - KiB), data.subarray(0, KiB), "written part of object 0")
      expect(yield* handle.blockStatus(0, 8 * OBJECT)).toEqual([
        { length: 3 * OBJECT, flags: 0 },
        { length: 5 * OBJECT, flags: Driver.HOLE_ZERO }
      ])
    }))

  it.scoped("a FUA write is stored when it returns", () =>
    Effect.gen(function*() {
      const location = fresh()
      const handle = yield* opened({ location, size: 4 * OBJECT })
      const data = randomBytes(100)
      yield* handle.write(2 * OBJECT + 10, data, fua)
      const object2 = Option.getOrThrow(yield* Effect.orDie(store().get(Objects.dataKey(location, 2)))).data
      expectBytes(object2.subarray(10, 110), data, "object 2")
    }))

  it.scoped("a second server reads what the first flushed, and more than the cache holds", () =>
    Effect.gen(function*() {
      const location = fresh()
      const size = 40 * OBJECT // 2.5 MiB through a 1 MiB cache
      const data = randomBytes(size)
      yield* Effect.scoped(Effect.gen(function*() {
        const first = yield* opened({ location, size })
        for (let at = 0; at < size; at += 256 * KiB) yield* first.write(at, data.subarray(at, at + 256 * KiB), write)
        yield* first.flush
      }))
      const second = yield* opened({ location })
      expectBytes(yield* second.read(0, size), data, "sequential read")
      expectBytes(yield* second.read(17 * OBJECT + 5, 3 * KiB), data.subarray(17 * OBJECT + 5, 17 * OBJECT + 5 + 3 * KiB), "random read")
    }))

  it.scoped("zeroing and trimming whole objects delete them; partial ranges are zeroed in place", () =>
    Effect.gen(function*() {
      const location = fresh()
      const size = 40 * OBJECT
      const handle = yield* opened({ location, size })
      const data = randomBytes(size)
      yield* handle.write(0, data, write)
      yield* handle.flush
      expect((yield* storedObjects(location)).length).toBe(40)
      // 36 whole objects (listed, not guessed) and two partial ends
      yield* handle.trim(OBJECT + 100, 37 * OBJECT, write)
      yield* handle.writeZeroes(0, OBJECT, { fua: true, noHole: false, fastZero: false })
      yield* handle.writeZeroes(39 * OBJECT, OBJECT, { fua: false, noHole: true, fastZero: false })
      yield* handle.flush
      expect(yield* storedObjects(location)).toEqual([1, 38, 39])
      const expected = Buffer.from(data)
      expected.fill(0, 0, OBJECT)
      expected.fill(0, OBJECT + 100, 38 * OBJECT + 100)
      expected.fill(0, 39 * OBJECT)
      expectBytes(yield* handle.read(0, size), expected, "after zeroing")
      expect(yield* handle.blockStatus(0, size)).toEqual([
        { length: OBJECT, flags: Driver.HOLE_ZERO },
        { length: OBJECT, flags: 0 },
        { length: 36 * OBJECT, flags: Driver.HOLE_ZERO },
        { length: 2 * OBJECT, flags: 0 }
      ])
      const failed = yield* Effect.flip(handle.writeZeroes(0, OBJECT, { fua: false, noHole: false, fastZero: true }))
      expect(failed.errno).toBe("ENOTSUP")
    }))

  it.scopedLive("while one server holds the lease another serves read-only, and takes over once it is released", () =>
    Effect.gen(function*() {
      const location = fresh()
      const data = randomBytes(OBJECT)
      const firstScope = yield* Scope.make()
      const first = yield* Scope.extend(opened({ location, size: 4 * OBJECT }), firstScope)
      yield* first.write(0, data, write)
      const second = yield* S3.make({ location, endpoint: ceph!.endpoint, leaseTime: "4 seconds" })
      const readOnly = yield* Testing.open(second)
      expect(readOnly.capabilities.readOnly).toBe(true)
      const refused = yield* Effect.flip(readOnly.write(0, data, write))
      expect(refused.errno).toBe("EIO")
      // The first server stops: its writes are stored and its lease released, which the
      // second takes at its next look (every quarter of the lease time).
      yield* Scope.close(firstScope, Exit.void)
      const writable: Effect.Effect<DriverHandle, unknown, Scope.Scope> = Effect.flatMap(
        Testing.open(second),
        (h) => h.capabilities.readOnly ? Effect.zipRight(Effect.sleep("200 millis"), writable) : Effect.succeed(h)
      )
      const handle = yield* Effect.timeout(writable, "10 seconds")
      expectBytes(yield* handle.read(0, OBJECT), data, "what the first server wrote")
      yield* handle.write(OBJECT, data, fua)
    }))

  it.scoped("s3-bucket serves every export of a bucket under its prefix", () =>
    Effect.gen(function*() {
      const bucket = "effect-nbd-discovery"
      for (const prefix of ["group/b", "group/a"]) {
        yield* Effect.scoped(opened({ location: { bucket, prefix }, size: (prefix === "group/a" ? 1 : 2) * OBJECT }))
      }
      const exports = yield* S3Bucket.make(bucket, { endpoint: ceph!.endpoint, leaseTime: "4 seconds" })
      expect(exports.map((e) => e.name)).toEqual(["group/a", "group/b"])
      const sizes = yield* Effect.forEach(exports, (e) => Effect.flatMap(Testing.open(e.driver), (h) => h.size))
      expect(sizes).toEqual([OBJECT, 2 * OBJECT])
    }))

  it.effect("refuses a size that disagrees with the existing export, and a missing export without size", () =>
    Effect.gen(function*() {
      const location = fresh()
      yield* Effect.scoped(opened({ location, size: 4 * OBJECT }))
      const wrongSize = yield* Effect.flip(Effect.scoped(opened({ location, size: 8 * OBJECT })))
      expect(String((wrongSize as S3.S3DriverError).message)).toContain("exists with size")
      const missing = yield* Effect.flip(Effect.scoped(opened({ location: fresh() })))
      expect(String((missing as S3.S3DriverError).message)).toContain("give size= to create one")
    }))
})
