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
 *   npm run bench -- --tls [--quick]     nbdcopy through TLS instead (report in bench/results/tls.md or tls-quick.md)
 *   npm run bench -- --files [--quick]   file driver against nbdkit's file plugin instead (bench/results/files.md, see FileWorkloads.ts)
 *
 * With --filters, the same run also measures effect-nbd's memory export behind
 * `--filter error:rate=0` (one filter on the Effect path), three of them, and
 * `--filter stats` (a filter that keeps the synchronous fast path), in the same rounds as
 * plain effect-nbd; the table gains a column per stack and a ratio of each stack to
 * plain effect-nbd (next to effect-nbd / nbdkit memory).
 *
 * With --tls, the run measures nbdcopy in and out (no fio; a first copy into the empty export
 * stands for fio's prefill and is reported on its own row) through TLS (`--tls require`)
 * to effect-nbd and nbdkit memory, each with X.509 certificates and with TLS-PSK (fresh
 * credentials for the run, see tls.ts), with the server's and nbdcopy's CPU time per GiB copied, and
 * ratios to nbdkit X.509. The TLS cipher each server negotiates with libnbd is noted.
 *
 * Each round starts every server afresh and runs each workload against every server in
 * turn (the order turning by one server per round); the report gives medians of the rounds.
 * Every server runs in a session of its own, as daemons and services run, so that the
 * kernel's autogroup scheduling shares the processors between server and clients as
 * between two programs (`--shared-session`: in the bench's session, beside the clients).
 *
 * Exits 1 if any server or tool failed, 0 otherwise.
 */
import { mkdirSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { type FioResult, type FioTiming, type FioWorkload, PREFILL, runFio, WORKLOADS } from "./fio.ts"
import { COPIES, type CopyRun, createRandomFile, removeFile, runCopy, warmSource } from "./nbdcopy.ts"
import { describeServerSession, installCleanup, isShuttingDown, runToCompletion, setServerSession, stopAll } from "./proc.ts"
import { buildEffectNbd, filterArgs, type RunningServer, type ServerId, serversOf, startServer, TLS_SERVERS } from "./servers.ts"
import { barsOf, renderChart } from "./chart.ts"
import { formatSystemInfo, systemInfo } from "./system.ts"
import {
  type Cell,
  defaultRatios,
  FILTER_RATIO_NOTE,
  median,
  RATIO_NOTE,
  renderRoundsTable,
  renderTable,
  ROUNDS_NOTE,
  type Row,
  TLS_RATIO_NOTE,
  TLS_RATIOS
} from "./table.ts"
import { type BenchCredentials, makeCredentials } from "./tls.ts"
import { FILE_MODES, runFileWorkloads } from "./FileWorkloads.ts"
import { runS3Bench } from "./S3Workloads.ts"

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

const copyLabel = (direction: string, connections: number, bytes: number, unit = "MiB/s") =>
  `nbdcopy ${bytes / MiB} MiB ${direction === "file-to-export" ? "file → export" : "export → null:"}, ${connections} conn (${unit})`

/**
 * With --tls (no fio prefill), a first copy into the empty export, reported on its own row, so
 * that the copies after it, as in the main run, write to memory the server has already allocated.
 */
const TLS_PREFILL: CopyRun = { id: "copy-prefill", direction: "file-to-export", connections: 4 }

/** The label of a copy's row, the prefill of --tls marked as such. */
const copyRowLabel = (copy: CopyRun, bytes: number, unit = "MiB/s") =>
  copy === TLS_PREFILL
    ? `prefill: ${copyLabel(copy.direction, copy.connections, bytes, `first touch, ${unit}`)}`
    : copyLabel(copy.direction, copy.connections, bytes, unit)

/** The row of the server's CPU time during a copy. */
const cpuRowId = (copyId: string) => `cpu-${copyId}`

/** The row of nbdcopy's own CPU time during a copy. */
const clientCpuRowId = (copyId: string) => `client-cpu-${copyId}`

/** The TLS cipher and key exchange libnbd negotiates with a server (from its debug output), or why not known. */
const negotiatedCipher = async (uri: string): Promise<string> => {
  const result = await runToCompletion("sh", ["-c", `LIBNBD_DEBUG=1 nbdinfo --size '${uri}' 2>&1`], 30_000)
  const match = /connection is using TLS: cipher (\S+) .*?key exchange (\S+)/.exec(result.stdout)
  return match === null ? "unknown (nbdinfo printed no cipher)" : `${match[1]}, key exchange ${match[2]}`
}

const USAGE =
  "usage: npm run bench [-- [--quick] [--rounds N] [--shared-session] [--filters | --tls | --files]]\n" +
  "  --quick     smoke run: 2 s per fio workload, 64 MiB export and copies, one round (report in bench/results/quick.md)\n" +
  "  --rounds N  rounds, each with every server fresh and each workload run on every server in turn; the report gives medians (default 3, quick 1)\n" +
  "  --filters   also measure effect-nbd behind filter stacks: +1 filter (error:rate=0), +3 filters, +stats, +dirty\n" +
  "  --tls       instead, nbdcopy through TLS: effect-nbd and nbdkit memory, X.509 and PSK (bench/results/tls.md)\n" +
  "  --files     instead, the file driver against nbdkit's file plugin on tmpfs and disk (bench/results/files.md)\n" +
  "  --shared-session  start the servers in the bench's session instead of each in a session of its own\n" +
  "  --s3        instead, the s3 driver through 1, 2 and 4 servers over one Ceph, beside the SDK (bench/results/s3.md, see S3Workloads.ts)\n"

/** What the command line asks for. */
interface Args {
  readonly mode: Mode
  /** Whether to add the effect-nbd filter stacks (`--filters`). */
  readonly filters: boolean
  /** Whether to measure copies through TLS instead (`--tls`). */
  readonly tls: boolean
  /** Whether to measure the file driver instead (`--files`). */
  readonly files: boolean
  /** Rounds over all servers (`--rounds`); the report gives each workload's median. */
  readonly rounds: number
}

const parseArgs = (argv: ReadonlyArray<string>): Args => {
  let mode = MODES.full
  let filters = false
  let tls = false
  let files = false
  let rounds: number | undefined
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "--quick") mode = MODES.quick
    else if (arg === "--rounds") {
      rounds = Number(argv[++i])
      if (!Number.isInteger(rounds) || rounds < 1) {
        process.stderr.write(`bench: --rounds takes a whole number of at least 1\n${USAGE}`)
        process.exit(2)
      }
    }
    else if (arg === "--filters") filters = true
    else if (arg === "--tls") tls = true
    else if (arg === "--files") files = true
    else if (arg === "--shared-session") setServerSession("shared")
    else if (arg === "--help" || arg === "-h") {
      process.stdout.write(USAGE)
      process.exit(0)
    } else {
      process.stderr.write(`bench: unknown argument '${arg}'\n${USAGE}`)
      process.exit(2)
    }
  }
  if (filters && tls) {
    process.stderr.write(`bench: --filters and --tls are separate runs\n${USAGE}`)
    process.exit(2)
  }
  return { mode, filters, tls, files, rounds: rounds ?? (mode.name === "quick" ? 1 : 3) }
}

/** A markdown list item on one line. */
const bullet = (text: string) => `- ${text.trim().replace(/\s*\n\s*/g, " | ")}`

const progress = (line: string) => process.stderr.write(`${line}\n`)

/** Lines of a server log that look like warnings or errors. */
const suspiciousLines = (log: string): Array<string> =>
  log.split("\n").filter((line) => /\b(warn(ing)?|error|fatal|defect)\b/i.test(line))

const main = async (): Promise<number> => {
  installCleanup()
  const root = fileURLToPath(new URL("..", import.meta.url))
  if (process.argv.includes("--s3")) {
    buildEffectNbd(root)
    return runS3Bench(process.argv.slice(2), root)
  }
  const { files, filters, mode, rounds, tls } = parseArgs(process.argv.slice(2))
  buildEffectNbd(root)
  if (files) return runFiles(mode.name, rounds)
  const servers = tls ? TLS_SERVERS : serversOf(filters)
  const copies = tls ? [TLS_PREFILL, ...COPIES] : COPIES
  const startedAt = process.hrtime.bigint()
  const repoRoot = fileURLToPath(new URL("..", import.meta.url))
  const resultsDir = path.join(repoRoot, "bench", "results")
  const rawDir = path.join(resultsDir, "raw")
  mkdirSync(rawDir, { recursive: true })

  const info = await systemInfo(repoRoot)
  progress(
    `bench: ${mode.name} mode, export and copies ${mode.bytes / MiB} MiB` +
      (tls ? "" : `, fio ${mode.timing.runtimeSeconds} s per workload`) +
      (filters ? ", with effect-nbd filter stacks" : "") +
      (tls ? ", nbdcopy through TLS (X.509 and PSK)" : "")
  )
  let credentials: BenchCredentials | undefined
  if (tls) {
    credentials = makeCredentials()
    const made = credentials
    process.on("exit", () => made.remove())
  }

  const randomFile = path.join(os.tmpdir(), `effect-nbd-bench-${process.pid}.bin`)
  process.on("exit", () => removeFile(randomFile))
  await createRandomFile(randomFile, mode.bytes)

  // Each round's measurement of a row and server, at the round's index; the report gives the median (or an error if none succeeded).
  const samples = new Map<string, Map<ServerId, Array<number | undefined>>>()
  /** The round being measured (from 1). */
  let currentRound = 1
  const errors = new Map<string, Map<ServerId, string>>()
  const rowOf = <V>(table: Map<string, Map<ServerId, V>>, row: string): Map<ServerId, V> => {
    const found = table.get(row)
    if (found !== undefined) return found
    const made = new Map<ServerId, V>()
    table.set(row, made)
    return made
  }
  const put = (row: string, server: ServerId, cell: Cell) => {
    if (cell === undefined) return
    if ("error" in cell) return rowOf(errors, row).set(server, cell.error)
    const values = rowOf(samples, row)
    const byRound = values.get(server) ?? []
    byRound[currentRound - 1] = cell.value
    values.set(server, byRound)
  }
  const measured = (values: ReadonlyArray<number | undefined>): Array<number> =>
    Array.from(values).filter((value): value is number => value !== undefined)
  const cellsOf = (row: string): Partial<Record<ServerId, Cell>> => {
    const out: Partial<Record<ServerId, Cell>> = {}
    for (const [server, error] of errors.get(row) ?? []) out[server] = { error }
    for (const [server, values] of samples.get(row) ?? []) out[server] = { value: median(measured(values)) }
    return out
  }
  /** Each server's figures of a row by round, for the per-round table. */
  const roundsOf = (row: string): Partial<Record<ServerId, ReadonlyArray<number | undefined>>> =>
    Object.fromEntries(
      [...(samples.get(row) ?? [])].map(([server, values]) => [server, Array.from({ length: rounds }, (_, i) => values[i])])
    )
  const failures: Array<string> = []
  const notes: Array<string> = []
  const ciphers: Array<string> = []

  /** A server of the current round: started (or why not), with its id and label. */
  interface Entry {
    readonly serverId: ServerId
    readonly label: string
    readonly server: RunningServer
  }
  const live = (entries: ReadonlyArray<Entry>) => entries.filter((e) => e.server.alive() && !isShuttingDown())

  /** Starts every server of a round; one that fails to start gets the error in every row. */
  const startRound = async (order: ReadonlyArray<(typeof servers)[number]>): Promise<Array<Entry>> => {
    const entries: Array<Entry> = []
    for (const { id: serverId, label } of order) {
      if (isShuttingDown()) break
      try {
        const server = await startServer(serverId, mode.bytes, repoRoot, credentials)
        progress(`   ${label} listening at ${server.uri} (pid ${server.pid})`)
        if (tls) {
          const cipher = await negotiatedCipher(server.uri)
          if (!ciphers.includes(`${label}: ${cipher}`)) ciphers.push(`${label}: ${cipher}`)
          progress(`   ${label} TLS: ${cipher}`)
        }
        entries.push({ serverId, label, server })
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error)
        failures.push(`${label}: ${message}`)
        progress(`   ${label}: ${message}`)
        const rowIds = [...FIO_ROWS.map((r) => r.id), ...copies.flatMap((c) => [c.id, cpuRowId(c.id), clientCpuRowId(c.id)]), "rss"]
        for (const row of rowIds) put(row, serverId, { error: message })
      }
    }
    return entries
  }

  const measureFio = async ({ label, server, serverId }: Entry, w: FioWorkload, round: number) => {
    const result = await runFio(w, server.uri, mode.bytes, mode.timing, path.join(rawDir, `${serverId}-${w.id}${rounds > 1 ? `-${round}` : ""}.json`))
    if (result.stderr !== "") notes.push(`${label}, fio ${w.id} printed: ${result.stderr.split("\n").slice(0, 3).join(" | ")}`)
    const rows = FIO_ROWS.filter((row) => row.workload === w)
    if (result.ok) {
      for (const row of rows) put(row.id, serverId, { value: row.pick(result.value) })
      const r = result.value
      progress(
        `   ${label.padEnd(22)} fio ${w.id.padEnd(18)} ${r.mibPerSec.toFixed(1).padStart(8)} MiB/s ${r.iops.toFixed(0).padStart(8)} IOPS` +
          `  clat mean ${r.clatMeanUs.toFixed(1)} µs p99 ${r.clatP99Us.toFixed(1)} µs`
      )
    } else {
      for (const row of rows) put(row.id, serverId, { error: result.error })
      failures.push(`${label}, fio ${w.id}: ${result.error}`)
      progress(`   ${label} fio ${w.id}: ${result.error}`)
    }
  }

  const measureCopy = async ({ label, server, serverId }: Entry, copy: CopyRun) => {
    await warmSource(copy, randomFile)
    const cpuBefore = server.cpuSeconds()
    const result = await runCopy(copy, server.uri, randomFile, mode.bytes)
    const cpuAfter = server.cpuSeconds()
    if (result.ok) {
      put(copy.id, serverId, { value: result.value.mibPerSec })
      const gib = mode.bytes / GiB
      const cpuPerGiB = cpuBefore === undefined || cpuAfter === undefined ? undefined : (cpuAfter - cpuBefore) / gib
      if (cpuPerGiB !== undefined) put(cpuRowId(copy.id), serverId, { value: cpuPerGiB })
      const { clientCpuSeconds } = result.value
      const clientPerGiB = clientCpuSeconds === undefined ? undefined : clientCpuSeconds / gib
      if (clientPerGiB !== undefined) put(clientCpuRowId(copy.id), serverId, { value: clientPerGiB })
      progress(
        `   ${label.padEnd(22)} nbdcopy ${copy.id.padEnd(14)} ${result.value.mibPerSec.toFixed(1).padStart(8)} MiB/s (${result.value.seconds.toFixed(2)} s)` +
          (cpuPerGiB === undefined ? "" : `, server CPU ${cpuPerGiB.toFixed(2)} s/GiB`) +
          (clientPerGiB === undefined ? "" : `, nbdcopy CPU ${clientPerGiB.toFixed(2)} s/GiB`)
      )
    } else {
      put(copy.id, serverId, { error: result.error })
      failures.push(`${label}, nbdcopy ${copy.id}: ${result.error}`)
      progress(`   ${label} nbdcopy ${copy.id}: ${result.error}`)
    }
  }

  /** Records a server's peak RSS, stops it and keeps its log. */
  const finish = async ({ label, server, serverId }: Entry) => {
    const rss = server.peakRss()
    if (rss !== undefined) put("rss", serverId, { value: rss / MiB })
    if (!server.alive()) failures.push(`${label} exited during the bench (remaining workloads skipped)`)
    else progress(`   ${label} peak RSS ${rss === undefined ? "unknown" : `${(rss / MiB).toFixed(0)} MiB`}`)
    await server.stop()
    const log = server.log()
    writeFileSync(path.join(resultsDir, `${serverId}.log`), log)
    const suspicious = suspiciousLines(log)
    if (suspicious.length > 0) {
      notes.push(`${label} logged ${suspicious.length} warning/error line(s), e.g.: ${suspicious.slice(0, 3).join(" | ")}`)
    }
  }

  // Each workload runs against every server in turn, so that a slow spell of the machine
  // falls on all of them alike; the order turns by one server each round.
  for (let round = 1; round <= rounds && !isShuttingDown(); round++) {
    currentRound = round
    progress(`\n== round ${round} of ${rounds}`)
    const shift = (round - 1) % servers.length
    const entries = await startRound([...servers.slice(shift), ...servers.slice(0, shift)])
    try {
      for (const w of tls ? [] : [PREFILL, ...WORKLOADS]) for (const entry of live(entries)) await measureFio(entry, w, round)
      for (const copy of copies) for (const entry of live(entries)) await measureCopy(entry, copy)
    } finally {
      for (const entry of entries) await finish(entry)
    }
  }

  /** One row per copy of processor time per GiB (the server's or nbdcopy's). */
  const cpuRows = (unit: string, rowId: (copyId: string) => string): Array<Row> =>
    copies.map((copy) => ({
      label: copyRowLabel(copy, mode.bytes, unit),
      decimals: 2,
      lowerIsBetter: true,
      cells: cellsOf(rowId(copy.id)),
      rounds: roundsOf(rowId(copy.id))
    }))

  const rows: Array<Row> = [
    ...(tls ? [] : FIO_ROWS).map((row) => ({
      label: row.label,
      decimals: row.decimals,
      lowerIsBetter: row.lowerIsBetter,
      cells: cellsOf(row.id),
      rounds: roundsOf(row.id)
    })),
    ...copies.map((copy) => ({
      label: copyRowLabel(copy, mode.bytes),
      decimals: 1,
      lowerIsBetter: false,
      cells: cellsOf(copy.id),
      rounds: roundsOf(copy.id)
    })),
    ...cpuRows("server CPU s per GiB", cpuRowId),
    ...cpuRows("nbdcopy CPU s per GiB", clientCpuRowId),
    { label: "peak RSS of server process, VmHWM (MiB)", decimals: 0, lowerIsBetter: true, cells: cellsOf("rss"), rounds: roundsOf("rss") }
  ]
  const totalSeconds = Number(process.hrtime.bigint() - startedAt) / 1e9
  const report = [
    `# effect-nbd benchmark (${mode.name}${tls ? ", TLS" : ""})`,
    "",
    formatSystemInfo(info),
    tls
      ? `- mode: ${mode.name}, TLS: memory export of ${mode.bytes / MiB} MiB on 127.0.0.1 with --tls require; ` +
        `nbdcopy --connections=N --threads=N, file → export: the file read through first (untimed), export → null: with --no-extents; no fio: a first copy into the empty ` +
        `export (prefill, first touch) comes before the copies measured as in the main run`
      : `- mode: ${mode.name}: export ${mode.bytes / MiB} MiB on 127.0.0.1; fio nbd ioengine, 1 job, ` +
        `${mode.timing.runtimeSeconds} s per workload${mode.timing.rampSeconds > 0 ? ` after ${mode.timing.rampSeconds} s ramp` : ""}; ` +
        `nbdcopy --connections=N --threads=N, file → export: the file read through first (untimed), export → null: with --no-extents`,
    ...(credentials === undefined
      ? []
      : [
          `- credentials: X.509 = RSA 2048 server certificate signed by a fresh CA (no client certificate asked); ` +
            `PSK = one 32-byte key (${credentials.pskMadeBy === "psktool" ? "made by psktool" : "random, psktool not installed"})`,
          `- negotiated with libnbd (GnuTLS): ${ciphers.join("; ")}`
        ]),
    ...(filters
      ? [
          `- filter stacks (effect-nbd memory export): ` +
            servers
              .filter((server) => server.filterLabel !== undefined)
              .map((server) => `${server.label} = \`memory SIZE ${filterArgs(server.id).join(" ")}\``)
              .join("; ")
        ]
      : []),
    `- rounds: ${rounds}${rounds > 1 ? "; in each, all servers started afresh and every workload run against each server in turn (the order turning by one server per round); every figure is the median of the rounds" : ""}`,
    `- servers: ${describeServerSession()}`,
    `- total bench time: ${totalSeconds.toFixed(1)} s`,
    "",
    renderTable(rows, servers, tls ? TLS_RATIOS : defaultRatios(servers)),
    "",
    tls ? TLS_RATIO_NOTE : RATIO_NOTE,
    ...(filters ? ["", FILTER_RATIO_NOTE] : []),
    ...(mode.name === "quick"
      ? [
          "",
          tls
            ? "Quick mode is a smoke test: 64 MiB copies (a second or less, with nbdcopy's start-up and the TLS handshakes) are noisy."
            : "Quick mode is a smoke test: 2 s fio runs and 64 MiB copies (a fraction of a second, mostly nbdcopy start-up) are noisy."
        ]
      : []),
    ...(rounds > 1
      ? ["", "## Per round", "", renderRoundsTable(rows, servers, tls ? TLS_RATIOS : defaultRatios(servers)), "", ROUNDS_NOTE]
      : []),
    ...(failures.length > 0 ? ["", "## Failures", "", ...failures.map(bullet)] : []),
    ...(notes.length > 0 ? ["", "## Notes", "", ...notes.map(bullet)] : []),
    ""
  ].join("\n")
  process.stdout.write(`\n${report}`)
  // A quick run is a smoke test: it never replaces the full run's report.
  const reportFile = path.join(
    resultsDir,
    tls ? (mode.name === "quick" ? "tls-quick.md" : "tls.md") : mode.name === "quick" ? "quick.md" : "latest.md"
  )
  writeFileSync(reportFile, report)
  progress(`bench: report written to ${path.relative(process.cwd(), reportFile)}`)
  const chartColumn = (tls ? TLS_RATIOS : defaultRatios(servers))[0]!
  const chartFile = reportFile.replace(/\.md$/, ".svg")
  const chartTitle = `${chartColumn.label} (${mode.name}${tls ? ", TLS" : ""}, ${info.date.slice(0, 10)}, ${info.source.split(" ")[0]})`
  writeFileSync(chartFile, renderChart(chartTitle, barsOf(rows, chartColumn)))
  progress(`bench: chart written to ${path.relative(process.cwd(), chartFile)}`)
  return failures.length > 0 ? 1 : 0
}

/** `--files`: the file workloads alone, reported in bench/results/files.md (files-quick.md). */
const runFiles = async (modeName: Mode["name"], rounds: number): Promise<number> => {
  const repoRoot = fileURLToPath(new URL("..", import.meta.url))
  const resultsDir = path.join(repoRoot, "bench", "results")
  const rawDir = path.join(resultsDir, "raw")
  mkdirSync(rawDir, { recursive: true })
  const info = await systemInfo(repoRoot)
  const { failures, report } = await runFileWorkloads({ mode: FILE_MODES[modeName], rounds, repoRoot, rawDir, progress })
  const text = [`# effect-nbd benchmark (files, ${modeName})`, "", formatSystemInfo(info), "", report].join("\n")
  process.stdout.write(`\n${text}`)
  const reportFile = path.join(resultsDir, modeName === "quick" ? "files-quick.md" : "files.md")
  writeFileSync(reportFile, text)
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
