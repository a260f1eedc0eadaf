/**
 * TLS-PSK: psktool's key file (parsed strictly, failing with the line of a problem), and
 * STARTTLS with pre-shared keys over real TCP with the project's client (TLS 1.3 and
 * TLS 1.2), alone and beside X.509 certificates on one server. The PSK user name is the
 * identity a driver sees (`ClientInfo.tls.psk`).
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import type * as tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { Option as Opt, Reply, ReplyError } from "../../src/protocol/Constants.ts"
import * as Tls from "../../src/server/Tls.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as Certificates from "../support/Certificates.ts"
import * as TestServer from "../support/TestServer.ts"

const SIZE = 4 * 1024 * 1024
const hex = (bytes: number) => randomBytes(bytes).toString("hex")

describe("the psktool key file", () => {
  const keysOf = (text: string) => {
    const parsed = Tls.parsePsk(text)
    if (Either.isLeft(parsed)) throw new Error(parsed.left)
    return parsed.right
  }
  const problem = (text: string) => {
    const parsed = Tls.parsePsk(text)
    return Either.isLeft(parsed) ? parsed.left : "parsed"
  }

  it("one username:hexkey per line; blank lines, CRLF and the trailing newline are fine", () => {
    const alice = hex(32)
    const bob = hex(16).toUpperCase()
    const keys = keysOf(`alice:${alice}\r\n\nbob:${bob}\n`)
    expect([...keys.keys()]).toEqual(["alice", "bob"])
    expectBytes(keys.get("alice")!, Buffer.from(alice, "hex"))
    expectBytes(keys.get("bob")!, Buffer.from(bob, "hex"))
  })

  it("a user name starting with # is hex, as psktool writes a name with a colon", () => {
    const key = hex(32)
    const keys = keysOf(`#${Buffer.from("backup:nightly").toString("hex")}:${key}\n`)
    expect([...keys.keys()]).toEqual(["backup:nightly"])
  })

  it("a malformed file is refused with the line of the problem", () => {
    const good = `alice:${hex(32)}\n`
    expect(problem(`${good}bob\n`)).toBe("line 2: expected username:hexkey")
    expect(problem(`:${hex(8)}`)).toBe("line 1: empty username")
    expect(problem(`${good}\nbob:abc\n`)).toContain("line 3: the key of 'bob' is not an even number of hex digits")
    expect(problem(`bob:zz${hex(8)}`)).toContain("line 1: the key of 'bob' is not an even number of hex digits")
    expect(problem("bob:")).toContain("line 1: the key of 'bob' is not an even number of hex digits")
    expect(problem(`#zz:${hex(8)}`)).toContain("line 1: username '#zz' starts with '#'")
    expect(problem(`${good}alice:${hex(32)}`)).toBe("line 2: user 'alice' already has a key on line 1")
    expect(problem(`bob:${hex(513)}`)).toContain("longer than 512 bytes")
    expect(problem("\n\n")).toContain("no keys")
    expect(problem("")).toContain("no keys")
  })
})

describe("loading TLS credentials", () => {
  let dir: string
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-psk-load-"))
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  const failure = <A>(effect: Effect.Effect<A, Tls.TlsConfigError>) => {
    const exit = Effect.runSync(Effect.exit(effect))
    if (Exit.isSuccess(exit)) throw new Error("expected a failure")
    const error = Exit.causeOption(exit).pipe(Option.flatMap((cause) => Option.fromNullable(cause._tag === "Fail" ? cause.error : null)))
    if (Option.isNone(error)) throw new Error("expected a typed failure")
    return error.value
  }

  it("a missing or malformed key file fails with a TlsConfigError naming the file and line", () => {
    const missing = path.join(dir, "missing.psk")
    const notFound = failure(Tls.loadPsk(missing, "require"))
    expect(notFound.reason).toBe("PskFile")
    expect(notFound.source).toBe(missing)
    expect(notFound.message).toContain(`cannot read TLS-PSK file ${missing}`)
    const bad = path.join(dir, "bad.psk")
    fs.writeFileSync(bad, `alice:${hex(32)}\nbob=${hex(32)}\n`)
    const malformed = failure(Tls.loadPsk(bad, "on"))
    expect(malformed.reason).toBe("PskFile")
    expect(malformed.message).toBe(`TLS-PSK file ${bad}: line 2: expected username:hexkey`)
  })

  it("no credentials at all, and verifying peers without a CA, are refused", () => {
    expect(failure(Tls.make({ mode: "require" })).reason).toBe("NoCredentials")
    expect(failure(Tls.make({ mode: "require", psk: new Map([["a", new Uint8Array(16)]]), verifyPeer: true })).message)
      .toContain("verifying clients needs a CA certificate")
  })

  it("a file made by psktool is read as it wrote it", () => {
    if (spawnSync("sh", ["-c", "command -v psktool"]).status !== 0) {
      console.warn("skipping: psktool not installed (apt-get install -y gnutls-bin)")
      return
    }
    const file = path.join(dir, "psktool.psk")
    for (const user of ["alice", "bob", "a:b"]) {
      expect(spawnSync("psktool", ["-u", user, "-p", file], { stdio: "ignore" }).status).toBe(0)
    }
    const config = Effect.runSync(Tls.loadPsk(file, "require"))
    expect([...config.psk!.keys()]).toEqual(["alice", "bob", "a:b"])
    expect(config.psk!.get("alice")!.length).toBe(32)
  })
})

describe("STARTTLS with pre-shared keys", () => {
  const aliceKey = randomBytes(32)
  const bobKey = randomBytes(32)
  let dir: string
  let pskFile: string
  let certificates: Certificates.Certificates
  const scope = Effect.runSync(Scope.make())
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-psk-"))
    pskFile = path.join(dir, "keys.psk")
    fs.writeFileSync(pskFile, `alice:${aliceKey.toString("hex")}\nbob:${bobKey.toString("hex")}\n`)
    certificates = Certificates.make()
  })
  afterAll(async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    certificates?.remove()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  /** A memory export whose driver records who opened it. */
  const startServer = async (options: Omit<Tls.TlsOptions, "pskFile"> & { readonly psk?: boolean }) => {
    const opened: Array<Driver.OpenRequest> = []
    const driver = Driver.filter(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(SIZE)), {
      name: "recording",
      open: (_, request) => Effect.as(Effect.sync(() => opened.push(request)), {})
    })
    const tlsConfig = Effect.runSync(Tls.load({ ...options, pskFile: options.psk === false ? undefined : pskFile }))
    const server = await TestServer.start({ drivers: [{ driver }], config: { tls: tlsConfig } })
    return { server, opened }
  }

  /** TLS options of a PSK client (no certificate to check: the key proves the server). */
  const psk = (identity: string, key: Uint8Array, extra: tls.ConnectionOptions = {}): tls.ConnectionOptions => ({
    pskCallback: () => ({ identity, psk: key }),
    checkServerIdentity: () => undefined,
    ...extra
  })
  const x509 = (withCertificate: boolean): tls.ConnectionOptions => ({
    ca: certificates.ca,
    servername: "localhost",
    ...(withCertificate ? { cert: certificates.clientCert, key: certificates.clientKey } : {})
  })

  const connect = (server: TestServer.TestServer, tlsOptions: tls.ConnectionOptions) =>
    run(Client.connect(net.connect(server.port, "127.0.0.1"), { tls: tlsOptions }))
  const refused = async (server: TestServer.TestServer, tlsOptions: tls.ConnectionOptions) => {
    const result = await run(Effect.either(Client.connect(net.connect(server.port, "127.0.0.1"), { tls: tlsOptions })))
    return result._tag === "Left"
  }
  const identityOf = (request: Driver.OpenRequest | undefined) =>
    Option.map(request!.client.tls, (t) => ({ psk: Option.getOrNull(t.psk), subject: Option.getOrNull(t.subject) }))

  describe("PSK only, TLS required", () => {
    let server: TestServer.TestServer
    let opened: Array<Driver.OpenRequest>
    beforeAll(async () => {
      ;({ server, opened } = await startServer({ mode: "require" }))
    })
    afterAll(() => server.stop())

    it("TLS 1.3: alice gets in, her data travels encrypted, and the driver sees her PSK identity", async () => {
      const client = await connect(server, psk("alice", aliceKey, { minVersion: "TLSv1.3" }))
      await run(client.write(4096, pattern(65536, 3)))
      expectBytes(await run(client.read(4096, 65536)), pattern(65536, 3))
      expect(identityOf(opened.at(-1))).toEqual(Option.some({ psk: "alice", subject: null }))
    })

    it("TLS 1.2 with a PSK cipher: bob gets in as bob", async () => {
      const client = await connect(server, psk("bob", bobKey, { maxVersion: "TLSv1.2", ciphers: "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256" }))
      expectBytes(await run(client.read(4096, 65536)), pattern(65536, 3))
      expect(identityOf(opened.at(-1))).toEqual(Option.some({ psk: "bob", subject: null }))
    })

    it("a wrong key, an unknown user, and a certificate-only client are refused", async () => {
      const before = opened.length
      expect(await refused(server, psk("alice", bobKey))).toBe(true)
      expect(await refused(server, psk("alice", bobKey, { maxVersion: "TLSv1.2", ciphers: "PSK-AES128-GCM-SHA256" }))).toBe(true)
      expect(await refused(server, psk("carol", aliceKey))).toBe(true)
      expect(await refused(server, x509(true))).toBe(true)
      expect(opened.length).toBe(before)
    })

    it("a plain client gets ERR_TLS_REQD", async () => {
      const session = await run(Client.handshake(net.connect(server.port, "127.0.0.1")))
      expect((await run(session.option(Opt.LIST))).map((r) => r.replyType)).toEqual([ReplyError.TLS_REQD])
      expect((await run(session.option(Opt.ABORT))).map((r) => r.replyType)).toEqual([Reply.ACK])
    })
  })

  describe("PSK only, TLS optional", () => {
    let server: TestServer.TestServer
    let opened: Array<Driver.OpenRequest>
    beforeAll(async () => {
      ;({ server, opened } = await startServer({ mode: "on" }))
    })
    afterAll(() => server.stop())

    it("a plain client stays in the clear; a PSK client upgrades", async () => {
      const plain = await run(Client.connect(net.connect(server.port, "127.0.0.1")))
      await run(plain.write(0, pattern(4096, 5)))
      expect(Option.isNone(opened.at(-1)!.client.tls)).toBe(true)
      const secure = await connect(server, psk("alice", aliceKey))
      expectBytes(await run(secure.read(0, 4096)), pattern(4096, 5))
      expect(identityOf(opened.at(-1))).toEqual(Option.some({ psk: "alice", subject: null }))
    })
  })

  describe("certificates and PSK on one server, client certificates verified", () => {
    let server: TestServer.TestServer
    let opened: Array<Driver.OpenRequest>
    beforeAll(async () => {
      ;({ server, opened } = await startServer({ mode: "require", certificates: certificates.serverDir, verifyPeer: true }))
    })
    afterAll(() => server.stop())

    it("an X.509 client with a certificate signed by the CA gets in with its subject, no PSK identity", async () => {
      const client = await connect(server, x509(true))
      expect(client.info.size).toBe(SIZE)
      expect(identityOf(opened.at(-1))).toEqual(Option.some({ psk: null, subject: "CN=effect-nbd test client" }))
    })

    it("a PSK client gets in beside it (its key proves it; no certificate asked)", async () => {
      const client = await connect(server, psk("bob", bobKey))
      await run(client.write(0, pattern(8192, 7)))
      expect(identityOf(opened.at(-1))).toEqual(Option.some({ psk: "bob", subject: null }))
      const tls12 = await connect(server, psk("alice", aliceKey, { maxVersion: "TLSv1.2", ciphers: "ECDHE-PSK-CHACHA20-POLY1305" }))
      expectBytes(await run(tls12.read(0, 8192)), pattern(8192, 7))
      expect(identityOf(opened.at(-1))).toEqual(Option.some({ psk: "alice", subject: null }))
    })

    it("an X.509 client without a certificate, and a PSK client with a wrong key, are refused", async () => {
      const before = opened.length
      expect(await refused(server, x509(false))).toBe(true)
      expect(await refused(server, psk("bob", aliceKey))).toBe(true)
      expect(opened.length).toBe(before)
    })
  })
})
