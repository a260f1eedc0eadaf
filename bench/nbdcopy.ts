/**
 * nbdcopy runs between a local file of random data and an export, timed by
 * wall clock, with nbdcopy's own processor time (the client's share of the machine).
 * Export→local copies go to nbdcopy's `null:` sink with `--no-extents`, so every byte
 * is read over NBD (even from nbdkit null).
 * Before a copy from the file, callers read it through once ({@link warmSource}),
 * outside what they time, so that every server's copy reads it from the page cache:
 * a host that pages out memory left unused for a while (this machine's DAMON scheme
 * does so after a minute) would otherwise charge the first copy of a round with
 * reads from the disk.
 */
import { randomFillSync } from "node:crypto"
import { rmSync } from "node:fs"
import { open } from "node:fs/promises"
import type { Outcome } from "./fio.ts"
import { failure, runToCompletion } from "./proc.ts"

/** Direction of a copy. */
export type CopyDirection = "file-to-export" | "export-to-null"

/** One nbdcopy run. */
export interface CopyRun {
  readonly id: string
  readonly direction: CopyDirection
  /** nbdcopy --connections and --threads (equal, since threads cap connections). */
  readonly connections: number
}

/** The copies, in the order they run (file→export first, so the export then holds the random data). */
export const COPIES: ReadonlyArray<CopyRun> = [
  { id: "copy-in-1", direction: "file-to-export", connections: 1 },
  { id: "copy-in-4", direction: "file-to-export", connections: 4 },
  { id: "copy-out-1", direction: "export-to-null", connections: 1 },
  { id: "copy-out-4", direction: "export-to-null", connections: 4 }
]

/** A timed copy. */
export interface CopyResult {
  readonly seconds: number
  readonly mibPerSec: number
  /** nbdcopy's own processor time (user and system, all its threads), when the shell reported it. */
  readonly clientCpuSeconds?: number | undefined
}

/**
 * The processor time of a shell's children from the output of its `times` builtin: the
 * second of its two lines, user and system time as `NmS.SSSs` (dash and bash alike).
 */
export const childrenCpuSeconds = (timesOutput: string): number | undefined => {
  const lines = timesOutput.trim().split("\n")
  const match = /^(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s$/.exec(lines[lines.length - 1]?.trim() ?? "")
  if (lines.length < 2 || match === null) return undefined
  const [, um, us, sm, ss] = match
  return Number(um) * 60 + Number(us) + Number(sm) * 60 + Number(ss)
}

/**
 * The command line that runs nbdcopy with `args` in a shell which then prints its children's
 * processor time (`times`), so that the client's share of the machine is measured too.
 */
export const timedNbdcopy = (args: ReadonlyArray<string>): [string, Array<string>] =>
  ["sh", ["-c", 'nbdcopy "$@" || exit $?; times', "sh", ...args]]

/** Writes `bytes` of random data to `path`, 16 MiB at a time (asynchronously, so signals are handled meanwhile). */
export const createRandomFile = async (path: string, bytes: number): Promise<void> => {
  const chunk = Buffer.allocUnsafe(16 * 2 ** 20)
  const file = await open(path, "w")
  try {
    for (let written = 0; written < bytes; ) {
      const length = Math.min(chunk.length, bytes - written)
      randomFillSync(chunk, 0, length)
      written += (await file.write(chunk, 0, length)).bytesWritten
    }
  } finally {
    await file.close()
  }
}

/** Removes the random file, ignoring a missing one. */
export const removeFile = (path: string): void => rmSync(path, { force: true })

/** Reads the file at `path` through once, so that its pages are in the page cache. */
export const warmFile = async (path: string): Promise<void> => {
  const chunk = Buffer.allocUnsafe(16 * 2 ** 20)
  const file = await open(path, "r")
  try {
    while ((await file.read(chunk, 0, chunk.length, null)).bytesRead > 0) {
      // reading is the point
    }
  } finally {
    await file.close()
  }
}

/** Reads the source of a copy from the file through first (nothing for copies out); call it before timing the copy. */
export const warmSource = async (run: CopyRun, file: string): Promise<void> => {
  if (run.direction === "file-to-export") await warmFile(file)
}

/** nbdcopy's command line for a run. */
export const nbdcopyArgs = (run: CopyRun, uri: string, file: string): Array<string> => {
  const parallel = [`--connections=${run.connections}`, `--threads=${run.connections}`]
  return run.direction === "file-to-export"
    ? [...parallel, file, uri]
    : [...parallel, "--no-extents", uri, "null:"]
}

/** Runs one copy of `bytes` (the file's and the export's size), timed by the wall clock and by nbdcopy's processor time. */
export const runCopy = async (run: CopyRun, uri: string, file: string, bytes: number): Promise<Outcome<CopyResult>> => {
  const [shell, args] = timedNbdcopy(nbdcopyArgs(run, uri, file))
  const result = await runToCompletion(shell, args, 300_000)
  const failed = failure("nbdcopy", result)
  if (failed !== undefined) return { ok: false, error: failed }
  const clientCpuSeconds = childrenCpuSeconds(result.stdout)
  return { ok: true, value: { seconds: result.seconds, mibPerSec: bytes / 2 ** 20 / result.seconds, clientCpuSeconds } }
}
