import { describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import * as path from "node:path"
import { createRandomFile, warmFile } from "../../bench/nbdcopy.ts"

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
