/**
 * Child processes of the bench: every one is tracked, so that all of them are
 * stopped when the bench ends, fails, or is interrupted (SIGINT/SIGTERM/SIGHUP).
 */
import { spawn, type ChildProcess } from "node:child_process"

const live = new Set<ChildProcess>()
let shuttingDown = false

/** Whether a signal or fatal error has started the shutdown (no new work should begin). */
export const isShuttingDown = (): boolean => shuttingDown

/** Whether a child has exited (or could not be started). */
export const hasExited = (child: ChildProcess): boolean => child.exitCode !== null || child.signalCode !== null

/** Resolves when the child has exited; at once if it already has. */
export const exited = (child: ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (hasExited(child) || child.pid === undefined) return resolve()
    child.once("exit", () => resolve())
    child.once("error", () => resolve())
  })

/**
 * Spawns a tracked child with piped stdout/stderr; spawn errors arrive as its `error` event.
 * Throws once the bench is shutting down, so nothing new starts after a signal.
 */
export const spawnTracked = (command: string, args: ReadonlyArray<string>, cwd?: string, ownSession = false): ChildProcess => {
  if (shuttingDown) throw new Error(`bench is shutting down, not starting ${command}`)
  const child = spawn(command, args, {
    stdio: ["ignore", "pipe", "pipe"],
    detached: ownSession,
    ...(cwd === undefined ? {} : { cwd })
  })
  live.add(child)
  child.once("exit", () => live.delete(child))
  child.once("error", () => live.delete(child))
  return child
}

/** Where the servers run: each in a session of its own, or in the bench's (`--shared-session`). */
export type ServerSession = "own" | "shared"

let serverSession: ServerSession = "own"

/** Sets where the servers started from now on run. */
export const setServerSession = (session: ServerSession): void => {
  serverSession = session
}

/** Where the servers run, for the report. */
export const describeServerSession = (): string =>
  serverSession === "own"
    ? "each in a session of its own, as a daemon or a service runs (Linux's autogroup scheduling then shares the processors between a server and the clients as between two programs)"
    : "in the bench's session, beside the clients (the kernel then shares the processors thread by thread: a server with fewer threads than the client gets less)"

/**
 * Spawns a server as `spawnTracked` does, by default in a session of its own (`setsid`), as
 * nbdkit and qemu-nbd run once they leave the foreground and as a service runs in its own
 * cgroup. With autogroup scheduling, processes in the bench's session would otherwise share
 * the processors thread by thread with the clients' threads.
 */
export const spawnServer = (command: string, args: ReadonlyArray<string>, cwd?: string): ChildProcess =>
  spawnTracked(command, args, cwd, serverSession === "own")

/** Stops a child: SIGTERM, then SIGKILL if it is still there after `graceMs`. */
export const stop = async (child: ChildProcess, graceMs = 3000): Promise<void> => {
  if (hasExited(child) || child.pid === undefined) return
  child.kill("SIGTERM")
  let timer: NodeJS.Timeout | undefined
  await Promise.race([exited(child), new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))])
  clearTimeout(timer)
  if (!hasExited(child)) {
    child.kill("SIGKILL")
    await exited(child)
  }
}

/** Stops every tracked child and refuses to start new ones. */
export const stopAll = (): Promise<void> => {
  shuttingDown = true
  return Promise.all([...live].map((child) => stop(child))).then(() => undefined)
}

/** The outcome of a child run to completion. */
export interface Completed {
  /** Exit code; null when killed by a signal or not started. */
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  /** Set when the command could not be started at all (e.g. ENOENT). */
  readonly spawnError: string | null
  readonly timedOut: boolean
  /** Wall-clock seconds from spawn to exit. */
  readonly seconds: number
}

/** Runs a command to completion, capturing its output; SIGKILLs it after `timeoutMs`. */
export const runToCompletion = (
  command: string,
  args: ReadonlyArray<string>,
  timeoutMs: number,
  cwd?: string
): Promise<Completed> =>
  new Promise((resolve) => {
    const start = process.hrtime.bigint()
    const child = spawnTracked(command, args, cwd)
    let stdout = ""
    let stderr = ""
    let timedOut = false
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    const timer = setTimeout(() => {
      timedOut = true
      child.kill("SIGKILL")
    }, timeoutMs)
    let done = false
    const finish = (code: number | null, signal: NodeJS.Signals | null, spawnError: string | null) => {
      if (done) return
      done = true
      clearTimeout(timer)
      const seconds = Number(process.hrtime.bigint() - start) / 1e9
      resolve({ code, signal, stdout, stderr, spawnError, timedOut, seconds })
    }
    child.once("error", (error) => finish(null, null, error.message))
    child.once("close", (code, signal) => finish(code, signal, null))
  })

/** Describes why a completed run failed, or returns undefined if it exited 0. */
export const failure = (name: string, result: Completed): string | undefined => {
  if (result.spawnError !== null) return `${name} could not start: ${result.spawnError}`
  if (result.timedOut) return `${name} timed out after ${result.seconds.toFixed(1)} s`
  if (result.code === 0) return undefined
  const why = result.code === null ? `killed by ${result.signal}` : `exit code ${result.code}`
  const detail = (result.stderr.trim() || result.stdout.trim()).split("\n").slice(-3).join(" | ")
  return `${name} failed (${why})${detail === "" ? "" : `: ${detail}`}`
}

let installed = false

/**
 * Makes sure no child outlives the bench: SIGKILL on process exit, orderly stop
 * on SIGINT/SIGTERM/SIGHUP (then exit 130/143/129) and on uncaught errors (exit 1).
 */
export const installCleanup = (): void => {
  if (installed) return
  installed = true
  process.on("exit", () => {
    for (const child of live) child.kill("SIGKILL")
  })
  let signalled = false
  // `on`, not `once`: tsx re-sends a signal it thinks went unnoticed, and a second
  // one without a listener would kill the bench before it has stopped its children
  const onSignal = (signal: NodeJS.Signals, code: number) => {
    if (signalled) return
    signalled = true
    process.stderr.write(`\nbench: ${signal}, stopping child processes\n`)
    void stopAll().finally(() => process.exit(code))
  }
  process.on("SIGINT", () => onSignal("SIGINT", 130))
  process.on("SIGTERM", () => onSignal("SIGTERM", 143))
  process.on("SIGHUP", () => onSignal("SIGHUP", 129))
  const onFatal = (error: unknown) => {
    process.stderr.write(`bench: fatal: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`)
    void stopAll().finally(() => process.exit(1))
  }
  process.on("uncaughtException", onFatal)
  process.on("unhandledRejection", onFatal)
}
