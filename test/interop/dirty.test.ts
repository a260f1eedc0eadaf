/**
 * The `dirty` filter with real clients: nbdinfo and qemu-img read `qemu:dirty-bitmap:NAME`
 * contexts, and an incremental backup with libnbd's Python binding copies only the
 * dirty extents. The server runs in process (`TestServer` over `Driver.stack`-ed memory),
 * since the filter is driven by its control API, which a CLI process does not expose.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Dirty from "../../src/filters/Dirty.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as TestServer from "../support/TestServer.ts"
import { available, run, SYSTEM_PYTHON } from "../support/Tools.ts"

const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 32 * MiB
const GRANULARITY = 64 * KiB

interface Started {
  readonly server: TestServer.TestServer
  readonly store: MemoryDriver.SparseMemory
  readonly control: Dirty.DirtyControl
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/** A memory export of SIZE bytes under the dirty filter, served on 127.0.0.1. */
const start = async (): Promise<Started> => {
  const scope = Effect.runSync(Scope.make())
  cleanups.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))
  const { control, filter } = Dirty.make({ granularity: GRANULARITY })
  const store = new MemoryDriver.SparseMemory(SIZE)
  const driver = await Effect.runPromise(Scope.extend(filter(MemoryDriver.fromStore(store)), scope))
  const server = await TestServer.start({ drivers: [{ driver }] })
  cleanups.push(() => server.stop())
  return { server, store, control }
}

/** Deterministic scattered writes: `count` of 1 byte to 100 KiB at offsets spread over the export. */
const scattered = (count: number, seed: number) =>
  Array.from({ length: count }, (_, i) => {
    const x = (i * 2654435761 + seed * 40503) >>> 0
    const length = 1 + (x % (100 * KiB))
    const offset = (x * 7919) % (SIZE - length)
    return { offset, length }
  })

/** The dirty runs a set of writes leaves, rounded to the granularity, over the whole export. */
const expectedRuns = (writes: ReadonlyArray<{ offset: number; length: number }>) => {
  const dirty = new Array<boolean>(SIZE / GRANULARITY).fill(false)
  for (const { length, offset } of writes) {
    for (let b = Math.floor(offset / GRANULARITY); b * GRANULARITY < offset + length; b++) dirty[b] = true
  }
  const runs: Array<{ offset: number; length: number; dirty: boolean }> = []
  dirty.forEach((d, b) => {
    const last = runs[runs.length - 1]
    if (last !== undefined && last.dirty === d) last.length += GRANULARITY
    else runs.push({ offset: b * GRANULARITY, length: GRANULARITY, dirty: d })
  })
  return runs
}

/** Merges consecutive entries of the same state. */
const merged = (entries: ReadonlyArray<{ offset: number; length: number; dirty: boolean }>) =>
  entries.reduce<Array<{ offset: number; length: number; dirty: boolean }>>((out, e) => {
    const last = out[out.length - 1]
    if (last !== undefined && last.dirty === e.dirty && last.offset + last.length === e.offset) last.length += e.length
    else out.push({ ...e })
    return out
  }, [])

const writeAll = async (server: TestServer.TestServer, writes: ReadonlyArray<{ offset: number; length: number }>) => {
  for (const [i, { length, offset }] of writes.entries()) await server.write(offset, pattern(length, i + 1))
}

/**
 * Full and incremental backup with libnbd: `full URI FILE` copies the whole export;
 * `incremental URI FILE BITMAP...` copies onto FILE only the extents that any of the
 * named bitmaps reports dirty (flags bit 0), and prints the bytes copied as JSON.
 */
const BACKUP = `
import json, sys
import nbd

mode, uri, path = sys.argv[1], sys.argv[2], sys.argv[3]
bitmaps = ["qemu:dirty-bitmap:" + name for name in sys.argv[4:]]
h = nbd.NBD()
for name in bitmaps:
    h.add_meta_context(name)
h.connect_uri(uri)
size = h.get_size()
CHUNK = 4 * 1024 * 1024
copied = 0
with open(path, "r+b" if mode == "incremental" else "wb") as out:
    def copy(offset, length):
        global copied
        done = 0
        while done < length:
            n = min(CHUNK, length - done)
            out.seek(offset + done)
            out.write(h.pread(n, offset + done))
            done += n
        copied += length
    if mode == "full":
        copy(0, size)
    else:
        for name in bitmaps:
            assert h.can_meta_context(name), name
            offset = 0
            while offset < size:
                found = []
                def extents(context, start, entries, err):
                    if context == name:
                        found.extend(entries)
                    return 0
                h.block_status(min(size - offset, 1 << 30), offset, extents)
                at = offset
                for i in range(0, len(found), 2):
                    length = min(found[i], size - at)
                    if found[i + 1] & 1:
                        copy(at, length)
                    at += length
                assert at > offset
                offset = at
h.shutdown()
print(json.dumps({"copied": copied, "size": size}))
`

const haveTools = available(["nbdinfo", "qemu-img", "python3-libnbd"])

describe.skipIf(!haveTools)("dirty filter with real clients", () => {
  it("nbdinfo --map shows exactly the written ranges, rounded to the granularity", async () => {
    const { server } = await start()
    const writes = scattered(25, 1)
    await writeAll(server, writes)
    const map = JSON.parse(await run("nbdinfo", ["--json", "--map=qemu:dirty-bitmap:active", server.uri()])) as Array<
      { offset: number; length: number; type: number; description: string }
    >
    expect(map.every((e) => e.description === (e.type === 1 ? "dirty" : "clean"))).toBe(true)
    const seen = merged(map.map((e) => ({ offset: e.offset, length: e.length, dirty: e.type === 1 })))
    expect(seen).toEqual(expectedRuns(writes))
    expect(seen.some((r) => r.dirty)).toBe(true)
  }, 30_000)

  it("qemu-img map with x-dirty-bitmap agrees (qemu reports dirty areas as data: false)", async () => {
    const { server } = await start()
    const writes = scattered(25, 2)
    await writeAll(server, writes)
    const out = await run("qemu-img", [
      "map",
      "--output=json",
      "--image-opts",
      `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${server.port},` +
      "x-dirty-bitmap=qemu:dirty-bitmap:active"
    ])
    const map = JSON.parse(out) as Array<{ start: number; length: number; data: boolean }>
    const seen = merged(map.map((e) => ({ offset: e.start, length: e.length, dirty: !e.data })))
    expect(seen).toEqual(expectedRuns(writes))
  }, 30_000)

  it("an incremental backup copies only the dirty extents and equals the export byte for byte", async () => {
    const { control, server, store } = await start()
    // Content that predates tracking (written below the filter): the full backup holds it.
    for (let at = 0; at < SIZE; at += MiB) store.write(at, pattern(MiB, at / MiB))
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-dirty-"))
    cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }))
    const backup = path.join(dir, "backup.img")
    const full = JSON.parse(await run(SYSTEM_PYTHON, ["-c", BACKUP, "full", server.uri(), backup]))
    expect(full.copied).toBe(SIZE)

    await writeAll(server, scattered(20, 3)) // changes since the full backup, in "active"
    await Effect.runPromise(control.checkpoint("inc1")) // frozen: they stay in "inc1"
    await writeAll(server, scattered(10, 4)) // later changes: the new "active"
    const before = await server.read(0, SIZE)
    expect(Buffer.compare(fs.readFileSync(backup), before)).not.toBe(0)

    const incremental = JSON.parse(
      await run(SYSTEM_PYTHON, ["-c", BACKUP, "incremental", server.uri(), backup, "inc1", "active"])
    )
    console.log(`incremental backup copied ${incremental.copied} of ${SIZE} bytes`)
    expectBytes(fs.readFileSync(backup), await server.read(0, SIZE), "backup and export")
    const list = await Effect.runPromise(control.list)
    const dirtyBytes = list.reduce((n, b) => n + b.dirtyBytes, 0)
    expect(incremental.copied).toBeLessThanOrEqual(dirtyBytes)
    expect(incremental.copied).toBeGreaterThan(0)
    expect(incremental.copied).toBeLessThan(SIZE / 4)
  }, 30_000)
})
