/**
 * STARTTLS over real TCP with the project's client: optional TLS, required TLS and
 * client-certificate verification.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import { Option, Reply, ReplyError } from "../../src/protocol/Constants.ts"
import * as Tls from "../../src/server/Tls.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as Certificates from "../support/Certificates.ts"
import * as TestServer from "../support/TestServer.ts"

let certificates: Certificates.Certificates
const scope = Effect.runSync(Scope.make())
const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))

beforeAll(() => {
  certificates = Certificates.make()
})
afterAll(async () => {
  await Effect.runPromise(Scope.close(scope, Exit.void))
  certificates.remove()
})

const startServer = (mode: "on" | "require", verifyPeer = false) =>
  TestServer.start({
    size: 16 * 1024 * 1024,
    config: { tls: Effect.runSync(Tls.loadCertificates(certificates.serverDir, mode, verifyPeer)) }
  })

const trusted = () => ({ ca: certificates.ca, servername: "localhost" })

const handshake = (server: TestServer.TestServer) => run(Client.handshake(net.connect(server.port, "127.0.0.1")))

describe("STARTTLS, TLS optional", () => {
  let server: TestServer.TestServer
  beforeAll(async () => {
    server = await startServer("on")
  })
  afterAll(() => server.stop())

  it("a client may stay in the clear", async () => {
    const client = await run(Client.connect(net.connect(server.port, "127.0.0.1")))
    await run(client.write(0, pattern(4096, 1)))
    expectBytes(await run(client.read(0, 4096)), pattern(4096, 1))
  })

  it("a client upgrades, negotiates again, and its data travels encrypted", async () => {
    const session = await handshake(server)
    await run(session.structuredReplies)
    await run(session.startTls(trusted()))
    // Structured replies negotiated in the clear are forgotten: asking again is fine.
    expect((await run(session.option(Option.STRUCTURED_REPLY))).map((r) => r.replyType)).toEqual([Reply.ACK])
    expect((await run(session.list)).length).toBe(1)
    const client = await run(session.go(""))
    await run(client.write(8192, pattern(65536, 2)))
    expectBytes(await run(client.read(8192, 65536)), pattern(65536, 2))
    expectBytes(server.store!.read(8192, 65536), pattern(65536, 2))
  })

  it("STARTTLS twice is ERR_INVALID; STARTTLS with data is ERR_INVALID", async () => {
    const session = await handshake(server)
    expect((await run(session.option(Option.STARTTLS, new Uint8Array(3)))).map((r) => r.replyType)).toEqual([
      ReplyError.INVALID
    ])
    await run(session.startTls(trusted()))
    expect((await run(session.option(Option.STARTTLS))).map((r) => r.replyType)).toEqual([ReplyError.INVALID])
  })

  it("a client that does not trust the server's certificate fails the handshake", async () => {
    const session = await handshake(server)
    const result = await run(Effect.either(session.startTls({ servername: "localhost" })))
    expect(result._tag === "Left" && result.left._tag).toBe("ClientError")
  })
})

describe("STARTTLS, TLS required", () => {
  let server: TestServer.TestServer
  beforeAll(async () => {
    server = await startServer("require")
  })
  afterAll(() => server.stop())

  it("options before STARTTLS get ERR_TLS_REQD; after it everything works", async () => {
    const session = await handshake(server)
    for (const option of [Option.LIST, Option.STRUCTURED_REPLY, Option.INFO, 99]) {
      expect((await run(session.option(option))).map((r) => r.replyType)).toEqual([ReplyError.TLS_REQD])
    }
    await run(session.startTls(trusted()))
    expect((await run(session.list)).length).toBe(1)
    await run(session.structuredReplies)
    const client = await run(session.go(""))
    expect(client.info.size).toBe(16 * 1024 * 1024)
  })

  it("EXPORT_NAME before STARTTLS closes the connection", async () => {
    const session = await handshake(server)
    const result = await run(Effect.either(session.option(Option.EXPORT_NAME)))
    expect(result._tag === "Left" && result.left._tag).toBe("ClientError")
  })

  it("ABORT is answered before STARTTLS", async () => {
    const session = await handshake(server)
    expect((await run(session.option(Option.ABORT))).map((r) => r.replyType)).toEqual([Reply.ACK])
  })
})

describe("STARTTLS with client certificates", () => {
  let server: TestServer.TestServer
  beforeAll(async () => {
    server = await startServer("require", true)
  })
  afterAll(() => server.stop())

  it("a client without a certificate is refused; one with a certificate signed by the CA gets in", async () => {
    const anonymous = await handshake(server)
    const refused = await run(Effect.either(Effect.flatMap(anonymous.startTls(trusted()), () => anonymous.list)))
    expect(refused._tag).toBe("Left")
    const client = await run(Client.connect(net.connect(server.port, "127.0.0.1"), {
      tls: { ...trusted(), cert: certificates.clientCert, key: certificates.clientKey }
    }))
    expect(client.info.size).toBe(16 * 1024 * 1024)
  })
})
