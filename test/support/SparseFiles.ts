/**
 * Temporary sparse files for file-driver tests: each in a new directory under a given
 * root, all removed once the test file's tests are done.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll } from "vitest"

/**
 * Call at a test file's top level (or in a `describe`): returns a function making a fresh
 * sparse file of `size` bytes under `root`, in a directory named after `prefix`.
 */
export const sparseFiles = (prefix: string): (root: string, size: number) => string => {
  const dirs: Array<string> = []
  afterAll(() => dirs.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })))
  return (root, size) => {
    const dir = fs.mkdtempSync(path.join(root, prefix))
    dirs.push(dir)
    const file = path.join(dir, "disk.img")
    fs.writeFileSync(file, Buffer.alloc(0))
    fs.truncateSync(file, size)
    return file
  }
}
