/**
 * Using effect-nbd as a library: a custom driver (a 64 MiB disk in one buffer whose
 * first sector is read-only), served next to a sparse memory export.
 *
 * Run: npx tsx scratchpad/library-example.ts  then  nbdinfo --list nbd://127.0.0.1:10810
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { Driver, Export, ExportRegistry, MemoryDriver, NbdServer, protocolError } from "../src/index.ts"

const SIZE = 64 * 1024 * 1024
const disk = Buffer.alloc(SIZE)

/** A minimal driver: size, read and write; everything else gets a default. */
const bufferDriver = Driver.make({
  name: "buffer",
  description: "64 MiB in one buffer; sector 0 is protected",
  size: Effect.succeed(SIZE),
  read: (offset, length) => Effect.succeed(disk.subarray(offset, offset + length)),
  write: (offset, data) =>
    offset < 512
      ? Effect.fail(protocolError("EPERM", "sector 0 is read-only"))
      : Effect.sync(() => disk.set(data, offset)),
  flush: Effect.void
})

const exports = Layer.effect(
  ExportRegistry,
  Effect.gen(function*() {
    const scratch = yield* MemoryDriver.make({ size: 1024 ** 4, description: "1 TiB of sparse scratch space" })
    return ExportRegistry.fromExports([
      Export.make(bufferDriver, { name: "disk" }),
      Export.make(scratch, { name: "scratch" })
    ])
  })
)

const program = Effect.gen(function*() {
  const server = yield* NbdServer.NbdServer
  yield* Effect.log(`listening at ${NbdServer.uri(server.address, "disk")}`)
  return yield* Effect.never
})

program.pipe(
  Effect.provide(NbdServer.layer({ host: "127.0.0.1", port: 10810 }).pipe(Layer.provide(exports))),
  NodeRuntime.runMain
)
