/**
 * The file driver on the machine's disk and on tmpfs (/dev/shm), with the native system
 * calls and without them (the portable path): reads and writes, TRIM freeing blocks,
 * WRITE_ZEROES with and without NO_HOLE, FAST_ZERO, block status from the file's holes,
 * RESIZE, cache=none and refused file types.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Client from "../../src/client/NbdClient.ts"
import type { DriverHandle } from "../../src/Driver.ts"
import * as Driver from "../../src/Driver.ts"
import * as FileDriver from "../../src/drivers/File.ts"
import { TransmissionFlags } from "../../src/protocol/Constants.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { exportsOf, serverStream } from "../support/InProcess.ts"
import { sparseFiles } from "../support/SparseFiles.ts"

const KiB = 1024
const MiB = 1024 * KiB

/** Where to put test files: the machine's disk (os.tmpdir) and tmpfs, where present. */
const places = [
  { name: "disk", root: os.tmpdir() },
  ...(fs.existsSync("/dev/shm") ? [{ name: "tmpfs", root: "/dev/shm" }] : [])
]

/** A fresh sparse file of `size` bytes under `root`. */
const sparseFile = sparseFiles("effect-nbd-file-")

/** Bytes the file occupies on its file system. */
const allocated = (file: string): number => fs.statSync(file).blocks * 512

const opened = (options: FileDriver.FileOptions): Effect.Effect<DriverHandle, unknown, Scope.Scope> =>
  Effect.flatMap(FileDriver.make(options), (driver) => Testing.open(driver))

const write = { fua: false }
const zero = (noHole: boolean, fastZero = false) => ({ fua: false, noHole, fastZero })

for (const place of places) {
  describe(`file driver on ${place.name} (native calls)`, () => {
    it.scoped("TRIM punches a hole: the blocks are freed and the range reads as zeroes", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, 16 * MiB)
        const handle = yield* opened({ path: file })
        expect(handle.capabilities.trim).toBe(true)
        yield* handle.write(0, pattern(8 * MiB, 1), write)
        yield* handle.flush
        const before = allocated(file)
        expect(before).toBeGreaterThanOrEqual(8 * MiB)
        yield* handle.trim(MiB, 4 * MiB, write)
        expect(allocated(file)).toBeLessThanOrEqual(before - 4 * MiB)
        expectBytes(yield* handle.read(MiB, 4 * MiB), new Uint8Array(4 * MiB))
        expectBytes(yield* handle.read(0, MiB), pattern(8 * MiB, 1).subarray(0, MiB))
      }))

    it.scoped("WRITE_ZEROES frees the range, and with NO_HOLE leaves it allocated", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, 16 * MiB)
        const handle = yield* opened({ path: file })
        yield* handle.write(0, pattern(8 * MiB, 2), write)
        const before = allocated(file)
        yield* handle.writeZeroes(0, 4 * MiB, zero(false))
        const afterHoles = allocated(file)
        expect(afterHoles).toBeLessThanOrEqual(before - 4 * MiB)
        yield* handle.writeZeroes(4 * MiB, 4 * MiB, zero(true))
        expect(allocated(file)).toBe(afterHoles)
        // NO_HOLE on a hole allocates it
        yield* handle.writeZeroes(8 * MiB, 4 * MiB, zero(true))
        expect(allocated(file)).toBeGreaterThanOrEqual(afterHoles + 4 * MiB)
        expectBytes(yield* handle.read(0, 12 * MiB), new Uint8Array(12 * MiB))
      }))

    it.scoped("WRITE_ZEROES of unaligned ranges zeroes exactly those bytes", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, MiB)
        const handle = yield* opened({ path: file })
        const data = pattern(MiB, 3)
        yield* handle.write(0, data, write)
        yield* handle.writeZeroes(1000, 9000, zero(false))
        yield* handle.writeZeroes(100_000, 5000, zero(true))
        const expected = Buffer.from(data)
        expected.fill(0, 1000, 10_000)
        expected.fill(0, 100_000, 105_000)
        expectBytes(yield* handle.read(0, MiB), expected)
      }))

    it.scoped("FAST_ZERO succeeds (the file system zeroes without writing)", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, 4 * MiB)
        const handle = yield* opened({ path: file })
        expect(handle.capabilities.fastZero).toBe(true)
        yield* handle.write(0, pattern(4 * MiB, 4), write)
        yield* handle.writeZeroes(0, 2 * MiB, zero(false, true))
        yield* handle.writeZeroes(2 * MiB, 2 * MiB, zero(true, true))
        expectBytes(yield* handle.read(0, 4 * MiB), new Uint8Array(4 * MiB))
      }))

    it.scoped("block status reports the holes and the data of the file", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, 64 * MiB)
        const handle = yield* opened({ path: file })
        expect(handle.capabilities.blockStatus).toBe(true)
        yield* handle.write(8 * MiB, pattern(MiB, 5), write)
        yield* handle.write(40 * MiB, pattern(2 * MiB, 6), write)
        const extents = yield* handle.blockStatus(0, 64 * MiB)
        expect(extents).toEqual([
          { length: 8 * MiB, flags: Driver.HOLE_ZERO },
          { length: MiB, flags: 0 },
          { length: 31 * MiB, flags: Driver.HOLE_ZERO },
          { length: 2 * MiB, flags: 0 },
          { length: 22 * MiB, flags: Driver.HOLE_ZERO }
        ])
        // a range starting inside data, ending inside a hole
        expect(yield* handle.blockStatus(8 * MiB + 4096, MiB)).toEqual([
          { length: MiB - 4096, flags: 0 },
          { length: 4096, flags: Driver.HOLE_ZERO }
        ])
      }))

    it.scoped("RESIZE truncates and extends the file, and the size follows without fstat", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, 4 * MiB)
        const handle = yield* opened({ path: file })
        yield* handle.resize(8 * MiB)
        expect(fs.statSync(file).size).toBe(8 * MiB)
        expect(yield* handle.size).toBe(8 * MiB)
        yield* handle.resize(2 * MiB)
        expect(fs.statSync(file).size).toBe(2 * MiB)
        expect(yield* handle.size).toBe(2 * MiB)
      }))

    it.scoped(`${place.name === "tmpfs" ? "has" : "has no"} synchronous fast path, which reads and writes the file`, () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, MiB)
        const handle = yield* opened({ path: file })
        expect(handle.sync !== undefined).toBe(place.name === "tmpfs")
        if (handle.sync === undefined) return
        handle.sync.write(4096, pattern(8192, 11))
        expectBytes(fs.readFileSync(file).subarray(4096, 12288), pattern(8192, 11))
        expectBytes(handle.sync.read(4096, 8192)[0] as Uint8Array, pattern(8192, 11))
        expect(handle.sync.size()).toBe(MiB)
      }))

    it.scoped("CACHE is a read-ahead hint that succeeds", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, 4 * MiB)
        const handle = yield* opened({ path: file, fadvise: "sequential" })
        yield* handle.cache(0, 4 * MiB)
        expectBytes(yield* handle.read(0, 4096), new Uint8Array(4096))
      }))
  })

  describe(`file driver on ${place.name} without the native calls`, () => {
    it.scoped("TRIM is not offered, zeroing writes zeroes, everything is data, FAST_ZERO is refused", () =>
      Effect.gen(function*() {
        const file = sparseFile(place.root, 8 * MiB)
        const handle = yield* opened({ path: file, native: false })
        expect(handle.capabilities.trim).toBe(false)
        expect(handle.capabilities.blockStatus).toBe(false)
        expect(handle.capabilities.fastZero).toBe(false)
        expect(yield* handle.blockStatus(0, 8 * MiB)).toEqual([{ length: 8 * MiB, flags: 0 }])
        yield* handle.write(0, pattern(MiB, 7), write)
        yield* handle.writeZeroes(0, MiB, zero(false))
        expectBytes(yield* handle.read(0, MiB), new Uint8Array(MiB))
        expect(allocated(file)).toBeGreaterThanOrEqual(MiB) // written, not punched
        const refused = yield* Effect.flip(handle.writeZeroes(0, MiB, zero(false, true)))
        expect(refused.errno).toBe("ENOTSUP")
      }))
  })
}

describe("file driver options and file types", () => {
  it.scoped("cache=none reads and writes aligned and unaligned ranges, or is refused with a clear error", () =>
    Effect.gen(function*() {
      for (const place of places) {
        const file = sparseFile(place.root, 4 * MiB)
        const result = yield* Effect.either(opened({ path: file, cache: "none" }))
        if (result._tag === "Left") {
          expect(String((result.left as Error).message)).toContain("refuses O_DIRECT")
          continue
        }
        const handle = result.right
        const data = pattern(MiB, 8)
        yield* handle.write(0, data, write) // aligned: O_DIRECT
        yield* handle.write(MiB + 10, data.subarray(0, 5000), write) // unaligned: page cache
        yield* handle.flush
        expectBytes(yield* handle.read(0, MiB), data)
        expectBytes(yield* handle.read(MiB + 10, 5000), data.subarray(0, 5000))
        expectBytes(fs.readFileSync(file).subarray(0, MiB), data)
      }
    }))

  it.scoped("cache=none reads the unaligned tail of a file", () =>
    Effect.gen(function*() {
      const file = sparseFile(os.tmpdir(), 0)
      fs.writeFileSync(file, pattern(10_000, 9))
      const handle = yield* opened({ path: file, cache: "none" })
      expectBytes(yield* handle.read(8192, 4096), Buffer.concat([pattern(10_000, 9).subarray(8192), Buffer.alloc(2288)]))
    }))

  it.effect("a directory is refused with a message saying what it is", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(FileDriver.make({ path: os.tmpdir() })))
      expect(error.message).toContain("is a directory")
    }))

  it.effect("a character device is refused", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(FileDriver.make({ path: "/dev/null" })))
      expect(error.message).toContain("is a character device")
    }))

  it.effect("a missing file fails with a typed error", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(FileDriver.make({ path: path.join(os.tmpdir(), "missing-effect-nbd.img") })))
      expect(error._tag).toBe("ProtocolError")
      expect(error.message).toContain("missing-effect-nbd.img")
    }))

  it("unknown parameters and values are refused by the plugin", () => {
    expect(FileDriver.plugin.make("x.img", new Map([["cache", "maybe"]]))._tag).toBe("Left")
    expect(FileDriver.plugin.make("x.img", new Map([["bogus", "1"]]))._tag).toBe("Left")
    expect(FileDriver.plugin.make("x.img", new Map([["cache", "none"], ["fadvise", "random"]]))._tag).toBe("Right")
  })
})

describe("file driver over a connection", () => {
  const file = sparseFile(os.tmpdir(), 4 * MiB)
  const connect = Effect.flatMap(serverStream(), (stream) => Client.connect(stream))

  it.layer(exportsOf(Layer.orDie(FileDriver.layer({ path: file }))))((it) => {
    it.scoped("offers multi-connection, TRIM, zeroing and FAST_ZERO; writes reach the file", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const flags = client.info.transmissionFlags
        for (const flag of ["CAN_MULTI_CONN", "SEND_TRIM", "SEND_WRITE_ZEROES", "SEND_FAST_ZERO", "SEND_FLUSH"] as const) {
          expect(flags & TransmissionFlags[flag], flag).toBe(TransmissionFlags[flag])
        }
        yield* client.write(12345, pattern(100_000, 3), { flags: 1 })
        expectBytes(fs.readFileSync(file).subarray(12345, 112345), pattern(100_000, 3))
        fs.writeFileSync(file, Buffer.from("hello"), { flag: "r+" })
        expectBytes(yield* client.read(0, 5), Buffer.from("hello"))
      }))
  })

  it.layer(exportsOf(Layer.orDie(FileDriver.layer({ path: file, readOnly: true }))))((it) => {
    it.scoped("a file opened read-only gives a read-only export", () =>
      Effect.gen(function*() {
        const client = yield* connect
        expect(client.info.transmissionFlags & TransmissionFlags.READ_ONLY).toBe(TransmissionFlags.READ_ONLY)
        const error = yield* Effect.flip(client.write(0, new Uint8Array(512)))
        expect(error._tag === "ProtocolError" && error.errno).toBe("EPERM")
      }))
  })
})

/** Whether loop devices can be set up here (root with a working `losetup`). */
const loopDevices = process.getuid?.() === 0 && spawnSync("losetup", ["-f"], { stdio: "ignore" }).status === 0

/** A loop device over a fresh sparse file, detached when the scope closes. */
const loopDevice = (size: number) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const backing = sparseFile(os.tmpdir(), size)
      const device = execFileSync("losetup", ["-f", "--show", backing], { encoding: "utf8" }).trim()
      return { backing, device }
    }),
    ({ device }) => Effect.sync(() => void spawnSync("losetup", ["-d", device]))
  )

describe.skipIf(!loopDevices)("file driver on a block device (loop device)", () => {
  it.scoped("takes the size from the device; reads, writes, discards and zeroes it", () =>
    Effect.gen(function*() {
      const { backing, device } = yield* loopDevice(32 * MiB)
      const handle = yield* opened({ path: device })
      expect(yield* handle.size).toBe(32 * MiB)
      expect(handle.capabilities.trim).toBe(true)
      expect(handle.capabilities.resize).toBe(false)
      expect(handle.capabilities.blockStatus).toBe(false)
      const data = pattern(8 * MiB, 10)
      yield* handle.write(0, data, write)
      yield* handle.flush
      expectBytes(yield* handle.read(0, 8 * MiB), data)
      expect(allocated(backing)).toBeGreaterThanOrEqual(8 * MiB)
      yield* handle.trim(0, 4 * MiB, write) // the loop device punches the backing file
      expect(allocated(backing)).toBeLessThan(8 * MiB)
      yield* handle.writeZeroes(4 * MiB, 2 * MiB, zero(false))
      yield* handle.writeZeroes(6 * MiB, 2 * MiB, zero(true))
      expectBytes(yield* handle.read(4 * MiB, 4 * MiB), new Uint8Array(4 * MiB))
      const fast = yield* Effect.either(handle.writeZeroes(0, MiB, zero(false, true)))
      if (fast._tag === "Left") expect(fast.left.errno).toBe("ENOTSUP")
    }))
})
