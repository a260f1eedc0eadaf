/**
 * The CI slice of the fuzzer (`npm run fuzz` runs it for as long as asked): a fixed seed,
 * 300 cases in process and 30 over TCP, with the same judgement (no hang, no defect, no
 * out-of-proportion work, no change to the read-only export, no crash, well-formed and
 * complete replies to predictable cases, bounded memory), then a fresh client of the TCP
 * server. First, the harness is shown to catch what it looks for, on planted faults.
 */
import * as Effect from "effect/Effect"
import * as Metrics from "../../src/server/Metrics.ts"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import { Command, Option } from "../../src/protocol/Constants.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import { clientFlagsBytes, type Delivery, Exports, optionBytes } from "./Generators.ts"
import * as Harness from "./Harness.ts"
import { expectationOf, goAndRead, ReplyReader } from "./Oracle.ts"
import { formatReport, generate, makeRunner, type Runner } from "./Runner.ts"

/** The slice's seed: change it only together with a clean run of the new one. */
const SEED = 20261123
const MiB = 1024 * 1024

/** Requests counted by sessions run in process (every command tag of `nbd_requests_total`). */
const requestsHandled = (): number =>
  Effect.runSync(Effect.flatMap(Metrics.CurrentMetrics, (metrics) => metrics.snapshot))
    .filter((pair) => pair.metricKey.name === "nbd_requests_total")
    .reduce((n, pair) => n + ((pair.metricState as { readonly count?: number }).count ?? 0), 0)

const failuresOf = (runner: Runner) => runner.reports.map(formatReport).join("\n\n")

// ---- the harness catches what it looks for ---------------------------------------------------

const send: Delivery = { chunks: [1 << 30], pauses: 0, ending: "end", linger: true, slowReader: false }

const exportsWith = (fixture: Harness.Fixture, driver: Driver.NbdDriverShape) => [
  ...Harness.makeExports(fixture, "rw"),
  Export.make(driver, { name: "planted" })
]

describe("the fuzz harness catches what it looks for", () => {
  const fixture = Harness.makeFixture()

  it("a well-behaved exchange: no finding, every reply counted, the data checked", async () => {
    const { bytes, expectation } = goAndRead(Exports.ro.name, 3)
    const result = await Harness.runBytesInProcess(fixture, bytes, { delivery: send, defaultExport: "rw" }, { expectation })
    expect(result.findings).toEqual([])
    expect(result.received).toBe(18 + 86 + 3 * (16 + 4096))
  })

  it("a driver defect is reported, in process and over TCP", async () => {
    const dying = Driver.make({ name: "dying", size: Effect.succeed(MiB), read: () => Effect.die(new Error("planted defect")) })
    const { bytes } = goAndRead("planted", 1)
    const exports = exportsWith(fixture, dying)
    const inProcess = await Harness.runBytesInProcess(fixture, bytes, { delivery: send, defaultExport: "rw" }, { exports })
    expect(inProcess.findings.map((f) => f.kind)).toEqual(["defect"])
    expect(inProcess.findings[0]!.detail).toContain("planted defect")

    const server = await Harness.startTcpServer(fixture, {}, exports)
    try {
      const overTcp = await Harness.runBytesTcp(fixture, server, bytes, { delivery: send })
      expect(overTcp.findings.map((f) => f.kind)).toEqual(["defect"])
    } finally {
      await server.stop()
    }
  })

  it("a request that never completes is a stall, and a session that does not end a hang", async () => {
    const stuck = Driver.make({ name: "stuck", size: Effect.succeed(MiB), read: () => Effect.never })
    const { bytes, expectation } = goAndRead("planted", 1)
    const result = await Harness.runBytesInProcess(fixture, bytes, { delivery: send, defaultExport: "rw" }, {
      exports: exportsWith(fixture, stuck),
      expectation,
      hangMillis: 300
    })
    expect(result.findings.map((f) => f.kind)).toEqual(["hang", "hang"])
    expect(result.findings[0]!.detail).toContain("stall: the server answered 0 of the 1 requests")
    expect(result.findings[1]!.detail).toContain("session still running")
  })

  it("a change to the read-only export's content is reported", async () => {
    const own = Harness.makeFixture()
    // The fixture's store served writable under another name: a write changes it.
    const leaky = MemoryDriver.fromStore(own.ro)
    const bytes = Buffer.concat([
      clientFlagsBytes(3),
      optionBytes(Option.GO, OptionData.InfoRequest.encodeUnsafe({ name: "planted", requests: [] })),
      encodeRequestHeaderFast(0, Command.WRITE, 1n, 0n, 512),
      Buffer.alloc(512, 0xee)
    ])
    const result = await Harness.runBytesInProcess(own, bytes, { delivery: send, defaultExport: "rw" }, {
      exports: exportsWith(own, leaky)
    })
    expect(result.findings.map((f) => f.kind)).toEqual(["data"])
    expect(result.findings[0]!.detail).toContain("first difference at offset 0")
  })

  it("a malformed reply stream, a reply nobody waits for and wrong read data are reported", () => {
    const { expectation } = goAndRead(Exports.ro.name, 1)
    const greeting = Buffer.from("4e42444d41474943" + "49484156454f5054" + "0003", "hex")
    const ack = Buffer.alloc(20)
    ack.writeBigUInt64BE(0x3e889045565a9n, 0)
    ack.writeUInt32BE(Option.GO, 8)
    ack.writeUInt32BE(1, 12)
    const simple = (cookie: bigint) => {
      const b = Buffer.alloc(16)
      b.writeUInt32BE(0x67446698, 0)
      b.writeBigUInt64BE(cookie, 8)
      return b
    }
    const content = Harness.makeFixture().roContent
    const good = new ReplyReader(expectation, content)
    good.feed(Buffer.concat([greeting, ack, simple(1n), content.subarray(0, 4096)]))
    expect(good.error).toBeUndefined()
    expect(good.answered).toBe(1)

    const wrongData = new ReplyReader(expectation, content)
    wrongData.feed(Buffer.concat([greeting, ack, simple(1n), content.subarray(512, 512 + 4096)]))
    expect(wrongData.error).toContain("read data differs")

    const unknownCookie = new ReplyReader(expectation, content)
    unknownCookie.feed(Buffer.concat([greeting, ack, simple(7n)]))
    expect(unknownCookie.error).toContain("no request is waiting for")

    const garbage = new ReplyReader(expectation, content)
    garbage.feed(Buffer.concat([greeting, ack, Buffer.alloc(16, 0xab)]))
    expect(garbage.error).toContain("bad simple reply magic")
  })
})

// ---- the slice --------------------------------------------------------------------------------

describe(`fuzz slice, seed ${SEED}`, () => {
  let watchdog: Harness.Watchdog
  let inProcess: Runner
  let overTcp: Runner
  let handledBefore = 0
  let memoryBefore = 0

  beforeAll(async () => {
    watchdog = Harness.startWatchdog(20_000)
    inProcess = await makeRunner({ seed: SEED, tcpEvery: 0, watchdog })
    overTcp = await makeRunner({ seed: SEED + 1, tcpEvery: 1, watchdog })
    handledBefore = requestsHandled()
    memoryBefore = Harness.liveMemory()
  })
  afterAll(async () => {
    await inProcess?.close()
    await overTcp?.close()
    await watchdog?.stop()
  })

  for (const [from, to] of [[0, 100], [100, 200], [200, 300]] as const) {
    it(`in process: cases ${from} to ${to - 1}`, async () => {
      const before = inProcess.reports.length
      for (let i = from; i < to; i++) await inProcess.run(i)
      const found = inProcess.reports.slice(before)
      expect(found, found.map(formatReport).join("\n\n")).toEqual([])
    })
  }

  it("the in-process cases went deep: predictable ones, requests run, memory bounded", () => {
    expect(inProcess.stats.inProcess).toBe(300)
    const predictable = Array.from({ length: 300 }, (_, i) => expectationOf(generate(SEED, i))).filter((e) => e !== undefined)
    expect(predictable.length).toBeGreaterThan(50)
    expect(predictable.reduce((n, e) => n + e.replies, 0)).toBeGreaterThan(150)
    // Requests that reached the transmission parser's checks or the driver.
    expect(requestsHandled() - handledBefore).toBeGreaterThan(200)
    expect(inProcess.stats.bytesReceived).toBeGreaterThan(100 * 1024)
    expect(Harness.liveMemory() - memoryBefore).toBeLessThan(64 * MiB)
  })

  it("over TCP: 30 cases, then a fresh client reads the read-only export and writes the writable one", async () => {
    for (let i = 0; i < 30; i++) await overTcp.run(i)
    expect(overTcp.reports, failuresOf(overTcp)).toEqual([])
    expect(overTcp.stats.tcp).toBe(30)
    expect(await overTcp.checkTcpServer()).toBeUndefined()
  })
})
