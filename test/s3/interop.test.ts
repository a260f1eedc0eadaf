/**
 * The `s3` driver from the command line against a real single-node Ceph with two
 * gateways, through real clients: nbdcopy in and out and qemu-img convert with
 * checksums, nbdinfo --map showing holes; two servers over one export (the second
 * read-only while the first holds the lease); and the first killed with SIGKILL, after
 * which the second takes the lease over and holds every flushed write.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Objects from "../../src/drivers/S3Objects.ts"
import * as S3Store from "../../src/drivers/S3Store.ts"
import { sha256 } from "../support/Bytes.ts"
import { killAll, runStatus, startCli } from "../support/Cli.ts"
import { available, run } from "../support/Tools.ts"
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
})
