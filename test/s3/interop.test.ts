/**
 * The `s3` driver from the command line against a real single-node Ceph with two
 * gateways, through real clients: nbdcopy in and out and qemu-img convert with
 * checksums, nbdinfo --map showing holes; two servers over one export (the second
 * read-only while the first holds the lease); and the first killed with SIGKILL, after
 * which the second takes the lease over and holds every flushed write, also seen by the
 * same client process reconnecting; s3-bucket serving exports added after it started.
 */
import { spawn } from "node:child_process"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Objects from "../../src/drivers/S3Objects.ts"
import * as S3Store from "../../src/drivers/S3Store.ts"
import { sha256 } from "../support/Bytes.ts"
import { killAll, runStatus, startCli } from "../support/Cli.ts"
import { available, run, SYSTEM_PYTHON } from "../support/Tools.ts"
import * as Ceph from "./Ceph.ts"

const KiB = 1024
const MiB = 1024 * KiB
const OBJECT = 256 * KiB
const BUCKET = "effect-nbd-cli"

const haveTools = available(["nbdcopy", "nbdinfo", "nbdsh", "qemu-img"])
const haveCeph = haveTools && Ceph.available()

let ceph: Ceph.Ceph | undefined
let secondGateway = ""
let dir = ""

beforeAll(async () => {
  if (!haveCeph) return
  ceph = await Ceph.start()
  secondGateway = await ceph.startGateway()
  Object.assign(process.env, ceph.env)
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-s3-"))
}, 120_000)

afterAll(async () => {
  await killAll()
  await ceph?.stop()
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

/** Starts `effect-nbd s3 BUCKET/PREFIX ...` on a free port; returns the process and its URI. */
const serve = async (prefix: string, ...parameters: Array<string>) => {
  const { cli, served } = await startCli(["s3", `${BUCKET}/${prefix}`, ...parameters, "--port", "0"])
  return { cli, uri: served[0]!.uri }
}

interface Info {
  readonly is_read_only: boolean
  readonly exports: ReadonlyArray<{ readonly export_size: number; readonly is_read_only: boolean }>
}
const info = async (uri: string) => (JSON.parse(await run("nbdinfo", ["--json", uri])) as Info).exports[0]!

/** Runs Python in nbdsh against `uri` (Debian's interpreter: the one with libnbd). */
const nbdsh = (uri: string, code: string) =>
  runStatus("nbdsh", ["-u", uri, "-c", code], { timeout: 30_000 }).catch((e) => ({ code: -1, stdout: "", stderr: String(e) }))
process.env.PATH = `/usr/bin:${process.env.PATH ?? ""}`

/** A file of `size` bytes: random data with a hole at `[holeStart, holeEnd)`. */
const imageWithHole = (name: string, size: number, holeStart: number, holeEnd: number): Buffer => {
  const file = path.join(dir, name)
  const data = randomBytes(size)
  data.fill(0, holeStart, holeEnd)
  const fd = fs.openSync(file, "w")
  fs.writeSync(fd, data, 0, holeStart, 0)
  fs.writeSync(fd, data, holeEnd, size - holeEnd, holeEnd)
  fs.closeSync(fd)
  fs.truncateSync(file, size)
  return data
}

describe.skipIf(!haveCeph)("s3 exports on Ceph through the command line", () => {
  const size = 16 * MiB
  let a: Awaited<ReturnType<typeof serve>>
  let b: Awaited<ReturnType<typeof serve>>
  let flushed: Buffer

  it("nbdcopy in and out and qemu-img convert keep the data; nbdinfo --map shows the hole", async () => {
    a = await serve("disk", `size=${size}`, `object-size=${OBJECT}`, "lease-time=3s")
    const data = imageWithHole("in.img", size, 4 * MiB, 8 * MiB)
    await run("nbdcopy", [path.join(dir, "in.img"), a.uri])
    const out = path.join(dir, "out.img")
    await run("nbdcopy", [a.uri, out])
    expect(sha256(fs.readFileSync(out))).toBe(sha256(data))

    const map = JSON.parse(await run("nbdinfo", ["--map", "--json", a.uri])) as Array<
      { offset: number; length: number; type: number }
    >
    const holes = map.filter((e) => (e.type & 1) !== 0)
    expect(holes).toEqual([{ offset: 4 * MiB, length: 4 * MiB, type: 3, description: "hole,zero" }])

    // qemu-img writes another image over it (and flushes); compare checks every byte through NBD.
    flushed = imageWithHole("other.img", size, 0, 2 * MiB)
    await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", path.join(dir, "other.img"), a.uri])
    await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", path.join(dir, "other.img"), a.uri])
  })

  it("a second server, on another gateway, serves the export read-only while the first holds the lease", async () => {
    b = await serve("disk", `endpoint=${secondGateway}`, "lease-time=3s")
    expect((await info(b.uri)).is_read_only).toBe(true)
    const refused = await nbdsh(b.uri, "h.pwrite(b'x' * 512, 0)")
    expect(refused.code).not.toBe(0)
    const out = path.join(dir, "read-only.img")
    await run("nbdcopy", [b.uri, out])
    expect(sha256(fs.readFileSync(out))).toBe(sha256(flushed))
  })

  it("after kill -9 of the first, the second takes the lease over and holds every flushed write", async () => {
    // Written through A without FLUSH or FUA, then A dies: each object holds the old or the new bytes.
    const unflushed = await nbdsh(a.uri, `h.pwrite(b'\\xab' * ${2 * OBJECT}, ${OBJECT})`)
    expect(unflushed.code).toBe(0)
    a.cli.child.kill("SIGKILL")
    await a.cli.exit

    const started = Date.now()
    while ((await info(b.uri)).is_read_only) {
      if (Date.now() - started > 30_000) throw new Error("the second server never took the lease over")
      await new Promise((resolve) => setTimeout(resolve, 250))
    }
    const out = path.join(dir, "after.img")
    await run("nbdcopy", [b.uri, out])
    const after = fs.readFileSync(out)
    const expected = Buffer.from(flushed)
    for (let at = OBJECT; at < 3 * OBJECT; at += OBJECT) {
      if (after.subarray(at, at + OBJECT).equals(Buffer.alloc(OBJECT, 0xab))) expected.fill(0xab, at, at + OBJECT)
    }
    expect(sha256(after)).toBe(sha256(expected))

    const written = await nbdsh(b.uri, "h.pwrite(b'\\x01' * 4096, 0)") // no FLUSH: stopping the server stores it
    expect(written.code).toBe(0)
    await b.cli.stop()
    // A stopped server stored what it had and released the lease.
    const store = S3Store.make({ bucket: BUCKET, endpoint: ceph!.endpoint })
    const location = { bucket: BUCKET, prefix: "disk" }
    const object0 = Option.getOrThrow(await Effect.runPromise(store.get(Objects.dataKey(location, 0)))).data
    expect(Buffer.from(object0.subarray(0, 4096)).equals(Buffer.alloc(4096, 1))).toBe(true)
    const lease = Option.getOrThrow(await Effect.runPromise(store.get(Objects.leaseKey(location))))
    expect(JSON.parse(new TextDecoder().decode(lease.data))).toMatchObject({ released: true })
  })

  it("s3-bucket serves the exports it finds in the bucket, and LIST shows them", async () => {
    const { cli, served } = await startCli(["s3-bucket", BUCKET, "--port", "0"])
    const listed = JSON.parse(await run("nbdinfo", ["--list", "--json", served[0]!.uri])) as {
      readonly exports: ReadonlyArray<{ readonly "export-name": string; readonly "export-size": number }>
    }
    expect(listed.exports.map((e) => [e["export-name"], e["export-size"]])).toEqual([["disk", size]])
    await cli.stop()
  })

  it("one client writes through A, A is killed, the same client reconnects to B and finds every flushed write", async () => {
    const prefix = "same-client"
    const first = await serve(prefix, `size=${8 * OBJECT}`, `object-size=${OBJECT}`, "lease-time=3s")
    const second = await serve(prefix, `endpoint=${secondGateway}`, "lease-time=3s")
    expect((await info(second.uri)).is_read_only).toBe(true)
    const client = spawn(SYSTEM_PYTHON, ["-c", SAME_CLIENT, first.uri, String(OBJECT)], { stdio: ["pipe", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    client.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
    client.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
    const exited = new Promise<number | null>((resolve) => client.once("exit", resolve))
    try {
      const deadline = Date.now() + 30_000
      while (!stdout.includes("written\n")) {
        if (client.exitCode !== null || Date.now() > deadline) throw new Error(`the client did not write: ${stderr}`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      first.cli.child.kill("SIGKILL")
      await first.cli.exit
      client.stdin.end(`${second.uri}\n`) // the same process now connects to B, retrying until it may write
      expect(await withDeadline(exited, 60_000)).toBe(0)
      const report = JSON.parse(stdout.slice(stdout.indexOf("{"))) as { flushed: boolean; unflushed: string; after: boolean }
      expect(report).toMatchObject({ flushed: true, after: true })
      expect(["stored", "lost"]).toContain(report.unflushed)
    } finally {
      client.kill("SIGKILL")
      await second.cli.stop()
    }
  }, 120_000)

  it("s3-bucket serves exports added to the bucket after it started, in LIST and by name", async () => {
    const bucket = "effect-nbd-later"
    const store = S3Store.make({ bucket, endpoint: ceph!.endpoint })
    /** Makes an export as any server would: its metadata object. */
    const create = (prefix: string, size: number) =>
      Effect.runPromise(Effect.gen(function*() {
        if (!(yield* store.bucketExists)) yield* store.createBucket
        const metadata = Schema.encodeSync(Objects.MetadataJson)({ format: Objects.FORMAT, size, objectSize: OBJECT })
        yield* store.put(Objects.metadataKey({ bucket, prefix }), new TextEncoder().encode(metadata))
      }))
    await create("first", OBJECT)
    const { cli, served } = await startCli(["s3-bucket", bucket, "rescan=0", "lease-time=3s", "--port", "0"])
    const base = served[0]!.uri.replace(/\/[^/]*$/, "")
    const names = async () =>
      (JSON.parse(await run("nbdinfo", ["--list", "--json", served[0]!.uri])) as {
        readonly exports: ReadonlyArray<{ readonly "export-name": string }>
      }).exports.map((e) => e["export-name"])
    try {
      expect(await names()).toEqual(["first"])
      // Two exports made by other servers while this one runs: one found by LIST, one asked for by name.
      for (const prefix of ["team/listed", "by-name"]) await create(prefix, 2 * OBJECT)
      const found = JSON.parse(await run("nbdinfo", ["--json", `${base}/by-name`])) as {
        readonly exports: ReadonlyArray<{ readonly "export-size": number }>
      }
      expect(found.exports[0]!["export-size"]).toBe(2 * OBJECT)
      expect(await names()).toEqual(["first", "by-name", "team/listed"])
      const written = await nbdsh(`${base}/team/listed`, "h.pwrite(b'\\x07' * 4096, 0); h.flush(); assert h.pread(4096, 0) == b'\\x07' * 4096")
      expect(written).toMatchObject({ code: 0 })
      const unknown = await runStatus("nbdinfo", [`${base}/missing`], { timeout: 30_000 })
      expect(unknown.code).not.toBe(0)
    } finally {
      await cli.stop()
    }
  })
})

const withDeadline = <A>(promise: Promise<A>, millis: number): Promise<A> =>
  Promise.race([promise, new Promise<A>((_, reject) => setTimeout(() => reject(new Error(`no answer in ${millis} ms`)), millis))])

/**
 * The client of the same-client failover test, in Debian's Python with libnbd: writes
 * through the first URI (flushed, FUA, then one write never flushed), says `written`,
 * reads the second URI from standard input, connects to it (again until it is writable:
 * the lease moves once it expires), and prints what it found as JSON.
 */
const SAME_CLIENT = `
import json, sys, time, nbd
uri, obj = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b'\\x11' * 65536, 0)
h.flush()
h.pwrite(b'\\x22' * 8192, obj + 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b'\\x44' * 2000, 3 * obj - 1000)
h.flush()
h.pwrite(b'\\x33' * 4096, 5 * obj)
print('written', flush=True)
second = sys.stdin.readline().strip()
deadline = time.time() + 50
while True:
    g = nbd.NBD()
    g.connect_uri(second)
    if not g.is_read_only():
        break
    g.shutdown()
    if time.time() > deadline:
        sys.exit('the second server stayed read-only')
    time.sleep(0.25)
expected = bytearray(8 * obj)
expected[0:65536] = b'\\x11' * 65536
expected[obj + 4096:obj + 4096 + 8192] = b'\\x22' * 8192
expected[3 * obj - 1000:3 * obj + 1000] = b'\\x44' * 2000
data = g.pread(8 * obj, 0)
unflushed = data[5 * obj:5 * obj + 4096]
state = 'stored' if unflushed == b'\\x33' * 4096 else 'lost' if unflushed == bytes(4096) else 'torn'
if state == 'stored':
    expected[5 * obj:5 * obj + 4096] = unflushed
g.pwrite(b'\\x55' * 4096, 7 * obj, nbd.CMD_FLAG_FUA)
after = g.pread(4096, 7 * obj) == b'\\x55' * 4096
print(json.dumps({'flushed': bytes(data) == bytes(expected), 'unflushed': state, 'after': after}), flush=True)
g.shutdown()
`
