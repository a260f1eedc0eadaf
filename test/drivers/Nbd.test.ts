/**
 * The nbd proxy driver against real nbdkit servers (memory plugin and friends) started
 * for these tests, reached over Unix sockets directly and over TCP through a counting
 * relay (which also lets a test cut the upstream connections).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as Driver from "../../src/Driver.ts"
import * as NbdDriver from "../../src/drivers/Nbd.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as Certificates from "../support/Certificates.ts"
import * as TestServer from "../support/TestServer.ts"

const KiB = 1024
const MiB = 1024 * KiB

/** A directory with a space in its name, so that socket paths in URIs need percent-encoding. */
const root = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd proxy-"))

/** An nbdkit process serving on a Unix socket. */
interface Nbdkit {
  readonly socket: string
  readonly uri: (exportName?: string, query?: string) => string
  readonly stop: () => void
}

const canConnect = (socket: string) =>
  new Promise<boolean>((resolve) => {
    const probe = net.connect({ path: socket })
    probe.once("connect", () => {
      probe.destroy()
      resolve(true)
    })
    probe.once("error", () => resolve(false))
  })

/** Starts `nbdkit -f -U SOCKET ARGS...` and waits until it accepts connections. */
const nbdkit = async (name: string, args: ReadonlyArray<string>, scheme = "nbd+unix"): Promise<Nbdkit> => {
  const socket = path.join(root, `${name}.sock`)
  const child: ChildProcess = spawn("nbdkit", ["-f", "--exit-with-parent", "-U", socket, ...args], {
    stdio: ["ignore", "ignore", "pipe"]
  })
  let stderr = ""
  child.stderr!.on("data", (chunk) => (stderr += chunk))
  const started = Date.now()
  while (!(await canConnect(socket))) {
    if (child.exitCode !== null || Date.now() - started > 10_000) {
      child.kill()
      throw new Error(`nbdkit ${args.join(" ")} did not start: ${stderr}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return {
    socket,
    uri: (exportName = "", query = "") =>
      `${scheme}:///${exportName}?socket=${encodeURIComponent(socket)}${query === "" ? "" : `&${query}`}`,
    stop: () => void child.kill()
  }
}

/** A TCP relay on 127.0.0.1 to a Unix socket, counting connections; `cut` breaks them all. */
interface Relay {
  readonly port: number
  readonly accepted: () => number
  readonly active: () => number
  readonly cut: () => void
  readonly stop: () => void
}

const relay = async (target: string): Promise<Relay> => {
  let accepted = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    accepted++
    const upstream = net.connect({ path: target })
    sockets.add(client)
    for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
      a.pipe(b)
      a.on("error", () => b.destroy())
      a.on("close", () => {
        b.destroy()
        sockets.delete(client)
      })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const cut = () => {
    for (const socket of sockets) socket.destroy()
  }
  return {
    port: (server.address() as net.AddressInfo).port,
    accepted: () => accepted,
    active: () => sockets.size,
    cut,
    stop: () => {
      cut()
      server.close()
    }
  }
}

/** Waits (briefly) until `condition` holds; the relay learns of closed connections asynchronously. */
const eventually = (condition: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200 && !condition(); i++) yield* Effect.promise(() => new Promise((r) => setTimeout(r, 10)))
    expect(condition()).toBe(true)
  })

/** A port nothing listens on. */
const closedPort = async () => {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as net.AddressInfo).port
  await new Promise((resolve) => server.close(resolve))
  return port
}

let memory: Nbdkit // writable memory export
let readOnly: Nbdkit // read-only, most flags off, block sizes sent, export "ro" only
let simple: Nbdkit // eval plugin without structured replies: rotational, no flush
let secure: Nbdkit // TLS required
let noFua: Nbdkit // eval plugin: writable, FLUSH but no FUA, each flush logged to `flushLog`
const flushLog = path.join(root, "flushes")
let certificates: Certificates.Certificates
let memoryRelay: Relay
let secureRelay: Relay

beforeAll(async () => {
  certificates = Certificates.make()
  ;[memory, readOnly, simple, secure, noFua] = await Promise.all([
    nbdkit("memory", ["memory", "64M"]),
    nbdkit("readonly", [
      "-r",
      "--filter=exportname",
      "--filter=nozero",
      "--filter=multi-conn",
      "--filter=nocache",
      "--filter=blocksize-policy",
      "memory",
      "64M",
      "exportname=ro",
      "exportname-strict=true",
      "multi-conn-mode=disable",
      "cachemode=none",
      "blocksize-minimum=512",
      "blocksize-preferred=4096",
      "blocksize-maximum=1M"
    ]),
    nbdkit("simple", ["--no-sr", "eval", "get_size=echo 1048576", "pread=head -c $3 /dev/zero", "is_rotational=exit 0"]),
    nbdkit("secure", ["--tls=require", `--tls-certificates=${certificates.serverDir}`, "memory", "16M"], "nbds+unix"),
    nbdkit("nofua", [
      "eval",
      "get_size=echo 1048576",
      "pread=head -c $3 /dev/zero",
      "pwrite=cat >/dev/null",
      "can_write=exit 0",
      "can_flush=exit 0",
      "can_fua=echo none",
      `flush=echo flush >> '${flushLog}'`
    ])
  ])
  memoryRelay = await relay(memory.socket)
  secureRelay = await relay(secure.socket)
}, 60_000)

afterAll(() => {
  for (const r of [memoryRelay, secureRelay]) r?.stop()
  for (const server of [memory, readOnly, simple, secure, noFua]) server?.stop()
  certificates?.remove()
  fs.rmSync(root, { recursive: true, force: true })
})

const tcp = (port: number, rest = "/") => `nbd://127.0.0.1:${port}${rest}`

/** Makes the proxy and opens it once in the test's scope. */
const openProxy = (options: NbdDriver.NbdOptions) =>
  Effect.flatMap(Effect.orDie(NbdDriver.make(options)), (driver) => Testing.open(driver))

/** The failure of an effect that must fail. */
const failure = Effect.flip

const writeOptions = { fua: false }
const zeroOptions = { fua: false, noHole: false, fastZero: false }

describe("nbd driver: I/O through the upstream", () => {
  it.scoped("writes, reads back and flushes, over TCP", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: tcp(memoryRelay.port) })
      expect(yield* handle.size).toBe(64 * MiB)
      const data = pattern(100 * KiB, 7)
      yield* handle.write(MiB + 3, data, writeOptions)
      expectBytes(yield* handle.read(MiB + 3, data.length), data)
      yield* handle.write(MiB + 3, data.subarray(0, 512), { fua: true })
      yield* handle.flush
      yield* handle.cache(0, MiB)
      // Another client of the proxy sees the same upstream data.
      const other = yield* openProxy({ uri: memory.uri() })
      expectBytes(yield* other.read(MiB + 3, data.length), data)
    }))

  it.scoped("trims and zeroes", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: memory.uri() })
      const at = 4 * MiB
      yield* handle.write(at, pattern(256 * KiB, 3), writeOptions)
      yield* handle.trim(at, 64 * KiB, writeOptions)
      yield* handle.writeZeroes(at + 64 * KiB, 64 * KiB, zeroOptions)
      yield* handle.writeZeroes(at + 128 * KiB, 64 * KiB, { fua: true, noHole: true, fastZero: false })
      yield* handle.writeZeroes(at + 192 * KiB, 32 * KiB, { fua: false, noHole: false, fastZero: true })
      const read = yield* handle.read(at, 256 * KiB)
      expectBytes(read.subarray(0, 224 * KiB), new Uint8Array(224 * KiB))
      expectBytes(read.subarray(224 * KiB), pattern(256 * KiB, 3).subarray(224 * KiB))
    }))

  it.scoped("block status shows written extents as data and the rest as holes", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: memory.uri() })
      const at = 8 * MiB
      yield* handle.write(at, pattern(64 * KiB, 1), writeOptions)
      expect(yield* handle.blockStatus(at - MiB, 2 * MiB)).toEqual([
        { length: MiB, flags: Driver.HOLE_ZERO },
        { length: 64 * KiB, flags: 0 },
        { length: MiB - 64 * KiB, flags: Driver.HOLE_ZERO }
      ])
      // The upstream may describe more than asked for: the proxy answers only the range asked.
      expect(yield* handle.blockStatus(at, 1000)).toEqual([{ length: 1000, flags: 0 }])
      yield* handle.trim(at, 64 * KiB, writeOptions)
      expect(yield* handle.blockStatus(at, 64 * KiB)).toEqual([{ length: 64 * KiB, flags: Driver.HOLE_ZERO }])
    }))
})

describe("nbd driver: capabilities", () => {
  it.scoped("mirror a writable memory upstream", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: memory.uri() })
      expect(handle.capabilities).toEqual({
        readOnly: false,
        flush: true,
        fua: true,
        trim: true,
        zero: true,
        fastZero: true,
        cache: true,
        resize: false,
        multiConn: true,
        rotational: false,
        blockStatus: true,
        blockSize: { minimum: 1, preferred: 4096, maximum: 32 * MiB }
      })
    }))

  it.scoped("mirror a read-only upstream with most features off and block sizes sent", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: readOnly.uri("ro") })
      expect(handle.capabilities).toEqual({
        readOnly: true,
        flush: true,
        fua: false,
        trim: false,
        zero: false,
        fastZero: false,
        cache: false,
        resize: false,
        multiConn: false,
        rotational: false,
        blockStatus: true,
        blockSize: { minimum: 512, preferred: 4096, maximum: MiB }
      })
    }))

  it.scoped("without structured replies: no block status (all data), rotational, no flush", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: simple.uri() })
      expect(handle.capabilities).toMatchObject({ rotational: true, flush: false, blockStatus: false, readOnly: true })
      expect(yield* handle.blockStatus(0, 4096)).toEqual([{ length: 4096, flags: 0 }])
      expectBytes(yield* handle.read(512, 1024), new Uint8Array(1024))
      const refused = yield* failure(handle.flush)
      expect(refused.errno).toBe("EINVAL")
    }))

  it.scoped("FUA writes to an upstream without FUA are followed by a flush", () =>
    Effect.gen(function*() {
      const flushes = () => (fs.existsSync(flushLog) ? fs.readFileSync(flushLog, "utf8").split("\n").length - 1 : 0)
      const handle = yield* openProxy({ uri: noFua.uri() })
      expect(handle.capabilities).toMatchObject({ readOnly: false, flush: true, fua: false })
      yield* handle.write(0, new Uint8Array(512), writeOptions)
      expect(flushes()).toBe(0)
      yield* handle.write(0, new Uint8Array(512), { fua: true })
      expect(flushes()).toBe(1)
    }))
})

describe("nbd driver: errors", () => {
  it.scoped("upstream errors pass through with their errno", () =>
    Effect.gen(function*() {
      const ro = yield* openProxy({ uri: readOnly.uri("ro") })
      const denied = yield* failure(ro.write(0, new Uint8Array(512), writeOptions))
      expect(denied._tag).toBe("ProtocolError")
      expect(denied.errno).toBe("EPERM")
      const rw = yield* openProxy({ uri: memory.uri() })
      expect((yield* failure(rw.read(64 * MiB - 512, 1024))).errno).toBe("EINVAL")
      expect((yield* failure(rw.write(64 * MiB, new Uint8Array(512), writeOptions))).errno).toBe("ENOSPC")
      // The connection survives errors.
      expect((yield* rw.read(0, 512)).length).toBe(512)
    }))

  it.scoped("a lost upstream connection fails requests with EIO", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: tcp(memoryRelay.port) })
      yield* handle.read(0, 512)
      memoryRelay.cut()
      const lost = yield* failure(handle.read(0, 512))
      expect(lost.errno).toBe("EIO")
      expect(lost.message).toContain(tcp(memoryRelay.port))
      expect((yield* failure(handle.write(0, new Uint8Array(1), writeOptions))).errno).toBe("EIO")
    }))

  it.scoped("an unreachable upstream fails the open with an OptionReplyError naming the URI", () =>
    Effect.gen(function*() {
      const uri = tcp(yield* Effect.promise(closedPort), "/disk")
      const refused = yield* failure(openProxy({ uri }))
      expect(refused).toMatchObject({ _tag: "OptionReplyError", reply: "UNKNOWN" })
      expect(refused.message).toContain(uri)
      expect(refused.message).toContain("ECONNREFUSED")
      const missing = `nbd+unix:///?socket=${encodeURIComponent(path.join(root, "none.sock"))}`
      expect((yield* failure(openProxy({ uri: missing }))).message).toContain("ENOENT")
    }))

  it.scoped("an unknown upstream export fails the open; export= picks another", () =>
    Effect.gen(function*() {
      const refused = yield* failure(openProxy({ uri: readOnly.uri("other") }))
      expect(refused).toMatchObject({ _tag: "OptionReplyError", reply: "UNKNOWN" })
      expect(refused.message).toContain("NBD_OPT_GO")
      const handle = yield* openProxy({ uri: readOnly.uri("other"), exportName: "ro" })
      expect(handle.capabilities.readOnly).toBe(true)
    }))

  it.scopedLive("a silent upstream times out, and its connection is closed", () =>
    Effect.gen(function*() {
      let connections = 0
      let closed = 0
      const server = net.createServer((socket) => {
        connections++
        socket.on("close", () => closed++)
      })
      yield* Effect.acquireRelease(
        Effect.promise(() => new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))),
        () => Effect.sync(() => server.close())
      )
      const uri = tcp((server.address() as net.AddressInfo).port)
      const refused = yield* failure(openProxy({ uri, connectTimeout: "200 millis" }))
      expect(refused.reply).toBe("UNKNOWN")
      expect(refused.message).toContain("no answer within")
      yield* eventually(() => connections === 1 && closed === 1)
    }))
})

describe("nbd driver: connections", () => {
  it.scoped("each open makes its own upstream connection, closed when the client's scope closes", () =>
    Effect.gen(function*() {
      yield* eventually(() => memoryRelay.active() === 0)
      const before = memoryRelay.accepted()
      const driver = yield* Effect.orDie(NbdDriver.make({ uri: tcp(memoryRelay.port) }))
      expect(driver.name).toBe("nbd")
      yield* Effect.scoped(
        Effect.gen(function*() {
          const a = yield* Testing.open(driver)
          const b = yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(2)))
          expect(memoryRelay.accepted() - before).toBe(2)
          yield* a.write(12 * MiB, pattern(4096, 9), writeOptions)
          yield* a.flush
          expectBytes(yield* b.read(12 * MiB, 4096), pattern(4096, 9))
          expect(memoryRelay.active()).toBe(2)
        })
      )
      yield* eventually(() => memoryRelay.active() === 0)
    }))

  it.scoped("a Unix socket URI with a percent-encoded path works", () =>
    Effect.gen(function*() {
      expect(memory.uri()).toContain("effect-nbd%20proxy-")
      const handle = yield* openProxy({ uri: memory.uri() })
      yield* handle.write(16 * MiB, pattern(512, 4), writeOptions)
      expectBytes(yield* handle.read(16 * MiB, 512), pattern(512, 4))
    }))
})

describe("nbd driver: TLS", () => {
  it.scoped("nbds+unix with tls-certificates works; plain nbd+unix is refused by the upstream", () =>
    Effect.gen(function*() {
      const query = `tls-certificates=${encodeURIComponent(certificates.clientDir)}`
      const handle = yield* openProxy({ uri: secure.uri("", query) })
      yield* handle.write(0, pattern(4096, 5), writeOptions)
      expectBytes(yield* handle.read(0, 4096), pattern(4096, 5))
      const plain = yield* failure(openProxy({ uri: secure.uri().replace("nbds+unix", "nbd+unix") }))
      expect(plain.reply).toBe("UNKNOWN")
      expect(plain.message).toContain("TLS_REQD")
    }))

  it.scoped("nbds over TCP verifies the server's name; tls-verify-peer=false skips it", () =>
    Effect.gen(function*() {
      const dir = encodeURIComponent(certificates.clientDir)
      const good = yield* openProxy({ uri: `nbds://127.0.0.1:${secureRelay.port}/?tls-certificates=${dir}` })
      expect(yield* good.size).toBe(16 * MiB)
      const wrongName = `nbds://127.0.0.1:${secureRelay.port}/?tls-certificates=${dir}&tls-hostname=other.example`
      const refused = yield* failure(openProxy({ uri: wrongName }))
      expect(refused.message).toContain("TLS handshake failed")
      const unverified = yield* openProxy({ uri: `${wrongName}&tls-verify-peer=false` })
      expect(yield* unverified.size).toBe(16 * MiB)
      // Without the test CA the server's certificate is not trusted.
      const untrusted = yield* failure(openProxy({ uri: `nbds://127.0.0.1:${secureRelay.port}/` }))
      expect(untrusted.message).toContain("TLS handshake failed")
    }))

  it.effect("nbds to an upstream without TLS fails the open; missing certificates fail make", () =>
    Effect.gen(function*() {
      const refused = yield* failure(Effect.scoped(openProxy({ uri: memory.uri().replace("nbd+unix", "nbds+unix") })))
      expect(refused.message).toContain("NBD_OPT_STARTTLS")
      const missing = yield* failure(NbdDriver.make({ uri: `nbds://h/?tls-certificates=${encodeURIComponent(root)}` }))
      expect(missing._tag).toBe("NbdDriverError")
      expect(missing.message).toContain("ca-cert.pem")
    }))
})

describe("nbd driver: plugin and layer", () => {
  it.effect("builds from a URI and parameters, refusing bad ones with clear messages", () =>
    Effect.gen(function*() {
      expect(NbdDriver.plugin.name).toBe("nbd")
      const made = NbdDriver.plugin.make(memory.uri(), new Map([["export", "x"], ["connect-timeout", "5s"]]))
      if (Either.isLeft(made)) throw made.left
      const driver = yield* Effect.scoped(made.right)
      expect(driver.name).toBe("nbd")
      const badUri = NbdDriver.plugin.make("nbd://h:99999/", new Map())
      expect(Either.isLeft(badUri) && badUri.left.message).toBe(
        "nbd: nbd://h:99999/: port '99999' is not a number from 1 to 65535"
      )
      const badParameter = NbdDriver.plugin.make(memory.uri(), new Map([["color", "blue"]]))
      expect(Either.isLeft(badParameter) && badParameter.left.message).toContain("unknown parameter 'color'")
      const badMake = yield* Effect.exit(NbdDriver.make({ uri: "http://h/" }))
      expect(Exit.isFailure(badMake)).toBe(true)
    }))

  it.scoped("the layer provides the driver", () =>
    Effect.gen(function*() {
      const driver = yield* Effect.provide(Driver.NbdDriver, NbdDriver.layer({ uri: memory.uri(), description: "proxy" }))
      expect(driver.description).toEqual(expect.objectContaining({ value: "proxy" }))
      const handle = yield* Testing.open(driver)
      expect(yield* handle.size).toBe(64 * MiB)
    }))
})

describe("nbd driver: an effect-nbd upstream (extended headers, resize)", () => {
  const GiB = 1024 * MiB
  let server: TestServer.TestServer

  beforeAll(async () => {
    server = await TestServer.start({ size: 8 * GiB })
  })
  afterAll(() => server?.stop())

  /** Opens the proxy and reports whether the upstream connection uses extended headers (from its debug log). */
  const openLogged = (extendedHeaders: boolean) =>
    Effect.gen(function*() {
      const seen: Array<unknown> = []
      const logger = Logger.make(({ annotations }) => {
        for (const [key, value] of annotations) if (key === "extendedHeaders") seen.push(value)
      })
      const handle = yield* openProxy({ uri: server.uri(), extendedHeaders }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )
      return { handle, extended: seen[0] }
    })

  it.scoped("uses extended headers when offered: a 6 GiB block status and trim go as one request", () =>
    Effect.gen(function*() {
      const { handle, extended } = yield* openLogged(true)
      expect(extended).toBe(true)
      expect(handle.capabilities).toMatchObject({ resize: true, blockStatus: true, fua: true })
      yield* handle.write(5 * GiB, pattern(4096, 2), { fua: true })
      expectBytes(yield* handle.read(5 * GiB, 4096), pattern(4096, 2))
      expect(yield* handle.blockStatus(0, 6 * GiB)).toEqual([
        { length: 5 * GiB, flags: Driver.HOLE_ZERO },
        { length: 32 * KiB, flags: 0 },
        { length: GiB - 32 * KiB, flags: Driver.HOLE_ZERO }
      ])
      yield* handle.trim(0, 6 * GiB, writeOptions)
      expectBytes(yield* handle.read(5 * GiB, 4096), new Uint8Array(4096))
    }))

  it.scoped("with compact headers, long requests are split or clamped to 32-bit lengths", () =>
    Effect.gen(function*() {
      const { handle, extended } = yield* openLogged(false)
      expect(extended).toBe(false)
      yield* handle.write(7 * GiB, pattern(4096, 6), writeOptions)
      const extents = yield* handle.blockStatus(0, 8 * GiB)
      expect(extents.reduce((n, e) => n + e.length, 0)).toBeLessThanOrEqual(2 * GiB)
      yield* handle.writeZeroes(0, 8 * GiB, zeroOptions)
      expectBytes(yield* handle.read(7 * GiB, 4096), new Uint8Array(4096))
    }))

  it.scoped("resizes the upstream and reports the new size", () =>
    Effect.gen(function*() {
      const handle = yield* openProxy({ uri: server.uri() })
      yield* handle.resize(4 * GiB)
      expect(yield* handle.size).toBe(4 * GiB)
      expect(server.store?.size).toBe(4 * GiB)
      yield* handle.resize(8 * GiB)
    }))
})
