/**
 * package.json's `exports` map and the public modules agree: every module the index
 * re-exports as a namespace has its subpath (`effect-nbd/NbdServer`, ...), every subpath
 * names a module of src/ with its compiled JavaScript and declarations, the `bin` runs
 * compiled JavaScript, and what src/ imports is what the package depends on.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import ts from "typescript"
import { ROOT } from "../support/Cli.ts"

interface Target {
  readonly types: string
  readonly default: string
}

const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"))
const exportsMap: Record<string, Target | string> = pkg.exports
const index = fs.readFileSync(path.join(ROOT, "src", "index.ts"), "utf8")

/** The packages that the modules of src/ import (types included: declarations import them too). */
const importedPackages = (): Set<string> => {
  const sources = fs.readdirSync(path.join(ROOT, "src"), { recursive: true, encoding: "utf8" })
    .filter((file) => file.endsWith(".ts"))
  const names = sources.flatMap((file) =>
    ts.preProcessFile(fs.readFileSync(path.join(ROOT, "src", file), "utf8"), true, true).importedFiles.map((i) => i.fileName)
  )
  const bare = names.filter((name) => !name.startsWith(".") && !name.startsWith("node:"))
  return new Set(bare.map((name) => /^(@[^/]+\/[^/]+|[^/]+)/.exec(name)![1]!))
}

/** `export * as Name from "./path.ts"` in the index: name and path (without `.ts`). */
const namespaces = [...index.matchAll(/^export \* as (\w+) from "\.\/(.+)\.ts"$/gm)]
  .map((m) => ({ name: m[1]!, module: m[2]! }))

describe("package.json exports", () => {
  it("has a subpath for every namespace the index re-exports, with types first", () => {
    expect(namespaces.length).toBeGreaterThan(20)
    for (const { module, name } of namespaces) {
      const target = exportsMap[`./${name}`]
      expect(target, `no subpath ./${name} for src/${module}.ts`).toEqual({
        types: `./dist/${module}.d.ts`,
        default: `./dist/${module}.js`
      })
      expect(Object.keys(target as Target)[0]).toBe("types")
    }
    expect(exportsMap["."]).toEqual({ types: "./dist/index.d.ts", default: "./dist/index.js" })
  })

  it("maps every subpath to a documented module of src/", () => {
    for (const [subpath, target] of Object.entries(exportsMap)) {
      if (subpath === "./package.json") continue
      const { default: js, types } = target as Target
      const module = /^\.\/dist\/(.+)\.js$/.exec(js)?.[1]
      expect(module, `${subpath}: ${js} is not a module of dist/`).toBeDefined()
      expect(types).toBe(`./dist/${module}.d.ts`)
      const source = path.join(ROOT, "src", `${module}.ts`)
      expect(fs.existsSync(source), `${subpath}: no ${source}`).toBe(true)
      const text = fs.readFileSync(source, "utf8")
      expect(text, `${subpath}: no module doc with @since`).toMatch(/^\/\*\*[\s\S]*?@since[\s\S]*?\*\//)
    }
  })

  it("runs the command from dist/ and ships only what users need", () => {
    const bin = fs.readFileSync(path.join(ROOT, pkg.bin["effect-nbd"]), "utf8")
    expect(bin.startsWith("#!/usr/bin/env node\n")).toBe(true)
    expect(bin).toContain(`require("./thread-pool.cjs")`)
    expect(bin).toContain(`require("./young-generation.cjs")`)
    expect(bin).toContain(`import("../dist/command/main.js")`)
    expect(bin).not.toMatch(/tsx|\.ts"/)
    expect(pkg.files).toEqual(["dist", "bin"])
    expect(pkg.scripts.start).toMatch(/^node bin\/effect-nbd\.cjs /)
    expect(pkg.dependencies.tsx).toBeUndefined()
  })

  it("declares exactly the packages src/ imports, as dependencies or peer dependencies", () => {
    const declared = [...Object.keys(pkg.dependencies), ...Object.keys(pkg.peerDependencies)].sort()
    expect([...importedPackages()].sort()).toEqual(declared)
  })

  it("lists effect and the @effect packages of the API as peers, kept exact for development", () => {
    for (const name of ["effect", "@effect/platform", "@effect/platform-node", "@effect/opentelemetry"]) {
      expect(pkg.peerDependencies[name], name).toMatch(/^\^/)
      expect(pkg.devDependencies[name], name).toMatch(/^\d/)
      expect(pkg.dependencies[name], name).toBeUndefined()
    }
  })
})
