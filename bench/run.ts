/**
 * Benchmark harness: effect-nbd (memory) against nbdkit memory and nbdkit null,
 * with fio (nbd ioengine) and nbdcopy, on 127.0.0.1. Prints a markdown report
 * and writes it to bench/results/latest.md, or quick.md for --quick (raw fio JSON and
 * server logs next to it).
 *
 *   npm run bench                        full run (10 s per fio workload, 1 GiB export and copies)
 *   npm run bench -- --quick             smoke run (2 s per fio workload, 64 MiB export and copies)
 *   npm run bench -- --filters           also effect-nbd behind pass-through filter stacks
 *   npm run bench -- --quick --filters   both
 *
 * With --filters, the same run also measures effect-nbd's memory export behind
 * `--filter error:rate=0` (one filter on the Effect path), three of them, and
 * `--filter stats` (a filter that keeps the synchronous fast path), each right after
 * plain effect-nbd; the table gains a column per stack and a ratio of each stack to
 * plain effect-nbd (next to effect-nbd / nbdkit memory).
 *
 * Exits 1 if any server or tool failed, 0 otherwise.
 */
import { mkdirSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { type FioResult, type FioTiming, type FioWorkload, PREFILL, runFio, WORKLOADS } from "./fio.ts"
import { COPIES, createRandomFile, removeFile, runCopy } from "./nbdcopy.ts"
import { installCleanup, isShuttingDown, stopAll } from "./proc.ts"
import { filterArgs, type RunningServer, type ServerId, serversOf, startServer } from "./servers.ts"
import { formatSystemInfo, systemInfo } from "./system.ts"
import { type Cell, FILTER_RATIO_NOTE, RATIO_NOTE, renderTable, type Row } from "./table.ts"

/** Sizes and durations of one mode. */
interface Mode {
  readonly name: "full" | "quick"
  /** Export size, also the size of every nbdcopy transfer (so a copy out reads the whole export). */
  readonly bytes: number
  readonly timing: FioTiming
}

const MiB = 2 ** 20
const GiB = 2 ** 30
const MODES: Record<Mode["name"], Mode> = {
  full: { name: "full", bytes: GiB, timing: { runtimeSeconds: 10, rampSeconds: 1 } },
  quick: { name: "quick", bytes: 64 * MiB, timing: { runtimeSeconds: 2, rampSeconds: 0 } }
}

/** How a row of the table is read off a fio result. */
interface FioRow {
  readonly id: string
  readonly workload: FioWorkload
  readonly label: string
  readonly decimals: number
  readonly lowerIsBetter: boolean
  readonly pick: (result: FioResult) => number
}

const workload = (id: string): FioWorkload => {
  const found = WORKLOADS.find((w) => w.id === id)
  if (found === undefined) throw new Error(`no workload ${id}`)
  return found
}
const mibps = (r: FioResult) => r.mibPerSec
const iops = (r: FioResult) => r.iops

const FIO_ROWS: ReadonlyArray<FioRow> = [
  { id: "prefill", workload: PREFILL, label: "prefill: seq write 1 MiB QD8, one pass, first touch (MiB/s)", decimals: 1, lowerIsBetter: false, pick: mibps },
  { id: "seq-read", workload: workload("seq-read-1m-qd8"), label: "seq read 1 MiB QD8 (MiB/s)", decimals: 1, lowerIsBetter: false, pick: mibps },
  { id: "seq-write", workload: workload("seq-write-1m-qd8"), label: "seq write 1 MiB QD8 (MiB/s)", decimals: 1, lowerIsBetter: false, pick: mibps },
  { id: "rand-read", workload: workload("rand-read-4k-qd32"), label: "rand read 4 KiB QD32 (IOPS)", decimals: 0, lowerIsBetter: false, pick: iops },
  { id: "rand-write", workload: workload("rand-write-4k-qd32"), label: "rand write 4 KiB QD32 (IOPS)", decimals: 0, lowerIsBetter: false, pick: iops },
  { id: "qd1-mean", workload: workload("rand-read-4k-qd1"), label: "rand read 4 KiB QD1 mean clat (µs)", decimals: 1, lowerIsBetter: true, pick: (r) => r.clatMeanUs },
  { id: "qd1-p99", workload: workload("rand-read-4k-qd1"), label: "rand read 4 KiB QD1 p99 clat (µs)", decimals: 1, lowerIsBetter: true, pick: (r) => r.clatP99Us }
]

const copyLabel = (direction: string, connections: number, bytes: number) =>
  `nbdcopy ${bytes / MiB} MiB ${direction === "file-to-export" ? "file → export" : "export → null:"}, ${connections} conn (MiB/s)`

const USAGE =
  "usage: npm run bench [-- [--quick] [--filters]]\n" +
  "  --quick     smoke run: 2 s per fio workload, 64 MiB export and copies (report in bench/results/quick.md)\n" +
  "  --filters   also measure effect-nbd behind filter stacks: +1 filter (error:rate=0), +3 filters, +stats\n"

/** What the command line asks for. */
interface Args {
  readonly mode: Mode
  /** Whether to add the effect-nbd filter stacks (`--filters`). */
  readonly filters: boolean
}

const parseArgs = (argv: ReadonlyArray<string>): Args => {
  let mode = MODES.full
  let filters = false
  for (const arg of argv) {
    if (arg === "--quick") mode = MODES.quick
    else if (arg === "--filters") filters = true
    else if (arg === "--help" || arg === "-h") {
      process.stdout.write(USAGE)
      process.exit(0)
    } else {
      process.stderr.write(`bench: unknown argument '${arg}'\n${USAGE}`)
      process.exit(2)
    }
  }
  return { mode, filters }
}

/** A markdown list item on one line. */
const bullet = (text: string) => `- ${text.trim().replace(/\s*\n\s*/g, " | ")}`

const progress = (line: string) => process.stderr.write(`${line}\n`)

/** Lines of a server log that look like warnings or errors. */
const suspiciousLines = (log: string): Array<string> =>
  log.split("\n").filter((line) => /\b(warn(ing)?|error|fatal|defect)\b/i.test(line))

const main = async (): Promise<number> => {
  installCleanup()
  const { mode, filters } = parseArgs(process.argv.slice(2))
  const servers = serversOf(filters)
  const startedAt = process.hrtime.bigint()
  const repoRoot = fileURLToPath(new URL("..", import.meta.url))
  const resultsDir = path.join(repoRoot, "bench", "results")
  const rawDir = path.join(resultsDir, "raw")
  mkdirSync(rawDir, { recursive: true })

  const info = await systemInfo(repoRoot)
  progress(
    `bench: ${mode.name} mode, export and copies ${mode.bytes / MiB} MiB, fio ${mode.timing.runtimeSeconds} s per workload` +
      (filters ? ", with effect-nbd filter stacks" : "")
  )

  const randomFile = path.join(os.tmpdir(), `effect-nbd-bench-${process.pid}.bin`)
  process.on("exit", () => removeFile(randomFile))
  await createRandomFile(randomFile, mode.bytes)

  const cells = new Map<string, Partial<Record<ServerId, Cell>>>()
  const put = (row: string, server: ServerId, cell: Cell) => cells.set(row, { ...cells.get(row), [server]: cell })
  const failures: Array<string> = []
  const notes: Array<string> = []

  for (const { id: serverId, label } of servers) {
    if (isShuttingDown()) break
    progress(`\n== ${label}`)
    let server: RunningServer
    try {
      server = await startServer(serverId, mode.bytes, repoRoot)
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      failures.push(`${label}: ${message}`)
      progress(`   ${message}`)
      for (const row of [...FIO_ROWS.map((r) => r.id), ...COPIES.map((c) => c.id), "rss"]) put(row, serverId, { error: message })
      continue
    }
    progress(`   listening at ${server.uri} (pid ${server.pid})`)
    try {
      for (const w of [PREFILL, ...WORKLOADS]) {
        if (!server.alive() || isShuttingDown()) break
        const result = await runFio(w, server.uri, mode.bytes, mode.timing, path.join(rawDir, `${serverId}-${w.id}.json`))
        if (result.stderr !== "") notes.push(`${label}, fio ${w.id} printed: ${result.stderr.split("\n").slice(0, 3).join(" | ")}`)
        const rows = FIO_ROWS.filter((row) => row.workload === w)
        if (result.ok) {
          for (const row of rows) put(row.id, serverId, { value: row.pick(result.value) })
          const r = result.value
          progress(
            `   fio ${w.id.padEnd(18)} ${r.mibPerSec.toFixed(1).padStart(8)} MiB/s ${r.iops.toFixed(0).padStart(8)} IOPS` +
              `  clat mean ${r.clatMeanUs.toFixed(1)} µs p99 ${r.clatP99Us.toFixed(1)} µs`
          )
        } else {
          for (const row of rows) put(row.id, serverId, { error: result.error })
          failures.push(`${label}, fio ${w.id}: ${result.error}`)
          progress(`   fio ${w.id}: ${result.error}`)
        }
      }
      for (const copy of COPIES) {
        if (!server.alive() || isShuttingDown()) break
        const result = await runCopy(copy, server.uri, randomFile, mode.bytes)
        if (result.ok) {
          put(copy.id, serverId, { value: result.value.mibPerSec })
          progress(`   nbdcopy ${copy.id.padEnd(14)} ${result.value.mibPerSec.toFixed(1).padStart(8)} MiB/s (${result.value.seconds.toFixed(2)} s)`)
        } else {
          put(copy.id, serverId, { error: result.error })
          failures.push(`${label}, nbdcopy ${copy.id}: ${result.error}`)
          progress(`   nbdcopy ${copy.id}: ${result.error}`)
        }
      }
      const rss = server.peakRss()
      if (rss !== undefined) put("rss", serverId, { value: rss / MiB })
      if (!server.alive()) failures.push(`${label} exited during the bench (remaining workloads skipped)`)
      else progress(`   peak RSS ${rss === undefined ? "unknown" : `${(rss / MiB).toFixed(0)} MiB`}`)
    } finally {
      await server.stop()
      const log = server.log()
      writeFileSync(path.join(resultsDir, `${serverId}.log`), log)
      const suspicious = suspiciousLines(log)
      if (suspicious.length > 0) {
        notes.push(`${label} logged ${suspicious.length} warning/error line(s), e.g.: ${suspicious.slice(0, 3).join(" | ")}`)
      }
    }
  }

  const rows: Array<Row> = [
    ...FIO_ROWS.map((row) => ({ label: row.label, decimals: row.decimals, lowerIsBetter: row.lowerIsBetter, cells: cells.get(row.id) ?? {} })),
    ...COPIES.map((copy) => ({
      label: copyLabel(copy.direction, copy.connections, mode.bytes),
      decimals: 1,
      lowerIsBetter: false,
      cells: cells.get(copy.id) ?? {}
    })),
    { label: "peak RSS of server process, VmHWM (MiB)", decimals: 0, lowerIsBetter: true, cells: cells.get("rss") ?? {} }
  ]
  const totalSeconds = Number(process.hrtime.bigint() - startedAt) / 1e9
  const report = [
    `# effect-nbd benchmark (${mode.name})`,
    "",
    formatSystemInfo(info),
    `- mode: ${mode.name}: export ${mode.bytes / MiB} MiB on 127.0.0.1; fio nbd ioengine, 1 job, ` +
      `${mode.timing.runtimeSeconds} s per workload${mode.timing.rampSeconds > 0 ? ` after ${mode.timing.rampSeconds} s ramp` : ""}; ` +
      `nbdcopy --connections=N --threads=N, export → null: with --no-extents`,
    ...(filters
      ? [
          `- filter stacks (effect-nbd memory export): ` +
            servers
              .filter((server) => server.filterLabel !== undefined)
              .map((server) => `${server.label} = \`memory SIZE ${filterArgs(server.id).join(" ")}\``)
              .join("; ")
        ]
      : []),
    `- total bench time: ${totalSeconds.toFixed(1)} s`,
    "",
    renderTable(rows, servers),
    "",
    RATIO_NOTE,
    ...(filters ? ["", FILTER_RATIO_NOTE] : []),
    ...(mode.name === "quick"
      ? ["", "Quick mode is a smoke test: 2 s fio runs and 64 MiB copies (a fraction of a second, mostly nbdcopy start-up) are noisy."]
      : []),
    ...(failures.length > 0 ? ["", "## Failures", "", ...failures.map(bullet)] : []),
    ...(notes.length > 0 ? ["", "## Notes", "", ...notes.map(bullet)] : []),
    ""
  ].join("\n")
  process.stdout.write(`\n${report}`)
  // A quick run is a smoke test: it never replaces the full run's report.
  const reportFile = path.join(resultsDir, mode.name === "quick" ? "quick.md" : "latest.md")
  writeFileSync(reportFile, report)
  progress(`bench: report written to ${path.relative(process.cwd(), reportFile)}`)
  return failures.length > 0 ? 1 : 0
}

main().then(
  (code) => {
    process.exitCode = code
  },
  async (error: unknown) => {
    const message = error instanceof Error ? error.stack ?? error.message : String(error)
    // after a signal the handler in proc.ts exits; don't add a stack trace to its message
    if (!message.includes("bench is shutting down")) process.stderr.write(`bench: ${message}\n`)
    await stopAll()
    process.exitCode = 1
  }
)
