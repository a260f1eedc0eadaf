/**
 * bin/young-generation.cjs: with it, V8's young generation keeps its starting size under a
 * stream of objects that survive a while; a size the user gives node is kept.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as path from "node:path"
import { ROOT } from "../support/Cli.ts"

const MODULE = path.join(ROOT, "bin", "young-generation.cjs")

/** Allocates about 400 MB in objects that each live through a few scavenges; prints the young generation's size in MiB. */
const CHURN = `
const v8 = require("node:v8")
const ring = new Array(50_000)
for (let i = 0; i < 4_000_000; i++) ring[i % ring.length] = { i, data: new Array(8).fill(i) }
const space = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space")
console.log(space.space_size / 2 ** 20)
`

const youngMiB = (nodeArgs: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}): number =>
  Number(execFileSync(process.execPath, [...nodeArgs, "-e", CHURN], { env: { ...process.env, ...env }, encoding: "utf8" }).trim())

describe("bin/young-generation.cjs", () => {
  it("keeps the young generation at its starting size", () => {
    expect(youngMiB([])).toBeGreaterThan(4)
    expect(youngMiB(["--require", MODULE])).toBeLessThanOrEqual(4)
  }, 60_000)

  it("keeps a young generation sized by the user", () => {
    expect(youngMiB(["--require", MODULE], { NODE_OPTIONS: "--max-semi-space-size=8" })).toBeGreaterThan(4)
    expect(youngMiB(["--max-semi-space-size=8", "--require", MODULE])).toBeGreaterThan(4)
  }, 60_000)
})
