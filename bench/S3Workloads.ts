/**
 * S3 workloads (`npm run bench -- --s3 [--quick]`): the s3 driver in front of a throw-away
 * single-node Ceph (the tests' harness, test/s3/Ceph.ts), through 1, 2 and 4 effect-nbd
 * servers, each with a gateway of its own and a client of its own, beside the AWS SDK
 * talking to the same gateways at the same concurrency (the ceiling).
 *
 * - Every server serves an export of its own (one writer per export), prefilled with random
 *   data by the SDK; its cache (64 MiB) is smaller than the export, so reads are cold. The
 *   order: 4 KiB random reads (nothing cached yet), sequential reads, copies out, then the
 *   writes. Before each workload the SDK's own rate is measured while the servers are idle.
 * - Through the servers: fio 1 MiB sequential read and write at QD8 and 4 KiB random read
 *   at QD32 (one fio per server, all at once), nbdcopy of random data into the export and
 *   out of it to `null:` (4 connections each); figures are totals over the servers.
 * - The ceiling: the SDK per gateway with the same number of requests in flight: GETs and
 *   PUTs of whole 1 MiB objects (8 per gateway beside fio's QD8, 16 beside nbdcopy: the
 *   driver's default `downloads=`/`uploads=`), and ranged 4 KiB GETs (32 per gateway).
 * - Server CPU seconds per GiB moved, summed over the servers.
 *
 * Options: `--quick` (3 s per workload, 128 MiB exports), `--servers 1,2` (which counts),
 * `--workloads seq-read,...`, `--server-root DIR` (run the server from another checkout,
 * for A/B). Report: bench/results/s3.md (s3-quick.md).
 */
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3"
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Objects from "../src/drivers/S3Objects.ts"
import * as Ceph from "../test/s3/Ceph.ts"
import { type FioWorkload, runFio } from "./fio.ts"
import { createRandomFile, type CopyRun, removeFile, runCopy, warmSource } from "./nbdcopy.ts"
import { hasExited, isShuttingDown, spawnTracked, stop } from "./proc.ts"
import { effectNbdArgs, freePort } from "./servers.ts"

const MiB = 2 ** 20
const GiB = 2 ** 30
const OBJECT = MiB
const BUCKET = "effect-nbd-bench"

/** Sizes and durations of one mode. */
export interface S3Mode {
  readonly name: "full" | "quick"
  /** Size of each server's export. */
  readonly bytes: number
  readonly seconds: number
}

export const S3_MODES: Record<S3Mode["name"], S3Mode> = {
  full: { name: "full", bytes: 256 * MiB, seconds: 10 },
  quick: { name: "quick", bytes: 128 * MiB, seconds: 3 }
}

/** A workload: through the servers and, beside it, the SDK's ceiling. */
interface Workload {
  readonly id: string
  readonly label: string
  /** IOPS rather than MiB/s. */
  readonly iops: boolean
  readonly fio?: FioWorkload
  readonly copy?: CopyRun
  /** The ceiling: requests in flight per gateway and what each does. */
  readonly raw: { readonly depth: number; readonly op: "get" | "put" | "range4k" }
}

export const S3_WORKLOADS: ReadonlyArray<Workload> = [
  {
    id: "rand-read",
    label: "rand read 4 KiB QD32 (IOPS)",
    iops: true,
    fio: { id: "rand-read-4k-qd32", rw: "randread", bs: "4k", iodepth: 32, timeBased: true },
    raw: { depth: 32, op: "range4k" }
  },
  {
    id: "seq-read",
    label: "seq read 1 MiB QD8 (MiB/s)",
    iops: false,
    fio: { id: "seq-read-1m-qd8", rw: "read", bs: "1m", iodepth: 8, timeBased: true },
    raw: { depth: 8, op: "get" }
  },
  {
    id: "copy-out",
    label: "nbdcopy out, 4 conn (MiB/s)",
    iops: false,
    copy: { id: "copy-out-4", direction: "export-to-null", connections: 4 },
    raw: { depth: 16, op: "get" }
  },
  {
    id: "seq-write",
    label: "seq write 1 MiB QD8 (MiB/s)",
    iops: false,
    fio: { id: "seq-write-1m-qd8", rw: "write", bs: "1m", iodepth: 8, timeBased: true },
    raw: { depth: 8, op: "put" }
  },
  {
    id: "copy-in",
    label: "nbdcopy in, 4 conn (MiB/s)",
    iops: false,
    copy: { id: "copy-in-4", direction: "file-to-export", connections: 4 },
    raw: { depth: 16, op: "put" }
  }
]

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** An SDK client of one gateway with `sockets` connections. */
const clientOf = (endpoint: string, sockets: number) =>
  new S3Client({
    endpoint,
    region: Ceph.REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: Ceph.ACCESS_KEY, secretAccessKey: Ceph.SECRET_KEY },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    requestHandler: { httpAgent: { maxSockets: sockets } }
  })

/** Writes an export's metadata and every object (random data) through the SDK. */
const prefill = async (client: S3Client, prefix: string, bytes: number): Promise<void> => {
  const location = { bucket: BUCKET, prefix }
  const meta = JSON.stringify({ format: Objects.FORMAT, size: bytes, objectSize: OBJECT })
  await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: Objects.metadataKey(location), Body: meta }))
  let next = 0
  const count = bytes / OBJECT
  const worker = async () => {
    for (let index = next++; index < count; index = next++) {
      const Body = randomBytes(OBJECT)
      await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: Objects.dataKey(location, index), Body, ContentLength: OBJECT }))
    }
  }
  await Promise.all(Array.from({ length: 16 }, worker))
}

/**
 * The SDK's own rate: `depth` requests in flight on each client for `seconds`, each on
 * the export of that client's index. Returns MiB/s and requests/s, in total.
 */
const rawRate = async (
  clients: ReadonlyArray<S3Client>,
  workload: Workload,
  bytes: number,
  seconds: number
): Promise<{ readonly mibPerSec: number; readonly iops: number }> => {
  const count = bytes / OBJECT
  const body = randomBytes(OBJECT)
  let moved = 0
  let requests = 0
  const started = performance.now()
  const until = started + seconds * 1000
  const worker = async (client: S3Client, server: number, lane: number) => {
    const location = { bucket: BUCKET, prefix: `s${server}` }
    for (let i = lane; performance.now() < until; i += workload.raw.depth) {
      const Key = Objects.dataKey(location, workload.raw.op === "range4k" ? Math.floor(Math.random() * count) : i % count)
      if (workload.raw.op === "put") {
        await client.send(new PutObjectCommand({ Bucket: BUCKET, Key, Body: body, ContentLength: OBJECT }))
        moved += OBJECT
      } else {
        const start = 4096 * Math.floor(Math.random() * (OBJECT / 4096))
        const range = workload.raw.op === "range4k" ? { Range: `bytes=${start}-${start + 4095}` } : {}
        const out = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key, ...range }))
        const got = await out.Body!.transformToByteArray()
        moved += got.length
      }
      requests++
    }
  }
  await Promise.all(clients.flatMap((client, server) =>
    Array.from({ length: workload.raw.depth }, (_, lane) => worker(client, server, lane))))
  const elapsed = (performance.now() - started) / 1000
  return { mibPerSec: moved / MiB / elapsed, iops: requests / elapsed }
}

/** A running effect-nbd s3 server. */
interface Server {
  readonly uri: string
  readonly pid: number
  readonly alive: () => boolean
  readonly cpuSeconds: () => number
  readonly log: () => string
  readonly stop: () => Promise<void>
}

/** Starts `effect-nbd s3 BUCKET/PREFIX` on `gateway` from `root`, once it announces its export. */
const startServer = async (root: string, prefix: string, gateway: string): Promise<Server> => {
  const port = await freePort()
  const args = effectNbdArgs(["s3", `${BUCKET}/${prefix}`, `endpoint=${gateway}`, "--host", "127.0.0.1", "--port", String(port)])
  Object.assign(process.env, Ceph.awsEnv(gateway))
  const child = spawnTracked(process.execPath, args, root)
  let output = ""
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (output += chunk))
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (output += chunk))
  const started = Date.now()
  while (!output.includes("effect-nbd: serving s3 export")) {
    if (hasExited(child) || Date.now() - started > 60_000) {
      await stop(child)
      throw new Error(`server for ${prefix} did not start: ${output.trim().split("\n").slice(-3).join(" | ")}`)
    }
    await sleep(50)
  }
  const pid = child.pid!
  const cpuSeconds = () => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      return (Number(fields[11]) + Number(fields[12])) / 100
    } catch {
      return Number.NaN
    }
  }
  return {
    uri: `nbd://127.0.0.1:${port}/`,
    pid,
    alive: () => !hasExited(child),
    cpuSeconds,
    log: () => output,
    // A graceful stop stores the cache and releases the lease; give it time to.
    stop: () => stop(child, 60_000)
  }
}

/** One measured row: through `n` servers, and the ceiling. */
interface Measured {
  readonly workload: Workload
  readonly servers: number
  readonly value: number | undefined
  readonly ceiling: number | undefined
  /** Server CPU seconds per GiB moved (all servers). */
  readonly cpuPerGiB: number | undefined
  readonly error?: string | undefined
}

/** Runs one workload through every server at once; the total rate and bytes moved. */
const throughServers = async (
  servers: ReadonlyArray<Server>,
  workload: Workload,
  mode: S3Mode,
  randomFile: string,
  rawDir: string
): Promise<{ readonly value: number; readonly bytes: number }> => {
  if (workload.fio !== undefined) {
    const fio = workload.fio
    const results = await Promise.all(servers.map((server, i) =>
      runFio(fio, server.uri, mode.bytes, { runtimeSeconds: mode.seconds, rampSeconds: 0 }, path.join(rawDir, `s3-${servers.length}-${i}-${fio.id}.json`))))
    let value = 0
    let bytes = 0
    for (const result of results) {
      if (!result.ok) throw new Error(result.error)
      value += workload.iops ? result.value.iops : result.value.mibPerSec
      bytes += result.value.ioBytes
    }
    return { value, bytes }
  }
  const copy = workload.copy!
  await warmSource(copy, randomFile)
  const started = performance.now()
  const results = await Promise.all(servers.map((server) => runCopy(copy, server.uri, randomFile, mode.bytes)))
  const seconds = (performance.now() - started) / 1000
  for (const result of results) if (!result.ok) throw new Error(result.error)
  return { value: (servers.length * mode.bytes) / MiB / seconds, bytes: servers.length * mode.bytes }
}

/** Measures every workload through `n` servers (fresh ones, on exports `s0`...). */
const measureCount = async (
  n: number,
  gateways: ReadonlyArray<string>,
  workloads: ReadonlyArray<Workload>,
  mode: S3Mode,
  root: string,
  randomFile: string,
  rawDir: string,
  progress: (line: string) => void
): Promise<Array<Measured>> => {
  const out: Array<Measured> = []
  const ceilingClients = gateways.slice(0, n).map((g) => clientOf(g, 64))
  const servers: Array<Server> = []
  try {
    for (let i = 0; i < n; i++) servers.push(await startServer(root, `s${i}`, gateways[i]!))
    for (const workload of workloads) {
      if (isShuttingDown()) break
      const dead = servers.find((s) => !s.alive())
      if (dead !== undefined) throw new Error(`a server exited: ${dead.log().trim().split("\n").slice(-3).join(" | ")}`)
      let row: Measured
      try {
        // The ceiling first, while the servers are idle (after a write they may still be storing).
        const raw = await rawRate(ceilingClients, workload, mode.bytes, mode.seconds)
        const cpuBefore = servers.reduce((sum, s) => sum + s.cpuSeconds(), 0)
        const { bytes, value } = await throughServers(servers, workload, mode, randomFile, rawDir)
        const cpu = servers.reduce((sum, s) => sum + s.cpuSeconds(), 0) - cpuBefore
        const ceiling = workload.iops ? raw.iops : raw.mibPerSec
        row = { workload, servers: n, value, ceiling, cpuPerGiB: cpu / (bytes / GiB) }
      } catch (error) {
        row = { workload, servers: n, value: undefined, ceiling: undefined, cpuPerGiB: undefined, error: String(error) }
      }
      out.push(row)
      progress(
        `   ${n} server(s) ${workload.id.padEnd(10)} ${row.error ?? `${row.value!.toFixed(workload.iops ? 0 : 1)} vs SDK ${row.ceiling!.toFixed(workload.iops ? 0 : 1)}` +
          ` (${(row.value! / row.ceiling!).toFixed(2)}x), server CPU ${row.cpuPerGiB!.toFixed(1)} s/GiB; load ${os.loadavg()[0]!.toFixed(2)}`}`
      )
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop()))
    for (const client of ceilingClients) client.destroy()
  }
  return out
}

const fmt = (value: number | undefined, iops: boolean) => value === undefined ? "failed" : value.toFixed(iops ? 0 : 1)

/** The report's table: one row per workload, per server count: ours, the ceiling, the ratio. */
const renderS3Table = (rows: ReadonlyArray<Measured>, counts: ReadonlyArray<number>): string => {
  const head = ["workload", ...counts.flatMap((n) => [`${n} server${n > 1 ? "s" : ""}`, "SDK", "ratio"])]
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`]
  const workloads = [...new Set(rows.map((r) => r.workload))]
  for (const w of workloads) {
    const cells = counts.flatMap((n) => {
      const r = rows.find((x) => x.workload === w && x.servers === n)
      if (r === undefined) return ["—", "—", "—"]
      const ratio = r.value === undefined || r.ceiling === undefined ? "—" : `${(r.value / r.ceiling).toFixed(2)}×`
      return [fmt(r.value, w.iops), fmt(r.ceiling, w.iops), ratio]
    })
    lines.push(`| ${w.label} | ${cells.join(" | ")} |`)
  }
  lines.push("", "Server CPU seconds per GiB moved, all servers (4 KiB random reads: CPU milliseconds per request):", "")
  lines.push(`| workload | ${counts.map((n) => `${n} server${n > 1 ? "s" : ""}`).join(" | ")} |`, `|---|${counts.map(() => "---").join("|")}|`)
  for (const w of workloads) {
    const cells = counts.map((n) => {
      const perGiB = rows.find((x) => x.workload === w && x.servers === n)?.cpuPerGiB
      // A GiB is 262144 requests of 4 KiB.
      return perGiB === undefined ? "—" : w.iops ? `${(perGiB / 262144 * 1000).toFixed(2)} ms` : perGiB.toFixed(1)
    })
    lines.push(`| ${w.label} | ${cells.join(" | ")} |`)
  }
  return lines.join("\n")
}

/** Options of a run. */
export interface S3RunOptions {
  readonly mode: S3Mode
  /** The checkout whose server runs (default: this one). */
  readonly serverRoot: string
  readonly counts: ReadonlyArray<number>
  readonly workloads: ReadonlyArray<string> | undefined
  readonly rawDir: string
  readonly progress: (line: string) => void
}

/** Starts a cluster, runs the workloads for each server count, stops everything; the report. */
export const runS3Workloads = async (options: S3RunOptions): Promise<{ readonly report: string; readonly failures: ReadonlyArray<string> }> => {
  const { counts, mode, progress } = options
  if (!Ceph.available()) return { report: `Ceph is not installed (${Ceph.INSTALL}).`, failures: ["no Ceph"] }
  const workloads = S3_WORKLOADS.filter((w) => options.workloads === undefined || options.workloads.includes(w.id))
  const loadAtStart = os.loadavg().map((l) => l.toFixed(2)).join(", ")
  const ceph = await Ceph.start()
  Object.assign(process.env, ceph.env) // the SDK's environment (and no warning about Node's version)
  const randomFile = path.join(os.tmpdir(), `effect-nbd-bench-s3-${process.pid}.bin`)
  process.on("exit", () => removeFile(randomFile))
  const rows: Array<Measured> = []
  let loadPeak = 0
  const loadTimer = setInterval(() => (loadPeak = Math.max(loadPeak, os.loadavg()[0]!)), 1000)
  try {
    const most = Math.max(...counts)
    const gateways = [ceph.endpoint]
    while (gateways.length < most) gateways.push(await ceph.startGateway())
    const admin = clientOf(ceph.endpoint, 32)
    await admin.send(new (await import("@aws-sdk/client-s3")).CreateBucketCommand({ Bucket: BUCKET }))
    progress(`s3 bench: ${gateways.length} gateway(s); prefilling ${most} export(s) of ${mode.bytes / MiB} MiB`)
    for (let i = 0; i < most; i++) await prefill(admin, `s${i}`, mode.bytes)
    await createRandomFile(randomFile, mode.bytes)
    for (const n of counts) {
      if (isShuttingDown()) break
      progress(`== ${n} server(s)`)
      rows.push(...await measureCount(n, gateways, workloads, mode, options.serverRoot, randomFile, options.rawDir, progress))
    }
    admin.destroy()
  } finally {
    clearInterval(loadTimer)
    await ceph.stop()
    removeFile(randomFile)
  }
  const failures = rows.filter((r) => r.error !== undefined).map((r) => `${r.servers} server(s), ${r.workload.id}: ${r.error}`)
  const report = [
    `- mode: ${mode.name}: each server an export of ${mode.bytes / MiB} MiB in 1 MiB objects (cache 64 MiB: reads are cold), ` +
    `${mode.seconds} s per fio workload; one gateway per server on one single-node Ceph (memstore); everything on this machine`,
    `- load average at start ${loadAtStart}; highest 1-minute load average during the run ${loadPeak.toFixed(2)}`,
    "- SDK: @aws-sdk/client-s3 per gateway, in the bench process, just before the same workload through the servers, " +
    "with the same requests in flight per gateway " +
    "(8 for QD8, 32 for QD32, 16 beside nbdcopy: the driver's downloads=/uploads=), whole 1 MiB objects or ranged 4 KiB GETs; " +
    "the servers run with their defaults, so at QD32 a server has at most 16 GETs (downloads=) in flight where the SDK has 32",
    "",
    renderS3Table(rows, counts),
    ...(failures.length === 0 ? [] : ["", "Failures:", ...failures.map((f) => `- ${f}`)])
  ].join("\n")
  return { report, failures }
}

const S3_USAGE =
  "usage: npm run bench -- --s3 [--quick] [--servers 1,2,4] [--workloads seq-read,rand-read,seq-write,copy-in,copy-out] [--server-root DIR]\n"

/** `npm run bench -- --s3 ...`: parses its own arguments, runs, writes bench/results/s3.md (s3-quick.md); the exit code. */
export const runS3Bench = async (argv: ReadonlyArray<string>, repoRoot: string): Promise<number> => {
  const progress = (line: string) => process.stderr.write(`${line}\n`)
  let mode = S3_MODES.full
  let counts: ReadonlyArray<number> = [1, 2, 4]
  let workloads: ReadonlyArray<string> | undefined
  let serverRoot = repoRoot
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "--s3") continue
    else if (arg === "--quick") mode = S3_MODES.quick
    else if (arg === "--servers") counts = (argv[++i] ?? "").split(",").map(Number).filter((n) => n >= 1 && n <= 8)
    else if (arg === "--workloads") workloads = (argv[++i] ?? "").split(",")
    else if (arg === "--server-root") serverRoot = path.resolve(argv[++i] ?? ".")
    else {
      process.stderr.write(`bench: unknown argument '${arg}'\n${S3_USAGE}`)
      return 2
    }
  }
  const { mkdirSync, writeFileSync } = await import("node:fs")
  const { formatSystemInfo, systemInfo } = await import("./system.ts")
  const resultsDir = path.join(repoRoot, "bench", "results")
  const rawDir = path.join(resultsDir, "raw")
  mkdirSync(rawDir, { recursive: true })
  const info = await systemInfo(repoRoot)
  const { failures, report } = await runS3Workloads({ mode, serverRoot, counts, workloads, rawDir, progress })
  const text = [`# effect-nbd benchmark (s3, ${mode.name})`, "", formatSystemInfo(info), "", report, ""].join("\n")
  process.stdout.write(`\n${text}`)
  const file = path.join(resultsDir, mode.name === "quick" ? "s3-quick.md" : "s3.md")
  writeFileSync(file, text)
  progress(`bench: report written to ${path.relative(process.cwd(), file)}`)
  return failures.length > 0 ? 1 : 0
}
