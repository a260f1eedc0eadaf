/**
 * Captive mode end to end: `effect-nbd ... --run CMD` serves while `CMD` runs, then stops
 * and exits with `CMD`'s status; `-U -` serves on a private socket removed afterwards.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { exitStatus } from "../../src/cli/Captive.ts"
import { sha256 } from "../support/Bytes.ts"
import { killAll, runCli, runStatus, spawnCli, START_TIMEOUT, withTimeout } from "../support/Cli.ts"
import { available } from "../support/Tools.ts"

const MiB = 1024 * 1024

const ready = available(["nbdcopy", "nbdinfo"])
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-captive-"))
afterAll(async () => {
  await killAll()
  fs.rmSync(dir, { recursive: true, force: true })
})

/** A file of `size` random bytes in the test directory. */
const randomFile = (name: string, size: number) => {
  const file = path.join(dir, name)
  const data = randomBytes(size)
  fs.writeFileSync(file, data)
  return { file, data }
}

describe("exit status", () => {
  it("is the code, or 128 + the signal's number", () => {
    expect(exitStatus(0, null)).toBe(0)
    expect(exitStatus(3, null)).toBe(3)
    expect(exitStatus(null, "SIGKILL")).toBe(137)
    expect(exitStatus(null, "SIGTERM")).toBe(143)
  })
})

describe.runIf(ready)("--run", () => {
  it("copies in with nbdcopy while the server runs, and reads the same bytes back out", async () => {
    const input = randomFile("in.img", 8 * MiB)
    const output = path.join(dir, "out.img")
    const result = await runCli([
      "memory", "64M", "-p", "0",
      "--run", `nbdcopy "${input.file}" "$uri" && nbdcopy "$uri" "${output}"`
    ])
    expect(result.code).toBe(0)
    // Standard output belongs to the command: no "serving" line.
    expect(result.stdout).toBe("")
    const copied = fs.readFileSync(output)
    expect(copied.length).toBe(64 * MiB)
    expect(sha256(copied.subarray(0, 8 * MiB))).toBe(sha256(input.data))
    expect(copied.subarray(8 * MiB).every((byte) => byte === 0)).toBe(true)
  })

  it("stops gracefully after the command: a file export holds what was copied", async () => {
    const input = randomFile("in-file.img", 4 * MiB)
    const disk = path.join(dir, "disk.img")
    fs.writeFileSync(disk, Buffer.alloc(4 * MiB))
    const result = await runCli(["file", disk, "-p", "0", "--run", `nbdcopy "${input.file}" "$uri"`])
    expect(result.code).toBe(0)
    expect(sha256(fs.readFileSync(disk))).toBe(sha256(input.data))
  })

  it("exits with the command's status: nbdcopy's failure", async () => {
    const missing = path.join(dir, "missing.img")
    const expected = await runStatus("nbdcopy", [missing, "null:"])
    expect(expected.code).not.toBe(0)
    const failed = await runCli(["memory", "1M", "-p", "0", "--run", `nbdcopy "${missing}" "$uri"`])
    expect(failed.code).toBe(expected.code)
    expect(failed.stderr).toContain("missing.img")
  })

  it("exits with the command's status: exit 3", async () => {
    expect((await runCli(["memory", "1M", "-p", "0", "--run", "exit 3"])).code).toBe(3)
  })

  it("exits with 128 + N when signal N ended the command", async () => {
    expect((await runCli(["memory", "1M", "-p", "0", "--run", "kill -TERM $$"])).code).toBe(143)
  })

  it("stops the command when the server is told to stop, and exits with its status", async () => {
    const cli = spawnCli(["memory", "1M", "-p", "0", "--run", "echo started; exec sleep 60"])
    await withTimeout(
      (async () => {
        while (!cli.stdout().includes("started")) await new Promise((resolve) => setTimeout(resolve, 25))
      })(),
      START_TIMEOUT,
      "the command to start"
    )
    // SIGTERM to the server: it stops the command (SIGTERM, 128 + 15) and exits with that status.
    expect(await cli.stop("SIGTERM")).toMatchObject({ code: 143, signal: null })
  })

  it("sets $uri, $nbd, $port, $unixsocket and $exportname", async () => {
    const result = await runCli([
      "memory", "1M", "-p", "0", "-e", "disk one",
      "--run", `printf '%s|%s|%s|%s|%s\\n' "$uri" "$nbd" "$port" "$unixsocket" "$exportname"`
    ])
    expect(result.code).toBe(0)
    const [uri, nbd, port, unixsocket, exportname] = result.stdout.trim().split("|")
    expect(Number(port)).toBeGreaterThan(0)
    expect(uri).toBe(`nbd://127.0.0.1:${port}/disk%20one`)
    expect(nbd).toBe(uri)
    expect(unixsocket).toBe("")
    expect(exportname).toBe("disk one")
  })

  it("serves on a private Unix socket with -U -, removed afterwards", async () => {
    const result = await runCli([
      "memory", "64M", "-U", "-",
      "--run", `echo "$unixsocket"; echo "port=$port"; echo "$uri"; nbdinfo --size "$uri"`
    ])
    expect(result.code).toBe(0)
    const [socket, port, uri, size] = result.stdout.trim().split("\n")
    expect(socket).toMatch(/effect-nbd-[^/]+\/socket$/)
    expect(port).toBe("port=")
    expect(uri).toBe(`nbd+unix:///?socket=${socket}`)
    expect(Number(size)).toBe(64 * MiB)
    // The socket and the directory made for it are gone.
    expect(fs.existsSync(path.dirname(socket!))).toBe(false)
  })

  it("reports a failure to listen in one line, and runs no command", async () => {
    const marker = path.join(dir, "ran")
    const result = await runCli(["memory", "1M", "-U", path.join(dir, "no-such-dir", "s"), "--run", `touch "${marker}"`])
    expect(result.code).toBe(1)
    expect(result.stderr.trim()).toBe(`effect-nbd: cannot listen on ${path.join(dir, "no-such-dir", "s")}: no such directory (ENOENT)`)
    expect(fs.existsSync(marker)).toBe(false)
  })
})
