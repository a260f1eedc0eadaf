/**
 * The machine and tool versions a bench run is reported with.
 */
import * as os from "node:os"
import { runToCompletion } from "./proc.ts"

/** Facts printed above the results table. */
export interface SystemInfo {
  readonly date: string
  readonly nproc: string
  readonly cpu: string
  readonly totalMemory: string
  readonly kernel: string
  /** 1, 5 and 15 minute load averages when the bench started (other work on the machine skews results). */
  readonly loadAverage: string
  readonly node: string
  readonly nbdkit: string
  readonly fio: string
  readonly libnbd: string
  /** The effect-nbd source measured: commit, and whether the work tree had changes. */
  readonly source: string
}

/** First line of a command's output, or a note that it failed. */
const firstLine = async (command: string, args: ReadonlyArray<string>): Promise<string> => {
  const result = await runToCompletion(command, args, 10_000)
  if (result.code !== 0) return `unavailable (${result.spawnError ?? `exit ${result.code}`})`
  return (result.stdout.trim() || result.stderr.trim()).split("\n")[0]!.trim()
}

/** Commit of the repository at `repoRoot`, noting uncommitted changes under src/. */
const sourceVersion = async (repoRoot: string): Promise<string> => {
  const [head, status] = await Promise.all([
    runToCompletion("git", ["log", "-1", "--format=%h %s"], 10_000, repoRoot),
    runToCompletion("git", ["status", "--porcelain", "--", "src"], 10_000, repoRoot)
  ])
  if (head.code !== 0) return "unknown (not a git checkout?)"
  return `${head.stdout.trim()}${status.stdout.trim() === "" ? "" : " (+ uncommitted changes in src/)"}`
}

/** Collects the system facts. */
export const systemInfo = async (repoRoot: string): Promise<SystemInfo> => {
  const [nproc, nbdkit, fio, nbdcopy, source] = await Promise.all([
    firstLine("nproc", []),
    firstLine("nbdkit", ["--version"]),
    firstLine("fio", ["--version"]),
    runToCompletion("nbdcopy", ["--version"], 10_000),
    sourceVersion(repoRoot)
  ])
  const libnbd = nbdcopy.stdout.split("\n").find((line) => line.startsWith("libnbd")) ?? "unknown"
  return {
    date: new Date().toISOString(),
    nproc,
    cpu: os.cpus()[0]?.model ?? "unknown",
    totalMemory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    loadAverage: os.loadavg().map((load) => load.toFixed(2)).join(", "),
    node: process.version,
    nbdkit,
    fio,
    libnbd: libnbd.trim(),
    source
  }
}

/** The facts as markdown bullet lines. */
export const formatSystemInfo = (info: SystemInfo): string =>
  [
    `- effect-nbd source: ${info.source}`,
    `- date: ${info.date}`,
    `- nproc: ${info.nproc} (${info.cpu})`,
    `- total memory: ${info.totalMemory}`,
    `- kernel: ${info.kernel}`,
    `- load average at start: ${info.loadAverage}`,
    `- node: ${info.node}`,
    `- nbdkit: ${info.nbdkit}`,
    `- fio: ${info.fio}`,
    `- nbdcopy: ${info.libnbd}`
  ].join("\n")
