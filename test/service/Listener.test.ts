/**
 * What an embedding application sees of the listening side of `NbdServer.layer`: the bound
 * port on the service, several addresses at once, and failures to listen that say why.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import * as Listener from "../../src/server/Listener.ts"
import * as Server from "../../src/server/Server.ts"
import { run } from "../support/Tools.ts"

const MiB = 1024 * 1024

/** Builds a server for one 1 MiB memory export, listening where told, in the test's scope. */
const start = (listen: Server.ListenOptions | ReadonlyArray<Server.ListenOptions>) =>
  Effect.gen(function*() {
    const driver = yield* MemoryDriver.make({ size: MiB })
    const layer = Server.layer(listen).pipe(Layer.provide(Export.ExportRegistry.layer([Export.make(driver)])))
    return Context.get(yield* Layer.build(layer), Server.NbdServer)
  }).pipe(Logger.withMinimumLogLevel(LogLevel.None))

/** A TCP port some other socket holds for the life of the scope. */
const occupiedPort = Effect.acquireRelease(
  Effect.async<net.Server>((resume) => {
    const holder = net.createServer()
    holder.listen(0, "127.0.0.1", () => resume(Effect.succeed(holder)))
  }),
  (holder) => Effect.async<void>((resume) => void holder.close(() => resume(Effect.void)))
).pipe(Effect.map((holder) => (holder.address() as net.AddressInfo).port))

const tempDir = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-listen-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

const exportSize = (uri: string) =>
  Effect.promise(() => run("nbdinfo", ["--size", uri])).pipe(Effect.map((out) => Number(out.trim())))

describe("NbdServer.layer, listening", () => {
  it.scoped("has the bound port on the service when port 0 was asked", () =>
    Effect.gen(function*() {
      const server = yield* start({ host: "127.0.0.1", port: 0 })
      expect(server.address._tag).toBe("TcpAddress")
      expect(server.port).toBeGreaterThan(0)
      expect(server.address).toEqual({ _tag: "TcpAddress", hostname: "127.0.0.1", port: server.port })
      expect(server.addresses).toEqual([server.address])
      expect(yield* exportSize(`nbd://127.0.0.1:${server.port}/`)).toBe(MiB)
    }))

  it.scoped("has no port on a Unix socket, and serves several addresses at once", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const socket = path.join(dir, "nbd.sock")
      const server = yield* start([{ path: socket }, { host: "127.0.0.1", port: 0 }])
      expect(server.address).toEqual({ _tag: "UnixAddress", path: socket })
      expect(server.port).toBeUndefined()
      expect(server.addresses).toHaveLength(2)
      for (const address of server.addresses) expect(yield* exportSize(Server.uri(address))).toBe(MiB)
    }))

  it.scoped("names the reason when the address is in use", () =>
    Effect.gen(function*() {
      const port = yield* occupiedPort
      const error = yield* Effect.flip(start({ host: "127.0.0.1", port }))
      expect(error).toBeInstanceOf(Listener.ListenError)
      expect(error._tag).toBe("ListenError")
      expect(error.reason).toBe("AddressInUse")
      expect(error.code).toBe("EADDRINUSE")
      expect(error.message).toBe(`cannot listen on 127.0.0.1:${port}: address already in use (EADDRINUSE)`)
    }))

  it.scoped("names the reason for a port out of range and for a descriptor that is no socket", () =>
    Effect.gen(function*() {
      const badPort = yield* Effect.flip(start({ host: "127.0.0.1", port: 70000 }))
      expect(badPort.reason).toBe("InvalidAddress")
      expect(badPort.message).toMatch(/^cannot listen on 127\.0\.0\.1:70000: invalid address: .*\(ERR_SOCKET_BAD_PORT\)$/)

      const fd = yield* Effect.acquireRelease(
        Effect.sync(() => fs.openSync("/dev/null", "r")),
        (fd) => Effect.sync(() => fs.closeSync(fd))
      )
      const notSocket = yield* Effect.flip(start({ fd }))
      expect(notSocket.reason).toBe("NotASocket")
      expect(notSocket.message).toBe(`cannot listen on fd ${fd}: not a listening socket (EINVAL)`)
    }))

  it.scoped("names the reason when the socket's directory is missing or the host unknown", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const missing = yield* Effect.flip(start({ path: path.join(dir, "no-such-dir", "nbd.sock") }))
      expect(missing.reason).toBe("NoSuchDirectory")
      expect(missing.message).toBe(`cannot listen on ${path.join(dir, "no-such-dir", "nbd.sock")}: no such directory (ENOENT)`)

      const unknown = yield* Effect.flip(start({ host: "no-such-host.invalid", port: 0 }))
      expect(unknown.reason).toBe("HostNotFound")
      expect(unknown.message).toMatch(/^cannot listen on no-such-host\.invalid:0: host not found \((ENOTFOUND|EAI_AGAIN)\)$/)
    }))
})
