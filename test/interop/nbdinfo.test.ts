/**
 * Interop with libnbd's nbdinfo: handshake, export flags, LIST and block status, on the
 * plain memory export and under `cow` and `cache` (see TestServer.stackModes).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { AllocationState } from "../../src/protocol/Constants.ts"
import * as TestServer from "../support/TestServer.ts"
import { available, run } from "../support/Tools.ts"

const MiB = 1024 * 1024
const SIZE = 256 * MiB

interface InfoExport {
  readonly "export-name": string
  readonly description?: string
  readonly contexts?: ReadonlyArray<string>
  readonly is_read_only: boolean
  readonly can_flush: boolean
  readonly can_fua: boolean
  readonly can_trim: boolean
  readonly can_zero: boolean
  readonly can_multi_conn: boolean
  readonly "export-size": number
}

interface Info {
  readonly protocol: string
  readonly structured: boolean
  readonly exports: ReadonlyArray<InfoExport>
}

interface MapEntry {
  readonly offset: number
  readonly length: number
  readonly type: number
  readonly description: string
}

const info = async (args: ReadonlyArray<string>): Promise<Info> =>
  JSON.parse(await run("nbdinfo", ["--json", ...args])) as Info

const onlyExport = (result: Info): InfoExport => {
  expect(result.exports).toHaveLength(1)
  return result.exports[0]!
}

/** Merges adjacent entries of the same type, checking they tile the range without gaps. */
const coalesce = (entries: ReadonlyArray<MapEntry>): Array<{ offset: number; length: number; type: number }> => {
  const out: Array<{ offset: number; length: number; type: number }> = []
  let expected = 0
  for (const entry of entries) {
    expect(entry.offset).toBe(expected)
    expect(entry.length).toBeGreaterThan(0)
    expected = entry.offset + entry.length
    const last = out[out.length - 1]
    if (last !== undefined && last.type === entry.type) last.length += entry.length
    else out.push({ offset: entry.offset, length: entry.length, type: entry.type })
  }
  return out
}

const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO

const haveTools = available(["nbdinfo"])

for (const mode of TestServer.stackModes) describe.skipIf(!haveTools)(`nbdinfo (${mode.name})`, () => {
  const stacked = TestServer.isStacked(mode)
  let server: TestServer.TestServer
  let readOnlyServer: TestServer.TestServer

  beforeAll(async () => {
    server = await TestServer.start({ size: SIZE, stack: mode.stack })
    readOnlyServer = await TestServer.start({ size: 16 * MiB, readOnly: true, stack: mode.stack })
  })

  afterAll(async () => {
    await server?.stop()
    await readOnlyServer?.stop()
  })

  it("nbdinfo --json shows the size, flags and base:allocation", async () => {
    const result = await info([server.uri()])
    expect(result.protocol).toBe("newstyle-fixed")
    expect(result.structured).toBe(true)
    const e = onlyExport(result)
    expect(e["export-size"]).toBe(SIZE)
    expect(e.is_read_only).toBe(false)
    expect(e.can_flush).toBe(true)
    expect(e.can_fua).toBe(true)
    expect(e.can_trim).toBe(true)
    expect(e.can_zero).toBe(true)
    expect(e.can_multi_conn).toBe(true)
    expect(e.contexts).toContain("base:allocation")
  })

  it("nbdinfo --list --json lists the export with its description", async () => {
    const result = await info(["--list", server.uri()])
    const e = onlyExport(result)
    expect(e["export-name"]).toBe("")
    expect(e.description).toBe("test export")
    expect(e["export-size"]).toBe(SIZE)
  })

  it("a read-only export is reported read-only", async () => {
    const e = onlyExport(await info([readOnlyServer.uri()]))
    expect(e.is_read_only).toBe(true)
    expect(e["export-size"]).toBe(16 * MiB)
  })

  it("nbdinfo --map --json shows written data exactly where it is", async () => {
    const store = server.store
    if (store === undefined) throw new Error("expected a memory store")
    const data = new Uint8Array(MiB).map((_, i) => (i % 255) + 1)
    let expected = [
      { offset: 0, length: 4 * MiB, type: HOLE_ZERO },
      { offset: 4 * MiB, length: MiB, type: 0 },
      { offset: 5 * MiB, length: SIZE - 5 * MiB, type: HOLE_ZERO }
    ]
    if (!stacked) store.write(4 * MiB, data)
    else {
      // A client's write lands in cow's overlay; data put straight into the store below
      // (which nothing has read, so the cache holds none of it) shows through both filters.
      await server.write(4 * MiB, data)
      store.write(8 * MiB, data)
      expect(store.read(4 * MiB, MiB).every((b) => b === 0), "the client's write reached the store below cow").toBe(true)
      expected = [
        ...expected.slice(0, 2),
        { offset: 5 * MiB, length: 3 * MiB, type: HOLE_ZERO },
        { offset: 8 * MiB, length: MiB, type: 0 },
        { offset: 9 * MiB, length: SIZE - 9 * MiB, type: HOLE_ZERO }
      ]
    }
    const entries = JSON.parse(await run("nbdinfo", ["--map", "--json", server.uri()])) as Array<MapEntry>
    for (const entry of entries) {
      expect(entry.description).toBe(entry.type === 0 ? "data" : "hole,zero")
    }
    expect(coalesce(entries)).toEqual(expected)
  })

  it("the server still answers after the other connections", async () => {
    const e = onlyExport(await info([server.uri()]))
    expect(e["export-size"]).toBe(SIZE)
    const ro = onlyExport(await info([readOnlyServer.uri()]))
    expect(ro["export-size"]).toBe(16 * MiB)
  })
})
