/**
 * Meta contexts beyond `base:allocation`: the query rules of LIST and SET, contexts that
 * drivers and filters declare (`qemu:allocation-depth` from cow), and BLOCK_STATUS
 * answering every selected context in its own chunk, compact and extended.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Cow from "../../src/filters/Cow.ts"
import { AllocationState, Option as Opt, Reply } from "../../src/protocol/Constants.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import * as MetaContexts from "../../src/server/MetaContexts.ts"
import * as Testing from "../../src/testing/InProcess.ts"

const MiB = 1024 * 1024
const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO

describe("query rules", () => {
  const offered = ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:a", "qemu:dirty-bitmap:b"]
  it("LIST: no query lists all; a name ending in ':' lists what it prefixes; exact names; unknown namespaces nothing", () => {
    expect(MetaContexts.list([], offered)).toEqual(offered)
    expect(MetaContexts.list(["base:"], offered)).toEqual(["base:allocation"])
    expect(MetaContexts.list(["qemu:"], offered)).toEqual(offered.slice(1))
    expect(MetaContexts.list(["qemu:dirty-bitmap:"], offered)).toEqual(offered.slice(2))
    expect(MetaContexts.list(["qemu:dirty-bitmap:b", "x-other:thing"], offered)).toEqual(["qemu:dirty-bitmap:b"])
  })
  it("SET: exact names only, each once, in the export's order", () => {
    expect(MetaContexts.select(["qemu:", "base:"], offered)).toEqual([])
    expect(MetaContexts.select(["qemu:dirty-bitmap:b", "base:allocation", "base:allocation"], offered)).toEqual([
      "base:allocation",
      "qemu:dirty-bitmap:b"
    ])
    expect(MetaContexts.select(["base:nothing"], offered)).toEqual([])
  })
})

/** A memory export under cow, with the memory store for writes below the overlay. */
const cowExport = () => {
  const store = new MemoryDriver.SparseMemory(4 * MiB)
  const stack = Layer.effect(Driver.NbdDriver, Cow.make()(MemoryDriver.fromStore(store)).pipe(Effect.scoped))
  return { store, exports: Testing.exportDriver(stack) }
}

/** The names of META_CONTEXT replies to an option. */
const names = (replies: ReadonlyArray<Client.OptionReply>) =>
  replies.filter((r) => r.replyType === Reply.META_CONTEXT).map((r) => Buffer.from(r.data.subarray(4)).toString())

describe("contexts declared by filters", () => {
  it.scoped("a memory export offers base:allocation only; under cow, qemu:allocation-depth too", () =>
    Effect.gen(function*() {
      const query = (queries: ReadonlyArray<string>) => OptionData.MetaContextRequest.encodeUnsafe({ name: "", queries })
      const plain = yield* Client.handshake(yield* Testing.serve().pipe(
        Effect.provide(Testing.exportDriver(MemoryDriver.layer({ size: MiB })))
      ))
      yield* plain.structuredReplies
      expect(names(yield* plain.option(Opt.LIST_META_CONTEXT, query([])))).toEqual(["base:allocation"])
      const { exports } = cowExport()
      const cow = yield* Client.handshake(yield* Testing.serve().pipe(Effect.provide(exports)))
      yield* cow.structuredReplies
      expect(names(yield* cow.option(Opt.LIST_META_CONTEXT, query([])))).toEqual(["base:allocation", Cow.ALLOCATION_DEPTH])
      expect(names(yield* cow.option(Opt.LIST_META_CONTEXT, query(["qemu:"])))).toEqual([Cow.ALLOCATION_DEPTH])
      expect(names(yield* cow.option(Opt.SET_META_CONTEXT, query(["qemu:"])))).toEqual([])
    }))

  for (const extendedHeaders of [false, true]) {
    it.scoped(`BLOCK_STATUS answers each selected context in its own chunk (${extendedHeaders ? "extended" : "compact"})`, () =>
      Effect.gen(function*() {
        const { exports, store } = cowExport()
        store.write(MiB, new Uint8Array(4096).fill(1)) // below the overlay: depth 2, data
        const client = yield* Testing.connect({
          extendedHeaders,
          metaContexts: ["base:allocation", Cow.ALLOCATION_DEPTH]
        }).pipe(Effect.provide(exports))
        yield* client.write(0, new Uint8Array(65536).fill(2)) // in the overlay: depth 1
        const statuses = yield* client.blockStatus(0, 2 * MiB)
        const byId = new Map(statuses.map((s) => [s.contextId, s.extents]))
        const depth = byId.get(client.metaContexts.get(Cow.ALLOCATION_DEPTH)!)!
        const allocation = byId.get(client.metaContexts.get("base:allocation")!)!
        expect(statuses).toHaveLength(2)
        expect(depth).toEqual([{ length: 65536, flags: 1 }, { length: 2 * MiB - 65536, flags: 2 }])
        expect(allocation[0]).toEqual({ length: 65536, flags: 0 })
        expect(allocation[1]).toEqual({ length: MiB - 65536, flags: HOLE_ZERO })
      }))
  }
})
