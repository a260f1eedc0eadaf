import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import { type ExportSpec, parseExportSpec } from "../../src/cli/ExportSpec.ts"
import { formatSize, parseSize } from "../../src/Size.ts"

describe("sizes", () => {
  it("reads plain numbers and binary suffixes", () => {
    expect(parseSize("1048576")).toEqual(Either.right(1048576))
    expect(parseSize("512K")).toEqual(Either.right(512 * 1024))
    expect(parseSize("64M")).toEqual(Either.right(64 * 1024 ** 2))
    expect(parseSize("1g")).toEqual(Either.right(1024 ** 3))
    expect(parseSize("1T")).toEqual(Either.right(1024 ** 4))
    expect(parseSize("2GiB")).toEqual(Either.right(2 * 1024 ** 3))
    expect(parseSize("1.5K")).toEqual(Either.right(1536))
  })

  it("refuses what is not a whole, safe byte count", () => {
    for (const bad of ["", "12Q", "-1", "1.3", "9E", "one", "1 G B"]) expect(Either.isLeft(parseSize(bad))).toBe(true)
  })

  it("formats with the largest exact unit", () => {
    expect(formatSize(1024 ** 3)).toBe("1G")
    expect(formatSize(1536)).toBe("1536")
    expect(formatSize(3 * 1024 ** 4)).toBe("3T")
  })
})

describe("export specifications", () => {
  const spec = (fields: Partial<ExportSpec> & Pick<ExportSpec, "name" | "driver" | "argument">): ExportSpec => ({
    parameters: new Map(),
    filters: [],
    readOnly: false,
    description: undefined,
    ...fields
  })

  it("drivers with options, parameters and filters", () => {
    expect(parseExportSpec("scratch=memory:1T")).toEqual(Either.right(spec({ name: "scratch", driver: "memory", argument: "1T" })))
    expect(parseExportSpec("iso=file:/srv/a,b.iso,read-only")).toEqual(
      Either.left(
        "unknown export option 'b.iso' in 'iso=file:/srv/a,b.iso,read-only' " +
          "(known: read-only, KEY=VALUE (driver parameters), filter=NAME[:KEY=VALUE;...], description=TEXT)"
      )
    )
    expect(parseExportSpec("iso=file:/srv/debian.iso,ro,description=Install, then reboot")).toEqual(
      Either.right(spec({ name: "iso", driver: "file", argument: "/srv/debian.iso", readOnly: true, description: "Install, then reboot" }))
    )
    expect(parseExportSpec("=memory:1G")).toEqual(Either.right(spec({ name: "", driver: "memory", argument: "1G" })))
    expect(parseExportSpec("up=nbd:nbd://127.0.0.1:10810/,connect-timeout=5s,filter=cow,filter=delay:read=1ms;write=2ms")).toEqual(
      Either.right(spec({
        name: "up",
        driver: "nbd",
        argument: "nbd://127.0.0.1:10810/",
        parameters: new Map([["connect-timeout", "5s"]]),
        filters: ["cow", "delay:read=1ms,write=2ms"]
      }))
    )
  })

  it("refuses malformed specifications", () => {
    for (const bad of ["disk", "disk=memory", "disk=memory:1G,fast"]) {
      expect(Either.isLeft(parseExportSpec(bad))).toBe(true)
    }
  })
})
