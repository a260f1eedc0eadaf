/**
 * `--pid-file` and `--exit-with-parent` end to end, with the real CLI as a child process.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { killAll, ROOT, runCli, START_TIMEOUT, startCli, STOP_TIMEOUT, withTimeout } from "../support/Cli.ts"

const MAIN = path.join(ROOT, "src", "cli", "main.ts")
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-lifetime-"))

/** Process ids started outside `Cli.ts`, killed at the end whatever happened. */
const orphans = new Set<number>()

afterAll(async () => {
  for (const pid of orphans) {
    try {
      process.kill(pid, "SIGKILL")
    } catch {
      // Already gone.
    }
  }
  await killAll()
  fs.rmSync(dir, { recursive: true, force: true })
})

/** Whether a process runs (a zombie waiting for its new parent to reap it does not). */
const running = (pid: number): boolean => {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return false
  }
}

const until = async (condition: () => boolean, millis: number, what: string) =>
  withTimeout(
    (async () => {
      while (!condition()) await new Promise((resolve) => setTimeout(resolve, 25))
    })(),
    millis,
    what
  )

describe("--pid-file", () => {
  it("holds the process id once listening and is removed on exit", async () => {
    const pidFile = path.join(dir, "server.pid")
    const { cli } = await startCli(["memory", "1M", "-p", "0", "--pid-file", pidFile])
    // The URI is printed after the file is written.
    expect(fs.readFileSync(pidFile, "utf8")).toBe(`${cli.child.pid}\n`)
    expect(fs.readdirSync(dir)).toEqual(["server.pid"])
    const exit = await cli.stop("SIGTERM")
    expect(exit.code).toBe(0)
    expect(fs.existsSync(pidFile)).toBe(false)
  })

  it("is not written when the server cannot listen", async () => {
    const pidFile = path.join(dir, "never.pid")
    const result = await runCli(["memory", "1M", "-p", "70000", "--pid-file", pidFile])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain("cannot listen on 127.0.0.1:70000")
    expect(fs.existsSync(pidFile)).toBe(false)
  })
})

describe("--exit-with-parent", () => {
  it("stops gracefully when its parent is killed", async () => {
    const pidFile = path.join(dir, "child.pid")
    // A shell starts the server in the background and waits; killing the shell orphans the server.
    const cli = [process.execPath, "--import", "tsx", MAIN, "memory", "1M", "-p", "0", "--exit-with-parent", "--pid-file", pidFile]
    const parent = spawn("/bin/sh", ["-c", `${cli.map((arg) => `'${arg}'`).join(" ")} & wait`], {
      cwd: ROOT,
      stdio: "ignore"
    })
    orphans.add(parent.pid!)
    await until(() => fs.existsSync(pidFile), START_TIMEOUT, "pid file")
    const pid = Number(fs.readFileSync(pidFile, "utf8"))
    orphans.add(pid)
    expect(running(pid)).toBe(true)

    parent.kill("SIGKILL")
    await until(() => !running(pid), STOP_TIMEOUT, "server exit after its parent's")
    // The pid file is removed by the server's own clean-up: it stopped as on SIGTERM.
    expect(fs.existsSync(pidFile)).toBe(false)
  })
})
