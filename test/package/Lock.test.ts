/**
 * package-lock.json installs with `npm ci` on every platform, not only on the machine that
 * wrote it: it records the platform binaries that esbuild, rollup, koffi and the others list
 * as optional dependencies (a lock rewritten from a node_modules holding only this machine's
 * binaries loses the others, and `npm ci` elsewhere then refuses it).
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { ROOT } from "../support/Cli.ts"
import { exec } from "./Project.ts"

interface Locked {
  readonly version?: string
  readonly optionalDependencies?: Record<string, string>
}

const lock: { readonly packages: Record<string, Locked> } = JSON.parse(
  fs.readFileSync(path.join(ROOT, "package-lock.json"), "utf8")
)

/** Where npm would find `name` from the package at `location`: its own node_modules, then its parents'. */
const resolve = (location: string, name: string): string | undefined => {
  for (let at = location;; at = at.slice(0, Math.max(0, at.lastIndexOf("/node_modules/")))) {
    const candidate = `${at === "" ? "" : `${at}/`}node_modules/${name}`
    if (candidate in lock.packages) return candidate
    if (at === "") return undefined
  }
}

describe("package-lock.json", () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-lock-"))
  afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }))

  it("records every optional dependency of every locked package", () => {
    const missing = Object.entries(lock.packages).flatMap(([location, entry]) =>
      Object.keys(entry.optionalDependencies ?? {}).filter((name) => resolve(location, name) === undefined)
        .map((name) => `${location} -> ${name}`)
    )
    expect(missing).toEqual([])
    expect(Object.keys(lock.packages)).toContain("node_modules/@rollup/rollup-darwin-arm64")
  })

  for (const [platform, cpu, binary] of [
    ["darwin", "arm64", "@esbuild/darwin-arm64"],
    ["win32", "x64", "@rollup/rollup-win32-x64-msvc"],
    ["linux", "arm64", "@koromix/koffi-linux-arm64"]
  ] as const) {
    it(`passes npm ci (dry run) for ${platform}-${cpu}`, async () => {
      const dir = fs.mkdtempSync(path.join(scratch, `${platform}-`))
      for (const file of ["package.json", "package-lock.json"]) fs.copyFileSync(path.join(ROOT, file), path.join(dir, file))
      const args = ["ci", "--dry-run", "--offline", "--ignore-scripts", `--os=${platform}`, `--cpu=${cpu}`, "--no-audit"]
      const result = await exec("npm", args, dir, 120_000)
      expect(result.code, result.stderr).toBe(0)
      expect(result.stdout).toContain(`add ${binary} `)
    }, 120_000)
  }
})
