/**
 * The NBD servers under test: effect-nbd (memory driver) and the nbdkit memory
 * and null plugins, each started on 127.0.0.1 as a tracked child whose PID is
 * the server itself, so its peak RSS (VmHWM) can be read from /proc.
 *
 * With `--filters` the bench adds effect-nbd's memory export behind pass-through
 * filter stacks ({@link FILTER_SERVERS}), to measure what filters cost against
 * plain effect-nbd: `error:rate=0` intercepts every operation and forwards it
 * (the Effect path), `stats` and `dirty` (changed-block tracking) keep the synchronous
 * fast path of the memory driver.
 *
 * With `--tls` the bench measures instead effect-nbd and nbdkit memory with
 * `--tls require`, each with X.509 certificates and with a TLS-PSK key file
 * ({@link TLS_SERVERS}); their URIs carry the client's credentials (libnbd's
 * `tls-certificates` or `tls-psk-file` query).
 */
import { type ChildProcess, spawnSync } from "node:child_process"
import { existsSync, readFileSync, rmSync } from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { hasExited, spawnServer, stop } from "./proc.ts"

/** An effect-nbd memory export, plain or behind a filter stack. */
export type EffectNbdId = "effect-nbd" | "effect-nbd-filter1" | "effect-nbd-filter3" | "effect-nbd-stats" | "effect-nbd-dirty"

/** A memory export over TLS (`--tls`): effect-nbd or nbdkit, with certificates or pre-shared keys. */
export type TlsServerId = "effect-nbd-x509" | "effect-nbd-psk" | "nbdkit-x509" | "nbdkit-psk"

/** Identifies a server under test. */
export type ServerId = EffectNbdId | "nbdkit-memory" | "nbdkit-null" | TlsServerId

/** Where the TLS servers and their clients find their credentials (see `tls.ts`). */
export interface TlsCredentials {
  /** server-cert.pem, server-key.pem, ca-cert.pem */
  readonly serverDir: string
  /** ca-cert.pem (and a client certificate), libnbd's `tls-certificates` */
  readonly clientDir: string
  /** psktool key file, for the server and libnbd's `tls-psk-file` alike */
  readonly pskFile: string
  /** The user of the key file the client connects as. */
  readonly pskUser: string
}

/** A server under test as the report shows it. */
export interface ServerInfo {
  readonly id: ServerId
  /** Column header, progress and failure lines. */
  readonly label: string
  /** For a filter stack: its short name in the ratio column to plain effect-nbd, e.g. `+1 filter`. */
  readonly filterLabel?: string
}

/** The `--filter` arguments of each effect-nbd export (none for plain effect-nbd). */
export const EFFECT_NBD_FILTERS: Record<EffectNbdId, ReadonlyArray<string>> = {
  "effect-nbd": [],
  "effect-nbd-filter1": ["error:rate=0"],
  "effect-nbd-filter3": ["error:rate=0", "error:rate=0", "error:rate=0"],
  "effect-nbd-stats": ["stats"],
  "effect-nbd-dirty": ["dirty"]
}

/** The servers, in the order they are benchmarked and shown. */
export const SERVERS: ReadonlyArray<ServerInfo> = [
  { id: "effect-nbd", label: "effect-nbd" },
  { id: "nbdkit-memory", label: "nbdkit memory" },
  { id: "nbdkit-null", label: "nbdkit null" }
]

/** The servers of `--tls`, in the order they are benchmarked and shown. */
export const TLS_SERVERS: ReadonlyArray<ServerInfo> = [
  { id: "effect-nbd-x509", label: "effect-nbd X.509" },
  { id: "effect-nbd-psk", label: "effect-nbd PSK" },
  { id: "nbdkit-x509", label: "nbdkit X.509" },
  { id: "nbdkit-psk", label: "nbdkit PSK" }
]

/** The effect-nbd filter stacks added by `--filters`. */
export const FILTER_SERVERS: ReadonlyArray<ServerInfo> = [
  { id: "effect-nbd-filter1", label: "effect-nbd +1 filter", filterLabel: "+1 filter" },
  { id: "effect-nbd-filter3", label: "effect-nbd +3 filters", filterLabel: "+3 filters" },
  { id: "effect-nbd-stats", label: "effect-nbd +stats", filterLabel: "+stats" },
  { id: "effect-nbd-dirty", label: "effect-nbd +dirty", filterLabel: "+dirty" }
]

/**
 * The servers of a run, in order: with filter stacks, those come right after plain
 * effect-nbd (benchmarked next to the baseline they are compared with).
 */
export const serversOf = (withFilters: boolean): ReadonlyArray<ServerInfo> =>
  withFilters ? SERVERS.flatMap((server) => (server.id === "effect-nbd" ? [server, ...FILTER_SERVERS] : [server])) : SERVERS

/** Whether a server is an effect-nbd export (plain or with filters). */
export const isEffectNbd = (id: ServerId): id is EffectNbdId => Object.hasOwn(EFFECT_NBD_FILTERS, id)

/** The command-line `--filter` arguments of a server, e.g. `--filter error:rate=0` (none but for effect-nbd stacks). */
export const filterArgs = (id: ServerId): ReadonlyArray<string> =>
  isEffectNbd(id) ? EFFECT_NBD_FILTERS[id].flatMap((spec) => ["--filter", spec]) : []

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
  /** CPU seconds (user + system, all threads) the process has used so far; undefined once it exited. */
  readonly cpuSeconds: () => number | undefined
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

/** Clock ticks per second of /proc/PID/stat's times (`getconf CLK_TCK`, 100 on Linux). */
const CLOCK_TICKS = (() => {
  const ticks = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout?.trim())
  return Number.isFinite(ticks) && ticks > 0 ? ticks : 100
})()

/** User + system CPU seconds of a live process (fields 14 and 15 of /proc/PID/stat, after the command name). */
const readCpuSeconds = (pid: number): number | undefined => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
  } catch {
    return undefined
  }
}

/** Asks the kernel for a free TCP port on 127.0.0.1. */
export const freePort = (): Promise<number> =>
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
      cpuSeconds: () => (hasExited(child) ? undefined : readCpuSeconds(pid)),
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

/** Server arguments and the client's URI query of a TLS server; none for a plain one. */
const tlsSide = (id: ServerId, credentials: TlsCredentials | undefined) => {
  const psk = id === "effect-nbd-psk" || id === "nbdkit-psk"
  const x509 = id === "effect-nbd-x509" || id === "nbdkit-x509"
  if (!psk && !x509) return undefined
  if (credentials === undefined) throw new Error(`${id} needs TLS credentials`)
  return psk
    ? { file: ["--tls-psk", credentials.pskFile], user: `${credentials.pskUser}@`, query: `?tls-psk-file=${credentials.pskFile}` }
    : { file: ["--tls-certificates", credentials.serverDir], user: "", query: `?tls-certificates=${credentials.clientDir}` }
}

/**
 * Builds dist/ from the working tree (`.ci/build.js`, as `npm run build`), so that the bench
 * runs effect-nbd as an installed package runs it: the `bin/effect-nbd.cjs` command on the
 * compiled JavaScript (without a TypeScript loader's own memory and start-up in the figures).
 */
export const buildEffectNbd = (repoRoot: string): void => {
  const built = spawnSync(process.execPath, [".ci/build.js"], { cwd: repoRoot, stdio: "inherit" })
  if (built.status !== 0) throw new Error("bench: building effect-nbd (node .ci/build.js) failed")
}

/** The node arguments that run the effect-nbd command with `args` (see {@link buildEffectNbd}). */
export const effectNbdArgs = (args: ReadonlyArray<string>): Array<string> => ["bin/effect-nbd.cjs", ...args]

/**
 * effect-nbd, run as `node bin/effect-nbd.cjs memory SIZE --port 0 [--filter SPEC]...`
 * (so the PID is the server), or with `--tls require` and its credentials for a TLS id.
 */
const startEffectNbd = (
  id: EffectNbdId | "effect-nbd-x509" | "effect-nbd-psk",
  repoRoot: string,
  sizeBytes: number,
  credentials?: TlsCredentials
): Promise<RunningServer> => {
  const tls = tlsSide(id, credentials)
  const child = spawnServer(
    process.execPath,
    effectNbdArgs([
      "memory",
      String(sizeBytes),
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      ...filterArgs(id),
      ...(tls === undefined ? [] : ["--tls", "require", ...tls.file])
    ]),
    repoRoot
  )
  return supervise(id, child, async (log, waiting) => {
    while (waiting()) {
      const match = /effect-nbd: serving memory export at (nbds?):\/\/(\S+)/.exec(log())
      if (match !== null) return tls === undefined ? `${match[1]}://${match[2]}` : `${match[1]}://${tls.user}${match[2]}${tls.query}`
      await sleep(50)
    }
    return ""
  })
}

/**
 * nbdkit with the given plugin, on a free port; ready once it writes its PID file
 * (nbdkit does that only when it is listening, and a probe connection would make it log an error).
 */
const startNbdkit = async (
  id: ServerId,
  plugin: "memory" | "null",
  sizeBytes: number,
  credentials?: TlsCredentials
): Promise<RunningServer> => {
  const tls = tlsSide(id, credentials)
  const port = await freePort()
  const pidFile = path.join(os.tmpdir(), `effect-nbd-bench-${process.pid}-${id}.pid`)
  rmSync(pidFile, { force: true })
  const child = spawnServer("nbdkit", [
    "--foreground",
    "--exit-with-parent",
    "-P",
    pidFile,
    "-p",
    String(port),
    "-i",
    "127.0.0.1",
    ...(tls === undefined ? [] : ["--tls=require", `${tls.file[0]}=${tls.file[1]}`]),
    plugin,
    String(sizeBytes)
  ])
  try {
    return await supervise(id, child, async (_, waiting) => {
      while (waiting() && !existsSync(pidFile)) await sleep(20)
      return tls === undefined ? `nbd://127.0.0.1:${port}/` : `nbds://${tls.user}127.0.0.1:${port}/${tls.query}`
    })
  } finally {
    rmSync(pidFile, { force: true })
  }
}

/** Starts one server with an export of `sizeBytes` and waits until it listens (a TLS one needs `credentials`). */
export const startServer = (
  id: ServerId,
  sizeBytes: number,
  repoRoot: string,
  credentials?: TlsCredentials
): Promise<RunningServer> => {
  switch (id) {
    case "effect-nbd":
    case "effect-nbd-filter1":
    case "effect-nbd-filter3":
    case "effect-nbd-stats":
    case "effect-nbd-dirty":
      return startEffectNbd(id, repoRoot, sizeBytes)
    case "nbdkit-memory":
      return startNbdkit(id, "memory", sizeBytes)
    case "nbdkit-null":
      return startNbdkit(id, "null", sizeBytes)
    case "effect-nbd-x509":
    case "effect-nbd-psk":
      return startEffectNbd(id, repoRoot, sizeBytes, credentials)
    case "nbdkit-x509":
    case "nbdkit-psk":
      return startNbdkit(id, "memory", sizeBytes, credentials)
  }
}
