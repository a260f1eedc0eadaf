/**
 * File workloads (`npm run bench -- --files [--quick]`): effect-nbd's file driver against
 * nbdkit's file plugin serving the same image file, on tmpfs (/dev/shm) and on the disk
 * holding the repository. On each file system, in each round, every workload runs against
 * one server then the other (both up at once, each on its own copy of the image, the order
 * swapped each round): fio 1 MiB sequential read and write at QD8 and 4 KiB random read and
 * write at QD32, nbdcopy of random data into the export and out of it (4 connections), and
 * the time of a sparse copy (nbdcopy to a new local file) of a large image holding little
 * data, which only a server that reports holes copies quickly. The report gives medians of
 * the rounds; it goes to bench/results/files.md (files-quick.md).
 */
import { execFileSync } from "node:child_process"
import { copyFileSync, existsSync, mkdtempSync, openSync, closeSync, rmSync, statSync, truncateSync, writeSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { randomBytes } from "node:crypto"
import { type FioTiming, runFio, WORKLOADS } from "./fio.ts"
import { createRandomFile, runCopy, type CopyRun, warmSource } from "./nbdcopy.ts"
import { describeServerSession, failure, hasExited, isShuttingDown, runToCompletion, spawnServer, stop } from "./proc.ts"
import { effectNbdArgs, freePort } from "./servers.ts"
import { median } from "./table.ts"

const MiB = 2 ** 20
const GiB = 2 ** 30

/** Sizes of one mode. */
export interface FileMode {
  readonly name: "full" | "quick"
  /** Size of the image the fio runs and copies use. */
  readonly bytes: number
  readonly timing: FioTiming
  /** The sparse image: its size and how much of it holds data. */
  readonly sparseBytes: number
  readonly sparseData: number
}

export const FILE_MODES: Record<FileMode["name"], FileMode> = {
  full: { name: "full", bytes: GiB, timing: { runtimeSeconds: 10, rampSeconds: 1 }, sparseBytes: 10 * GiB, sparseData: 100 * MiB },
  quick: { name: "quick", bytes: 128 * MiB, timing: { runtimeSeconds: 2, rampSeconds: 0 }, sparseBytes: GiB, sparseData: 10 * MiB }
}

type ServerName = "effect-nbd file" | "nbdkit file"
const SERVER_NAMES: ReadonlyArray<ServerName> = ["effect-nbd file", "nbdkit file"]

interface Place {
  readonly name: string
  readonly dir: string
}

const FIO_IDS = ["seq-read-1m-qd8", "seq-write-1m-qd8", "rand-read-4k-qd32", "rand-write-4k-qd32"] as const
const COPY_IN: CopyRun = { id: "copy-in-4", direction: "file-to-export", connections: 4 }
const COPY_OUT: CopyRun = { id: "copy-out-4", direction: "export-to-null", connections: 4 }

interface Running {
  readonly uri: string
  readonly alive: () => boolean
  readonly log: () => string
  readonly stop: () => Promise<void>
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Starts a server on `image` and waits (at most 30 s) until `ready` gives its URI. */
const startServer = async (name: ServerName, image: string, repoRoot: string): Promise<Running> => {
  const port = await freePort()
  const pidFile = path.join(os.tmpdir(), `effect-nbd-bench-files-${process.pid}.pid`)
  rmSync(pidFile, { force: true })
  const child = name === "effect-nbd file"
    ? spawnServer(process.execPath, effectNbdArgs(["file", image, "--host", "127.0.0.1", "--port", String(port)]), repoRoot)
    : spawnServer("nbdkit", ["--foreground", "--exit-with-parent", "-P", pidFile, "-p", String(port), "-i", "127.0.0.1", "file", image])
  let output = ""
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (output += chunk))
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (output += chunk))
  const ready = () => (name === "nbdkit file" ? existsSync(pidFile) : output.includes("effect-nbd: serving file export"))
  const started = Date.now()
  while (!ready()) {
    if (hasExited(child) || Date.now() - started > 30_000) {
      await stop(child)
      throw new Error(`${name} did not start: ${output.trim().split("\n").slice(-3).join(" | ")}`)
    }
    await sleep(50)
  }
  rmSync(pidFile, { force: true })
  return { uri: `nbd://127.0.0.1:${port}/`, alive: () => !hasExited(child), log: () => output, stop: () => stop(child) }
}

/** A sparse image of `size` bytes with `data` bytes of random data in 1 MiB pieces spread evenly. */
const makeSparseImage = (file: string, size: number, data: number): void => {
  const fd = openSync(file, "w")
  try {
    truncateSync(file, size)
    const pieces = Math.max(1, Math.floor(data / MiB))
    const stride = Math.floor(size / pieces / MiB) * MiB
    for (let i = 0; i < pieces; i++) writeSync(fd, randomBytes(MiB), 0, MiB, i * stride)
  } finally {
    closeSync(fd)
  }
}

/** One measured value or why there is none. */
type Cell = { readonly value: number } | { readonly error: string }

/** A row of the report: each server's values over the rounds (the report gives their median) or its error. */
interface Row {
  readonly label: string
  readonly decimals: number
  readonly lowerIsBetter: boolean
  readonly samples: Map<ServerName, Array<number>>
  readonly errors: Map<ServerName, string>
}

const fioLabel: Record<(typeof FIO_IDS)[number], string> = {
  "seq-read-1m-qd8": "seq read 1 MiB QD8 (MiB/s)",
  "seq-write-1m-qd8": "seq write 1 MiB QD8 (MiB/s)",
  "rand-read-4k-qd32": "rand read 4 KiB QD32 (IOPS)",
  "rand-write-4k-qd32": "rand write 4 KiB QD32 (IOPS)"
}

/** What one round on one place needs. */
interface RoundContext {
  readonly place: Place
  readonly mode: FileMode
  readonly files: { readonly random: string; readonly sparse: string }
  readonly repoRoot: string
  readonly rawDir: string
  readonly row: (label: string, decimals: number, lowerIsBetter: boolean) => Row
  readonly failures: Array<string>
  readonly progress: (line: string) => void
}

/** Records a value, or an error, of `name` in row `r`. */
const record = (ctx: RoundContext, r: Row, name: ServerName, cell: Cell) => {
  if ("error" in cell) {
    r.errors.set(name, cell.error)
    ctx.failures.push(`${ctx.place.name}, ${name}, ${r.label}: ${cell.error}`)
  } else r.samples.set(name, [...(r.samples.get(name) ?? []), cell.value])
}

/** Starts a server of each name on `imageOf(name)`, in `order`; stops them when `f` is done. */
const withServers = async (
  ctx: RoundContext,
  order: ReadonlyArray<ServerName>,
  imageOf: (name: ServerName) => string,
  f: (running: ReadonlyArray<{ readonly name: ServerName; readonly server: Running }>) => Promise<void>
): Promise<void> => {
  const running: Array<{ readonly name: ServerName; readonly server: Running }> = []
  try {
    for (const name of order) running.push({ name, server: await startServer(name, imageOf(name), ctx.repoRoot) })
    await f(running)
  } finally {
    for (const { server } of running) await server.stop()
  }
}

/**
 * One round on one place: both servers up at once, each on an image of its own holding the
 * same bytes, and every workload run against one then the other (`order`), so that a slow
 * spell of the machine falls on both alike; then the sparse copy, likewise.
 */
const measureRound = async (ctx: RoundContext, round: number, order: ReadonlyArray<ServerName>): Promise<void> => {
  const { mode, place, progress } = ctx
  const imageOf = (name: ServerName) => path.join(place.dir, `image-${name.split(" ")[0]}.img`)
  for (const name of order) copyFileSync(ctx.files.random, imageOf(name)) // every server starts from the same bytes
  await withServers(ctx, order, imageOf, async (running) => {
    const live = () => running.filter(({ server }) => server.alive() && !isShuttingDown())
    for (const id of FIO_IDS) {
      const workload = WORKLOADS.find((w) => w.id === id)!
      const random = id.startsWith("rand") // reported in IOPS, the others in MiB/s
      for (const { name, server } of live()) {
        const r = ctx.row(`${place.name}: ${fioLabel[id]}`, random ? 0 : 1, false)
        const raw = path.join(ctx.rawDir, `files-${place.name}-${name.replace(/ /g, "-")}-${id}-${round}.json`)
        const result = await runFio(workload, server.uri, mode.bytes, mode.timing, raw)
        const cell: Cell = result.ok ? { value: random ? result.value.iops : result.value.mibPerSec } : { error: result.error }
        record(ctx, r, name, cell)
        progress(`   ${name} ${place.name} fio ${id}: ${"error" in cell ? cell.error : `${cell.value.toFixed(r.decimals)}${random ? " IOPS" : " MiB/s"}`}`)
      }
    }
    for (const copy of [COPY_IN, COPY_OUT]) {
      for (const { name, server } of live()) {
        await warmSource(copy, ctx.files.random)
        const result = await runCopy(copy, server.uri, ctx.files.random, mode.bytes)
        const label = `${place.name}: nbdcopy ${mode.bytes / MiB} MiB ${copy === COPY_IN ? "in (file → export)" : "out (export → null:)"}, 4 conn (MiB/s)`
        record(ctx, ctx.row(label, 1, false), name, result.ok ? { value: result.value.mibPerSec } : { error: result.error })
        progress(`   ${name} ${place.name} nbdcopy ${copy.id}: ${result.ok ? `${result.value.mibPerSec.toFixed(1)} MiB/s` : result.error}`)
      }
    }
  })
  for (const name of order) rmSync(imageOf(name), { force: true })
  // The sparse copy: both servers on the sparse image, each copied into a new local file.
  await withServers(ctx, order, () => ctx.files.sparse, async (running) => {
    const target = path.join(place.dir, "sparse-copy.img")
    for (const { name, server } of running) {
      rmSync(target, { force: true })
      const result = await runToCompletion("nbdcopy", [server.uri, target], 600_000)
      const failed = failure("nbdcopy", result)
      const label = `${place.name}: sparse copy of ${mode.sparseBytes / GiB} GiB holding ${mode.sparseData / MiB} MiB to a new file (s)`
      record(ctx, ctx.row(label, 2, true), name, failed === undefined ? { value: result.seconds } : { error: failed })
      const used = existsSync(target) ? statSync(target).blocks * 512 : 0
      progress(`   ${name} ${place.name} sparse copy: ${failed ?? `${result.seconds.toFixed(2)} s, copy occupies ${(used / MiB).toFixed(0)} MiB`}`)
      rmSync(target, { force: true })
    }
  })
}

/** The cell of a row for one server: the median of its values, or its error when it has none. */
const cellOf = (r: Row, name: ServerName): Cell | undefined => {
  const values = r.samples.get(name)
  if (values !== undefined && values.length > 0) return { value: median(values) }
  const error = r.errors.get(name)
  return error === undefined ? undefined : { error }
}

const ratioText = (r: Row): string => {
  const ours = cellOf(r, "effect-nbd file")
  const theirs = cellOf(r, "nbdkit file")
  if (ours === undefined || theirs === undefined || "error" in ours || "error" in theirs || theirs.value === 0) return "—"
  const ratio = r.lowerIsBetter ? theirs.value / ours.value : ours.value / theirs.value
  return `${ratio.toFixed(2)}×`
}

const cellText = (cell: Cell | undefined, decimals: number) =>
  cell === undefined ? "—" : "error" in cell ? "failed" : cell.value.toFixed(decimals)

/** Runs the file workloads; returns the report (markdown) and what failed. */
export const runFileWorkloads = async (options: {
  readonly mode: FileMode
  readonly rounds: number
  readonly repoRoot: string
  readonly rawDir: string
  readonly progress: (line: string) => void
}): Promise<{ readonly report: string; readonly failures: ReadonlyArray<string> }> => {
  const { mode, progress, repoRoot, rounds } = options
  const started = process.hrtime.bigint()
  const places: Array<Place> = []
  const made: Array<string> = []
  const cleanup = () => made.forEach((dir) => rmSync(dir, { recursive: true, force: true }))
  process.on("exit", cleanup)
  if (existsSync("/dev/shm")) places.push({ name: "tmpfs", dir: mkdtempSync("/dev/shm/effect-nbd-bench-files-") })
  places.push({ name: "disk", dir: mkdtempSync(path.join(repoRoot, "bench", ".files-")) })
  made.push(...places.map((p) => p.dir))
  const rows: Array<Row> = []
  const row = (label: string, decimals: number, lowerIsBetter: boolean): Row => {
    const found = rows.find((r) => r.label === label)
    if (found !== undefined) return found
    const fresh: Row = { label, decimals, lowerIsBetter, samples: new Map(), errors: new Map() }
    rows.push(fresh)
    return fresh
  }
  const failures: Array<string> = []
  const fsTypes: Array<string> = []
  try {
    for (const place of places) {
      const type = execFileSync("df", ["-T", place.dir], { encoding: "utf8" }).split("\n")[1]?.split(/\s+/)[1] ?? "?"
      fsTypes.push(`${place.name} = ${type} (${place.dir.replace(/-[^-/]*$/, "-*")})`)
      const random = path.join(place.dir, "random.bin")
      await createRandomFile(random, mode.bytes)
      const sparse = path.join(place.dir, "sparse.img")
      makeSparseImage(sparse, mode.sparseBytes, mode.sparseData)
      const ctx: RoundContext = { place, mode, files: { random, sparse }, repoRoot, rawDir: options.rawDir, row, failures, progress }
      for (let round = 1; round <= rounds && !isShuttingDown(); round++) {
        progress(`\n== files on ${place.name} (${type}), round ${round} of ${rounds}`)
        const order = round % 2 === 1 ? SERVER_NAMES : [...SERVER_NAMES].reverse()
        try {
          await measureRound(ctx, round, order)
        } catch (error) {
          failures.push(`${place.name}, round ${round}: ${error instanceof Error ? error.message : String(error)}`)
        }
      }
    }
  } finally {
    cleanup()
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const table = [
    `| workload | ${SERVER_NAMES.join(" | ")} | effect-nbd / nbdkit |`,
    `|---|${SERVER_NAMES.map(() => "---:").join("|")}|---:|`,
    ...rows.map((r) => `| ${r.label} | ${SERVER_NAMES.map((n) => cellText(cellOf(r, n), r.decimals)).join(" | ")} | ${ratioText(r)} |`)
  ]
  const report = [
    `## File driver: effect-nbd file against nbdkit file (${mode.name})`,
    "",
    `- image ${mode.bytes / MiB} MiB of random data, a copy of it for each server, on each file system: ${fsTypes.join(", ")}`,
    `- rounds: ${rounds}; in each, both servers up at once and every workload run against one then the other (the order swapped each round); every figure is the median of the rounds`,
    `- fio nbd ioengine, 1 job, ${mode.timing.runtimeSeconds} s per workload; nbdcopy --connections=4 --threads=4, out with --no-extents`,
    `- sparse copy: \`nbdcopy URI new-file\` of a ${mode.sparseBytes / GiB} GiB image holding ${mode.sparseData / MiB} MiB in 1 MiB pieces`,
    `- servers: ${describeServerSession()}`,
    `- total time: ${seconds.toFixed(1)} s`,
    "",
    ...table,
    "",
    "Ratios above 1 favour effect-nbd (for the copy time, nbdkit's time over effect-nbd's). The machine may be shared: figures are noisy.",
    ...(failures.length > 0 ? ["", "### Failures", "", ...failures.map((f) => `- ${f}`)] : []),
    ""
  ].join("\n")
  return { report, failures }
}
