/**
 * Dirty bitmaps across restarts of the `effect-nbd` process: a clean stop (SIGTERM) keeps
 * exactly the marks; `kill -9` after acknowledged writes never yields a bitmap that misses
 * them (it reports everything dirty).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { killAll, startCli } from "../support/Cli.ts"
import { available, run } from "../support/Tools.ts"

const MiB = 1024 * 1024
const SIZE = 16 * MiB

/** Extents of `nbdinfo --map=CONTEXT --json`, as [offset, length, type] with the type's number. */
const map = async (uri: string, context: string) =>
  (JSON.parse(await run("nbdinfo", ["--json", `--map=${context}`, uri])) as Array<{ offset: number; length: number; type: number }>)
    .map((e) => [e.offset, e.length, e.type])

const WRITE = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for offset in map(int, sys.argv[2:]):
    h.pwrite(b"x" * 4096, offset)
h.shutdown()
`

describe.skipIf(!available(["nbdinfo", "python3-libnbd"]))("dirty bitmaps across restarts", () => {
  let dir: string
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-dirty-restart-"))
  })
  afterAll(async () => {
    await killAll()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  /** Starts `memory 16M` with the dirty filter keeping its state in `state`. */
  const start = (state: string) =>
    startCli(["memory", "16M", "--port", "0", "--filter", `dirty:state=${state}`])
  const write = (uri: string, ...offsets: Array<number>) =>
    run("/usr/bin/python3", ["-c", WRITE, uri, ...offsets.map(String)])

  it("a clean stop keeps exactly the marks", async () => {
    const state = path.join(dir, "clean.json")
    const first = await start(state)
    await write(first.served[0]!.uri, 0, 5 * MiB)
    const before = await map(first.served[0]!.uri, "qemu:dirty-bitmap:active")
    expect((await first.cli.stop("SIGTERM")).code).toBe(0)
    const second = await start(state)
    expect(await map(second.served[0]!.uri, "qemu:dirty-bitmap:active")).toEqual(before)
    expect(before).toEqual([[0, 65536, 1], [65536, 5 * MiB - 65536, 0], [5 * MiB, 65536, 1], [5 * MiB + 65536, SIZE - 5 * MiB - 65536, 0]])
    await second.cli.stop("SIGTERM")
  })

  it("kill -9 after acknowledged writes: the bitmap reports every written block dirty (everything, in fact)", async () => {
    const state = path.join(dir, "killed.json")
    const first = await start(state)
    await write(first.served[0]!.uri, 2 * MiB, 9 * MiB)
    first.cli.child.kill("SIGKILL")
    await first.cli.exit
    const second = await start(state)
    const after = await map(second.served[0]!.uri, "qemu:dirty-bitmap:active")
    expect(after).toEqual([[0, SIZE, 1]])
    await second.cli.stop("SIGTERM")
  })
})
