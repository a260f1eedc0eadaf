/**
 * The NBD servers under test: effect-nbd (memory driver) and the nbdkit memory
 * and null plugins, each started on 127.0.0.1 as a tracked child whose PID is
 * the server itself, so its peak RSS (VmHWM) can be read from /proc.
 */
import type { ChildProcess } from "node:child_process"
import { existsSync, readFileSync, rmSync } from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { hasExited, spawnTracked, stop } from "./proc.ts"

/** Identifies a server under test. */
export type ServerId = "effect-nbd" | "nbdkit-memory" | "nbdkit-null"

/** The servers, in the order they are benchmarked and shown. */
export const SERVERS: ReadonlyArray<{ readonly id: ServerId; readonly label: string }> = [
  { id: "effect-nbd", label: "effect-nbd" },
  { id: "nbdkit-memory", label: "nbdkit memory" },
  { id: "nbdkit-null", label: "nbdkit null" }
]

/** A server that is listening. */
export interface RunningServer {
  readonly id: ServerId
  readonly uri: string
  readonly pid: number
  /** Everything the server printed so far (stdout and stderr interleaved). */
  readonly log: () => string
  /** Whether the process is still running. */
  readonly alive: () => boolean
  /** Peak resident set size in bytes (VmHWM), as last read while the process ran. */
  readonly peakRss: () => number | undefined
  /** Stops the server (SIGTERM, then SIGKILL). */
  readonly stop: () => Promise<void>
}

const START_TIMEOUT_MS = 30_000

/** Reads VmHWM of a live process, in bytes. */
const readVmHwm = (pid: number): number | undefined => {
  try {
    const match = /^VmHWM:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
    return match === null ? undefined : Number(match[1]) * 1024
  } catch {
    return undefined
  }
}

/** Asks the kernel for a free TCP port on 127.0.0.1. */
const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("no free port"))))
    })
  })

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Wraps a spawned server: collects its output and rejects if it dies before `ready` resolves. */
const supervise = async (
  id: ServerId,
  child: ChildProcess,
  ready: (log: () => string, waiting: () => boolean) => Promise<string>
): Promise<RunningServer> => {
  let settled = false
  let output = ""
  const append = (chunk: string) => (output += chunk)
  child.stdout?.setEncoding("utf8").on("data", append)
  child.stderr?.setEncoding("utf8").on("data", append)
  const log = () => output
  const died = new Promise<never>((_, reject) => {
    const fail = (why: string) => reject(new Error(`${id} ${why} before listening${output === "" ? "" : `:\n${output.trim()}`}`))
    child.once("error", (error) => fail(`could not start (${error.message})`))
    child.once("exit", (code, signal) => fail(`exited (${signal ?? `code ${code}`})`))
  })
  died.catch(() => undefined)
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${id} not listening after ${START_TIMEOUT_MS / 1000} s:\n${output.trim()}`)), START_TIMEOUT_MS)
  })
  try {
    const uri = await Promise.race([ready(log, () => !settled), died, timeout])
    const pid = child.pid!
    let peak = readVmHwm(pid)
    return {
      id,
      uri,
      pid,
      log,
      alive: () => !hasExited(child),
      peakRss: () => {
        if (!hasExited(child)) peak = readVmHwm(pid) ?? peak
        return peak
      },
      stop: () => stop(child)
    }
  } catch (error) {
    await stop(child)
    throw error
  } finally {
    settled = true
    clearTimeout(timer)
  }
}

/** effect-nbd, run as `node --import tsx src/cli/main.ts memory SIZE --port 0` (so the PID is the server). */
const startEffectNbd = (repoRoot: string, sizeBytes: number): Promise<RunningServer> => {
  const child = spawnTracked(
    process.execPath,
    ["--import", "tsx", "src/cli/main.ts", "memory", String(sizeBytes), "--host", "127.0.0.1", "--port", "0"],
    repoRoot
  )
  return supervise("effect-nbd", child, async (log, waiting) => {
    while (waiting()) {
      const match = /effect-nbd: serving memory export at (nbd:\/\/\S+)/.exec(log())
      if (match !== null) return match[1]!
      await sleep(50)
    }
    return ""
  })
}

/**
 * nbdkit with the given plugin, on a free port; ready once it writes its PID file
 * (nbdkit does that only when it is listening, and a probe connection would make it log an error).
 */
const startNbdkit = async (id: ServerId, plugin: "memory" | "null", sizeBytes: number): Promise<RunningServer> => {
  const port = await freePort()
  const pidFile = path.join(os.tmpdir(), `effect-nbd-bench-${process.pid}-${id}.pid`)
  rmSync(pidFile, { force: true })
  const child = spawnTracked("nbdkit", [
    "--foreground",
    "--exit-with-parent",
    "-P",
    pidFile,
    "-p",
    String(port),
    "-i",
    "127.0.0.1",
    plugin,
    String(sizeBytes)
  ])
  try {
    return await supervise(id, child, async (_, waiting) => {
      while (waiting() && !existsSync(pidFile)) await sleep(20)
      return `nbd://127.0.0.1:${port}/`
    })
  } finally {
    rmSync(pidFile, { force: true })
  }
}

/** Starts one server with an export of `sizeBytes` and waits until it listens. */
export const startServer = (id: ServerId, sizeBytes: number, repoRoot: string): Promise<RunningServer> => {
  switch (id) {
    case "effect-nbd":
      return startEffectNbd(repoRoot, sizeBytes)
    case "nbdkit-memory":
      return startNbdkit(id, "memory", sizeBytes)
    case "nbdkit-null":
      return startNbdkit(id, "null", sizeBytes)
  }
}
