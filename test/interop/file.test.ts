/**
 * The `file` and `dir` drivers through the command line with real clients, on the
 * machine's disk and on tmpfs (/dev/shm): sparse images keep their holes through
 * `nbdinfo --map`, `qemu-img map`, `nbdcopy` and `qemu-img convert -n`; libnbd's trim and
 * zero free or keep blocks as asked; acknowledged FUA writes and flushed writes survive
 * `kill -9` of the server; `dir` lists and serves every image of a directory; without
 * the native system calls the driver still serves, with TRIM not offered.
 */
import { execFileSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { killAll, startCli } from "../support/Cli.ts"
import { available, run, SYSTEM_PYTHON } from "../support/Tools.ts"

const MiB = 1024 * 1024
const GiB = 1024 * MiB

const places = [
  { name: "disk", root: os.tmpdir() },
  ...(fs.existsSync("/dev/shm") ? [{ name: "tmpfs", root: "/dev/shm" }] : [])
]

const dirs: Array<string> = []
afterAll(async () => {
  await killAll()
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true })
})

const tempDir = (root: string): string => {
  const dir = fs.mkdtempSync(path.join(root, "effect-nbd-file-interop-"))
  dirs.push(dir)
  return dir
}

/** A sparse file of `size` bytes with random MiB written at the given MiB offsets. */
const sparseImage = (file: string, size: number, dataMiB: ReadonlyArray<number>): Buffer => {
  fs.writeFileSync(file, Buffer.alloc(0))
  fs.truncateSync(file, size)
  const data = randomBytes(MiB)
  const fd = fs.openSync(file, "r+")
  for (const at of dataMiB) fs.writeSync(fd, data, 0, MiB, at * MiB)
  fs.closeSync(fd)
  return data
}

const allocated = (file: string): number => fs.statSync(file).blocks * 512
/** `du -k`: kilobytes the file occupies. */
const du = (file: string): number => Number(execFileSync("du", ["-k", file], { encoding: "utf8" }).split("\t")[0])

/** Runs a libnbd Python snippet with `h` connected to `uri`; prints what it prints. */
const nbdPython = (uri: string, body: string, extra: ReadonlyArray<string> = []): Promise<string> =>
  run(SYSTEM_PYTHON, ["-c", `import nbd, sys, os, json\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n${body}`, uri, ...extra])

interface Extent {
  readonly start: number
  readonly length: number
  readonly data: boolean
}

/** Merges adjacent extents of the same kind. */
const merge = (extents: ReadonlyArray<Extent>): Array<Extent> =>
  extents.reduce<Array<Extent>>((out, e) => {
    const last = out[out.length - 1]
    if (last !== undefined && last.data === e.data && last.start + last.length === e.start) {
      out[out.length - 1] = { ...last, length: last.length + e.length }
    } else out.push(e)
    return out
  }, [])

const dataRuns = (extents: ReadonlyArray<Extent>) =>
  merge(extents.map(({ data, length, start }) => ({ start, length, data }))).filter((e) => e.data)

const tools = ["nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "python3-libnbd"]

/** Each test starts the command line (tsx compiles it) and runs several clients: minutes on a loaded machine. */
const TIMEOUT = 240_000

for (const place of places) {
  describe.skipIf(!available(tools))(`effect-nbd file on ${place.name}`, () => {
    it("a 1 GiB sparse file with three written MiB: map, qemu-img map, nbdcopy and qemu-img convert keep it sparse", async () => {
      const dir = tempDir(place.root)
      const image = path.join(dir, "disk.img")
      sparseImage(image, GiB, [100, 500, 1000])
      const { cli, served } = await startCli(["file", image, "--port", "0"])
      const uri = served[0]!.uri
      const expected = [100, 500, 1000].map((at) => ({ start: at * MiB, length: MiB, data: true }))

      const map = JSON.parse(await run("nbdinfo", ["--map", "--json", uri])) as Array<
        { offset: number; length: number; type: number }
      >
      expect(dataRuns(map.map((e) => ({ start: e.offset, length: e.length, data: (e.type & 1) === 0 })))).toEqual(expected)
      for (const e of map) if ((e.type & 1) === 1) expect(e.type & 2).toBe(2) // holes read as zeroes

      const qemuMap = JSON.parse(await run("qemu-img", ["map", "--output=json", "-f", "raw", uri])) as Array<
        { start: number; length: number; data: boolean }
      >
      expect(dataRuns(qemuMap)).toEqual(expected)

      const copy = path.join(dir, "copy.img")
      await run("nbdcopy", [uri, copy])
      expect(fs.statSync(copy).size).toBe(GiB)
      expect(du(copy)).toBeLessThanOrEqual(3 * 1024 + 64)
      execFileSync("cmp", [image, copy])

      // convert a mostly empty qcow2 into the export after filling it with data
      const qcow2 = path.join(dir, "source.qcow2")
      await run("qemu-img", ["create", "-q", "-f", "qcow2", qcow2, "1G"])
      await run("qemu-io", ["-c", "write -P 0x55 200M 2M", qcow2])
      const random = path.join(dir, "random.img")
      fs.writeFileSync(random, randomBytes(64 * MiB))
      await run("nbdcopy", [random, uri])
      expect(du(image)).toBeGreaterThanOrEqual(64 * 1024)
      await run("qemu-img", ["convert", "-n", "-O", "raw", qcow2, uri])
      expect(du(image)).toBeLessThanOrEqual(2 * 1024 + 64)
      await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", qcow2, uri])
      await cli.stop()
    }, TIMEOUT)

    it("trim frees blocks, zero keeps them with NO_HOLE and frees them without, FAST_ZERO succeeds", async () => {
      const dir = tempDir(place.root)
      const image = path.join(dir, "disk.img")
      fs.writeFileSync(image, randomBytes(32 * MiB))
      const { cli, served } = await startCli(["file", image, "--port", "0"])
      const uri = served[0]!.uri
      const full = allocated(image)
      const flags = JSON.parse(await nbdPython(uri, `print(json.dumps([h.can_trim(), h.can_zero(), h.can_fast_zero()]))`))
      expect(flags).toEqual([true, true, true])

      await nbdPython(uri, `h.trim(8 * 1024 * 1024, 0)`)
      const trimmed = allocated(image)
      expect(trimmed).toBeLessThanOrEqual(full - 8 * MiB)

      await nbdPython(uri, `h.zero(8 * 1024 * 1024, 8 * 1024 * 1024, nbd.CMD_FLAG_NO_HOLE)`)
      expect(allocated(image)).toBe(trimmed)
      await nbdPython(uri, `h.zero(8 * 1024 * 1024, 0, nbd.CMD_FLAG_NO_HOLE)`) // allocates the trimmed range
      expect(allocated(image)).toBeGreaterThanOrEqual(trimmed + 8 * MiB)
      await nbdPython(uri, `h.zero(8 * 1024 * 1024, 16 * 1024 * 1024)`)
      expect(allocated(image)).toBeLessThanOrEqual(full - 8 * MiB)
      await nbdPython(uri, `h.zero(8 * 1024 * 1024, 24 * 1024 * 1024, nbd.CMD_FLAG_FAST_ZERO)`)
      expect(allocated(image)).toBeLessThanOrEqual(full - 16 * MiB)
      const zeroes = fs.readFileSync(image).subarray(0, 32 * MiB)
      expect(zeroes.subarray(0, 8 * MiB).every((b) => b === 0)).toBe(true)
      expect(zeroes.subarray(16 * MiB).every((b) => b === 0)).toBe(true)
      await cli.stop()
    }, TIMEOUT)

    it("acknowledged FUA writes and a flushed write survive kill -9 of the server", async () => {
      const dir = tempDir(place.root)
      const image = path.join(dir, "disk.img")
      sparseImage(image, 64 * MiB, [])
      const { cli, served } = await startCli(["file", image, "--port", "0"])
      // The client writes, and as soon as the server acknowledges, kills it with SIGKILL.
      const printed = await nbdPython(
        served[0]!.uri,
        `
pid = int(sys.argv[2])
blocks = [(i * 1048576 + 4096 * i, os.urandom(65536)) for i in range(16)]
for offset, data in blocks[:8]:
    h.pwrite(data, offset, nbd.CMD_FLAG_FUA)
for offset, data in blocks[8:]:
    h.pwrite(data, offset)
h.flush()
os.kill(pid, 9)
print(json.dumps([[offset, data.hex()] for offset, data in blocks]))
`,
        [String(cli.child.pid)]
      )
      const exited = await cli.exit
      expect(exited.signal).toBe("SIGKILL")
      const written = JSON.parse(printed) as Array<[number, string]>
      const fd = fs.openSync(image, "r")
      for (const [offset, hex] of written) {
        const back = Buffer.alloc(65536)
        fs.readSync(fd, back, 0, back.length, offset)
        expect(back.toString("hex")).toBe(hex)
      }
      fs.closeSync(fd)
    }, TIMEOUT)
  })
}

describe.skipIf(!available(tools))("effect-nbd file without the native system calls", () => {
  it("serves with TRIM not offered, everything reported as data, and says so in the log", async () => {
    const dir = tempDir(os.tmpdir())
    const image = path.join(dir, "disk.img")
    sparseImage(image, 64 * MiB, [10])
    const saved = process.env.EFFECT_NBD_FILE_NATIVE
    process.env.EFFECT_NBD_FILE_NATIVE = "0"
    const started = await startCli(["file", image, "--port", "0"]).finally(() => {
      if (saved === undefined) delete process.env.EFFECT_NBD_FILE_NATIVE
      else process.env.EFFECT_NBD_FILE_NATIVE = saved
    })
    const uri = started.served[0]!.uri
    const flags = JSON.parse(await nbdPython(uri, `print(json.dumps([h.can_trim(), h.can_zero(), h.can_fast_zero()]))`))
    expect(flags).toEqual([false, true, true]) // FAST_ZERO is offered, and refused at once
    const fast = await nbdPython(uri, `
try:
    h.zero(1048576, 0, nbd.CMD_FLAG_FAST_ZERO)
    print("zeroed")
except nbd.Error as e:
    print(e.errno)`)
    expect(fast.trim()).toBe("ENOTSUP")
    const map = JSON.parse(await run("nbdinfo", ["--map", "--json", uri])) as Array<{ length: number; type: number }>
    expect(map).toEqual([expect.objectContaining({ length: 64 * MiB, type: 0 })])
    await nbdPython(uri, `h.zero(1048576, 10 * 1048576)`)
    expect(fs.readFileSync(image).subarray(10 * MiB, 11 * MiB).every((b) => b === 0)).toBe(true)
    expect(started.cli.stderr()).toContain("system calls unavailable")
    await started.cli.stop()
  }, TIMEOUT)
})

describe.skipIf(!available(tools))("effect-nbd dir", () => {
  it("lists every image with its size and serves each by name", async () => {
    const dir = tempDir(os.tmpdir())
    const a = sparseImage(path.join(dir, "alpha.img"), 64 * MiB, [1])
    const b = sparseImage(path.join(dir, "beta.raw"), 16 * MiB, [3])
    fs.writeFileSync(path.join(dir, "gamma.iso"), Buffer.alloc(12345, 7))
    fs.mkdirSync(path.join(dir, "subdir"))
    fs.writeFileSync(path.join(dir, ".hidden"), "x")
    const { cli, served } = await startCli(["dir", dir, "--port", "0"], 3)
    expect(served.map((s) => s.driver)).toEqual(["dir", "dir", "dir"])
    const listing = JSON.parse(await run("nbdinfo", ["--list", "--json", served[0]!.uri])) as {
      exports: Array<{ "export-name": string; description: string; "export-size": number }>
    }
    expect(listing.exports.map((e) => [e["export-name"], e.description, e["export-size"]])).toEqual([
      ["alpha.img", "64M", 64 * MiB],
      ["beta.raw", "16M", 16 * MiB],
      ["gamma.iso", "12345", 12345]
    ])
    const base = served[0]!.uri.replace(/\/[^/]*$/, "/")
    const read = (name: string, offset: number, length: number) =>
      nbdPython(`${base}${name}`, `sys.stdout.write(h.pread(${length}, ${offset}).hex())`)
    expect(await read("alpha.img", MiB, 64)).toBe(a.subarray(0, 64).toString("hex"))
    expect(await read("beta.raw", 3 * MiB, 64)).toBe(b.subarray(0, 64).toString("hex"))
    expect(await read("gamma.iso", 12000, 16)).toBe("07".repeat(16))
    await nbdPython(`${base}beta.raw`, `h.pwrite(b"hello", 0)\nh.flush()`)
    expect(fs.readFileSync(path.join(dir, "beta.raw")).subarray(0, 5).toString()).toBe("hello")
    await cli.stop()
  }, TIMEOUT)

  it("refuses a directory with nothing to serve", async () => {
    const dir = tempDir(os.tmpdir())
    const { runCli } = await import("../support/Cli.ts")
    const result = await runCli(["dir", dir, "--port", "0"])
    expect(result.code).not.toBe(0)
    expect(result.stderr).toContain("holds no regular file or block device")
  }, TIMEOUT)
})
