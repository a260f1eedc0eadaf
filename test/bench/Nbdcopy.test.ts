import { describe, expect, it } from "@effect/vitest"
import { execFileSync, spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { childrenCpuSeconds, createRandomFile, timedNbdcopy, warmFile } from "../../bench/nbdcopy.ts"

const MiB = 2 ** 20
/** Debian's interpreter, for `os.posix_fadvise` (Node.js has no fadvise). */
const PYTHON = "/usr/bin/python3"

/** Bytes of `file` in the page cache, by util-linux's fincore. */
const cachedBytes = (file: string): number =>
  Number(execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", file], { encoding: "utf8" }).trim())

/** Drops `file`'s pages from the page cache (clean pages: the file was synced first). */
const evict = (file: string): void => {
  execFileSync("sync", [file])
  execFileSync(PYTHON, [
    "-c",
    "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)",
    file
  ])
}

describe("bench nbdcopy source file", () => {
  it.skipIf(!existsSync(PYTHON))("is read into the page cache before a copy from it", async () => {
    // On disk, not tmpfs: tmpfs pages cannot be dropped from the cache.
    const dir = mkdtempSync(path.join(process.cwd(), ".nbdcopy-test-"))
    const file = path.join(dir, "random.bin")
    try {
      await createRandomFile(file, 32 * MiB)
      evict(file)
      expect(cachedBytes(file)).toBeLessThan(8 * MiB)
      await warmFile(file)
      // All of it, but for a page or two the kernel may reclaim at any moment (once seen: 4 KiB short).
      expect(cachedBytes(file)).toBeGreaterThanOrEqual(31 * MiB)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe("nbdcopy's processor time", () => {
  it("is read from the second line of the shell's times", () => {
    expect(childrenCpuSeconds("0m0.004000s 0m0.001000s\n0m0.671000s 0m1.580000s\n")).toBeCloseTo(2.251, 6)
    expect(childrenCpuSeconds("0m0.000s 0m0.000s\n1m2.500s 0m0.250s")).toBeCloseTo(62.75, 6)
    expect(childrenCpuSeconds("")).toBeUndefined()
    expect(childrenCpuSeconds("0m0.671000s 0m0.580000s")).toBeUndefined()
    expect(childrenCpuSeconds("nbdcopy: error\nsomething else")).toBeUndefined()
  })

  it("is measured around a real copy, and a failed copy keeps its exit status", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "nbdcopy-cpu-"))
    const file = path.join(dir, "random.bin")
    try {
      await createRandomFile(file, 128 * MiB)
      const [shell, args] = timedNbdcopy([file, "null:"])
      const seconds = childrenCpuSeconds(execFileSync(shell, args, { encoding: "utf8" }))
      expect(seconds).toBeGreaterThan(0)
      expect(seconds).toBeLessThan(60)
      const [failing, failingArgs] = timedNbdcopy(["--no-such-option"])
      const failed = spawnSync(failing, failingArgs, { encoding: "utf8" })
      expect(failed.status).toBe(1)
      expect(failed.stdout).toBe("") // no times after a failure
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
