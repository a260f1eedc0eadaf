/**
 * The dir driver: one file-driver export per regular file or block device of a
 * directory, named after it, with its size as description.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as DirDriver from "../../src/drivers/Dir.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes } from "../support/Bytes.ts"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-dir-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

fs.writeFileSync(path.join(dir, "b.img"), Buffer.alloc(4096, 2))
fs.writeFileSync(path.join(dir, "a.img"), Buffer.alloc(0))
fs.truncateSync(path.join(dir, "a.img"), 2 * 1024 * 1024)
fs.writeFileSync(path.join(dir, ".hidden"), "x")
fs.mkdirSync(path.join(dir, "subdir"))
fs.symlinkSync(path.join(dir, "missing"), path.join(dir, "dangling"))
fs.symlinkSync(path.join(dir, "b.img"), path.join(dir, "link.img"))

describe("dir driver", () => {
  it.effect("lists regular files by name (links followed), leaving out hidden entries, directories and dangling links", () =>
    Effect.gen(function*() {
      const entries = yield* DirDriver.scan(dir)
      expect(entries.map((e) => e.name)).toEqual(["a.img", "b.img", "link.img"])
    }))

  it.scoped("opens each file as a named export whose description is its size", () =>
    Effect.gen(function*() {
      const exports = yield* DirDriver.make({ dir })
      expect(exports.map((e) => [e.name, Option.getOrUndefined(e.driver.description)])).toEqual([
        ["a.img", "2M"],
        ["b.img", "4K"],
        ["link.img", "4K"]
      ])
      const handle = yield* Testing.open(exports[1]!.driver)
      expectBytes(yield* handle.read(0, 4096), Buffer.alloc(4096, 2))
    }))

  it.scoped("refuses a directory with nothing to serve, and a missing one", () =>
    Effect.gen(function*() {
      const empty = fs.mkdtempSync(path.join(dir, "empty-"))
      const nothing = yield* Effect.flip(DirDriver.make({ dir: empty }))
      expect(nothing.message).toContain("holds no regular file or block device")
      const missing = yield* Effect.flip(DirDriver.make({ dir: path.join(dir, "missing-dir") }))
      expect(missing.message).toContain("missing-dir")
    }))

  it.scoped("leaves out a file it cannot open for writing and serves the others", () =>
    Effect.gen(function*() {
      const some = yield* Effect.acquireRelease(
        Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-dir-locked-"))),
        (made) => Effect.sync(() => fs.rmSync(made, { recursive: true, force: true }))
      )
      const locked = path.join(some, "locked.img")
      fs.writeFileSync(path.join(some, "ok.img"), Buffer.alloc(512))
      fs.writeFileSync(locked, Buffer.alloc(512))
      // immutable (refused even to root) where chattr works, else unreadable and unwritable
      const immutable = spawnSync("chattr", ["+i", locked]).status === 0
      if (immutable) yield* Effect.addFinalizer(() => Effect.sync(() => void spawnSync("chattr", ["-i", locked])))
      else fs.chmodSync(locked, 0o000)
      if (!immutable && process.getuid?.() === 0) return // nothing here refuses root
      const exports = yield* DirDriver.make({ dir: some })
      expect(exports.map((e) => e.name)).toEqual(["ok.img"])
    }))

  it("the plugin builds exports from its parameters and refuses unknown ones", () => {
    expect(DirDriver.plugin.exports!(dir, new Map([["cache", "default"]]))._tag).toBe("Right")
    expect(DirDriver.plugin.exports!(dir, new Map([["bogus", "1"]]))._tag).toBe("Left")
    expect(DirDriver.plugin.exports!("", new Map())._tag).toBe("Left")
  })
})
