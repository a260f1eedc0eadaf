/**
 * The README lists every driver and filter the catalog offers, with every parameter.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as Catalog from "../../src/Catalog.ts"
import { ROOT } from "../support/Cli.ts"

const readme = fs.readFileSync(`${ROOT}/README.md`, "utf8")
/** The README's table row of a driver or filter. */
const row = (name: string) => readme.split("\n").find((line) => line.startsWith(`| \`${name}\` |`))

describe("README", () => {
  for (const plugin of [...Catalog.drivers, ...Catalog.filters]) {
    it(`documents ${plugin.name} and each of its parameters`, () => {
      const line = row(plugin.name)
      expect(line, `no table row for ${plugin.name}`).toBeDefined()
      for (const parameter of plugin.parameters) expect(line).toContain(`\`${parameter.name}=`)
    })
  }
})
