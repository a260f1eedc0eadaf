/**
 * A driver sees who opens it: the transport (TCP address and port, Unix socket path, in
 * process), the connection id, and the certificate subject of a TLS client; the handle
 * it opened is released when the client's session ends, and after an INFO at once.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import * as Server from "../../src/server/Server.ts"
import * as Tls from "../../src/server/Tls.ts"
import * as Certificates from "../support/Certificates.ts"

/** A memory driver that records every open and every release. */
const recording = () => {
  const opened: Array<Driver.OpenRequest> = []
  let released = 0
  const driver = Driver.filter(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(1024 * 1024)), {
    name: "recording",
    open: (_, request) =>
      Effect.as(
        Effect.zipRight(Effect.sync(() => opened.push(request)), Effect.addFinalizer(() => Effect.sync(() => released++))),
        {}
      )
  })
  return { driver, opened, released: () => released }
}

/** Starts a server in a scope of its own. */
const start = (listen: Server.ListenOptions, exp: Export.NbdExport, config: Parameters<typeof Server.layer>[1] = {}) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      Server.layer(listen, config).pipe(Layer.provide(Export.ExportRegistry.layer([exp]))),
      scope
    )
    const server = context.unsafeMap.get(Server.NbdServer.key) as Server.NbdServer["Type"]
    return { server, stop: Scope.close(scope, Exit.void) }
  })

/** Waits until a condition holds (a session ends asynchronously after the client leaves). */
const eventually = (condition: () => boolean) =>
  Effect.repeat(Effect.promise(() => new Promise((r) => setTimeout(r, 10))), { until: condition, times: 200 })

describe("the client's identity reaches the driver", () => {
  it.scoped("over TCP: address and port; released at disconnect, and after INFO at once", () =>
    Effect.gen(function*() {
      const { driver, opened, released } = recording()
      const { server, stop } = yield* start({ host: "127.0.0.1", port: 0 }, Export.make(driver))
      const port = server.address._tag === "TcpAddress" ? server.address.port : 0
      const socket = net.connect(port, "127.0.0.1")
      let localPort: number | undefined
      yield* Effect.scoped(Effect.gen(function*() {
        const session = yield* Client.handshake(socket)
        yield* session.info("")
        yield* eventually(() => released() === 1)
        const client = yield* session.go("")
        yield* client.read(0, 512)
        localPort = socket.localPort
        expect(released()).toBe(1)
        yield* client.disconnect
      }))
      yield* eventually(() => released() === 2)
      expect(opened).toHaveLength(2)
      const transport = opened[1]!.client.transport
      expect(transport._tag === "Tcp" && transport.address).toMatch(/127\.0\.0\.1$/)
      expect(transport._tag === "Tcp" && transport.port).toBe(localPort)
      expect(Option.isNone(opened[1]!.client.tls)).toBe(true)
      yield* stop
    }))

  it.scoped("over a Unix socket: its path", () =>
    Effect.gen(function*() {
      const { driver, opened } = recording()
      const socketPath = path.join(os.tmpdir(), `effect-nbd-identity-${process.pid}.sock`)
      const { stop } = yield* start({ path: socketPath }, Export.make(driver))
      yield* Effect.scoped(Effect.flatMap(Client.connect(net.connect(socketPath)), (client) => client.read(0, 512)))
      expect(opened[0]!.client.transport).toEqual({ _tag: "Unix", path: socketPath })
      yield* stop
    }))

  describe("over TLS", () => {
    let certificates: Certificates.Certificates
    beforeAll(() => {
      certificates = Certificates.make()
    })
    afterAll(() => certificates?.remove())

    it.scoped("the client certificate's subject", () =>
      Effect.gen(function*() {
        const { driver, opened } = recording()
        const tls = yield* Tls.loadCertificates(certificates.serverDir, "require", true)
        const { server, stop } = yield* start({ host: "127.0.0.1", port: 0 }, Export.make(driver), { tls })
        const port = server.address._tag === "TcpAddress" ? server.address.port : 0
        const client = yield* Client.connect(net.connect(port, "127.0.0.1"), {
          tls: { ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey, servername: "localhost" }
        })
        yield* client.read(0, 512)
        const identity = opened[0]!.client.tls
        expect(Option.isSome(identity) && Option.getOrUndefined(identity.value.subject)).toBe("CN=effect-nbd test client")
        yield* stop
      }))
  })
})
