/**
 * fio workloads against an NBD URI through fio's nbd ioengine (libnbd), and
 * the parsing of fio's JSON output. The nbd engine talks NBD directly, so there
 * is no page cache in between and `--direct` does not apply.
 */
import { readFileSync } from "node:fs"
import { failure, runToCompletion } from "./proc.ts"

/** One fio job. */
export interface FioWorkload {
  readonly id: string
  readonly rw: "read" | "write" | "randread" | "randwrite"
  readonly bs: string
  readonly iodepth: number
  /** Time-based (loops over the export for the runtime) or one pass over the whole export. */
  readonly timeBased: boolean
}

/** One sequential pass writing the whole export, so later reads hit allocated memory. */
export const PREFILL: FioWorkload = { id: "prefill", rw: "write", bs: "1m", iodepth: 8, timeBased: false }

/** The measured workloads, in the order they run. */
export const WORKLOADS: ReadonlyArray<FioWorkload> = [
  { id: "seq-read-1m-qd8", rw: "read", bs: "1m", iodepth: 8, timeBased: true },
  { id: "seq-write-1m-qd8", rw: "write", bs: "1m", iodepth: 8, timeBased: true },
  { id: "rand-read-4k-qd32", rw: "randread", bs: "4k", iodepth: 32, timeBased: true },
  { id: "rand-write-4k-qd32", rw: "randwrite", bs: "4k", iodepth: 32, timeBased: true },
  { id: "rand-read-4k-qd1", rw: "randread", bs: "4k", iodepth: 1, timeBased: true }
]

/** What one fio job measured (for its read or write direction). */
export interface FioResult {
  readonly mibPerSec: number
  readonly iops: number
  /** Mean completion latency, µs. */
  readonly clatMeanUs: number
  /** 99th percentile completion latency, µs. */
  readonly clatP99Us: number
  /** Bytes transferred in the measured period. */
  readonly ioBytes: number
  /** Seconds the measured period lasted. */
  readonly seconds: number
}

/** Success or a description of what went wrong. */
export type Outcome<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly error: string }

/** How long each time-based job runs. */
export interface FioTiming {
  readonly runtimeSeconds: number
  readonly rampSeconds: number
}

interface FioDirection {
  readonly io_bytes: number
  readonly bw_bytes: number
  readonly iops: number
  readonly runtime: number
  readonly clat_ns: { readonly mean: number; readonly percentile?: Record<string, number> }
}

interface FioJson {
  readonly jobs: ReadonlyArray<{ readonly error: number; readonly read: FioDirection; readonly write: FioDirection }>
}

/** Extracts the result of the single job in fio's JSON output. */
export const parseFioJson = (text: string, direction: "read" | "write"): Outcome<FioResult> => {
  let json: FioJson
  try {
    // fio may print engine chatter before the JSON document
    json = JSON.parse(text.slice(Math.max(0, text.indexOf("{")))) as FioJson
  } catch (error) {
    return { ok: false, error: `fio output is not JSON: ${String(error)}` }
  }
  const job = json.jobs?.[0]
  if (job === undefined) return { ok: false, error: "fio output has no job" }
  if (job.error !== 0) return { ok: false, error: `fio job error ${job.error}` }
  const d = job[direction]
  if (d.io_bytes === 0) return { ok: false, error: `fio did no ${direction} I/O` }
  const p99 = d.clat_ns.percentile?.["99.000000"]
  return {
    ok: true,
    value: {
      mibPerSec: d.bw_bytes / 2 ** 20,
      iops: d.iops,
      clatMeanUs: d.clat_ns.mean / 1000,
      clatP99Us: p99 === undefined ? Number.NaN : p99 / 1000,
      ioBytes: d.io_bytes,
      seconds: d.runtime / 1000
    }
  }
}

/** fio's command line for a workload against `uri`. */
export const fioArgs = (
  workload: FioWorkload,
  uri: string,
  sizeBytes: number,
  timing: FioTiming,
  jsonPath: string
): Array<string> => [
  `--name=${workload.id}`,
  "--ioengine=nbd",
  `--uri=${uri}`,
  `--rw=${workload.rw}`,
  `--bs=${workload.bs}`,
  `--iodepth=${workload.iodepth}`,
  "--numjobs=1",
  `--size=${sizeBytes}`,
  ...(workload.timeBased
    ? ["--time_based", `--runtime=${timing.runtimeSeconds}`, ...(timing.rampSeconds > 0 ? [`--ramp_time=${timing.rampSeconds}`] : [])]
    : []),
  "--output-format=json",
  `--output=${jsonPath}`
]

/** Runs one workload, keeping fio's raw JSON at `jsonPath`. */
export const runFio = async (
  workload: FioWorkload,
  uri: string,
  sizeBytes: number,
  timing: FioTiming,
  jsonPath: string
): Promise<Outcome<FioResult> & { readonly stderr: string }> => {
  const budgetMs = workload.timeBased ? (timing.runtimeSeconds + timing.rampSeconds) * 3000 + 30_000 : 300_000
  const result = await runToCompletion("fio", fioArgs(workload, uri, sizeBytes, timing, jsonPath), budgetMs)
  // fio's nbd engine announces every connection; anything else on stderr is worth reporting
  const stderr = (result.stderr + result.stdout)
    .split("\n")
    .filter((line) => line.trim() !== "" && !line.includes("connected to NBD server"))
    .join("\n")
  const failed = failure("fio", result)
  if (failed !== undefined) return { ok: false, error: failed, stderr }
  let text: string
  try {
    text = readFileSync(jsonPath, "utf8")
  } catch (error) {
    return { ok: false, error: `fio wrote no JSON: ${String(error)}`, stderr }
  }
  return { ...parseFioJson(text, workload.rw === "read" || workload.rw === "randread" ? "read" : "write"), stderr }
}
