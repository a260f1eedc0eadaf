/**
 * bin/thread-pool.cjs sizes libuv's thread pool before an ES module entry point can start
 * it: with it preloaded, more blocking file operations run at once than the default pool
 * of 4 threads holds, a size the user set is kept, and the CLI as the tests start it has
 * the larger pool.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { killAll, ROOT, startCli } from "../support/Cli.ts"

const PRELOAD = path.join(ROOT, "bin", "thread-pool.cjs")
const BLOCKED = 8

// Blocks BLOCKED pool threads on reads of FIFOs nobody writes to, then asks for a stat: it
// is answered only if the pool has a thread left. The FIFOs are written once it is, so the
// reads end either way (a pool of 4 would leave the stat waiting and the process hanging,
// which the spawn's timeout ends).
const PROBE = `
import * as fs from "node:fs"
import * as path from "node:path"
import { execFileSync } from "node:child_process"
const dir = process.argv[2]
const fds = []
for (let i = 0; i < ${BLOCKED}; i++) {
  const fifo = path.join(dir, "fifo" + i)
  execFileSync("mkfifo", [fifo])
  fds.push(fs.openSync(fifo, fs.constants.O_RDWR))
}
let pending = fds.length
for (const fd of fds) fs.read(fd, Buffer.alloc(1), 0, 1, null, () => { if (--pending === 0) fds.forEach((fd) => fs.closeSync(fd)) })
fs.stat(dir, () => {
  console.log("stat answered with " + pending + " reads blocked; UV_THREADPOOL_SIZE=" + process.env.UV_THREADPOOL_SIZE)
  for (const fd of fds) fs.writeSync(fd, "x")
})
`

const runProbe = (env: NodeJS.ProcessEnv) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-pool-"))
  try {
    const probe = path.join(dir, "probe.mjs")
    fs.writeFileSync(probe, PROBE)
    const result = spawnSync(process.execPath, ["--require", PRELOAD, probe, dir], { env, encoding: "utf8", timeout: 20_000 })
    return result.stdout.trim()
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const withoutPoolSize = (): NodeJS.ProcessEnv => {
  const env = { ...process.env }
  delete env.UV_THREADPOOL_SIZE
  return env
}

describe("thread pool size", () => {
  afterAll(() => killAll())

  it("runs more blocking file operations at once than the default pool holds", () => {
    expect(runProbe(withoutPoolSize())).toBe(`stat answered with ${BLOCKED} reads blocked; UV_THREADPOOL_SIZE=16`)
  })

  it("keeps a size the user set", () => {
    expect(runProbe({ ...withoutPoolSize(), UV_THREADPOOL_SIZE: "12" })).toBe(
      `stat answered with ${BLOCKED} reads blocked; UV_THREADPOOL_SIZE=12`
    )
  })

  it.runIf(process.platform === "linux")("gives the CLI a pool of 16 threads", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-pool-"))
    try {
      const image = path.join(dir, "disk.img")
      execFileSync("truncate", ["-s", "1M", image])
      const { cli } = await startCli(["file", image, "--host", "127.0.0.1", "--port", "0"])
      // libuv starts every thread of the pool at its first use, which loading the CLI was.
      const threads = fs.readdirSync(`/proc/${cli.child.pid}/task`).length
      expect(threads).toBeGreaterThan(16)
      await cli.stop()
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)
})
