/**
 * The s3 driver's pieces without Ceph, over an in-memory store: the object layout and
 * parameters, the lease's state machine (taking, renewing, taking over an expired or
 * released lease, losing it), and the cache's request pattern (write-back until FLUSH,
 * no fetch before whole-object writes, ranged reads, deletes for whole-object zeroing).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as TestClock from "effect/TestClock"
import type { DriverHandle } from "../../src/Driver.ts"
import * as Driver from "../../src/Driver.ts"
import * as S3 from "../../src/drivers/S3.ts"
import * as S3Bucket from "../../src/drivers/S3Bucket.ts"
import { Lease } from "../../src/drivers/S3Lease.ts"
import * as Objects from "../../src/drivers/S3Objects.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as MemoryStore from "./MemoryStore.ts"

const KiB = 1024
const OBJECT = 64 * KiB
const location: Objects.Location = { bucket: "test-bucket", prefix: "vm/disk" }

describe("s3 object layout", () => {
  it("parses BUCKET/PREFIX and refuses what is not one", () => {
    expect(Objects.parseLocation("disks/vm1/")).toEqual(Either.right({ bucket: "disks", prefix: "vm1" }))
    expect(Objects.parseLocation("disks/a/b")).toEqual(Either.right({ bucket: "disks", prefix: "a/b" }))
    expect(Either.isLeft(Objects.parseLocation("disks"))).toBe(true)
    expect(Either.isLeft(Objects.parseLocation("Bad_Bucket/x"))).toBe(true)
    expect(Either.isLeft(Objects.parseLocation("/x"))).toBe(true)
  })

  it("names data objects so that listing order is disk order", () => {
    const keys = [0, 1, 15, 16, 255, 4096, 2 ** 40].map((i) => Objects.dataKey(location, i))
    expect([...keys].sort()).toEqual(keys)
    expect(keys.map((key) => Objects.indexOfKey(location, key))).toEqual([0, 1, 15, 16, 255, 4096, 2 ** 40])
    expect(Objects.indexOfKey(location, "vm/disk/export.json")).toBeUndefined()
    expect(Objects.objectLength({ format: 1, size: 100 * KiB, objectSize: OBJECT }, 1)).toBe(36 * KiB)
  })

  it("the plugin refuses bad parameters with a message", () => {
    const make = (argument: string, pairs: Record<string, string>) =>
      Either.match(S3.plugin.make(argument, new Map(Object.entries(pairs))), {
        onLeft: (e) => e.message,
        onRight: () => "accepted"
      })
    expect(make("disks/vm1", { size: "1G", "object-size": "4M" })).toBe("accepted")
    expect(make("disks/vm1", { "object-size": "3000" })).toContain("power of two")
    expect(make("disks", {})).toContain("BUCKET/PREFIX")
    expect(make("disks/vm1", { bogus: "1" })).toContain("unknown parameter 'bogus'")
    expect(make("disks/vm1", { uploads: "0" })).toContain("at least 1")
  })
})

describe("s3 driver without a store", () => {
  it.live("an unreachable endpoint fails to open with a message, without crashing", () =>
    Effect.gen(function*() {
      const failed = yield* Effect.flip(Effect.scoped(S3.make({ location: "disks/vm1", endpoint: "http://127.0.0.1:1" })))
      expect(failed._tag).toBe("S3DriverError")
      expect(failed.message).toContain("s3: GET disks/vm1/export.json")
    }))
})

describe("s3-bucket discovery", () => {
  it.effect("finds every prefix holding export.json, in key order, without searching inside exports", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const put = (key: string) => store.put(key, new Uint8Array(1))
      for (const key of ["vm1/export.json", "vm1/data/0000000000000000", "team/b/export.json", "team/a/export.json"]) {
        yield* put(key)
      }
      yield* put("vm1/nested/export.json") // inside an export: not searched
      yield* put("notes/readme.txt")
      expect(yield* S3Bucket.discover(store)).toEqual(["team/a", "team/b", "vm1"])
    }))

  it.scoped("sees exports added later: LIST once the last search is older than rescan=, a name asked for at once", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const create = (prefix: string) =>
        Effect.scoped(S3.make({ location: { bucket: "test-bucket", prefix }, store, size: OBJECT, objectSize: OBJECT, leaseTime: 0 }))
      yield* create("vm1")
      const source = yield* S3Bucket.source("test-bucket", { store, leaseTime: 0, rescan: "1 hour" })
      const names = Effect.map(source.list, (found) => found.map((e) => e.name))
      expect(yield* names).toEqual(["vm1"])
      yield* create("vm2")
      expect(yield* names).toEqual(["vm1"]) // the search is reused
      const vm2 = yield* source.find("vm2") // asked for by name: looked for at once
      expect(vm2._tag).toBe("Some")
      expect(yield* names).toEqual(["vm1", "vm2"])
      expect((yield* source.find("vm3"))._tag).toBe("None")
      yield* create("vm3")
      store.requests.clear()
      expect((yield* source.find("vm3"))._tag).toBe("None") // found missing a moment ago: not looked for again
      expect(store.requests.get("GET")).toBeUndefined()
      expect((yield* source.find("../x"))._tag).toBe("None")
      expect((yield* source.find(""))._tag).toBe("None")

      const eager = yield* S3Bucket.source("test-bucket", { store, leaseTime: 0, rescan: 0 })
      yield* create("team/vm4")
      expect(yield* Effect.map(eager.list, (found) => found.map((e) => e.name))).toEqual(["vm1", "vm2", "vm3", "team/vm4"]) // those found at start first
    }))
})

describe("s3 lease", () => {
  const TTL = 4000
  const leaseOf = (store: MemoryStore.MemoryStore, holder: string, clock: { now: number }) =>
    new Lease({ store, key: Objects.leaseKey(location), holder, ttl: TTL, now: () => clock.now })

  it.effect("one server takes it; another takes over only after seeing it unchanged for a lease time", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const clock = { now: 0 }
      const a = leaseOf(store, "a", clock)
      const b = leaseOf(store, "b", clock)
      expect(yield* a.step).toBe("acquired")
      expect(yield* b.step).toBe("unchanged")
      expect([a.held(), b.held()]).toEqual([true, false])
      clock.now = 1000
      expect(yield* a.step).toBe("renewed")
      clock.now = 3000
      expect(yield* b.step).toBe("unchanged") // the renewal changed the ETag: B starts counting again
      clock.now = 6000
      expect(a.held()).toBe(false) // A did not renew in time: it stopped counting itself the holder
      expect(a.holding()).toBe(true)
      expect(yield* b.step).toBe("unchanged") // 3 s of the same ETag: not yet
      clock.now = 7000
      expect(yield* b.step).toBe("acquired")
      expect(yield* a.step).toBe("lost")
      expect([a.held(), a.holding(), b.held()]).toEqual([false, false, true])
      const refused = yield* Effect.flip(a.guard)
      expect(refused.reason).toBe("Conflict")
    }))

  it.effect("a released lease is taken at once; racing servers get it once", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const clock = { now: 0 }
      const a = leaseOf(store, "a", clock)
      const b = leaseOf(store, "b", clock)
      const c = leaseOf(store, "c", clock)
      const first = yield* Effect.all([a.step, b.step, c.step], { concurrency: "unbounded" })
      expect(first.filter((t) => t === "acquired").length).toBe(1)
      const holder = [a, b, c].find((l) => l.held())!
      const others = [a, b, c].filter((l) => l !== holder)
      yield* holder.release
      expect(holder.held()).toBe(false)
      const second = yield* Effect.all(others.map((l) => l.step), { concurrency: "unbounded" })
      expect(second.filter((t) => t === "acquired").length).toBe(1)
    }))
})

describe("s3 driver over an in-memory store", () => {
  const opened = (store: MemoryStore.MemoryStore, options: Partial<S3.S3Options> = {}) =>
    Effect.flatMap(
      S3.make({ location, store, size: 16 * OBJECT, objectSize: OBJECT, cacheSize: 8 * OBJECT, ...options }),
      (driver) => Testing.open(driver)
    )
  const stored = (store: MemoryStore.MemoryStore) =>
    [...store.objects.keys()].flatMap((key) => {
      const index = Objects.indexOfKey(location, key)
      return index === undefined ? [] : [index]
    }).sort((a, b) => a - b)
  const write = { fua: false }

  it.scoped("writes stay in the cache until FLUSH; whole-object writes and writes into holes fetch nothing", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const handle: DriverHandle = yield* opened(store) // holds the lease: knows which objects exist
      store.requests.clear()
      yield* handle.write(2 * OBJECT, pattern(OBJECT, 1), write) // whole object 2
      yield* handle.write(5 * OBJECT + 10, pattern(100, 2), write) // part of object 5, a hole
      expect(store.requests.get("GET")).toBeUndefined()
      expect(stored(store)).not.toContain(5) // (object 2 was written to its end: it may be on its way)
      yield* handle.flush
      expect(stored(store)).toEqual([2, 5])
      expectBytes(yield* handle.read(5 * OBJECT + 10, 100), pattern(100, 2), "object 5")
      expect(yield* handle.blockStatus(0, 16 * OBJECT)).toEqual([
        { length: 2 * OBJECT, flags: Driver.HOLE_ZERO },
        { length: OBJECT, flags: 0 },
        { length: 2 * OBJECT, flags: Driver.HOLE_ZERO },
        { length: OBJECT, flags: 0 },
        { length: 10 * OBJECT, flags: Driver.HOLE_ZERO }
      ])
      expect(store.requests.get("LIST")).toBeUndefined() // listed once when the lease was taken, not since
    }))

  it.scoped("without the lease, a partial write fetches the object first and block status lists", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const handle: DriverHandle = yield* opened(store, { leaseTime: 0 })
      store.requests.clear()
      yield* handle.write(5 * OBJECT + 10, pattern(100, 2), write)
      expect(store.requests.get("GET")).toBe(1)
      yield* handle.flush
      expect(yield* handle.blockStatus(5 * OBJECT, 2 * OBJECT)).toEqual([
        { length: OBJECT, flags: 0 },
        { length: OBJECT, flags: Driver.HOLE_ZERO }
      ])
      expect(store.requests.get("LIST")).toBe(1)
    }))

  it.scoped("a FUA write is stored before it returns; a small read of an object not cached fetches only its bytes", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const first = yield* opened(store, { leaseTime: 0 })
      yield* first.write(OBJECT, pattern(OBJECT, 3), { fua: true })
      expect(stored(store)).toEqual([1])
      const second = yield* opened(store, { leaseTime: 0, size: undefined, objectSize: undefined })
      expectBytes(yield* second.read(OBJECT + 100, 200), pattern(OBJECT, 3).subarray(100, 300), "ranged read")
      expectBytes(yield* second.read(OBJECT + 100, 200), pattern(OBJECT, 3).subarray(100, 300), "again")
      expect(store.requests.get("GET")).toBe(2 + 2) // the metadata by each driver, then two ranged reads (nothing cached)
    }))

  it.scoped("a read returns cached bytes without a copy, and a later write does not change what it returned", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const handle = yield* opened(store)
      yield* handle.write(2 * OBJECT, pattern(OBJECT, 7), write)
      const whole = yield* handle.read(2 * OBJECT, OBJECT)
      const part = yield* handle.read(2 * OBJECT + 100, 300)
      yield* handle.write(2 * OBJECT, pattern(OBJECT, 8), write) // whole object replaced
      const again = yield* handle.read(2 * OBJECT, OBJECT)
      yield* handle.write(2 * OBJECT + 50, pattern(500, 9), write) // partial: changes a copy
      yield* handle.writeZeroes(2 * OBJECT, 1000, { fua: false, noHole: true, fastZero: false })
      expectBytes(whole, pattern(OBJECT, 7), "the first read")
      expectBytes(part, pattern(OBJECT, 7).subarray(100, 400), "the part read")
      expectBytes(again, pattern(OBJECT, 8), "the read after the whole write")
      const now = Buffer.from(pattern(OBJECT, 8))
      now.set(pattern(500, 9), 50)
      now.fill(0, 0, 1000)
      expectBytes(yield* handle.read(2 * OBJECT, OBJECT), now, "the object now")
    }))

  it.scoped("zeroing whole objects deletes them and reports holes", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const handle = yield* opened(store)
      for (let i = 0; i < 16; i++) yield* handle.write(i * OBJECT, pattern(OBJECT, i), write)
      yield* handle.flush
      expect(stored(store).length).toBe(16)
      yield* handle.trim(OBJECT / 2, 15 * OBJECT, { fua: true })
      expect(stored(store)).toEqual([0, 15])
      expect(yield* handle.blockStatus(0, 16 * OBJECT)).toEqual([
        { length: OBJECT, flags: 0 },
        { length: 14 * OBJECT, flags: Driver.HOLE_ZERO },
        { length: OBJECT, flags: 0 }
      ])
      const expected = pattern(OBJECT, 0)
      expected.fill(0, OBJECT / 2)
      expectBytes(yield* handle.read(0, OBJECT), expected, "object 0")
    }))

  it.scoped("concurrent writes, zeroes and reads through a small cache match a plain buffer, and so does the store", () =>
    Effect.gen(function*() {
      const slice = 3 * OBJECT + 1000 // eight slices, not aligned to objects: neighbours share objects
      const size = 8 * slice
      for (const leaseTime of ["4 seconds", 0] as const) {
        const store = MemoryStore.make("test-bucket", true)
        const handle = yield* opened(store, { size, cacheSize: 4 * OBJECT, leaseTime, uploads: 3, downloads: 3 })
        const model = new Uint8Array(size)
        let seed = 12345
        const random = (n: number) => {
          seed = (seed * 1103515245 + 12345) % 2 ** 31
          return seed % n
        }
        for (let round = 0; round < 12; round++) {
          // One request per slice, all at once: their ranges are disjoint, so the outcome is defined.
          const operations = Array.from({ length: 8 }, (_, i) => {
            const offset = i * slice + random(slice - 1)
            const length = 1 + random((i + 1) * slice - offset)
            if ((i + round) % 4 === 3) {
              model.fill(0, offset, offset + length)
              return handle.writeZeroes(offset, length, { fua: false, noHole: random(2) === 0, fastZero: false })
            }
            const data = pattern(length, round * 8 + i)
            model.set(data, offset)
            return handle.write(offset, data, { fua: random(5) === 0 })
          })
          yield* Effect.all(operations, { concurrency: "unbounded" })
          if (round % 3 === 2) yield* handle.flush
          const at = random(size - 1)
          expectBytes(yield* handle.read(at, size - at), model.subarray(at), `read in round ${round}`)
        }
        yield* handle.flush
        const reopened = Buffer.alloc(size)
        for (const [key, object] of store.objects) {
          const index = Objects.indexOfKey(location, key)
          if (index !== undefined) reopened.set(object.data.subarray(0, size - index * OBJECT), index * OBJECT)
        }
        expectBytes(reopened, model, `the store (lease ${leaseTime})`)
      }
    }))

  it.scoped("a server whose lease was taken over fails writes with EIO; new connections are read-only", () =>
    Effect.gen(function*() {
      const store = MemoryStore.make()
      const driver = yield* S3.make({ location, store, size: 4 * OBJECT, objectSize: OBJECT, leaseTime: "4 seconds" })
      const handle = yield* Testing.open(driver)
      yield* handle.write(0, pattern(100, 1), write)
      // Another server took the lease (as after an expiry): the next renewal finds it changed.
      yield* store.put(Objects.leaseKey(location), new TextEncoder().encode("{}"))
      yield* TestClock.adjust("1 second")
      const refused = yield* Effect.flip(handle.write(0, pattern(100, 2), write))
      expect(refused.errno).toBe("EIO")
      expect((yield* Effect.flip(handle.flush)).errno).toBe("EIO")
      expect((yield* Testing.open(driver)).capabilities.readOnly).toBe(true)
      expect(stored(store)).toEqual([]) // the unflushed write was dropped, never stored
    }))
})
