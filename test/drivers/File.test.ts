import { afterAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Client from "../../src/client/NbdClient.ts"
import * as FileDriver from "../../src/drivers/File.ts"
import { TransmissionFlags } from "../../src/protocol/Constants.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { exportsOf, serverStream } from "../support/InProcess.ts"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-file-"))
const file = path.join(dir, "disk.img")
fs.writeFileSync(file, Buffer.alloc(0))
fs.truncateSync(file, 4 * 1024 * 1024)

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const connect = Effect.flatMap(serverStream(), (stream) => Client.connect(stream))

describe("file driver", () => {
  it.layer(exportsOf(Layer.orDie(FileDriver.layer({ path: file }))))((it) => {
    it.scoped("writes reach the file, reads come from it, flush and FUA succeed", () =>
      Effect.gen(function*() {
        const client = yield* connect
        expect(client.info.size).toBe(4 * 1024 * 1024)
        expect(client.info.transmissionFlags & TransmissionFlags.CAN_MULTI_CONN).toBe(TransmissionFlags.CAN_MULTI_CONN)
        yield* client.write(12345, pattern(100_000, 3), { flags: 1 })
        yield* client.flush
        expectBytes(fs.readFileSync(file).subarray(12345, 112345), pattern(100_000, 3))
        fs.writeFileSync(file, Buffer.from("hello"), { flag: "r+" })
        expectBytes(yield* client.read(0, 5), Buffer.from("hello"))
        yield* client.writeZeroes(12345, 1000)
        expectBytes(yield* client.read(12345, 1000), new Uint8Array(1000))
      }))

    it.scoped("RESIZE truncates and extends the file", () =>
      Effect.gen(function*() {
        const client = yield* connect
        yield* client.resize(8 * 1024 * 1024)
        expect(fs.statSync(file).size).toBe(8 * 1024 * 1024)
        yield* client.resize(4 * 1024 * 1024)
        expect(fs.statSync(file).size).toBe(4 * 1024 * 1024)
      }))

    it.scoped("TRIM is not offered", () =>
      Effect.gen(function*() {
        const client = yield* connect
        expect(client.info.transmissionFlags & TransmissionFlags.SEND_TRIM).toBe(0)
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

  it.effect("a missing file fails with a typed error", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(FileDriver.make({ path: path.join(dir, "missing.img") })))
      expect(error._tag).toBe("ProtocolError")
      expect(error.message).toContain("missing.img")
    }))
})
