/**
 * Socket activation end to end: `systemd-socket-activate` (systemd's tool for trying it
 * without a unit) holds the listening sockets and starts the CLI on the first connection,
 * passing them as file descriptors 3, ... with `LISTEN_FDS`/`LISTEN_PID`.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { ROOT, runStatus, servedLines, START_TIMEOUT, withTimeout } from "../support/Cli.ts"
import { freePort } from "../support/Ports.ts"
import * as SocketActivation from "../../src/cli/SocketActivation.ts"
import { available, run } from "../support/Tools.ts"

const ACTIVATE = "/usr/bin/systemd-socket-activate"
const MAIN = path.join(ROOT, "src", "cli", "main.ts")
const MiB = 1024 * 1024

const ready = fs.existsSync(ACTIVATE) && available(["nbdinfo"])

interface Activated {
  readonly stdout: () => string
  /** The tool's and the CLI's standard error. */
  readonly stderr: () => string
  readonly stop: () => Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  /** SIGKILL, for clean-up after a failure. */
  readonly kill: () => void
}

const started = new Set<Activated>()

/**
 * Starts `systemd-socket-activate -l ADDRESS... effect-nbd ARGS`; the tool binds the
 * addresses at once and replaces itself with the CLI on the first connection.
 */
const activate = async (addresses: ReadonlyArray<string>, args: ReadonlyArray<string>): Promise<Activated> => {
  const listen = addresses.flatMap((address) => ["-l", address])
  const child = spawn(ACTIVATE, [...listen, process.execPath, "--import", "tsx", MAIN, ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal }))
  )
  const activated: Activated = {
    stdout: () => stdout,
    stderr: () => stderr,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
      const result = await withTimeout(exit, START_TIMEOUT, "effect-nbd after SIGTERM")
      started.delete(activated)
      return result
    },
    kill: () => void child.kill("SIGKILL")
  }
  started.add(activated)
  // The tool reports each socket once it listens.
  await withTimeout(
    (async () => {
      while ((stderr.match(/^Listening on /gm) ?? []).length < addresses.length) {
        if (child.exitCode !== null) throw new Error(`systemd-socket-activate exited: ${stderr}`)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    })(),
    START_TIMEOUT,
    "systemd-socket-activate"
  )
  return activated
}

afterAll(async () => {
  await Promise.all([...started].map((a) => a.stop().catch(() => a.kill())))
})

/** Waits until the CLI printed `count` served URIs. */
const servedUris = async (activated: Activated, count: number) => {
  await withTimeout(
    (async () => {
      while (servedLines(activated.stdout()).length < count) await new Promise((resolve) => setTimeout(resolve, 20))
    })(),
    START_TIMEOUT,
    "served lines"
  )
  return servedLines(activated.stdout()).map((s) => s.uri)
}

/** What `SocketActivation.inherited` finds in an environment. */
const inheritedFrom = (env: Record<string, string>) =>
  SocketActivation.inherited.pipe(
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
    Effect.either,
    Effect.runSync
  )

describe("the environment of socket activation", () => {
  it("names the sockets passed to this process, from fd 3", () => {
    const pid = String(process.pid)
    expect(inheritedFrom({ LISTEN_PID: pid, LISTEN_FDS: "2", LISTEN_FDNAMES: "tcp:unix" })).toEqual(
      Either.right([{ fd: 3, name: "tcp" }, { fd: 4, name: "unix" }])
    )
    expect(inheritedFrom({ LISTEN_PID: pid, LISTEN_FDS: "1" })).toEqual(Either.right([{ fd: 3, name: undefined }]))
  })

  it("ignores sockets meant for another process, or none", () => {
    expect(inheritedFrom({ LISTEN_PID: String(process.pid + 1), LISTEN_FDS: "1" })).toEqual(Either.right([]))
    expect(inheritedFrom({ LISTEN_FDS: "1" })).toEqual(Either.right([]))
    expect(inheritedFrom({ LISTEN_PID: String(process.pid), LISTEN_FDS: "0" })).toEqual(Either.right([]))
    expect(inheritedFrom({})).toEqual(Either.right([]))
  })

  it("refuses variables that are not numbers", () => {
    expect(Either.isLeft(inheritedFrom({ LISTEN_PID: String(process.pid), LISTEN_FDS: "two" }))).toBe(true)
  })
})

describe.runIf(ready)("socket activation", () => {
  it("serves on the TCP socket it was passed", async () => {
    const port = await freePort()
    const activated = await activate([`127.0.0.1:${port}`], ["memory", "64M"])
    // The first connection starts the CLI, which accepts it on the inherited socket.
    expect(Number((await run("nbdinfo", ["--size", `nbd://127.0.0.1:${port}`])).trim())).toBe(64 * MiB)
    expect(await servedUris(activated, 1)).toEqual([`nbd://127.0.0.1:${port}/`])
    const exit = await activated.stop()
    expect(exit).toEqual({ code: 0, signal: null })
  })

  it("serves on a Unix socket and a TCP socket passed together, naming both", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-activate-"))
    try {
      const socket = path.join(dir, "nbd.sock")
      const port = await freePort()
      const activated = await activate([socket, `127.0.0.1:${port}`], ["memory", "16M", "-e", "disk"])
      const unixUri = `nbd+unix:///disk?socket=${socket}`
      expect(Number((await run("nbdinfo", ["--size", unixUri])).trim())).toBe(16 * MiB)
      expect(Number((await run("nbdinfo", ["--size", `nbd://127.0.0.1:${port}/disk`])).trim())).toBe(16 * MiB)
      expect(await servedUris(activated, 2)).toEqual([unixUri, `nbd://127.0.0.1:${port}/disk`])
      expect((await activated.stop()).code).toBe(0)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("refuses --unix when it was passed sockets", async () => {
    const port = await freePort()
    const activated = await activate([`127.0.0.1:${port}`], ["memory", "1M", "-U", "/tmp/unused.sock"])
    // The connection starts the CLI, which stops at once; the client sees the connection closed.
    const client = await runStatus("nbdinfo", [`nbd://127.0.0.1:${port}`])
    expect(client.code).not.toBe(0)
    expect((await activated.stop()).code).toBe(1)
    expect(activated.stderr()).toContain("effect-nbd: --unix cannot be used with socket activation\n")
  })
})

