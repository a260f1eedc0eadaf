/**
 * The `effect-nbd` command line as a child process (`node --import tsx src/cli/main.ts ...`)
 * for end-to-end tests: start it, read the URIs it serves, stop it.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const MiB = 1024 * 1024

export const ROOT = fileURLToPath(new URL("../../", import.meta.url))
const MAIN = path.join(ROOT, "src", "cli", "main.ts")
/** As `npm run dev` runs it: the thread pool sized first (bin/thread-pool.cjs), then the sources through tsx. */
const CLI_ARGS = ["--require", path.join(ROOT, "bin", "thread-pool.cjs"), "--import", "tsx", MAIN] as const

/** How long a started CLI may take to print its URIs (tsx compiles on start-up). */
export const START_TIMEOUT = 30_000
/** How long a stopped CLI may take to exit. */
export const STOP_TIMEOUT = 10_000

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/** One `effect-nbd: serving ...` line. */
export interface Served {
  readonly driver: string
  readonly readOnly: boolean
  readonly uri: string
}

export interface Exited {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

/** A running `effect-nbd` process. */
export interface Cli {
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** Whether the process has exited. */
  readonly exited: () => boolean
  /** Resolves when the process exits. */
  readonly exit: Promise<Exited>
  /** Sends a signal and waits (at most `timeout` ms) for the exit; rejects on timeout. */
  readonly stop: (signal?: NodeJS.Signals, timeout?: number) => Promise<Exited & { readonly millis: number }>
  /** Kills the process (SIGKILL) if it still runs; never rejects. */
  readonly kill: () => Promise<void>
}

/** Every CLI process started by this file, killed at the end whatever happened. */
const children = new Set<Cli>()

/** Kills every CLI process started (call in afterAll). */
export const killAll = () => Promise.all([...children].map((cli) => cli.kill()))

const SERVING = /^effect-nbd: serving (\S+) export( \(read-only\))? at (.+)$/

export const servedLines = (stdout: string): Array<Served> =>
  stdout.split("\n").flatMap((line) => {
    const match = SERVING.exec(line)
    return match === null ? [] : [{ driver: match[1]!, readOnly: match[2] !== undefined, uri: match[3]! }]
  })

export const withTimeout = <A>(promise: Promise<A>, millis: number, what: string): Promise<A> => {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${millis} ms`)), millis)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Spawns the CLI with `args`; does not wait for it to listen. */
export const spawnCli = (args: ReadonlyArray<string>): Cli => {
  const child = spawn(process.execPath, [...CLI_ARGS, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] })
  let stdout = ""
  let stderr = ""
  let done = false
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
  const exit = new Promise<Exited>((resolve) => {
    child.on("close", (code, signal) => {
      done = true
      resolve({ code, signal })
    })
  })
  const cli: Cli = {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited: () => done,
    exit,
    stop: async (signal = "SIGTERM", timeout = STOP_TIMEOUT) => {
      const started = Date.now()
      if (!done) child.kill(signal)
      const result = await withTimeout(exit, timeout, `effect-nbd ${args.join(" ")} after ${signal}`)
      return { ...result, millis: Date.now() - started }
    },
    kill: async () => {
      if (!done) child.kill("SIGKILL")
      await withTimeout(exit, STOP_TIMEOUT, "SIGKILL").catch(() => undefined)
    }
  }
  children.add(cli)
  return cli
}

/** Starts the CLI and waits until it has printed `count` URIs. */
export const startCli = async (
  args: ReadonlyArray<string>,
  count = 1
): Promise<{ readonly cli: Cli; readonly served: ReadonlyArray<Served> }> => {
  const cli = spawnCli(args)
  const started = Date.now()
  for (;;) {
    const served = servedLines(cli.stdout())
    if (served.length >= count) return { cli, served }
    if (cli.exited() || Date.now() - started > START_TIMEOUT) {
      await cli.kill()
      throw new Error(
        `effect-nbd ${args.join(" ")} did not print ${count} URI(s)` +
          `\nstdout: ${cli.stdout()}\nstderr: ${cli.stderr()}`
      )
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** Runs a command that may fail, returning its exit code and output. */
export const runStatus = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd?: string; readonly timeout?: number } = {}
): Promise<{ readonly code: number; readonly stdout: string; readonly stderr: string }> =>
  new Promise((resolve, reject) => {
    execFile(command, [...args], {
      encoding: "utf8",
      maxBuffer: 64 * MiB,
      timeout: options.timeout ?? 30_000,
      killSignal: "SIGKILL",
      ...(options.cwd === undefined ? {} : { cwd: options.cwd })
    }, (error, stdout, stderr) => {
      if (error === null) resolve({ code: 0, stdout, stderr })
      else if (typeof error.code === "number") resolve({ code: error.code, stdout, stderr })
      else reject(new Error(`${command} ${args.join(" ")}: ${error.message}\nstderr: ${stderr}`))
    })
  })

/** Runs the CLI to completion (for commands that are expected to exit on their own). */
export const runCli = (args: ReadonlyArray<string>) =>
  runStatus(process.execPath, [...CLI_ARGS, ...args], { cwd: ROOT, timeout: 30_000 })
