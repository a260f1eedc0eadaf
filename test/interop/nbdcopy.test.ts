/**
 * Interop with libnbd's nbdcopy: whole-export copies over one and several connections,
 * on the plain memory export and under `cow` and `cache` (see TestServer.stackModes).
 */
import { execFile } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { sha256 } from "../support/Bytes.ts"
import type { SparseMemory } from "../../src/drivers/Memory.ts"
import * as TestServer from "../support/TestServer.ts"
import { available, run } from "../support/Tools.ts"

const MiB = 1024 * 1024
const SIZE = 64 * MiB


/** Runs nbdcopy verbosely, returning its debug output (standard error). */
const nbdcopyVerbose = async (args: ReadonlyArray<string>): Promise<string> => {
  const { stderr } = await promisify(execFile)("nbdcopy", ["--verbose", ...args], {
    encoding: "utf8",
    maxBuffer: 256 * MiB
  })
  return stderr
}

/** Names of the libnbd handles (e.g. "dst0") whose connect succeeded, per nbdcopy's debug output. */
const connectedHandles = (debug: string, side: "src" | "dst"): Array<string> =>
  [...debug.matchAll(new RegExp(`debug: (${side}\\d+): nbd_connect_uri: leave: ret=0`, "g"))].map((m) => m[1]!).sort()

const haveTools = available(["nbdcopy", "nbdinfo"])

for (const mode of TestServer.stackModes) describe.skipIf(!haveTools)(`nbdcopy (${mode.name})`, () => {
  const stacked = TestServer.isStacked(mode)
  let server: TestServer.TestServer
  let store: SparseMemory
  let dir: string
  /**
   * What the export holds: the memory store itself when plain; under cow the store below
   * is never written, so what a client reads back.
   */
  const contents = async (offset: number, length: number): Promise<Uint8Array> =>
    stacked ? server.read(offset, length) : store.read(offset, length)

  beforeAll(async () => {
    server = await TestServer.start({ size: SIZE, stack: mode.stack })
    if (server.store === undefined) throw new Error("expected a memory store")
    store = server.store
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-nbdcopy-"))
  })

  afterAll(async () => {
    await server?.stop()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("copies 64 MiB of random data into the export and back out", async () => {
    const data = randomBytes(SIZE)
    const input = path.join(dir, "in-1.img")
    const output = path.join(dir, "out-1.img")
    fs.writeFileSync(input, data)

    await run("nbdcopy", [input, server.uri()])
    expect(sha256(await contents(0, SIZE))).toBe(sha256(data))

    await run("nbdcopy", [server.uri(), output])
    const copied = fs.readFileSync(output)
    expect(copied.length).toBe(SIZE)
    expect(sha256(copied)).toBe(sha256(data))
  })

  it("round-trips over 4 connections, zeroing a range that held data", async () => {
    // New random data with an 8 MiB run of zeroes in the middle: nbdcopy sends
    // NBD_CMD_WRITE_ZEROES there, and the previous copy left random data in that range.
    // nbdcopy opens no more connections than threads, so --threads=4 too (2-core machine).
    const data = randomBytes(SIZE)
    data.fill(0, 20 * MiB, 28 * MiB)
    expect((await contents(20 * MiB, MiB)).some((b) => b !== 0)).toBe(true)
    const input = path.join(dir, "in-4.img")
    const output = path.join(dir, "out-4.img")
    fs.writeFileSync(input, data)

    const copyIn = await nbdcopyVerbose(["--connections=4", "--threads=4", input, server.uri()])
    expect(copyIn).toContain("connections=4")
    expect(connectedHandles(copyIn, "dst")).toEqual(["dst0", "dst1", "dst2", "dst3"])
    expect(copyIn).toMatch(/dst\d+: nbd_aio_zero: enter/)
    expect(sha256(await contents(0, SIZE))).toBe(sha256(data))

    const copyOut = await nbdcopyVerbose(["--connections=4", "--threads=4", server.uri(), output])
    expect(copyOut).toContain("connections=4")
    expect(connectedHandles(copyOut, "src")).toEqual(["src0", "src1", "src2", "src3"])
    const copied = fs.readFileSync(output)
    expect(copied.length).toBe(SIZE)
    expect(sha256(copied)).toBe(sha256(data))
  })

  it("the server still answers after the other connections", async () => {
    const result = JSON.parse(await run("nbdinfo", ["--json", server.uri()])) as {
      readonly exports: ReadonlyArray<{ readonly "export-size": number; readonly is_read_only: boolean }>
    }
    expect(result.exports).toHaveLength(1)
    expect(result.exports[0]!["export-size"]).toBe(SIZE)
    expect(result.exports[0]!.is_read_only).toBe(false)
    // cow keeps every write in its overlay: nothing reached the store below.
    if (stacked) expect(store.pages.size).toBe(0)
  })
})
