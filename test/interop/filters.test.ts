/**
 * End-to-end tests of the filters and drivers through the `effect-nbd` command line: the
 * real CLI runs as child processes (`--filter NAME:K=V,...` after a driver subcommand,
 * and `filter=NAME:K=V;...` items of `serve` export specs) and real NBD clients (libnbd's
 * Python binding, nbdinfo, nbdcopy) talk to it; images are partitioned by util-linux's sfdisk.
 *
 * Starting the CLI costs a few seconds of CPU (loading Effect and compiling with tsx), so
 * every server this file needs is started once, two at a time, before the first test;
 * the per-export filter case and the smoke tests of the other filters and drivers share
 * one `serve` process with an export each (the `serve` spec is the CLI's other way to
 * stack filters: `filter=NAME:K=V;K=V`).
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { expectBytes, sha256 } from "../support/Bytes.ts"
import { type Cli, killAll, type Served, startCli } from "../support/Cli.ts"
import { makePartitionedImage, type Partition } from "../support/Images.ts"
import { available, run, SYSTEM_PYTHON } from "../support/Tools.ts"

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/** Helpers every Python snippet starts with; the snippet's arguments are `args` (JSON). */
const PRELUDE = `
import errno, hashlib, json, os, sys, threading, time
import nbd

args = json.loads(sys.argv[1])

def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h

def attempt(f):
    """Runs f(); {"ok": True} or {"ok": False, "errno": "EIO"} (nbd.Error's errno by name)."""
    try:
        f()
        return {"ok": True}
    except nbd.Error as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errnum, str(e.errnum)), "string": e.string}

def timed_reads(uri, n, length=4096, offset=0):
    """Milliseconds taken by each of n reads of one connection."""
    h = connect(uri)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        h.pread(length, offset)
        out.append((time.perf_counter() - t) * 1000)
    h.shutdown()
    return out

def file_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)

def emit(value):
    print(json.dumps(value))
`

/** Runs a Python snippet with libnbd and returns the JSON it printed last. */
const python = async <A>(script: string, args: Record<string, unknown> = {}): Promise<A> => {
  const out = (await run(SYSTEM_PYTHON, ["-c", PRELUDE + script, JSON.stringify(args)])).trim().split("\n")
  return JSON.parse(out[out.length - 1]!) as A
}

interface Attempt {
  readonly ok: boolean
  readonly errno?: string
  readonly string?: string
}

interface InfoExport {
  readonly "export-name": string
  readonly "export-size": number
  readonly is_read_only: boolean
  readonly can_flush: boolean
  readonly can_fua: boolean
  readonly block_size_minimum?: number
  readonly block_size_preferred?: number
  readonly block_size_maximum?: number
}

const nbdinfo = async (uri: string): Promise<InfoExport> => {
  const info = JSON.parse(await run("nbdinfo", ["--json", uri])) as { readonly exports: ReadonlyArray<InfoExport> }
  expect(info.exports).toHaveLength(1)
  return info.exports[0]!
}

/** One extent of `nbdinfo --map` (base:allocation): type 0 data, 3 hole+zero, 2 zero. */
interface Extent {
  readonly offset: number
  readonly length: number
  readonly type: number
}

/** `nbdinfo --map --json`, adjacent extents of one type merged, checked to tile the export. */
const nbdMap = async (uri: string): Promise<Array<Extent>> => {
  const raw = JSON.parse(await run("nbdinfo", ["--map", "--json", uri])) as ReadonlyArray<Extent>
  const out: Array<{ offset: number; length: number; type: number }> = []
  let next = 0
  for (const { length, offset, type } of raw) {
    expect(offset, "nbdinfo --map extents tile the export").toBe(next)
    next = offset + length
    const last = out[out.length - 1]
    if (last !== undefined && last.type === type) last.length += length
    else out.push({ offset, length, type })
  }
  return out
}

const DATA = 0
const HOLE_ZERO = 3

/** Copies a whole export into a local file with nbdcopy and returns its bytes. */
const copyOut = async (uri: string, file: string): Promise<Buffer> => {
  fs.rmSync(file, { force: true })
  await run("nbdcopy", [uri, file])
  return fs.readFileSync(file)
}

const readFileRange = (file: string, offset: number, length: number): Buffer => {
  const fd = fs.openSync(file, "r")
  try {
    const buffer = Buffer.alloc(length)
    expect(fs.readSync(fd, buffer, 0, length, offset)).toBe(length)
    return buffer
  } finally {
    fs.closeSync(fd)
  }
}

const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

/** The lines of a `log` filter file as key=value maps (values in these tests are all bare tokens). */
const logLines = (file: string): Array<Map<string, string>> =>
  (fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").filter((line) => line !== "") : []).map((line) =>
    new Map(line.split(" ").map((pair) => [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)]))
  )

/** The request lines of a log, once its connection has closed. */
const requestsLogged = async (file: string): Promise<Array<Map<string, string>>> => {
  await waitFor(`the close line in ${file}`, () => logLines(file).some((l) => l.get("event") === "close"))
  return logLines(file).filter((l) => l.get("event") === "request")
}

const waitFor = async (what: string, condition: () => boolean, millis = 10_000): Promise<void> => {
  const started = Date.now()
  while (!condition()) {
    if (Date.now() - started > millis) throw new Error(`timed out after ${millis} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

// ---------------------------------------------------------------------------------------
// Servers: all started before the first test, two at a time
// ---------------------------------------------------------------------------------------

interface Started {
  readonly cli: Cli
  readonly served: ReadonlyArray<Served>
}

/** Runs at most `n` tasks at once. */
const limiter = (n: number) => {
  let running = 0
  const waiting: Array<() => void> = []
  return async <A>(task: () => Promise<A>): Promise<A> => {
    while (running >= n) await new Promise<void>((resolve) => waiting.push(resolve))
    running++
    try {
      return await task()
    } finally {
      running--
      waiting.shift()?.()
    }
  }
}

/** The URI of export `name` among the lines a `serve` printed. */
const uriOf = (started: Started, name = ""): string => {
  const found = started.served.find((s) => new URL(s.uri).pathname === `/${name}`)
  if (found === undefined) throw new Error(`no export '${name}' in ${started.served.map((s) => s.uri).join(", ")}`)
  return found.uri
}

const TOOLS = ["nbdinfo", "nbdcopy", "python3-libnbd", "sfdisk"]

afterAll(killAll)

describe.skipIf(!available(TOOLS))("effect-nbd filters and drivers with real clients", () => {
  let dir: string
  const file = (name: string) => path.join(dir, name)
  const servers = new Map<string, Promise<Started>>()
  const server = (key: string): Promise<Started> => {
    const found = servers.get(key)
    if (found === undefined) throw new Error(`no server '${key}'`)
    return found
  }

  // cow: a sparse 16M base image with random data in [0, 1M) and [8M, 9M)
  const COW_SIZE = 16 * MiB
  let cowBaseHash: string
  // offset: a 32M file of random bytes
  const OFFSET_FILE_SIZE = 32 * MiB
  let offsetContent: Buffer
  // partition: MBR and GPT images with two partitions each
  let mbrPartitions: Array<Partition>
  let gptPartitions: Array<Partition>

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-filters-"))
    const cowBase = file("base.img")
    fs.writeFileSync(cowBase, "")
    fs.truncateSync(cowBase, COW_SIZE)
    const fd = fs.openSync(cowBase, "r+")
    fs.writeSync(fd, randomBytes(MiB), 0, MiB, 0)
    fs.writeSync(fd, randomBytes(MiB), 0, MiB, 8 * MiB)
    fs.closeSync(fd)
    cowBaseHash = sha256(fs.readFileSync(cowBase))

    offsetContent = randomBytes(OFFSET_FILE_SIZE)
    fs.writeFileSync(file("offset.img"), offsetContent)

    const parts = [{ start: 2048, size: 4096 }, { start: 8192, size: 12288 }]
    mbrPartitions = makePartitionedImage(file("mbr.img"), "dos", 16 * MiB, parts)
    gptPartitions = makePartitionedImage(file("gpt.img"), "gpt", 16 * MiB, [...parts, { start: 24576, size: 2048 }])

    fs.writeFileSync(file("cached.img"), "")
    fs.truncateSync(file("cached.img"), 16 * MiB)

    // Two at a time (the machine has two cores): each start is mostly CPU.
    const slot = limiter(2)
    const start = (key: string, args: ReadonlyArray<string>, count = 1) => {
      const started = slot(() => startCli([...args, "--port", "0"], count))
      started.catch(() => undefined) // reported by the tests that use it
      servers.set(key, started)
    }
    // The upstream of the proxy goes first: the proxy's start waits for it.
    start("upstream", ["memory", "64M"])
    start("delay", ["memory", "64M", "--filter", "delay:read=100ms"])
    const proxy = server("upstream").then((upstream) =>
      slot(() => startCli(["nbd", upstream.served[0]!.uri, "--port", "0"]))
    )
    proxy.catch(() => undefined)
    servers.set("proxy", proxy)
    start("cow", ["file", cowBase, "--filter", "cow"])
    start("offset", ["file", file("offset.img"), "--filter", "offset:offset=1M,range=16M"])
    start("partition", ["serve", `mbr=file:${file("mbr.img")}`, `gpt=file:${file("gpt.img")}`, "--filter", "partition:partition=2"], 2)
    start("error-write", ["memory", "16M", "--filter", "error:error=EIO,rate=1,ops=write"])
    start("seeded-1", ["memory", "16M", "--filter", "error:error=EIO,rate=0.5,seed=1,ops=read"])
    start("seeded-2", ["memory", "16M", "--filter", "error:error=EIO,rate=0.5,seed=1,ops=read"])
    // Case 8's command, with an export per filter for the smoke tests and the null and pattern drivers.
    start("serve", [
      "serve",
      "a=memory:16M,filter=delay:read=50ms",
      "b=memory:16M",
      "ro=memory:16M,filter=readonly",
      // The log below blocksize records what blocksize sends to the memory driver.
      `bs=memory:16M,filter=blocksize:minblock=4096,filter=log:file=${file("below-blocksize.log")}`,
      `cached=file:${file("cached.img")},filter=cache:mode=writeback`,
      "rated=memory:16M,filter=rate:rate=1M",
      `retried=memory:16M,filter=retry:retries=3;delay=50ms,filter=error:error=EIO;file=${file("error-switch")}`,
      `logged=memory:16M,filter=log:file=${file("requests.log")}`,
      `counted=memory:16M,filter=stats:file=${file("stats.txt")}`,
      "cowmem=memory:64M,filter=cow",
      "zeroes=null:1G",
      "words=pattern:1M",
      "local=memory:16M,filter=ip:allow=127.0.0.1;::1;deny=all",
      "remote=memory:16M,filter=ip:allow=10.0.0.0/8;deny=all"
    ], 14)
    await Promise.allSettled(servers.values())
  }, 180_000)

  afterAll(async () => {
    await killAll()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  // -------------------------------------------------------------------------------------
  // 1. delay, and the fast path without it
  // -------------------------------------------------------------------------------------

  describe("memory 64M --filter delay:read=100ms", () => {
    it("a 4 KiB read takes at least 100 ms; the same read without the filter takes well under 5 ms", async () => {
      const delayed = await python<Array<number>>(`emit(timed_reads(args["uri"], 3))`, {
        uri: uriOf(await server("delay"))
      })
      // libuv's timers have millisecond granularity: allow 1 ms on each single read.
      for (const ms of delayed) expect(ms).toBeGreaterThanOrEqual(99)
      expect(median(delayed)).toBeGreaterThanOrEqual(100)

      // `effect-nbd memory 64M` (the proxy's upstream, not written to yet): the synchronous fast path.
      const plain = await python<Array<number>>(`emit(timed_reads(args["uri"], 9))`, {
        uri: uriOf(await server("upstream"))
      })
      expect(median(plain.slice(1))).toBeLessThan(5)
    })
  })

  // -------------------------------------------------------------------------------------
  // 2. cow over a file
  // -------------------------------------------------------------------------------------

  describe("file base.img --filter cow", () => {
    it("writes and trims succeed and read back, block status shows them, base.img is never changed", async () => {
      const cow = await server("cow")
      const uri = uriOf(cow)
      const base = fs.readFileSync(file("base.img"))
      const small = randomBytes(100)
      const block = randomBytes(64 * KiB)
      fs.writeFileSync(file("cow-small.bin"), small)
      fs.writeFileSync(file("cow-block.bin"), block)
      const result = await python<Record<string, boolean>>(
        `
h = connect(args["uri"])
small = file_bytes(args["small"], 0, 100)
block = file_bytes(args["block"], 0, 64 * 1024)
base = args["base"]
h.pwrite(small, 4 * 2**20 + 5)           # into a hole of base.img, mid-block
h.pwrite(block, 8 * 2**20 + 32 * 1024)   # over base data, straddling two 64K blocks
h.trim(128 * 1024, 12 * 2**20)
h.flush()
emit({
    "small": bytes(h.pread(100, 4 * 2**20 + 5)) == small,
    "around_small": bytes(h.pread(5, 4 * 2**20)) == bytes(5)
        and bytes(h.pread(1000, 4 * 2**20 + 105)) == bytes(1000),
    "block": bytes(h.pread(64 * 1024, 8 * 2**20 + 32 * 1024)) == block,
    "base_before_block": bytes(h.pread(32 * 1024, 8 * 2**20)) == file_bytes(base, 8 * 2**20, 32 * 1024),
    "base_after_block": bytes(h.pread(32 * 1024, 8 * 2**20 + 96 * 1024)) == file_bytes(base, 8 * 2**20 + 96 * 1024, 32 * 1024),
    "trimmed": bytes(h.pread(128 * 1024, 12 * 2**20)) == bytes(128 * 1024),
})
h.shutdown()
`,
        { uri, small: file("cow-small.bin"), block: file("cow-block.bin"), base: file("base.img") }
      )
      expect(result).toEqual({
        small: true,
        around_small: true,
        block: true,
        base_before_block: true,
        base_after_block: true,
        trimmed: true
      })

      // The whole export: base.img with the writes applied and the trimmed range zeroed.
      const expected = Buffer.from(base)
      small.copy(expected, 4 * MiB + 5)
      block.copy(expected, 8 * MiB + 32 * KiB)
      expected.fill(0, 12 * MiB, 12 * MiB + 128 * KiB)
      expectBytes(await copyOut(uri, file("cow-copy.img")), expected, "export through cow")

      // Written blocks are data, trimmed ones a hole reading as zeroes, base.img's data is
      // data. Its unwritten sparse regions are holes if the file driver reports holes; the
      // file driver has no block status now, so they are reported as data (the
      // cow-over-memory smoke test below checks holes under cow).
      const map = await nbdMap(uri)
      const typeAt = (offset: number) => map.find((e) => e.offset <= offset && offset < e.offset + e.length)?.type
      for (const written of [4 * MiB, 4 * MiB + 5, 4 * MiB + 64 * KiB - 1, 8 * MiB + 32 * KiB, 8 * MiB + 96 * KiB - 1]) {
        expect(typeAt(written), `type at ${written}`).toBe(DATA)
      }
      for (const trimmed of [12 * MiB, 12 * MiB + 128 * KiB - 1]) expect(typeAt(trimmed), `type at ${trimmed}`).toBe(HOLE_ZERO)
      for (const data of [0, MiB - 1, 8 * MiB + MiB - 1]) expect(typeAt(data), `type at ${data}`).toBe(DATA)
      for (const sparse of [2 * MiB, 6 * MiB, 12 * MiB - 1, 12 * MiB + 128 * KiB, 15 * MiB]) {
        expect([DATA, HOLE_ZERO], `type at ${sparse}`).toContain(typeAt(sparse))
      }

      expect(sha256(fs.readFileSync(file("base.img")))).toBe(cowBaseHash)
      // Nothing is written back when the server stops either.
      expect(await cow.cli.stop("SIGTERM")).toMatchObject({ code: 0 })
      expect(sha256(fs.readFileSync(file("base.img")))).toBe(cowBaseHash)
    })
  })

  // -------------------------------------------------------------------------------------
  // 3. offset
  // -------------------------------------------------------------------------------------

  describe("file --filter offset:offset=1M,range=16M", () => {
    it("serves 16M equal to bytes [1M, 17M) of the file, and writes land shifted by 1M", async () => {
      const uri = uriOf(await server("offset"))
      const info = await nbdinfo(uri)
      expect(info["export-size"]).toBe(16 * MiB)
      expectBytes(await copyOut(uri, file("offset-copy.img")), offsetContent.subarray(MiB, 17 * MiB), "window")

      const head = randomBytes(4 * KiB)
      const tail = randomBytes(4 * KiB)
      await python(
        `
h = connect(args["uri"])
h.pwrite(bytes.fromhex(args["head"]), 0)
h.pwrite(bytes.fromhex(args["tail"]), 16 * 2**20 - 4096)
h.flush()
h.shutdown()
emit(True)
`,
        { uri, head: head.toString("hex"), tail: tail.toString("hex") }
      )
      const img = file("offset.img")
      expectBytes(readFileRange(img, MiB, 4 * KiB), head, "file at 1M")
      expectBytes(readFileRange(img, 17 * MiB - 4 * KiB, 4 * KiB), tail, "file at 17M - 4K")
      // Just outside the window: untouched.
      expectBytes(readFileRange(img, MiB - 4 * KiB, 4 * KiB), offsetContent.subarray(MiB - 4 * KiB, MiB), "file before 1M")
      expectBytes(readFileRange(img, 17 * MiB, 4 * KiB), offsetContent.subarray(17 * MiB, 17 * MiB + 4 * KiB), "file at 17M")
      expect(fs.statSync(img).size).toBe(OFFSET_FILE_SIZE)
    })
  })

  // -------------------------------------------------------------------------------------
  // 4. partition
  // -------------------------------------------------------------------------------------

  describe("serve mbr=file:... gpt=file:... --filter partition:partition=2 (images made by sfdisk)", () => {
    for (const label of ["mbr", "gpt"] as const) {
      it(`${label}: the export is partition 2: its size and its bytes`, async () => {
        const partition = (label === "mbr" ? mbrPartitions : gptPartitions)[1]!
        const other = (label === "mbr" ? mbrPartitions : gptPartitions)[0]!
        expect(partition.content.equals(other.content.subarray(0, partition.length))).toBe(false)
        const uri = uriOf(await server("partition"), label)
        expect((await nbdinfo(uri))["export-size"]).toBe(partition.length)
        expectBytes(await copyOut(uri, file(`${label}-p2.img`)), partition.content, `partition 2 of the ${label} image`)

        // And what libnbd reads at both ends of the export.
        const ends = await python<Record<string, string>>(
          `
h = connect(args["uri"])
emit({"first": bytes(h.pread(4096, 0)).hex(), "last": bytes(h.pread(4096, args["size"] - 4096)).hex()})
h.shutdown()
`,
          { uri, size: partition.length }
        )
        expect(ends.first).toBe(partition.content.subarray(0, 4096).toString("hex"))
        expect(ends.last).toBe(partition.content.subarray(partition.length - 4096).toString("hex"))
      })
    }

    it("mbr: a write at offset 0 of the export lands at the start of partition 2 in the image", async () => {
      const partition = mbrPartitions[1]!
      const data = randomBytes(4096)
      await python(`
h = connect(args["uri"])
h.pwrite(bytes.fromhex(args["data"]), 0)
h.flush()
h.shutdown()
emit(True)
`, { uri: uriOf(await server("partition"), "mbr"), data: data.toString("hex") })
      expectBytes(readFileRange(file("mbr.img"), partition.offset, 4096), data, "start of partition 2")
      // The end of partition 1 is untouched.
      const first = mbrPartitions[0]!
      expectBytes(
        readFileRange(file("mbr.img"), first.offset + first.length - 4096, 4096),
        first.content.subarray(first.length - 4096),
        "end of partition 1"
      )
    })
  })

  // -------------------------------------------------------------------------------------
  // 5. error
  // -------------------------------------------------------------------------------------

  describe("memory --filter error", () => {
    it("error:error=EIO,rate=1,ops=write: every write fails with EIO, reads, zeroing and flush work", async () => {
      const result = await python<{
        writes: Array<Attempt>
        read_zero: boolean
        zero: Attempt
        flush: Attempt
      }>(`
h = connect(args["uri"])
writes = [attempt(lambda o=o, n=n: h.pwrite(b"w" * n, o)) for (o, n) in [(0, 512), (4096, 4096), (1, 1), (2**20, 65536), (16 * 2**20 - 512, 512)]]
emit({
    "writes": writes,
    "read_zero": bytes(h.pread(65536, 0)) == bytes(65536) and bytes(h.pread(65536, 2**20)) == bytes(65536),
    "zero": attempt(lambda: h.zero(4096, 0)),
    "flush": attempt(lambda: h.flush()),
})
h.shutdown()
`, { uri: uriOf(await server("error-write")) })
      expect(result.writes).toHaveLength(5)
      for (const write of result.writes) expect(write).toMatchObject({ ok: false, errno: "EIO" })
      expect(result.read_zero).toBe(true)
      expect(result.zero).toEqual({ ok: true })
      expect(result.flush).toEqual({ ok: true })
    })

    it("error:error=EIO,rate=0.5,seed=1,ops=read: two fresh servers fail the same 40 reads", async () => {
      const READS = `
h = connect(args["uri"])
h.pwrite(b"r" * 512, 0)   # writes are not in ops: never fail, and draw nothing
emit([attempt(lambda i=i: h.pread(512, i * 512)) for i in range(40)])
h.shutdown()
`
      const [first, second] = await Promise.all([
        server("seeded-1").then((s) => python<Array<Attempt>>(READS, { uri: uriOf(s) })),
        server("seeded-2").then((s) => python<Array<Attempt>>(READS, { uri: uriOf(s) }))
      ])
      const pattern = (attempts: ReadonlyArray<Attempt>) => attempts.map((a) => (a.ok ? "." : "x")).join("")
      expect(first).toHaveLength(40)
      expect(pattern(second)).toBe(pattern(first))
      const failures = first.filter((a) => !a.ok)
      expect(failures.length).toBeGreaterThan(0)
      expect(failures.length).toBeLessThan(40)
      for (const failure of [...failures, ...second.filter((a) => !a.ok)]) expect(failure.errno).toBe("EIO")
    })
  })

  // -------------------------------------------------------------------------------------
  // 6. nbd proxy
  // -------------------------------------------------------------------------------------

  describe("nbd nbd://127.0.0.1:PORT/ in front of memory 64M", () => {
    it("data written through the proxy is read directly from the server behind it, and back", async () => {
      const proxy = uriOf(await server("proxy"))
      const upstream = uriOf(await server("upstream"))
      const dataFile = file("proxy-data.bin")
      const data = randomBytes(MiB)
      fs.writeFileSync(dataFile, data)
      const result = await python<Record<string, boolean>>(
        `
data = open(args["data"], "rb").read()
small = b"small write through the proxy"
p = connect(args["proxy"])
u = connect(args["upstream"])
p.pwrite(data, 3 * 2**20)
p.pwrite(small, 40 * 2**20 + 123)
p.flush()
result = {
    "data": bytes(u.pread(len(data), 3 * 2**20)) == data,
    "small": bytes(u.pread(len(small), 40 * 2**20 + 123)) == small,
    "zero_between": bytes(u.pread(2**20, 20 * 2**20)) == bytes(2**20),
}
u.pwrite(b"U" * 4096, 50 * 2**20)
result["upstream_write_seen"] = bytes(p.pread(4096, 50 * 2**20)) == b"U" * 4096
emit(result)
p.shutdown()
u.shutdown()
`,
        { proxy, upstream, data: dataFile }
      )
      expect(result).toEqual({ data: true, small: true, zero_between: true, upstream_write_seen: true })
    })

    it("nbdinfo --map through the proxy matches the upstream's", async () => {
      const proxy = uriOf(await server("proxy"))
      const upstream = uriOf(await server("upstream"))
      const direct = await nbdMap(upstream)
      expect(direct.some((e) => e.type === DATA)).toBe(true)
      expect(direct.some((e) => e.type === HOLE_ZERO)).toBe(true)
      expect(await nbdMap(proxy)).toEqual(direct)
      expect((await nbdinfo(proxy))["export-size"]).toBe(64 * MiB)
    })
  })

  // -------------------------------------------------------------------------------------
  // 8. serve with a per-export filter; 7. the other filters and drivers, an export each
  // -------------------------------------------------------------------------------------

  describe("serve a=memory:16M,filter=delay:read=50ms b=memory:16M, and an export per other filter and driver", () => {
    it("a's reads take at least 50 ms, b's do not", async () => {
      const started = await server("serve")
      const a = await python<Array<number>>(`emit(timed_reads(args["uri"], 3))`, { uri: uriOf(started, "a") })
      for (const ms of a) expect(ms).toBeGreaterThanOrEqual(49) // millisecond timer granularity
      expect(median(a)).toBeGreaterThanOrEqual(50)
      const b = await python<Array<number>>(`emit(timed_reads(args["uri"], 7))`, { uri: uriOf(started, "b") })
      expect(median(b.slice(1))).toBeLessThan(25)
    })

    it("null:1G (the null driver) reads zeroes, discards writes, and nbdinfo --map shows one hole", async () => {
      const uri = uriOf(await server("serve"), "zeroes")
      expect((await nbdinfo(uri))["export-size"]).toBe(GiB)
      expect(await nbdMap(uri)).toEqual([{ offset: 0, length: GiB, type: HOLE_ZERO }])
      const result = await python<Record<string, unknown>>(`
h = connect(args["uri"])
before = bytes(h.pread(2**20, 512 * 2**20)) == bytes(2**20)
write = attempt(lambda: h.pwrite(b"x" * 4096, 0))
emit({"before": before, "write": write, "after": bytes(h.pread(4096, 0)) == bytes(4096),
      "end": bytes(h.pread(4096, 2**30 - 4096)) == bytes(4096)})
h.shutdown()
`, { uri })
      expect(result).toEqual({ before: true, write: { ok: true }, after: true, end: true })
    })

    it("pattern:1M (the pattern driver): each 8-byte word holds its offset, big-endian; any slice reads the same; read-only", async () => {
      const uri = uriOf(await server("serve"), "words")
      const info = await nbdinfo(uri)
      expect(info["export-size"]).toBe(MiB)
      expect(info.is_read_only).toBe(true)

      const bytes = await copyOut(uri, file("pattern.img"))
      expect(bytes.length).toBe(MiB)
      const expected = Buffer.alloc(MiB)
      for (let k = 0; k < MiB / 8; k++) expected.writeBigUInt64BE(BigInt(8 * k), 8 * k)
      expectBytes(bytes, expected, "pattern")
      expect(bytes.subarray(8, 16).toString("hex")).toBe("0000000000000008")

      const result = await python<{ slice: string; write: Attempt }>(`
h = connect(args["uri"])
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)   # let the server refuse the write itself
emit({"slice": bytes(h.pread(20, 8 * 12345 + 3)).hex(), "write": attempt(lambda: h.pwrite(b"x" * 512, 0))})
h.shutdown()
`, { uri })
      expect(result.slice).toBe(expected.subarray(8 * 12345 + 3, 8 * 12345 + 23).toString("hex"))
      expect(result.write).toMatchObject({ ok: false, errno: "EPERM" })
    })

    it("readonly: nbdinfo shows read-only; writes fail with EPERM (from libnbd and from the server); reads work", async () => {
      const uri = uriOf(await server("serve"), "ro")
      expect((await nbdinfo(uri)).is_read_only).toBe(true)
      const result = await python<Record<string, unknown>>(`
h = connect(args["uri"])
client_checked = attempt(lambda: h.pwrite(b"x" * 512, 0))
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)
emit({"client": client_checked, "server": attempt(lambda: h.pwrite(b"x" * 512, 0)),
      "trim": attempt(lambda: h.trim(4096, 0)), "read": bytes(h.pread(4096, 0)) == bytes(4096)})
h.shutdown()
`, { uri })
      expect(result.client).toMatchObject({ ok: false, errno: "EPERM" })
      expect(result.server).toMatchObject({ ok: false, errno: "EPERM" })
      expect(result.trim).toMatchObject({ ok: false })
      expect(result.read).toBe(true)
    })

    it("blocksize:minblock=4096: unaligned writes at odd offsets succeed and read back; below, every request is aligned", async () => {
      const uri = uriOf(await server("serve"), "bs")
      expect((await nbdinfo(uri)).block_size_minimum).toBe(1)
      const data = randomBytes(5000)
      const result = await python<Record<string, boolean>>(`
h = connect(args["uri"])
data = bytes.fromhex(args["data"])
h.pwrite(data, 1)
ones = {4095: b"a", 4096: b"b", 8191: b"c", 12345: b"d"}
for offset, byte in ones.items():
    h.pwrite(byte, offset)
expected = bytearray(16384)
expected[1:5001] = data
for offset, byte in ones.items():
    expected[offset] = byte[0]
emit({
    "data": bytes(h.pread(5000, 1)) == bytes(expected[1:5001]),
    "all": bytes(h.pread(16384, 0)) == bytes(expected),
    "unaligned_read": bytes(h.pread(3, 12344)) == bytes(expected[12344:12347]),
})
h.shutdown()
`, { uri, data: data.toString("hex") })
      expect(result).toEqual({ data: true, all: true, unaligned_read: true })

      const below = await requestsLogged(file("below-blocksize.log"))
      expect(below.length).toBeGreaterThan(0)
      for (const request of below) {
        expect(request.get("result")).toBe("ok")
        expect(Number(request.get("offset")) % 4096, `offset of ${request.get("command")}`).toBe(0)
        expect(Number(request.get("length")) % 4096, `length of ${request.get("command")}`).toBe(0)
      }
      // The unaligned 1-byte writes were read-modify-writes of their 4 KiB blocks.
      const seen = below.map((r) => `${r.get("command")} ${r.get("offset")} ${r.get("length")}`)
      expect(seen).toContain("READ 12288 4096")
      expect(seen).toContain("WRITE 12288 4096")
    })

    it("cache:mode=writeback over a file: the file gets the data at FLUSH (or at once with FUA), not before", async () => {
      const uri = uriOf(await server("serve"), "cached")
      const result = await python<Record<string, boolean>>(`
h = connect(args["uri"])
path = args["file"]
d = os.urandom(65536)
h.pwrite(d, 2**20 + 512)                  # unaligned: the cache reads the blocks around it first
before = file_bytes(path, 2**20 + 512, 65536)
read_back = bytes(h.pread(65536, 2**20 + 512)) == d
h.flush()
after = file_bytes(path, 2**20 + 512, 65536)
f = os.urandom(4096)
h.pwrite(f, 4 * 2**20, nbd.CMD_FLAG_FUA)
emit({
    "not_before_flush": before == bytes(65536),
    "read_back": read_back,
    "after_flush": after == d,
    "fua": file_bytes(path, 4 * 2**20, 4096) == f,
})
h.shutdown()
`, { uri, file: file("cached.img") })
      expect(result).toEqual({ not_before_flush: true, read_back: true, after_flush: true, fua: true })
    })

    it("rate:rate=1M: reading 2 MiB takes at least about 1 s", async () => {
      const uri = uriOf(await server("serve"), "rated")
      const result = await python<{ ms: number; zero: boolean }>(`
h = connect(args["uri"])
t = time.perf_counter()
data = h.pread(2 * 2**20, 0)
ms = (time.perf_counter() - t) * 1000
emit({"ms": ms, "zero": bytes(data) == bytes(2 * 2**20)})
h.shutdown()
`, { uri })
      expect(result.zero).toBe(true)
      // The shared bucket holds at most 1 s of bytes (burst=1s): at least 1 MiB must wait for 1 s.
      expect(result.ms).toBeGreaterThanOrEqual(950)
    })

    it("retry:retries=3;delay=50ms over error:file=PATH: a read that fails while the file exists succeeds once it is gone", async () => {
      const uri = uriOf(await server("serve"), "retried")
      const errorSwitch = file("error-switch")
      fs.writeFileSync(errorSwitch, "")
      const READ = `
h = connect(args["uri"])
if args["remove_after"] is not None:
    threading.Timer(args["remove_after"], os.remove, [args["switch"]]).start()
t = time.perf_counter()
result = attempt(lambda: h.pread(4096, 0))
result["ms"] = (time.perf_counter() - t) * 1000
emit(result)
h.shutdown()
`
      // While the file stays, the retries (after 50, 100 and 200 ms) are used up and EIO reaches the client.
      const failing = await python<Attempt & { ms: number }>(READ, { uri, switch: errorSwitch, remove_after: null })
      expect(failing).toMatchObject({ ok: false, errno: "EIO" })
      expect(failing.ms).toBeGreaterThanOrEqual(340)
      // The file is removed 100 ms into the read: a retry succeeds.
      const recovering = await python<Attempt & { ms: number }>(READ, { uri, switch: errorSwitch, remove_after: 0.1 })
      expect(recovering).toMatchObject({ ok: true })
      expect(recovering.ms).toBeGreaterThanOrEqual(90)
      expect(fs.existsSync(errorSwitch)).toBe(false)
    })

    it("log:file=PATH: one line per request with its command, offset and length", async () => {
      const uri = uriOf(await server("serve"), "logged")
      const logFile = file("requests.log")
      await python(`
h = connect(args["uri"])
h.pwrite(b"L" * 512, 4096)
h.pread(1024, 8192)
h.flush()
h.zero(4096, 65536)
h.shutdown()
emit(True)
`, { uri })
      await waitFor("the close line in the log", () => logLines(logFile).some((l) => l.get("event") === "close"))
      const parsed = logLines(logFile)
      for (const line of parsed) expect(line.get("export")).toBe("logged")
      expect(parsed.map((l) => l.get("event"))).toEqual(["open", "request", "request", "request", "request", "close"])
      expect(parsed.filter((l) => l.get("event") === "request").map((l) => [l.get("command"), l.get("offset"), l.get("length"), l.get("result")]))
        .toEqual([
          ["WRITE", "4096", "512", "ok"],
          ["READ", "8192", "1024", "ok"],
          ["FLUSH", "0", "0", "ok"],
          ["WRITE_ZEROES", "65536", "4096", "ok"]
        ])
      expect(parsed[0]!.get("transport")).toBe("tcp")
      expect(parsed[5]!.get("requests")).toBe("4")
      expect(parsed[5]!.get("errors")).toBe("0")
    })

    it("cow over memory: nbdinfo --map shows the written blocks as data and the rest as holes", async () => {
      const uri = uriOf(await server("serve"), "cowmem")
      expect(await nbdMap(uri)).toEqual([{ offset: 0, length: 64 * MiB, type: HOLE_ZERO }])
      await python(`
h = connect(args["uri"])
h.pwrite(b"c" * 100, 2**20 + 5)
h.pwrite(b"d" * 65536, 10 * 2**20)
h.shutdown()
emit(True)
`, { uri })
      expect(await nbdMap(uri)).toEqual([
        { offset: 0, length: MiB, type: HOLE_ZERO },
        { offset: MiB, length: 64 * KiB, type: DATA },
        { offset: MiB + 64 * KiB, length: 9 * MiB - 64 * KiB, type: HOLE_ZERO },
        { offset: 10 * MiB, length: 64 * KiB, type: DATA },
        { offset: 10 * MiB + 64 * KiB, length: 54 * MiB - 64 * KiB, type: HOLE_ZERO }
      ])
    })

    it("ip: allow=127.0.0.1,::1,deny=all serves this client; allow=10.0.0.0/8,deny=all refuses it", async () => {
      const started = await server("serve")
      const result = await python<{ local: Attempt; remote: Attempt }>(`
def read(uri):
    h = connect(uri)
    h.pread(512, 0)
    h.shutdown()
emit({"local": attempt(lambda: read(args["local"])), "remote": attempt(lambda: read(args["remote"]))})
`, { local: uriOf(started, "local"), remote: uriOf(started, "remote") })
      expect(result.local).toEqual({ ok: true })
      expect(result.remote.ok).toBe(false)
      expect(result.remote.string).toContain("server policy prevents NBD_OPT_GO")
    })

    // Last: it stops the shared server.
    it("stats:file=PATH: after SIGTERM the file holds the counts", async () => {
      const smoke = await server("serve")
      const statsFile = file("stats.txt")
      await python(`
h = connect(args["uri"])
for i in range(3):
    h.pread(4096, i * 4096)
h.pwrite(b"s" * 512, 0)
h.pwrite(b"s" * 512, 512)
h.shutdown()
emit(True)
`, { uri: uriOf(smoke, "counted") })
      expect(fs.existsSync(statsFile)).toBe(false)
      expect(await smoke.cli.stop("SIGTERM")).toMatchObject({ code: 0, signal: null })
      const text = fs.readFileSync(statsFile, "utf8")
      expect(text).toMatch(/^elapsed time: \d+\.\d{3} s$/m)
      expect(text).toMatch(/^read: 3 ops, 12\.0 KiB, /m)
      expect(text).toMatch(/^write: 2 ops, 1\.0 KiB, /m)
      expect(text).not.toMatch(/^errors:/m)
    })
  })
})
