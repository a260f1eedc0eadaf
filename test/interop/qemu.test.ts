/**
 * Interop with QEMU's NBD client through qemu-img and qemu-io, on the plain memory export
 * and under `cow` and `cache` (see TestServer.stackModes).
 */
import { execFile } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { expectBytes, sha256 } from "../support/Bytes.ts"
import type { SparseMemory } from "../../src/drivers/Memory.ts"
import { AllocationState } from "../../src/protocol/Constants.ts"
import * as TestServer from "../support/TestServer.ts"
import { available, run } from "../support/Tools.ts"

const MiB = 1024 * 1024
const KiB = 1024
const SIZE = 256 * MiB
const PAGE = 32 * KiB
const ZERO = AllocationState.ZERO
const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO


/** Runs a command that may exit non-zero, returning its exit code and output. */
const runStatus = (command: string, args: ReadonlyArray<string>): Promise<{
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}> =>
  new Promise((resolve, reject) => {
    execFile(command, [...args], { encoding: "utf8", maxBuffer: 16 * MiB }, (error, stdout, stderr) => {
      if (error === null) resolve({ code: 0, stdout, stderr })
      else if (typeof error.code === "number") resolve({ code: error.code, stdout, stderr })
      else reject(error)
    })
  })

const filled = (length: number, byte: number): Buffer => Buffer.alloc(length, byte)

const haveTools = available(["qemu-img", "qemu-io"])

for (const mode of TestServer.stackModes) describe.skipIf(!haveTools)(`qemu-img and qemu-io (${mode.name})`, () => {
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
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-qemu-"))
  })

  afterAll(async () => {
    await server?.stop()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("qemu-img info reports the virtual size", async () => {
    const result = JSON.parse(await run("qemu-img", ["info", "--output=json", server.uri()])) as {
      readonly "virtual-size": number
      readonly format: string
    }
    expect(result["virtual-size"]).toBe(SIZE)
    expect(result.format).toBe("raw")
  })

  it("qemu-img convert copies a file in and back out unchanged", async () => {
    const data = randomBytes(16 * MiB)
    const input = path.join(dir, "in.img")
    const output = path.join(dir, "out.img")
    fs.writeFileSync(input, data)

    await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", input, server.uri()])
    expect(sha256(await contents(0, 16 * MiB))).toBe(sha256(data))

    await run("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri(), output])
    const copied = fs.readFileSync(output)
    expect(copied.length).toBe(SIZE)
    expect(sha256(copied.subarray(0, 16 * MiB))).toBe(sha256(data))
    // The rest of the export was never written and must come back as zeroes.
    const zeroes = Buffer.alloc(MiB)
    for (let at = 16 * MiB; at < SIZE; at += MiB) {
      if (!copied.subarray(at, at + MiB).equals(zeroes)) expect.fail(`non-zero bytes in the MiB at ${at}`)
    }
  })

  it("qemu-io writes, reads, zeroes and flushes", async () => {
    const out = await run("qemu-io", [
      "-f", "raw",
      "-c", "write -P 0x5a 1M 64k",
      "-c", "read -P 0x5a 1M 64k",
      "-c", "write -z 2M 64k",
      "-c", "read -P 0 2M 64k",
      "-c", "flush",
      server.uri()
    ])
    expect(out).not.toContain("Pattern verification failed")
    expect(out).toContain("wrote 65536/65536 bytes at offset 1048576")
    expect(out).toContain("read 65536/65536 bytes at offset 1048576")
    expect(out).toContain("wrote 65536/65536 bytes at offset 2097152")
    expect(out).toContain("read 65536/65536 bytes at offset 2097152")
    expectBytes(await contents(MiB, 64 * KiB), filled(64 * KiB, 0x5a), "qemu-io pattern at 1 MiB")
    expectBytes(await contents(2 * MiB, 64 * KiB), filled(64 * KiB, 0), "qemu-io zeroes at 2 MiB")
    // Without -u qemu sends NBD_CMD_FLAG_NO_HOLE: the zeroed range stays allocated (memory
    // keeps its pages; cow keeps a zeroed block, reported as zero but not a hole).
    if (stacked) expect(await server.blockStatus(2 * MiB, 64 * KiB)).toEqual([{ length: 64 * KiB, flags: ZERO }])
    else {
      expect(store.pages.has((2 * MiB) / PAGE)).toBe(true)
      expect(store.pages.has((2 * MiB) / PAGE + 1)).toBe(true)
    }
  })

  it("qemu-io write -z -u lets the export punch a hole that reads back as zeroes", async () => {
    const out = await run("qemu-io", [
      "-f", "raw",
      "-c", "write -P 0x77 20M 64k",
      "-c", "write -z -u 20M 64k",
      "-c", "read -P 0 20M 64k",
      server.uri()
    ])
    expect(out).not.toContain("Pattern verification failed")
    expect(out).toContain("read 65536/65536 bytes at offset 20971520")
    expectBytes(await contents(20 * MiB, 64 * KiB), filled(64 * KiB, 0), "qemu-io zeroes at 20 MiB")
    if (stacked) expect(await server.blockStatus(20 * MiB, 64 * KiB)).toEqual([{ length: 64 * KiB, flags: HOLE_ZERO }])
    else {
      expect(store.pages.has((20 * MiB) / PAGE)).toBe(false)
      expect(store.pages.has((20 * MiB) / PAGE + 1)).toBe(false)
    }
  })

  it("qemu-io reports a pattern mismatch", async () => {
    const result = await runStatus("qemu-io", [
      "-f", "raw",
      "-c", "write -P 0x11 3M 64k",
      "-c", "read -P 0x22 3M 64k",
      server.uri()
    ])
    expect(result.code === 0 || result.code === 1).toBe(true)
    expect(result.stdout).toContain("wrote 65536/65536 bytes at offset 3145728")
    expect(result.stdout).toContain("Pattern verification failed")
    expectBytes(await contents(3 * MiB, 64 * KiB), filled(64 * KiB, 0x11), "qemu-io pattern at 3 MiB")
  })

  it("the server still answers after the other connections", async () => {
    const result = JSON.parse(await run("qemu-img", ["info", "--output=json", server.uri()])) as {
      readonly "virtual-size": number
    }
    expect(result["virtual-size"]).toBe(SIZE)
    const out = await run("qemu-io", ["-f", "raw", "-c", "read -P 0x5a 1M 64k", server.uri()])
    expect(out).not.toContain("Pattern verification failed")
    expect(out).toContain("read 65536/65536 bytes at offset 1048576")
    // cow keeps every write in its overlay: nothing reached the store below.
    if (stacked) expect(store.pages.size).toBe(0)
  })
})
