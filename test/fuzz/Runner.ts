/**
 * The fuzz loop shared by `npm run fuzz` and the CI slice: generates case `i` of a seed,
 * runs it in process or over TCP, and collects findings with what is needed to replay
 * them (seed, index, bytes).
 */
import * as fc from "effect/FastCheck"
import { bytesOf, describeCase, type FuzzCase, fuzzCase } from "./Generators.ts"
import * as Harness from "./Harness.ts"

/** The seed of case `index` of a run seeded with `seed` (fast-check takes 32-bit seeds). */
export const caseSeed = (seed: number, index: number): number => (seed ^ Math.imul(index + 1, 0x9e3779b1)) | 0

/** Case `index` of a run seeded with `seed`. */
export const generate = (seed: number, index: number): FuzzCase =>
  fc.sample(fuzzCase, { seed: caseSeed(seed, index), numRuns: 1 })[0]!

export type Kind = "in-process" | "tcp"

/** A finding with what reproduces it. */
export interface Report {
  readonly seed: number
  readonly index: number
  readonly kind: Kind
  readonly finding: Harness.Finding
  readonly description: string
  readonly bytes: Uint8Array
  readonly logs: ReadonlyArray<Harness.LogLine>
  /** A smaller case with the same kind of finding, when shrinking found one. */
  readonly shrunk?: { readonly description: string; readonly bytes: Uint8Array } | undefined
}

/** Counters of a run. */
export interface Stats {
  inProcess: number
  tcp: number
  readonly findings: Record<Harness.FindingKind, number>
  /** Case times in milliseconds, for percentiles. */
  readonly millis: Array<number>
  bytesSent: number
  bytesReceived: number
  /** Live memory (heap and array buffers) after collection: first sample, and the largest. */
  memoryBaseline: number
  memoryPeak: number
  /** The largest heap and array buffers seen right after a case, garbage included. */
  memoryAfterCase: number
}

export const emptyStats = (): Stats => ({
  inProcess: 0,
  tcp: 0,
  findings: { crash: 0, hang: 0, defect: 0, resource: 0, data: 0, memory: 0, reply: 0 },
  millis: [],
  bytesSent: 0,
  bytesReceived: 0,
  memoryBaseline: 0,
  memoryPeak: 0,
  memoryAfterCase: 0
})

export interface RunnerOptions {
  readonly seed: number
  /** Every `tcpEvery`-th case runs over TCP (0: none). */
  readonly tcpEvery: number
  readonly hangMillis?: number
  /** Live memory may grow this much over the baseline across the run. */
  readonly memoryGrowthLimit?: number
  /** Shrink the first finding of each kind (in process or TCP, as found) within this many milliseconds (0: no shrinking). */
  readonly shrinkMillis?: number
  /** Called for each finding as it is found. */
  readonly onReport?: (report: Report) => void
  /** Told about each case before it runs (it kills the process if the event loop stalls). */
  readonly watchdog?: Harness.Watchdog | undefined
}

/** A running fuzzer: the fixture, the TCP server, the crash trap and the counters. */
export interface Runner {
  readonly stats: Stats
  readonly reports: Array<Report>
  /** Runs case `index` (its kind follows from the index). */
  readonly run: (index: number) => Promise<void>
  /** Runs a fresh well-behaved client against the TCP server; a problem is reported as a `data` finding. */
  readonly checkTcpServer: () => Promise<string | undefined>
  /** Samples memory (after a collection) and reports growth beyond the limit. */
  readonly checkMemory: (index: number) => void
  readonly close: () => Promise<void>
}

export const kindOf = (index: number, tcpEvery: number): Kind =>
  tcpEvery > 0 && index % tcpEvery === tcpEvery - 1 ? "tcp" : "in-process"

export const makeRunner = async (options: RunnerOptions): Promise<Runner> => {
  const hangMillis = options.hangMillis ?? 2000
  const fixture = Harness.makeFixture()
  const trap = Harness.installCrashTrap()
  const server = options.tcpEvery > 0 ? await Harness.startTcpServer(fixture) : undefined
  const stats = emptyStats()
  const reports: Array<Report> = []
  const memoryGrowthLimit = options.memoryGrowthLimit ?? 96 * 1024 * 1024

  const shrunkKinds = new Set<Harness.FindingKind>()

  /** Samples live memory (after a collection) and reports growth beyond the limit since the baseline. */
  const checkMemory = (index: number): void => {
    const live = Harness.liveMemory()
    if (stats.memoryBaseline === 0) stats.memoryBaseline = live
    stats.memoryPeak = Math.max(stats.memoryPeak, live)
    if (live - stats.memoryBaseline <= memoryGrowthLimit) return
    stats.findings.memory++
    const c = generate(options.seed, index)
    const report: Report = {
      seed: options.seed,
      index,
      kind: kindOf(index, options.tcpEvery),
      finding: {
        kind: "memory",
        detail: `live memory ${(live / 1048576).toFixed(1)} MiB, ${((live - stats.memoryBaseline) / 1048576).toFixed(1)} MiB ` +
          `above the baseline, after case ${index}`
      },
      description: describeCase(c),
      bytes: bytesOf(c),
      logs: []
    }
    reports.push(report)
    options.onReport?.(report)
    stats.memoryBaseline = live // growth is reported once per step
  }

  /** Memory right after a case, garbage included; far above the baseline, collected and judged. */
  const memoryAfter = (index: number) => {
    const usage = process.memoryUsage()
    const now = usage.heapUsed + usage.arrayBuffers
    stats.memoryAfterCase = Math.max(stats.memoryAfterCase, now)
    if (stats.memoryBaseline > 0 && now - stats.memoryBaseline > 4 * memoryGrowthLimit) checkMemory(index)
  }

  const runCase = async (kind: Kind, c: FuzzCase): Promise<Harness.CaseResult> => {
    const result = kind === "tcp"
      ? await Harness.runTcp(fixture, server!, c, { hangMillis })
      : await Harness.runInProcess(fixture, c, { hangMillis })
    const crashes = trap.take()
    return crashes.length === 0
      ? result
      : { ...result, findings: [...result.findings, { kind: "crash" as const, detail: crashes.join("\n") }] }
  }

  /** fast-check's shrinking of the case, keeping the same kind of finding. */
  const shrink = async (seed: number, kind: Kind, finding: Harness.FindingKind) => {
    const millis = options.shrinkMillis ?? 0
    if (millis <= 0 || shrunkKinds.has(finding)) return undefined
    shrunkKinds.add(finding)
    const details = await fc.check(
      fc.asyncProperty(fuzzCase, async (c) => !(await runCase(kind, c)).findings.some((f) => f.kind === finding)),
      { seed, numRuns: 1, skipAllAfterTimeLimit: millis }
    )
    const shrunk = details.counterexample?.[0]
    return shrunk === undefined ? undefined : { description: describeCase(shrunk), bytes: bytesOf(shrunk) }
  }

  return {
    stats,
    reports,
    run: async (index) => {
      const kind = kindOf(index, options.tcpEvery)
      const c = generate(options.seed, index)
      options.watchdog?.current(
        `seed ${options.seed} case ${index} (${kind}); replay: npm run fuzz -- --seed ${options.seed} --only ${index}\n${describeCase(c)}`,
        bytesOf(c)
      )
      const result = await runCase(kind, c)
      if (kind === "tcp") stats.tcp++
      else stats.inProcess++
      stats.millis.push(result.millis)
      stats.bytesSent += result.sent
      stats.bytesReceived += result.received
      memoryAfter(index)
      for (const finding of result.findings) {
        stats.findings[finding.kind]++
        const report: Report = {
          seed: options.seed,
          index,
          kind,
          finding,
          description: describeCase(c),
          bytes: bytesOf(c),
          logs: result.logs,
          shrunk: await shrink(caseSeed(options.seed, index), kind, finding.kind)
        }
        reports.push(report)
        options.onReport?.(report)
      }
    },
    close: async () => {
      await server?.stop()
      trap.dispose()
    },
    checkTcpServer: async () => {
      if (server === undefined) return undefined
      const problem = await Harness.checkWithFreshClient(fixture, server)
      if (problem !== undefined) stats.findings.data++
      return problem
    },
    checkMemory
  }
}

const hex = (bytes: Uint8Array, limit = 64 * 1024): string =>
  bytes.length <= limit
    ? Buffer.from(bytes).toString("hex")
    : `${Buffer.from(bytes.subarray(0, limit)).toString("hex")}... (${bytes.length} bytes in all; first ${limit} shown)`

/** A report as text: what happened, how to replay it, the case and its bytes. */
export const formatReport = (r: Report): string => {
  const lines = [
    `=== ${r.finding.kind.toUpperCase()} (${r.kind}) seed ${r.seed} case ${r.index}`,
    `replay: npm run fuzz -- --seed ${r.seed} --only ${r.index}`,
    r.finding.detail,
    "--- case",
    r.description,
    `bytes (${r.bytes.length}, hex): ${hex(r.bytes)}`
  ]
  if (r.logs.length > 0) {
    lines.push("--- server log (WARN and above)")
    for (const l of r.logs.slice(0, 10)) lines.push(`${l.level} ${l.message}${l.cause === "" ? "" : `\n${l.cause}`}`)
  }
  if (r.shrunk !== undefined) {
    lines.push("--- shrunk case", r.shrunk.description, `bytes (${r.shrunk.bytes.length}, hex): ${hex(r.shrunk.bytes)}`)
  }
  return lines.join("\n")
}

/** The p-th percentile of times. */
export const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}
