import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as http from "node:http"
import * as path from "node:path"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Cow from "../../src/filters/Cow.ts"
import * as Dirty from "../../src/filters/Dirty.ts"
import { Option as Opt, Reply } from "../../src/protocol/Constants.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import * as Testing from "../../src/testing/Handle.ts"
import * as InProcess from "../../src/testing/InProcess.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { tempDir } from "./TempDir.ts"

const K = 1024
const SIZE = 1024 * K
const write = { fua: false }
const zero = { fua: false, noHole: false, fastZero: false }
const ACTIVE = "qemu:dirty-bitmap:active"

/** The extents of a context of a handle over the whole export. */
const contextExtents = (handle: Driver.DriverHandle, name: string, offset = 0, length = SIZE) => {
  const source = handle.contexts?.find((c) => c.name === name)
  if (source === undefined) return Effect.dieMessage(`no context ${name}`)
  return source.blockStatus(offset, length)
}

/** A memory driver whose writes yield `i % 7 + 1` times first, so that concurrent writes interleave. */
const slowMemory = (store: MemoryDriver.SparseMemory) =>
  Driver.filter(MemoryDriver.fromStore(store), {
    name: "slow",
    open: (below) => ({
      write: (offset, data, options) =>
        Effect.zipRight(Effect.repeatN(Effect.yieldNow(), (offset / 4096) % 7 + 1), below.write(offset, data, options))
    })
  })

describe("DirtyBitmap", () => {
  it("marks every block a range touches, and reports merged runs clipped to the asked range", () => {
    const bitmap = new Dirty.DirtyBitmap(4096)
    bitmap.mark(1000, 10) // block 0
    bitmap.mark(4096 * 3 - 1, 2) // blocks 2 and 3
    expect(bitmap.extents(0, 8 * 4096)).toEqual([
      { length: 4096, flags: 1 },
      { length: 4096, flags: 0 },
      { length: 8192, flags: 1 },
      { length: 4 * 4096, flags: 0 }
    ])
    expect(bitmap.extents(100, 200)).toEqual([{ length: 200, flags: 1 }])
    expect(bitmap.extents(4096 * 2 + 5, 4096 * 3)).toEqual([{ length: 8192 - 5, flags: 1 }, { length: 4101, flags: 0 }])
    expect(bitmap.dirtyBlocks()).toBe(3)
    expect(bitmap.runs()).toEqual([[0, 1], [2, 2]])
  })

  it("handles whole chunks, round-trips through runs, and an inconsistent bitmap is all dirty", () => {
    const bitmap = new Dirty.DirtyBitmap(512)
    const chunkBytes = 32768 * 512
    bitmap.mark(chunkBytes - 512, 2 * chunkBytes + 1024) // last block of chunk 0, chunks 1 and 2, first of chunk 3
    expect(bitmap.dirtyBlocks()).toBe(32768 * 2 + 2)
    expect(bitmap.extents(0, 4 * chunkBytes)).toEqual([
      { length: chunkBytes - 512, flags: 0 },
      { length: 2 * chunkBytes + 1024, flags: 1 },
      { length: chunkBytes - 512, flags: 0 }
    ])
    const copy = Dirty.DirtyBitmap.fromRuns(512, bitmap.runs())
    expect(copy.extents(0, 4 * chunkBytes)).toEqual(bitmap.extents(0, 4 * chunkBytes))
    expect(copy.asInconsistent().extents(0, 4 * chunkBytes)).toEqual([{ length: 4 * chunkBytes, flags: 1 }])
  })
})

describe("dirty filter", () => {
  it.scoped("keeps the fast path's reads into the server's buffers", () =>
    Effect.gen(function*() {
      const readInto = (_offset: number, target: Uint8Array) => void target.fill(3)
      const below = Driver.make({
        name: "below",
        size: Effect.succeed(SIZE),
        read: (_offset, length) => Effect.succeed(new Uint8Array(length)),
        write: () => Effect.void,
        sync: { size: () => SIZE, read: (_offset, length) => [new Uint8Array(length)], write: () => {}, readInto }
      })
      const handle = yield* Testing.open(yield* Dirty.make({ granularity: 64 * K }).filter(below))
      expect(handle.sync!.readInto).toBe(readInto)
    }))

  it.scoped("marks writes, trims and zeroes at the granularity; keeps the fast path, which marks too", () =>
    Effect.gen(function*() {
      const { control, filter } = Dirty.make({ granularity: 64 * K })
      const store = new MemoryDriver.SparseMemory(SIZE)
      const handle = yield* Testing.open(yield* filter(MemoryDriver.fromStore(store)))
      expect(handle.contexts?.map((c) => c.name)).toEqual([ACTIVE])
      expect(yield* contextExtents(handle, ACTIVE)).toEqual([{ length: SIZE, flags: 0 }])
      yield* handle.write(100, new Uint8Array(10).fill(1), write) // block 0
      yield* handle.trim(3 * 64 * K + 5, 64 * K, write) // blocks 3, 4
      yield* handle.writeZeroes(10 * 64 * K, 1, zero) // block 10
      expect(handle.sync).toBeDefined()
      handle.sync!.write(15 * 64 * K, new Uint8Array(1)) // block 15, the last
      expectBytes(handle.sync!.read(100, 10).map((p) => typeof p === "number" ? new Uint8Array(p) : p)[0]!,
        new Uint8Array(10).fill(1))
      const B = 64 * K
      expect(yield* contextExtents(handle, ACTIVE)).toEqual([
        { length: B, flags: 1 },
        { length: 2 * B, flags: 0 },
        { length: 2 * B, flags: 1 },
        { length: 5 * B, flags: 0 },
        { length: B, flags: 1 },
        { length: 4 * B, flags: 0 },
        { length: B, flags: 1 }
      ])
      expect(yield* control.list).toEqual([
        { name: "active", active: true, granularity: B, dirtyBytes: 5 * B, inconsistent: false }
      ])
      expectBytes(store.read(100, 10), new Uint8Array(10).fill(1))
    }))

  it.scoped("passes the contexts below through (cow's allocation depth) beside its own", () =>
    Effect.gen(function*() {
      const stacked = yield* Driver.stack(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(SIZE)), [
        Dirty.make({ bitmap: "daily" }).filter,
        Cow.make()
      ])
      const handle = yield* Testing.open(stacked)
      expect(handle.contexts?.map((c) => c.name)).toEqual([Cow.ALLOCATION_DEPTH, "qemu:dirty-bitmap:daily"])
    }))

  it.scoped("checkpoint freezes the active bitmap and starts an empty one; new handles see it; remove drops it", () =>
    Effect.gen(function*() {
      const { control, filter } = Dirty.make({ granularity: 4 * K })
      const driver = yield* filter(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(SIZE)))
      const before = yield* Testing.open(driver)
      yield* before.write(0, new Uint8Array(4 * K), write)
      const frozen = yield* control.checkpoint("monday")
      expect(frozen).toEqual({ name: "monday", active: false, granularity: 4 * K, dirtyBytes: 4 * K, inconsistent: false })
      // The handle opened before follows the active bitmap by name, and has no "monday".
      expect(yield* contextExtents(before, ACTIVE)).toEqual([{ length: SIZE, flags: 0 }])
      expect(before.contexts?.map((c) => c.name)).toEqual([ACTIVE])
      yield* before.write(8 * K, new Uint8Array(1), write)
      const after = yield* Testing.open(driver)
      expect(after.contexts?.map((c) => c.name)).toEqual([ACTIVE, "qemu:dirty-bitmap:monday"])
      expect(yield* contextExtents(after, "qemu:dirty-bitmap:monday")).toEqual([
        { length: 4 * K, flags: 1 },
        { length: SIZE - 4 * K, flags: 0 }
      ])
      expect(yield* contextExtents(after, ACTIVE)).toEqual([
        { length: 8 * K, flags: 0 },
        { length: 4 * K, flags: 1 },
        { length: SIZE - 12 * K, flags: 0 }
      ])
      expect((yield* Effect.flip(control.checkpoint("monday"))).reason).toBe("Exists")
      expect((yield* Effect.flip(control.checkpoint("has space"))).reason).toBe("InvalidName")
      expect((yield* Effect.flip(control.remove("active"))).reason).toBe("Active")
      yield* control.remove("monday")
      expect((yield* Effect.flip(control.remove("monday"))).reason).toBe("NotFound")
      expect((yield* control.list).map((b) => b.name)).toEqual(["active"])
      const gone = yield* Effect.flip(contextExtents(after, "qemu:dirty-bitmap:monday"))
      expect(gone.errno).toBe("EINVAL")
    }))

  it.scoped("a write in flight is marked before it goes below, so a checkpoint taken meanwhile counts it", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const reached = yield* Deferred.make<void>()
      const store = new MemoryDriver.SparseMemory(SIZE)
      const blocked = Driver.filter(MemoryDriver.fromStore(store), {
        name: "blocked",
        open: (below) => ({
          write: (offset, data, options) =>
            Deferred.succeed(reached, undefined).pipe(
              Effect.zipRight(Deferred.await(gate)),
              Effect.zipRight(below.write(offset, data, options))
            )
        })
      })
      const { control, filter } = Dirty.make({ granularity: 4096 })
      const driver = yield* filter(blocked)
      const handle = yield* Testing.open(driver)
      const writing = yield* Effect.fork(handle.write(8192, new Uint8Array(1).fill(9), write))
      yield* Deferred.await(reached)
      yield* control.checkpoint("during")
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(writing)
      expect([...store.read(8192, 1)]).toEqual([9])
      const after = yield* Testing.open(driver)
      expect(yield* contextExtents(after, "qemu:dirty-bitmap:during", 0, 16384)).toEqual([
        { length: 8192, flags: 0 },
        { length: 4096, flags: 1 },
        { length: 4096, flags: 0 }
      ])
      expect(yield* contextExtents(after, ACTIVE, 0, 16384)).toEqual([{ length: 16384, flags: 0 }])
    }))

  it.scoped("no write is lost by a concurrent checkpoint: each is in the bitmap active when it marked", () =>
    Effect.gen(function*() {
      const { control, filter } = Dirty.make({ granularity: 4096 })
      const driver = yield* filter(slowMemory(new MemoryDriver.SparseMemory(SIZE)))
      const handle = yield* Testing.open(driver)
      const WRITES = 200
      let checkpoints = 0
      const bounds: Array<{ startedAfter: number; ackedBy: number }> = []
      const writers = yield* Effect.forEach(Array.from({ length: WRITES }, (_, i) => i), (i) =>
        Effect.fork(Effect.gen(function*() {
          yield* Effect.repeatN(Effect.yieldNow(), i % 13)
          const startedAfter = checkpoints
          yield* handle.write(i * 4096, new Uint8Array(1), write)
          bounds[i] = { startedAfter, ackedBy: checkpoints }
        })))
      for (let k = 1; k <= 6; k++) {
        yield* Effect.repeatN(Effect.yieldNow(), 2)
        yield* control.checkpoint(`cp${k}`)
        checkpoints = k
      }
      yield* Effect.forEach(writers, Fiber.join, { discard: true })
      // cp_j holds what marked between checkpoints j-1 and j; the active one (7) what marked after the last.
      const names = ["cp1", "cp2", "cp3", "cp4", "cp5", "cp6", "active"]
      const all = yield* Testing.open(driver)
      const used = new Set<number>()
      let straddling = 0
      for (let i = 0; i < WRITES; i++) {
        const holders: Array<number> = []
        for (let j = 0; j < names.length; j++) {
          const extents = yield* contextExtents(all, `qemu:dirty-bitmap:${names[j]}`, i * 4096, 4096)
          if (extents[0]!.flags === 1) holders.push(j + 1)
        }
        expect(holders, `write ${i}`).toHaveLength(1)
        const { ackedBy, startedAfter } = bounds[i]!
        expect(holders[0]!, `write ${i}`).toBeGreaterThan(startedAfter)
        expect(holders[0]!, `write ${i}`).toBeLessThanOrEqual(ackedBy + 1)
        used.add(holders[0]!)
        if (ackedBy > startedAfter) straddling++
      }
      // The interleaving happened: writes spread over several bitmaps, some straddled a checkpoint.
      expect(used.size).toBeGreaterThanOrEqual(4)
      expect(straddling).toBeGreaterThan(0)
      const dirty = (yield* control.list).reduce((n, b) => n + b.dirtyBytes, 0)
      expect(dirty).toBe(WRITES * 4096)
    }))
})

/** A memory export under the dirty filter's layer, with its control. */
const served = (options: Dirty.DirtyOptions) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      Dirty.layer(options).pipe(Layer.provide(MemoryDriver.layer({ size: SIZE })))
    )
    return {
      control: Context.get(context, Dirty.DirtyBitmaps),
      exports: InProcess.exportDriver(Layer.succeed(Driver.NbdDriver, Context.get(context, Driver.NbdDriver)))
    }
  })

/** The names of META_CONTEXT replies to an option. */
const replyNames = (replies: ReadonlyArray<Client.OptionReply>) =>
  replies.filter((r) => r.replyType === Reply.META_CONTEXT).map((r) => Buffer.from(r.data.subarray(4)).toString())

describe("dirty bitmaps over NBD (in-process client)", () => {
  it.scoped("LIST qemu:dirty-bitmap: lists every bitmap; BLOCK_STATUS of a selected bitmap gives dirty runs", () =>
    Effect.gen(function*() {
      const { control, exports } = yield* served({ granularity: 4 * K })
      const writer = yield* InProcess.connect({}).pipe(Effect.provide(exports))
      yield* writer.write(5 * K, pattern(6 * K, 1)) // blocks 1, 2
      yield* control.checkpoint("base")
      yield* writer.writeZeroes(64 * K, 100) // block 16
      const session = yield* Client.handshake(yield* InProcess.serve().pipe(Effect.provide(exports)))
      yield* session.structuredReplies
      const query = (queries: ReadonlyArray<string>) => OptionData.MetaContextRequest.encodeUnsafe({ name: "", queries })
      expect(replyNames(yield* session.option(Opt.LIST_META_CONTEXT, query(["qemu:dirty-bitmap:"])))).toEqual([
        ACTIVE,
        "qemu:dirty-bitmap:base"
      ])
      expect(replyNames(yield* session.option(Opt.SET_META_CONTEXT, query(["qemu:dirty-bitmap:"])))).toEqual([])
      for (const extendedHeaders of [false, true]) {
        const client = yield* InProcess.connect({
          extendedHeaders,
          metaContexts: ["base:allocation", ACTIVE, "qemu:dirty-bitmap:base"]
        }).pipe(Effect.provide(exports))
        expect([...client.metaContexts.keys()]).toEqual(["base:allocation", ACTIVE, "qemu:dirty-bitmap:base"])
        const statuses = yield* client.blockStatus(0, 128 * K)
        const byId = new Map(statuses.map((s) => [s.contextId, s.extents]))
        expect(byId.get(client.metaContexts.get("qemu:dirty-bitmap:base")!)).toEqual([
          { length: 4 * K, flags: 0 },
          { length: 8 * K, flags: 1 },
          { length: 116 * K, flags: 0 }
        ])
        expect(byId.get(client.metaContexts.get(ACTIVE)!)).toEqual([
          { length: 64 * K, flags: 0 },
          { length: 4 * K, flags: 1 },
          { length: 60 * K, flags: 0 }
        ])
      }
    }))
})

/** Runs `effect` in a scope of its own (a stack), closed (cleanly) when it ends. */
const inStack = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) =>
  Effect.acquireUseRelease(Scope.make(), (scope) => Scope.extend(effect, scope), (scope) => Scope.close(scope, Exit.void))

const readState = (file: string) => JSON.parse(fs.readFileSync(file, "utf8"))

describe("persistence", () => {
  it.scoped("bitmaps survive a clean close and reopen; the file says in-use while open, clean after", () =>
    Effect.gen(function*() {
      const file = path.join(yield* tempDir, "disk.dirty")
      const store = new MemoryDriver.SparseMemory(SIZE)
      yield* inStack(Effect.gen(function*() {
        const { control, filter } = Dirty.make({ granularity: 4 * K, state: file })
        const handle = yield* Testing.open(yield* filter(MemoryDriver.fromStore(store)))
        expect(readState(file)).toMatchObject({ format: "effect-nbd-dirty", version: 1, status: "in-use" })
        yield* handle.write(0, new Uint8Array(1), write)
        yield* control.checkpoint("cp1")
        handle.sync!.write(40 * K, new Uint8Array(1))
      }))
      expect(readState(file)).toMatchObject({
        status: "clean",
        bitmaps: [
          { name: "active", active: true, granularity: 4096, inconsistent: false, runs: [[10, 1]] },
          { name: "cp1", active: false, granularity: 4096, inconsistent: false, runs: [[0, 1]] }
        ]
      })
      yield* inStack(Effect.gen(function*() {
        const { control, filter } = Dirty.make({ granularity: 4 * K, state: file })
        const handle = yield* Testing.open(yield* filter(MemoryDriver.fromStore(store)))
        expect(readState(file).status).toBe("in-use")
        expect(yield* control.list).toEqual([
          { name: "active", active: true, granularity: 4096, dirtyBytes: 4096, inconsistent: false },
          { name: "cp1", active: false, granularity: 4096, dirtyBytes: 4096, inconsistent: false }
        ])
        expect(yield* contextExtents(handle, "qemu:dirty-bitmap:cp1", 0, 8 * K)).toEqual([
          { length: 4 * K, flags: 1 },
          { length: 4 * K, flags: 0 }
        ])
        yield* handle.write(4 * K, new Uint8Array(1), write)
        expect(yield* contextExtents(handle, ACTIVE, 0, 48 * K)).toEqual([
          { length: 4 * K, flags: 0 },
          { length: 4 * K, flags: 1 },
          { length: 32 * K, flags: 0 },
          { length: 4 * K, flags: 1 },
          { length: 4 * K, flags: 0 }
        ])
      }))
    }))

  it.scoped("after an unclean stop (file still in use) every bitmap reports everything dirty", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const file = path.join(dir, "disk.dirty")
      const crashed = path.join(dir, "crashed.dirty")
      const store = new MemoryDriver.SparseMemory(SIZE)
      // A clean first run leaves a checkpoint and a few marks.
      yield* inStack(Effect.gen(function*() {
        const { control, filter } = Dirty.make({ granularity: 4 * K, state: file })
        const handle = yield* Testing.open(yield* filter(MemoryDriver.fromStore(store)))
        yield* handle.write(0, new Uint8Array(1), write)
        yield* control.checkpoint("cp1")
      }))
      // The second run is "killed": its file is copied while in use, after writes and a FLUSH.
      yield* inStack(Effect.gen(function*() {
        const { filter } = Dirty.make({ granularity: 4 * K, state: file })
        const handle = yield* Testing.open(yield* filter(MemoryDriver.fromStore(store)))
        yield* handle.write(100 * K, new Uint8Array(1), write)
        yield* handle.flush
        const state = readState(file)
        expect(state.status).toBe("in-use")
        expect(state.bitmaps[0].runs).toEqual([[25, 1]]) // FLUSH wrote the marks
        fs.copyFileSync(file, crashed)
      }))
      yield* inStack(Effect.gen(function*() {
        const { control, filter } = Dirty.make({ granularity: 4 * K, state: crashed })
        const handle = yield* Testing.open(yield* filter(MemoryDriver.fromStore(store)))
        const list = yield* control.list
        expect(list.map((b) => [b.name, b.inconsistent])).toEqual([["active", true], ["cp1", true]])
        for (const name of [ACTIVE, "qemu:dirty-bitmap:cp1"]) {
          expect(yield* contextExtents(handle, name)).toEqual([{ length: SIZE, flags: 1 }])
        }
        // A checkpoint keeps the inconsistent bitmap and starts a consistent, empty one.
        yield* control.checkpoint("after-crash")
        expect(yield* contextExtents(handle, ACTIVE)).toEqual([{ length: SIZE, flags: 0 }])
      }))
      expect(readState(crashed).bitmaps.map((b: { inconsistent: boolean }) => b.inconsistent)).toEqual([
        false,
        true,
        true
      ])
    }))

  it.scoped("a state file that is not one is refused when the stack opens", () =>
    Effect.gen(function*() {
      const file = path.join(yield* tempDir, "bad.dirty")
      fs.writeFileSync(file, "{\"format\":\"something else\"}")
      const error = yield* Effect.flip(Dirty.make({ state: file }).filter(Driver.make({
        size: Effect.succeed(0),
        read: () => Effect.succeed(new Uint8Array())
      })))
      expect(error.reason).toBe("StateFile")
      expect(error.message).toContain("not a effect-nbd-dirty state file")
    }))
})

describe("plugin", () => {
  it("parses granularity, bitmap and state, refusing bad values", () => {
    expect(Either.isRight(Dirty.plugin.make(new Map()))).toBe(true)
    expect(Either.isRight(Dirty.plugin.make(new Map([["granularity", "4K"], ["bitmap", "b1"], ["state", "/x"]]))))
      .toBe(true)
    const bad = (pairs: Array<[string, string]>) => Either.getLeft(Dirty.plugin.make(new Map(pairs)))
    expect(bad([["granularity", "1000"]]).pipe((o) => o._tag === "Some" && o.value.message)).toContain("power of two")
    expect(bad([["granularity", "256"]])._tag).toBe("Some")
    expect(bad([["bitmap", "a b"]])._tag).toBe("Some")
    expect(bad([["size", "1"]])._tag).toBe("Some")
  })
})

/** One HTTP request to the admin endpoint on its Unix socket: the status and the JSON body. */
const ask = (socketPath: string, method: string, path: string) =>
  Effect.async<{ readonly status: number; readonly body: any }, Error>((resume) => {
    const request = http.request({ socketPath, method, path }, (response) => {
      let text = ""
      response.on("data", (chunk) => (text += chunk))
      response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, body: JSON.parse(text) })))
    })
    request.on("error", (error) => resume(Effect.fail(error)))
    request.end()
  })

describe("admin endpoint (control=PATH)", () => {
  it.scoped("lists, checkpoints and removes bitmaps over HTTP on a Unix socket, for the life of the stack", () =>
    Effect.gen(function*() {
      const socketPath = path.join(yield* tempDir, "control.sock")
      yield* inStack(Effect.gen(function*() {
        const { control, exports } = yield* served({ granularity: 4 * K, control: socketPath })
        expect(fs.statSync(socketPath).mode & 0o777).toBe(0o600)
        const client = yield* InProcess.connect({}).pipe(Effect.provide(exports))
        yield* client.write(0, new Uint8Array(10))
        const replies = yield* Effect.forEach([
          ["GET", "/bitmaps"],
          ["POST", "/bitmaps/c1"],
          ["POST", "/bitmaps/c1"],
          ["DELETE", "/bitmaps/active"],
          ["DELETE", "/bitmaps/nothing"],
          ["GET", "/bitmaps"],
          ["DELETE", "/bitmaps/c1"]
        ] as const, ([method, route]) => ask(socketPath, method, route))
        expect(replies).toEqual([
          { status: 200, body: { ok: true, bitmaps: [{ name: "active", active: true, granularity: 4096, dirtyBytes: 4096, inconsistent: false }] } },
          { status: 200, body: { ok: true, bitmap: { name: "c1", active: false, granularity: 4096, dirtyBytes: 4096, inconsistent: false } } },
          { status: 409, body: { ok: false, reason: "Exists", message: "dirty: bitmap 'c1' exists" } },
          { status: 400, body: { ok: false, reason: "Active", message: "dirty: 'active' is the active bitmap" } },
          { status: 404, body: { ok: false, reason: "NotFound", message: expect.stringContaining("nothing") } },
          {
            status: 200,
            body: {
              ok: true,
              bitmaps: [
                { name: "active", active: true, granularity: 4096, dirtyBytes: 0, inconsistent: false },
                { name: "c1", active: false, granularity: 4096, dirtyBytes: 4096, inconsistent: false }
              ]
            }
          },
          { status: 200, body: { ok: true } }
        ])
        expect((yield* control.list).map((b) => b.name)).toEqual(["active"])
      }))
      expect(fs.existsSync(socketPath)).toBe(false)
    }))
})
