/**
 * Runs fuzz cases against the server: in process (a session over an in-memory pipe, as
 * `src/testing/InProcess.ts` does) and over TCP (the server layer on 127.0.0.1, port 0),
 * and judges each case:
 *
 * - hang: the session has not ended (fiber finished and our end of the stream closed, or,
 *   over TCP, no session left) within `hangMillis` of the client ending its side;
 * - defect: the server logged at ERROR level, or anything about a defect;
 * - resource: a driver operation was asked for work out of proportion with the case
 *   (the guarded stores refuse it instead of taking the fuzzer down: see {@link GuardedMemory});
 * - data: the read-only export's content changed;
 * - crash: an uncaught exception or unhandled rejection in the process during the case;
 * - reply (cases whose answers are predictable, see `Oracle.ts`): a malformed or
 *   unexpected reply frame; a server that stops answering while the client waits for
 *   its replies is a hang.
 *
 * Nothing here asserts: results are values, for the runner and the tests to judge.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Scope from "effect/Scope"
import { createHash } from "node:crypto"
import * as net from "node:net"
import type { Duplex } from "node:stream"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import { Worker } from "node:worker_threads"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import { protocolError } from "../../src/Errors.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import * as Metrics from "../../src/server/Metrics.ts"
import * as Server from "../../src/server/Server.ts"
import * as ServerConfig from "../../src/server/ServerConfig.ts"
import * as Session from "../../src/server/Session.ts"
import * as Shutdown from "../../src/server/Shutdown.ts"
import * as InProcess from "../../src/testing/InProcess.ts"
import { bytesOf, Exports, type FuzzCase, pauseAfter, piecesOf } from "./Generators.ts"
import { type Expectation, expectationOf, ReplyReader } from "./Oracle.ts"

const MiB = 1024 * 1024

// ---- stores -------------------------------------------------------------------------------


/** Thrown by a {@link GuardedMemory} asked for out-of-proportion work. */
export class FuzzBudgetExceeded extends Error {
  override readonly name = "FuzzBudgetExceeded"
}

/**
 * A sparse memory store that refuses (throws, which the server sees as a driver defect)
 * an operation that would allocate more than `budgetBytes` in all, or walk more than
 * `maxPagesPerOperation` pages in one call: one small request that costs gigabytes or
 * seconds of a blocked event loop is a finding, not something to let crash the fuzzer.
 */
export class GuardedMemory extends MemoryDriver.SparseMemory {
  constructor(
    size: number,
    readonly budgetBytes = 64 * MiB,
    readonly maxPagesPerOperation = 1 << 20
  ) {
    super(size)
  }

  private guard(offset: number, length: number, allocates: boolean, what: string): void {
    const pages = Math.ceil((offset + length) / MemoryDriver.PAGE_SIZE) - Math.floor(offset / MemoryDriver.PAGE_SIZE)
    if (pages > this.maxPagesPerOperation) {
      throw new FuzzBudgetExceeded(`fuzz budget: ${what} of ${length} bytes at ${offset} walks ${pages} pages in one call`)
    }
    if (allocates && (this.pages.size + pages) * MemoryDriver.PAGE_SIZE > this.budgetBytes) {
      throw new FuzzBudgetExceeded(
        `fuzz budget: ${what} of ${length} bytes at ${offset} would allocate up to ${pages * MemoryDriver.PAGE_SIZE} bytes ` +
          `(${this.allocatedBytes} held already)`
      )
    }
  }

  override write(offset: number, data: Uint8Array): void {
    this.guard(offset, data.length, true, "write")
    super.write(offset, data)
  }

  override zero(offset: number, length: number, keepAllocated: boolean): void {
    // Freeing, and zeroing more than MAX_PROVISION, visit only the allocated pages;
    // provisioning a smaller range walks it all and allocates its holes.
    if (keepAllocated && length <= MemoryDriver.MAX_PROVISION) this.guard(offset, length, true, "zero (allocated)")
    super.zero(offset, length, keepAllocated)
  }

  override read(offset: number, length: number): Uint8Array {
    this.guard(offset, length, false, "read")
    return super.read(offset, length)
  }

  override views(offset: number, length: number): Array<Uint8Array | number> {
    this.guard(offset, length, false, "read")
    return super.views(offset, length)
  }
}

/** A deterministic pattern (no zero runs, so holes cannot hide a change). */
export const pattern = (length: number, seed: number): Uint8Array => {
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = ((i * 31 + seed + (i >> 8)) & 0xff) | 1
  return out
}

const sha256 = (data: Uint8Array): string => createHash("sha256").update(data).digest("hex")

/** What every case shares: the read-only store and its digest. */
export interface Fixture {
  readonly ro: MemoryDriver.SparseMemory
  readonly roContent: Uint8Array
  readonly roDigest: string
}

/** The read-only export's store, filled with a known pattern. */
export const makeFixture = (): Fixture => {
  const ro = new MemoryDriver.SparseMemory(Exports.ro.size)
  const roContent = pattern(Exports.ro.size, 0x5a)
  ro.write(0, roContent)
  return { ro, roContent, roDigest: sha256(roContent) }
}

/** How the read-only store differs from what it was filled with, if it does. */
export const roChange = (fixture: Fixture): string | undefined => {
  const { ro } = fixture
  if (ro.size !== Exports.ro.size) return `read-only export resized from ${Exports.ro.size} to ${ro.size}`
  const expectedPages = Exports.ro.size / MemoryDriver.PAGE_SIZE
  if (ro.pages.size !== expectedPages) return `read-only export has ${ro.pages.size} pages, not ${expectedPages}`
  const now = ro.read(0, ro.size)
  if (sha256(now) === fixture.roDigest) return undefined
  let i = 0
  while (now[i] === fixture.roContent[i]) i++
  return `read-only export content changed (first difference at offset ${i})`
}

/** The export with 512-byte blocks (1 MiB maximum), served on the Effect path (no `sync`). */
const alignedDriver = (store: GuardedMemory): Driver.NbdDriverShape =>
  Driver.make({
    name: "aligned-memory",
    description: "memory export with 512-byte blocks",
    capabilities: { fua: true, fastZero: true, blockStatus: true, multiConn: true },
    blockSize: { minimum: Exports.aligned.minimum, preferred: 4096, maximum: Exports.aligned.maximum },
    size: Effect.sync(() => store.size),
    read: (offset, length) => Effect.sync(() => store.read(offset, length)),
    write: (offset, data) => Effect.sync(() => store.write(offset, data)),
    flush: Effect.void,
    trim: (offset, length) => Effect.sync(() => store.zero(offset, length, false)),
    writeZeroes: (offset, length, options) => Effect.sync(() => store.zero(offset, length, options.noHole)),
    blockStatus: (offset, length) => Effect.sync(() => store.blockStatus(offset, length)),
    resize: (size) =>
      size > MemoryDriver.MAX_SIZE
        ? Effect.fail(protocolError("ENOSPC", `size ${size} is too large`))
        : Effect.sync(() => store.resize(size))
  })

/** The exports: `rw` (memory, sync path), `ro` (the fixture, read-only filter) and `aligned`. */
/** The writable stores of a set of exports. */
export interface Stores {
  readonly rw: GuardedMemory
  readonly aligned: GuardedMemory
  readonly big: GuardedMemory
}

export const makeStores = (): Stores => ({
  rw: new GuardedMemory(Exports.rw.size),
  aligned: new GuardedMemory(Exports.aligned.size),
  big: new GuardedMemory(Exports.big.size)
})

/** Empties the writable stores and gives them back their sizes (a case may have resized them). */
export const resetStores = (stores: Stores): void => {
  const sizes = [[stores.rw, Exports.rw.size], [stores.aligned, Exports.aligned.size], [stores.big, Exports.big.size]] as const
  for (const [store, size] of sizes) {
    store.clear()
    store.size = size
  }
}

/** The exports: `rw` and `big` (memory, sync path), `ro` (the fixture, read-only filter) and `aligned`. */
export const makeExports = (
  fixture: Fixture,
  defaultExport: "rw" | "ro",
  stores: Stores = makeStores()
): ReadonlyArray<Export.NbdExport> => {
  const rw = Export.make(MemoryDriver.fromStore(stores.rw, "writable memory"), { name: Exports.rw.name })
  const ro = Export.make(MemoryDriver.fromStore(fixture.ro, "read-only pattern"), { name: Exports.ro.name, readOnly: true })
  const aligned = Export.make(alignedDriver(stores.aligned), { name: Exports.aligned.name })
  const big = Export.make(MemoryDriver.fromStore(stores.big, "sparse 1 TiB"), { name: Exports.big.name })
  return defaultExport === "rw" ? [rw, ro, aligned, big] : [ro, rw, aligned, big]
}

// ---- logs ---------------------------------------------------------------------------------

/** One line the server logged. */
export interface LogLine {
  readonly level: string
  readonly message: string
  readonly cause: string
}

const messageText = (message: unknown): string =>
  Array.isArray(message) ? message.map((m) => (typeof m === "string" ? m : String(m))).join(" ") : String(message)

/** A layer replacing the default logger with one that records into `sink` (and prints nothing). */
export const captureLogs = (sink: Array<LogLine>): Layer.Layer<never> =>
  Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ cause, logLevel, message }) => {
      sink.push({ level: logLevel.label, message: messageText(message), cause: Cause.isEmpty(cause) ? "" : Cause.pretty(cause) })
    })
  )

const isBudget = (line: LogLine) => line.cause.includes("FuzzBudgetExceeded") || line.message.includes("fuzz budget")
const isDefect = (line: LogLine) =>
  line.level === "ERROR" || line.level === "FATAL" || /defect/i.test(line.message) || /defect/i.test(line.cause)

// ---- crashes ------------------------------------------------------------------------------

/** Records uncaught exceptions and unhandled rejections (which then do not end the process). */
export interface CrashTrap {
  /** What was caught since the last call. */
  readonly take: () => ReadonlyArray<string>
  readonly dispose: () => void
}

export const installCrashTrap = (): CrashTrap => {
  let caught: Array<string> = []
  const onException = (error: unknown) => caught.push(`uncaught exception: ${error instanceof Error ? error.stack : String(error)}`)
  const onRejection = (reason: unknown) => caught.push(`unhandled rejection: ${reason instanceof Error ? reason.stack : String(reason)}`)
  process.on("uncaughtException", onException)
  process.on("unhandledRejection", onRejection)
  return {
    take: () => {
      const out = caught
      caught = []
      return out
    },
    dispose: () => {
      process.off("uncaughtException", onException)
      process.off("unhandledRejection", onRejection)
    }
  }
}

// ---- results ------------------------------------------------------------------------------

export type FindingKind = "crash" | "hang" | "defect" | "resource" | "data" | "memory" | "reply"

export interface Finding {
  readonly kind: FindingKind
  readonly detail: string
}

export interface CaseResult {
  readonly findings: ReadonlyArray<Finding>
  /** Bytes sent and received. */
  readonly sent: number
  readonly received: number
  /** Real time the case took. */
  readonly millis: number
  /** Lines the server logged at WARN level or above. */
  readonly logs: ReadonlyArray<LogLine>
}

const judgeLogs = (lines: ReadonlyArray<LogLine>): Array<Finding> => {
  const findings: Array<Finding> = []
  const budget = lines.filter(isBudget)
  const defects = lines.filter((l) => isDefect(l) && !isBudget(l))
  if (budget.length > 0) {
    const line = budget[0]!
    const match = /fuzz budget: [^\n]*/.exec(line.cause + line.message)
    findings.push({ kind: "resource", detail: `${line.message}: ${match?.[0] ?? line.cause}` })
  }
  if (defects.length > 0) {
    findings.push({ kind: "defect", detail: defects.map((l) => `${l.level} ${l.message}\n${l.cause}`).join("\n") })
  }
  return findings
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve))

/** Resolves true once `ready()` holds (checked when `subscribe` signals), false after `ms`. */
const within = (ms: number, ready: () => boolean, subscribe: (check: () => void) => void): Promise<boolean> =>
  new Promise<boolean>((resolve) => {
    let settled = false
    const check = () => {
      if (settled || !ready()) return
      settled = true
      clearTimeout(timer)
      resolve(true)
    }
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      resolve(ready())
    }, ms)
    subscribe(check)
    check()
  })

/**
 * A case's result: the findings so far, then what the logs and replies show and any change
 * to the read-only export; the logs kept are those above INFO.
 */
const judged = (
  fixture: Fixture,
  findings: Array<Finding>,
  lines: ReadonlyArray<LogLine>,
  replies: ReplyReader | undefined,
  counts: { readonly sent: number; readonly received: number; readonly started: number }
): CaseResult => {
  findings.push(...judgeLogs(lines), ...judgeReplies(replies))
  const change = roChange(fixture)
  if (change !== undefined) findings.push({ kind: "data", detail: change })
  return {
    findings,
    sent: counts.sent,
    received: counts.received,
    millis: performance.now() - counts.started,
    logs: lines.filter((l) => l.level !== "INFO" && l.level !== "DEBUG" && l.level !== "TRACE")
  }
}

// ---- in process ---------------------------------------------------------------------------

export interface InProcessOptions {
  /** How long the session may take to end once the client has ended its side (and to answer what it was sent). */
  readonly hangMillis?: number
  /** The answers the case must get (checked when given). */
  readonly expectation?: Expectation | undefined
  readonly config?: Partial<ServerConfig.ServerConfig>
  /** The exports (fresh `rw` and `aligned` stores over the fixture's `ro` otherwise). */
  readonly exports?: ReadonlyArray<Export.NbdExport>
}

let connectionIds = 0

/** Runs one case against a session in process. */
export const runInProcess = async (fixture: Fixture, c: FuzzCase, options: InProcessOptions = {}): Promise<CaseResult> =>
  runBytesInProcess(fixture, bytesOf(c), c, { config: c.config, expectation: expectationOf(c), ...options })

/**
 * Waits (up to `ms`) for the server to answer every request the expectation counts, while
 * the client keeps its side open; a stall is a hang.
 */
const awaitAnswers = async (
  reader: ReplyReader | undefined,
  ms: number,
  isClosed: () => boolean,
  subscribe: (check: () => void) => void,
  overTcp: boolean
): Promise<Finding | undefined> => {
  if (reader === undefined) return undefined
  const expected = reader.expectation.replies
  // Past the model, replies are no longer counted: the server answered beyond what it was expected to.
  const settled = () => reader.answered >= expected || reader.error !== undefined || reader.beyondModel
  await within(ms, () => settled() || isClosed(), subscribe)
  if (settled()) return undefined
  if (!isClosed()) {
    return {
      kind: "hang",
      detail: `stall: the server answered ${reader.answered} of the ${expected} requests it was sent and ` +
        `sent nothing more for ${ms} ms while the client waited for the rest`
    }
  }
  // Over TCP, a server that closes with unread bytes from the client resets the connection,
  // and the reset may discard replies it sent just before: not a finding there.
  return overTcp ? undefined : {
    kind: "reply",
    detail: `the server closed the connection after answering ${reader.answered} of the ${expected} requests it had been sent`
  }
}

/** A reply reader for a predictable case; data read from the read-only export is compared with its content. */
const readerFor = (fixture: Fixture, expectation: Expectation | undefined): ReplyReader | undefined =>
  expectation === undefined
    ? undefined
    : new ReplyReader(expectation, expectation.exportName === Exports.ro.name ? fixture.roContent : undefined)

/** What the reply stream showed, once the case is over. */
const judgeReplies = (reader: ReplyReader | undefined): Array<Finding> => {
  if (reader === undefined) return []
  const findings: Array<Finding> = []
  if (reader.error !== undefined) findings.push({ kind: "reply", detail: `malformed reply stream: ${reader.error}` })
  else if (reader.expectation.exact && reader.answered > reader.expectation.replies) {
    findings.push({ kind: "reply", detail: `${reader.answered} replies to ${reader.expectation.replies} requests` })
  }
  return findings
}

/** Runs given bytes, delivered as `c.delivery` says, against a session in process. */
export const runBytesInProcess = async (
  fixture: Fixture,
  bytes: Uint8Array,
  c: Pick<FuzzCase, "delivery" | "defaultExport">,
  options: InProcessOptions = {}
): Promise<CaseResult> => {
  const started = performance.now()
  const hangMillis = options.hangMillis ?? 2000
  const lines: Array<LogLine> = []
  const [client, server] = InProcess.duplexPair()
  const exports = options.exports ?? makeExports(fixture, c.defaultExport)
  const fiber = Effect.runFork(
    Session.run(server, {
      config: ServerConfig.make(options.config),
      connectionId: ++connectionIds,
      shutdown: Shutdown.never
    }).pipe(Effect.provide(Layer.merge(Export.ExportRegistry.layer(exports), captureLogs(lines))))
  )
  let fiberDone = false
  let clientEnded = false
  let received = 0
  const signals = new Set<() => void>()
  const signal = () => signals.forEach((f) => f())
  fiber.addObserver(() => {
    fiberDone = true
    signal()
  })
  const replies = readerFor(fixture, options.expectation)
  client.on("data", (chunk: Buffer) => {
    received += chunk.length
    replies?.feed(chunk)
    signal()
  })
  client.on("end", () => {
    clientEnded = true
    signal()
  })
  client.on("close", signal)
  client.on("error", () => {})

  const { delivery } = c
  const pieces = piecesOf(bytes, delivery)
  let sent = 0
  for (let i = 0; i < pieces.length && !fiberDone; i++) {
    client.write(pieces[i])
    sent += pieces[i]!.length
    if (pauseAfter(delivery, i)) await turn()
  }
  const findings: Array<Finding> = []
  if (delivery.linger) {
    for (let i = 0; i < 4; i++) await turn()
    const stall = await awaitAnswers(replies, hangMillis, () => fiberDone || clientEnded, (check) => signals.add(check), false)
    if (stall !== undefined) findings.push(stall)
  }
  if (delivery.ending === "end") client.end()
  else client.destroy()

  // The session must finish, and (after a FIN) close its side of the stream too.
  const ended = () => fiberDone && (delivery.ending !== "end" || clientEnded || client.destroyed)
  const finished = await within(hangMillis, ended, (check) => signals.add(check))
  if (!finished) {
    findings.push({
      kind: "hang",
      detail: `session still running ${hangMillis} ms after the client ${delivery.ending === "end" ? "ended" : "closed"} its side ` +
        `(session fiber ${fiberDone ? "finished" : "running"}, server side ${clientEnded ? "closed" : "open"}; ` +
        `sent ${sent} of ${bytes.length} bytes, received ${received})`
    })
    await within(1000, () => fiberDone, (check) => {
      signals.add(check)
      Effect.runFork(Fiber.interrupt(fiber))
    })
    client.destroy()
  }
  return judged(fixture, findings, lines, replies, { sent, received, started })
}

// ---- over TCP -----------------------------------------------------------------------------

/** A server on 127.0.0.1 for the TCP cases, its log, and its stores. */
export interface TcpServer {
  readonly port: number
  readonly logs: Array<LogLine>
  readonly stores: Stores
  /** Connections accepted so far. */
  readonly connections: () => number
  /** Sessions open now. */
  readonly active: () => number
  readonly stop: () => Promise<void>
}

/** Sessions open on a server, as its gauge says. */
const activeSessions = (metrics: Metrics.ServerMetrics): number => {
  const state = Metrics.find(Effect.runSync(metrics.snapshot), "nbd_sessions_active")
  return state !== undefined && "value" in state ? Number(state.value) : 0
}

/** Starts the server layer (`ro` the default export) with a log that records. */
export const startTcpServer = async (
  fixture: Fixture,
  config: Partial<ServerConfig.ServerConfig> = {},
  exports?: ReadonlyArray<Export.NbdExport>
): Promise<TcpServer> => {
  const logs: Array<LogLine> = []
  const stores = makeStores()
  const layer = Server.layer({ host: "127.0.0.1", port: 0 }, config).pipe(
    Layer.provide(Export.ExportRegistry.layer(exports ?? makeExports(fixture, "ro", stores)))
  )
  const scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(
    Layer.buildWithScope(layer, scope).pipe(
      Effect.map((context) => Context.get(context, Server.NbdServer)),
      Effect.provide(captureLogs(logs))
    )
  )
  const address = server.address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  return {
    port: address.port,
    logs,
    stores,
    connections: () => Effect.runSync(server.connections),
    active: () => activeSessions(server.metrics),
    stop: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

/** Polls `ready` (for state that has no event, such as the sessions gauge) until it holds or `ms` pass. */
const pollWithin = async (ms: number, ready: () => boolean): Promise<boolean> => {
  const deadline = performance.now() + ms
  while (!ready()) {
    if (performance.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  return true
}

/** Runs one case over a TCP connection to `server`. */
export const runTcp = async (fixture: Fixture, server: TcpServer, c: FuzzCase, options: { readonly hangMillis?: number } = {}) =>
  runBytesTcp(fixture, server, bytesOf(c), c, { expectation: expectationOf(c, {}, Exports.ro.name), ...options })

/** Runs given bytes over a TCP connection to `server`, delivered and ended as `c.delivery` says. */
export const runBytesTcp = async (
  fixture: Fixture,
  server: TcpServer,
  bytes: Uint8Array,
  c: Pick<FuzzCase, "delivery">,
  options: { readonly hangMillis?: number; readonly expectation?: Expectation | undefined } = {}
): Promise<CaseResult> => {
  const started = performance.now()
  const hangMillis = options.hangMillis ?? 2000
  const logStart = server.logs.length
  const findings: Array<Finding> = []
  // Sessions of earlier cases must be gone (they are judged by their own case); then the
  // writable stores start afresh, as in process.
  await pollWithin(hangMillis, () => server.active() === 0)
  resetStores(server.stores)
  const expected = server.connections() + 1
  const socket = net.connect(server.port, "127.0.0.1")
  let received = 0
  let closed = false
  const signals = new Set<() => void>()
  const signal = () => signals.forEach((f) => f())
  const replies = readerFor(fixture, options.expectation)
  socket.on("data", (chunk: Buffer) => {
    received += chunk.length
    replies?.feed(chunk)
    signal()
  })
  socket.on("error", () => {})
  socket.on("end", signal)
  socket.on("close", () => {
    closed = true
    signal()
  })
  await new Promise<void>((resolve) => {
    socket.once("connect", () => resolve())
    socket.once("close", () => resolve())
  })
  const { delivery } = c
  const pieces = piecesOf(bytes, delivery)
  let sent = 0
  if (delivery.slowReader) socket.pause()
  for (let i = 0; i < pieces.length && !socket.destroyed && !closed; i++) {
    socket.write(pieces[i]!)
    sent += pieces[i]!.length
    if (pauseAfter(delivery, i)) await turn()
  }
  if (delivery.slowReader) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    socket.resume()
  }
  if (delivery.linger) {
    await new Promise((resolve) => setTimeout(resolve, 5))
    const stall = await awaitAnswers(replies, hangMillis, () => closed || socket.readableEnded, (check) => signals.add(check), true)
    if (stall !== undefined) findings.push(stall)
  }
  // The session must have started before it can be seen to end.
  await pollWithin(hangMillis, () => server.connections() >= expected)
  const endedAt = performance.now()
  if (delivery.ending === "end") socket.end()
  else if (delivery.ending === "reset") socket.resetAndDestroy()
  else socket.destroy()
  const gone = await pollWithin(hangMillis, () => server.active() === 0 && (delivery.ending !== "end" || closed))
  if (!gone) {
    findings.push({
      kind: "hang",
      detail: `TCP session still open ${Math.round(performance.now() - endedAt)} ms after the client ` +
        `${delivery.ending === "end" ? "sent FIN" : delivery.ending === "reset" ? "reset the connection" : "closed"} ` +
        `(${server.active()} session(s) active, socket ${closed ? "closed" : "open"}; sent ${sent} of ${bytes.length} bytes, received ${received})`
    })
  }
  socket.destroy()
  const lines = server.logs.slice(logStart)
  return judged(fixture, findings, lines, replies, { sent, received, started })
}

/**
 * A fresh, well-behaved client of the TCP server: reads the whole read-only export and
 * compares it with the pattern; writes and reads back a block of the writable one.
 * Resolves to a problem, or undefined when all is well.
 */
export const checkWithFreshClient = async (fixture: Fixture, server: TcpServer): Promise<string | undefined> => {
  await pollWithin(5000, () => server.active() === 0)
  resetStores(server.stores)
  const withClient = <A>(exportName: string, f: (client: Client.NbdClient) => Effect.Effect<A, unknown>) =>
    Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const stream: Duplex = net.connect(server.port, "127.0.0.1")
          const client = yield* Client.connect(stream, { exportName, structuredReplies: true })
          const result = yield* f(client)
          yield* client.disconnect
          return result
        })
      ).pipe(Effect.timeout("10 seconds"))
    )
  try {
    const ro = await withClient(Exports.ro.name, (client) =>
      Effect.gen(function*() {
        const out = new Uint8Array(Exports.ro.size)
        for (let at = 0; at < out.length; at += 256 * 1024) out.set(yield* client.read(at, 256 * 1024), at)
        return out
      }))
    if (sha256(ro) !== fixture.roDigest) return "a fresh client reads other bytes from the read-only export than it was filled with"
    const block = pattern(64 * 1024, 0x33)
    const back = await withClient(Exports.rw.name, (client) =>
      Effect.gen(function*() {
        yield* client.write(MiB, block)
        return yield* client.read(MiB, block.length)
      }))
    if (sha256(back) !== sha256(block)) return "a fresh client does not read back what it wrote to the writable export"
    return undefined
  } catch (error) {
    return `a fresh client failed: ${error instanceof Error ? error.message : String(error)}`
  }
}

// ---- memory -------------------------------------------------------------------------------

/** The garbage collector, whether or not the process was started with --expose-gc. */
export const collectGarbage: () => void = (() => {
  const exposed = (globalThis as { gc?: () => void }).gc
  if (exposed !== undefined) return exposed
  v8.setFlagsFromString("--expose-gc")
  return vm.runInNewContext("gc") as () => void
})()

/** Live heap plus array buffers (where received chunks and pages live), in bytes. */
export const liveMemory = (collect = true): number => {
  if (collect) collectGarbage()
  const usage = process.memoryUsage()
  return usage.heapUsed + usage.arrayBuffers
}

// ---- a watchdog for a blocked event loop ----------------------------------------------------

/**
 * A worker thread that kills the process when the main thread's event loop stops turning
 * for `stallMillis` (a case that blocks it cannot be timed out from inside), after
 * writing the current case's label and bytes (hex) to stderr.
 */
export interface Watchdog {
  /** Names the case about to run and its bytes (the first 1 MiB are kept). */
  readonly current: (label: string, bytes: Uint8Array) => void
  readonly stop: () => Promise<void>
}

const WATCHDOG_SOURCE = `
const { workerData } = require("node:worker_threads")
const fs = require("node:fs")
const { shared, stallMillis } = workerData
const state = new Int32Array(shared, 0, 4)
const labelBytes = new Uint8Array(shared, 16, 4096)
const caseBytes = new Uint8Array(shared, 16 + 4096)
let last = Atomics.load(state, 0)
let since = Date.now()
setInterval(() => {
  if (Atomics.load(state, 3) === 1) process.exit(0)
  const beat = Atomics.load(state, 0)
  if (beat !== last) { last = beat; since = Date.now(); return }
  if (Date.now() - since < stallMillis) return
  const label = Buffer.from(labelBytes.subarray(0, Atomics.load(state, 1))).toString("utf8")
  const hex = Buffer.from(caseBytes.subarray(0, Atomics.load(state, 2))).toString("hex")
  fs.writeSync(2, "\\nFUZZ WATCHDOG: the event loop has not turned for " + (Date.now() - since) + " ms: hang (event loop blocked)\\n" +
    label + "\\nbytes (hex): " + hex + "\\n")
  process.kill(process.pid, "SIGKILL")
}, 100)
`

export const startWatchdog = (stallMillis = 10_000): Watchdog => {
  const capacity = MiB
  const shared = new SharedArrayBuffer(16 + 4096 + capacity)
  const state = new Int32Array(shared, 0, 4)
  const labelBytes = new Uint8Array(shared, 16, 4096)
  const caseBytes = new Uint8Array(shared, 16 + 4096)
  const worker = new Worker(WATCHDOG_SOURCE, { eval: true, workerData: { shared, stallMillis } })
  worker.unref()
  const beat = setInterval(() => Atomics.add(state, 0, 1), 100)
  beat.unref()
  return {
    current: (label, bytes) => {
      const encoded = Buffer.from(label, "utf8").subarray(0, labelBytes.length)
      labelBytes.set(encoded)
      Atomics.store(state, 1, encoded.length)
      const n = Math.min(bytes.length, capacity)
      caseBytes.set(bytes.subarray(0, n))
      Atomics.store(state, 2, n)
      Atomics.add(state, 0, 1)
    },
    stop: async () => {
      clearInterval(beat)
      Atomics.store(state, 3, 1)
      await worker.terminate()
    }
  }
}
