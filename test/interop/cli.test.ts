/**
 * End-to-end tests of the `effect-nbd` command line: the real CLI runs as a child
 * process (`node --import tsx src/cli/main.ts ...`) and real NBD clients (nbdinfo,
 * nbdcopy, qemu-img, qemu-io, libnbd's Python binding) talk to it.
 */
import { randomBytes } from "node:crypto"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { sha256 } from "../support/Bytes.ts"
import {
  type Cli,
  killAll,
  runCli,
  runStatus,
  type Served,
  servedLines,
  startCli,
  STOP_TIMEOUT,
  withTimeout
} from "../support/Cli.ts"
import { available, run, SYSTEM_PYTHON } from "../support/Tools.ts"

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB
const TiB = 1024 * GiB

// ---------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------

interface InfoExport {
  readonly "export-name": string
  readonly uri?: string
  readonly description?: string
  readonly is_read_only: boolean
  readonly can_flush: boolean
  readonly can_trim: boolean
  readonly can_multi_conn: boolean
  readonly "export-size": number
}

interface Info {
  readonly exports: ReadonlyArray<InfoExport>
}

const nbdinfo = async (args: ReadonlyArray<string>): Promise<Info> =>
  JSON.parse(await run("nbdinfo", ["--json", ...args])) as Info

const onlyExport = (info: Info): InfoExport => {
  expect(info.exports).toHaveLength(1)
  return info.exports[0]!
}

/** The `nbd://host:port/` prefix of a TCP URI. */
const baseUri = (uri: string): string => {
  const match = /^(nbd:\/\/[^/]+\/)/.exec(uri)
  if (match === null) throw new Error(`not a TCP NBD URI: ${uri}`)
  return match[1]!
}


/** SHA-256 of the first `length` bytes of a file. */
const sha256OfFile = (file: string, length: number): string => {
  const fd = fs.openSync(file, "r")
  try {
    const buffer = Buffer.alloc(length)
    let done = 0
    while (done < length) {
      const n = fs.readSync(fd, buffer, done, length - done, done)
      if (n === 0) break
      done += n
    }
    expect(done, `${file} is shorter than ${length} bytes`).toBe(length)
    return sha256(buffer)
  } finally {
    fs.closeSync(fd)
  }
}

/** Asserts that `length` bytes of a file from `offset` are all zero. */
const expectZeroes = (file: string, offset: number, length: number): void => {
  const fd = fs.openSync(file, "r")
  try {
    const buffer = Buffer.alloc(length)
    const n = fs.readSync(fd, buffer, 0, length, offset)
    expect(n).toBe(length)
    expect(buffer.findIndex((b) => b !== 0), `${file}: first non-zero byte after ${offset}`).toBe(-1)
  } finally {
    fs.closeSync(fd)
  }
}

/** Python (libnbd) probing a read-only export: every write must be refused with EPERM. */
const READ_ONLY_PROBE = `
import errno, json, sys
import nbd

def attempt(h):
    try:
        h.pwrite(b"x" * 512, 0)
        return {"ok": True}
    except nbd.Error as e:
        # nbd.Error.errno is the errno *name* (a string); errnum is the number.
        return {"ok": False, "errnum": e.errnum, "eperm": e.errnum == errno.EPERM, "string": e.string}

h = nbd.NBD()
h.connect_uri(sys.argv[1])
result = {"read_only": h.is_read_only(), "can_write_client_checked": attempt(h)}
# Without libnbd's own check the write reaches the server, which must refuse it itself.
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)
result["server_checked"] = attempt(h)
result["first_bytes_zero"] = bytes(h.pread(4096, 0)) == bytes(4096)
h.shutdown()
print(json.dumps(result))
`

interface ProbeAttempt {
  readonly ok: boolean
  readonly errnum?: number
  readonly eperm?: boolean
  readonly string?: string
}

interface ReadOnlyProbe {
  readonly read_only: boolean
  readonly can_write_client_checked: ProbeAttempt
  readonly server_checked: ProbeAttempt
  readonly first_bytes_zero: boolean
}

const probeReadOnly = async (uri: string): Promise<ReadOnlyProbe> =>
  JSON.parse(await run(SYSTEM_PYTHON, ["-c", READ_ONLY_PROBE, uri])) as ReadOnlyProbe

interface MapEntry {
  readonly start: number
  readonly length: number
  readonly data: boolean
  readonly zero: boolean
}

/** Merges adjacent `qemu-img map` entries with the same flags, checking they tile the disk. */
const coalesceMap = (entries: ReadonlyArray<MapEntry>): Array<MapEntry> => {
  const out: Array<{ start: number; length: number; data: boolean; zero: boolean }> = []
  let next = 0
  for (const entry of entries) {
    expect(entry.start).toBe(next)
    next = entry.start + entry.length
    const last = out[out.length - 1]
    if (last !== undefined && last.data === entry.data && last.zero === entry.zero) last.length += entry.length
    else out.push({ start: entry.start, length: entry.length, data: entry.data, zero: entry.zero })
  }
  return out
}

const makeTempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-cli-"))

afterAll(killAll)

// ---------------------------------------------------------------------------------------
// serve: a file export, a 1T memory export and a read-only memory export in one server
// ---------------------------------------------------------------------------------------

describe.skipIf(!available(["nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "python3-libnbd"]))(
  "effect-nbd serve with three exports",
  () => {
    const DISK_SIZE = 64 * MiB
    let dir: string
    let diskFile: string
    let cli: Cli
    let served: ReadonlyArray<Served>
    let base: string

    beforeAll(async () => {
      dir = makeTempDir()
      diskFile = path.join(dir, "disk.img")
      fs.writeFileSync(diskFile, "")
      fs.truncateSync(diskFile, DISK_SIZE)
      ;({ cli, served } = await startCli([
        "serve",
        `disk=file:${diskFile}`,
        "scratch=memory:1T,description=Scratch space",
        "iso=memory:16M,read-only",
        "--port",
        "0",
        // Connections are logged at debug level: the multi-connection test counts them.
        "--verbose"
      ], 3))
      base = baseUri(served[0]!.uri)
    })

    afterAll(async () => {
      await cli?.kill()
      if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
    })

    it("prints one URI per export, on the real port", () => {
      expect(servedLines(cli.stdout())).toHaveLength(3)
      const match = /^nbd:\/\/127\.0\.0\.1:(\d+)\/$/.exec(base)
      expect(match).not.toBeNull()
      const port = Number(match![1])
      expect(port).toBeGreaterThan(0)
      expect(port).toBeLessThan(65536)
      expect(served).toEqual([
        { driver: "file", readOnly: false, uri: `nbd://127.0.0.1:${port}/disk` },
        { driver: "memory", readOnly: false, uri: `nbd://127.0.0.1:${port}/scratch` },
        { driver: "memory", readOnly: true, uri: `nbd://127.0.0.1:${port}/iso` }
      ])
    })

    it("nbdinfo --list shows the three exports with sizes, descriptions and flags", async () => {
      const info = await nbdinfo(["--list", base])
      expect(info.exports.map((e) => e["export-name"])).toEqual(["disk", "scratch", "iso"])
      const [disk, scratch, iso] = info.exports as [InfoExport, InfoExport, InfoExport]

      expect(disk.uri).toBe(served[0]!.uri)
      expect(disk["export-size"]).toBe(DISK_SIZE)
      expect(disk.is_read_only).toBe(false)
      expect(disk.can_flush).toBe(true)
      expect(disk.can_trim).toBe(true) // the file driver punches holes

      expect(scratch.uri).toBe(served[1]!.uri)
      expect(scratch["export-size"]).toBe(TiB)
      expect(scratch.description).toBe("Scratch space")
      expect(scratch.is_read_only).toBe(false)
      expect(scratch.can_trim).toBe(true)

      expect(iso.uri).toBe(served[2]!.uri)
      expect(iso["export-size"]).toBe(16 * MiB)
      expect(iso.description).toBe("16M in-memory export")
      expect(iso.is_read_only).toBe(true)

      for (const e of info.exports) expect(e.can_multi_conn, e["export-name"]).toBe(true)
    })

    it("the first export is the default one (empty name)", async () => {
      const e = onlyExport(await nbdinfo([base]))
      // Asked for "", the server answers NBD_INFO_NAME with the canonical name.
      expect(e["export-name"]).toBe("disk")
      expect(e["export-size"]).toBe(DISK_SIZE)
      expect(e.can_trim).toBe(true)
    })

    it("nbdcopy with 4 connections writes 32 MiB into the file export, which reach the file", async () => {
      const SIZE = 32 * MiB
      const source = path.join(dir, "source.bin")
      const back = path.join(dir, "back.bin")
      const data = randomBytes(SIZE)
      fs.writeFileSync(source, data)
      const selections = () => (cli.stderr().match(/client selected export 'disk'/g) ?? []).length
      const before = selections()

      await run("nbdcopy", ["--connections=4", "--threads=4", "--flush", source, served[0]!.uri])

      // nbdcopy only opens several connections to exports that offer multi-conn.
      expect(selections() - before).toBe(4)
      // The file on disk holds exactly the bytes, the rest is still zero, the size unchanged.
      expect(fs.statSync(diskFile).size).toBe(DISK_SIZE)
      expect(sha256OfFile(diskFile, SIZE)).toBe(sha256(data))
      expectZeroes(diskFile, SIZE, DISK_SIZE - SIZE)

      // And back out through the server.
      await run("nbdcopy", ["--connections=4", "--threads=4", served[0]!.uri, back])
      expect(fs.statSync(back).size).toBe(DISK_SIZE)
      expect(sha256OfFile(back, SIZE)).toBe(sha256(data))
      expectZeroes(back, SIZE, DISK_SIZE - SIZE)
    })

    it("qemu-io cannot open the read-only export for writing", async () => {
      const result = await runStatus("qemu-io", ["-f", "raw", "-c", "write 0 512", served[2]!.uri])
      expect(result.code).not.toBe(0)
      expect(result.stdout + result.stderr).toContain("Permission denied")
      expect(result.stdout).not.toMatch(/wrote \d+/)
    })

    it("libnbd's writes to the read-only export fail with EPERM, from libnbd and from the server", async () => {
      const probe = await probeReadOnly(served[2]!.uri)
      expect(probe.read_only).toBe(true)
      expect(probe.can_write_client_checked).toMatchObject({ ok: false, eperm: true })
      expect(probe.server_checked).toMatchObject({ ok: false, eperm: true })
      expect(probe.first_bytes_zero).toBe(true)
    })

    it("qemu-img map of the 1T export shows 1 MiB of data at 1 GiB and zeroes elsewhere", async () => {
      const uri = served[1]!.uri
      const written = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 1G 1M", uri])
      expect(written).toContain(`wrote ${MiB}/${MiB} bytes at offset ${GiB}`)

      const map = JSON.parse(await run("qemu-img", ["map", "--output=json", uri])) as Array<MapEntry>
      expect(coalesceMap(map)).toEqual([
        { start: 0, length: GiB, data: false, zero: true },
        { start: GiB, length: MiB, data: true, zero: false },
        { start: GiB + MiB, length: TiB - GiB - MiB, data: false, zero: true }
      ])

      // The data is there, and the bytes around it are zero (qemu-io exits 1 on a mismatch).
      const read = await runStatus("qemu-io", [
        "-f",
        "raw",
        "-c",
        "read -P 0x5a 1G 1M",
        "-c",
        "read -P 0 1023M 1M",
        "-c",
        "read -P 0 1025M 1M",
        uri
      ])
      expect(read.stdout + read.stderr).not.toContain("Pattern verification failed")
      expect(read.code).toBe(0)
    })

    it("is still serving after all those clients", async () => {
      expect(cli.exited()).toBe(false)
      expect(onlyExport(await nbdinfo([served[2]!.uri]))["export-size"]).toBe(16 * MiB)
    })
  }
)

// ---------------------------------------------------------------------------------------
// memory and file with a single export
// ---------------------------------------------------------------------------------------

describe.skipIf(!available(["nbdinfo"]))("effect-nbd memory --unix", () => {
  let dir: string
  let socket: string
  let cli: Cli
  let served: ReadonlyArray<Served>

  beforeAll(async () => {
    dir = makeTempDir()
    socket = path.join(dir, "nbd.sock")
    ;({ cli, served } = await startCli(["memory", "64M", "--unix", socket]))
  })

  afterAll(async () => {
    await cli?.kill()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("prints an nbd+unix URI that nbdinfo can use", async () => {
    expect(served).toEqual([{ driver: "memory", readOnly: false, uri: `nbd+unix:///?socket=${socket}` }])
    expect(fs.statSync(socket).isSocket()).toBe(true)
    const e = onlyExport(await nbdinfo([`nbd+unix:///?socket=${socket}`]))
    expect(e["export-name"]).toBe("")
    expect(e["export-size"]).toBe(64 * MiB)
    expect(e.description).toBe("64M in-memory export")
  })

  it("stops on SIGINT with exit code 0 and removes the socket", async () => {
    const stopped = await cli.stop("SIGINT")
    expect(stopped).toMatchObject({ code: 0, signal: null })
    expect(stopped.millis).toBeLessThan(STOP_TIMEOUT)
    expect(fs.existsSync(socket)).toBe(false)
  })
})

describe.skipIf(!available(["nbdinfo"]))("effect-nbd memory --unix with a space in the socket path", () => {
  let dir: string
  let cli: Cli | undefined

  afterAll(async () => {
    await cli?.kill()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("prints a URI that nbdinfo can parse (the socket path percent-encoded)", async () => {
    dir = makeTempDir()
    fs.mkdirSync(path.join(dir, "a b"))
    const socket = path.join(dir, "a b", "nbd.sock")
    const started = await startCli(["memory", "16M", "--unix", socket])
    cli = started.cli
    const uri = started.served[0]!.uri
    expect(new URL(uri).searchParams.get("socket")).toBe(socket)
    const result = await runStatus("nbdinfo", ["--json", uri])
    expect(result.stderr).toBe("")
    expect(result.code).toBe(0)
    expect((JSON.parse(result.stdout) as Info).exports[0]!["export-size"]).toBe(16 * MiB)
  })
})

describe.skipIf(!available(["nbdinfo", "qemu-io", "python3-libnbd"]))("effect-nbd memory --read-only", () => {
  let cli: Cli
  let served: ReadonlyArray<Served>

  beforeAll(async () => {
    ;({ cli, served } = await startCli(["memory", "16M", "--read-only", "--port", "0"]))
  })

  afterAll(async () => {
    await cli?.kill()
  })

  it("prints a read-only URI and nbdinfo reports is_read_only", async () => {
    expect(served).toHaveLength(1)
    expect(served[0]!.readOnly).toBe(true)
    expect(served[0]!.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/$/)
    const e = onlyExport(await nbdinfo([served[0]!.uri]))
    expect(e.is_read_only).toBe(true)
    expect(e["export-size"]).toBe(16 * MiB)
  })

  it("refuses writes", async () => {
    const qemu = await runStatus("qemu-io", ["-f", "raw", "-c", "write 0 512", served[0]!.uri])
    expect(qemu.code).not.toBe(0)
    expect(qemu.stdout + qemu.stderr).toContain("Permission denied")
    const probe = await probeReadOnly(served[0]!.uri)
    expect(probe.read_only).toBe(true)
    expect(probe.server_checked).toMatchObject({ ok: false, eperm: true })
  })
})

describe.skipIf(!available(["nbdinfo"]))("effect-nbd memory --export-name --description", () => {
  let cli: Cli
  let served: ReadonlyArray<Served>

  beforeAll(async () => {
    ;({ cli, served } = await startCli([
      "memory",
      "8M",
      "--export-name",
      "my disk/1",
      "--description",
      "a named export",
      "--port",
      "0"
    ]))
  })

  afterAll(async () => {
    await cli?.kill()
  })

  it("prints the name percent-encoded in the URI, which nbdinfo opens", async () => {
    expect(served[0]!.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/my%20disk\/1$/)
    const e = onlyExport(await nbdinfo([served[0]!.uri]))
    expect(e["export-name"]).toBe("my disk/1")
    expect(e.description).toBe("a named export")
    expect(e["export-size"]).toBe(8 * MiB)
  })
})

describe.skipIf(!available(["nbdinfo", "nbdcopy", "qemu-io"]))("effect-nbd file --read-only", () => {
  const SIZE = 4 * MiB
  let dir: string
  let file: string
  let data: Buffer
  let cli: Cli
  let served: ReadonlyArray<Served>

  beforeAll(async () => {
    dir = makeTempDir()
    file = path.join(dir, "ro.img")
    data = randomBytes(SIZE)
    fs.writeFileSync(file, data)
    ;({ cli, served } = await startCli(["file", file, "--read-only", "--port", "0"]))
  })

  afterAll(async () => {
    await cli?.kill()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("serves the file's bytes read-only and leaves the file unchanged", async () => {
    expect(served).toEqual([{ driver: "file", readOnly: true, uri: expect.stringMatching(/^nbd:\/\/127\.0\.0\.1:\d+\/$/) }])
    const e = onlyExport(await nbdinfo([served[0]!.uri]))
    expect(e.is_read_only).toBe(true)
    expect(e["export-size"]).toBe(SIZE)
    expect(e.can_multi_conn).toBe(true)

    const copy = path.join(dir, "copy.img")
    await run("nbdcopy", [served[0]!.uri, copy])
    expect(sha256OfFile(copy, SIZE)).toBe(sha256(data))

    const qemu = await runStatus("qemu-io", ["-f", "raw", "-c", "write -P 0x11 0 512", served[0]!.uri])
    expect(qemu.code).not.toBe(0)
    expect(sha256(fs.readFileSync(file))).toBe(sha256(data))
  })
})

// ---------------------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------------------

describe.skipIf(!available(["nbdinfo", "qemu-io", "python3-libnbd"]))("effect-nbd stops gracefully", () => {
  it("exits with code 0 within 10 s of SIGTERM after serving qemu-io, and the port is closed", async () => {
    const { cli, served } = await startCli(["memory", "64M", "--port", "0"])
    const uri = served[0]!.uri
    const io = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x33 0 4M", "-c", "read -P 0x33 0 4M", uri])
    expect(io).toContain(`wrote ${4 * MiB}/${4 * MiB} bytes at offset 0`)

    const stopped = await cli.stop("SIGTERM")
    expect(stopped).toMatchObject({ code: 0, signal: null })
    expect(stopped.millis).toBeLessThan(STOP_TIMEOUT)

    const after = await runStatus("nbdinfo", [uri])
    expect(after.code).not.toBe(0)
    expect(after.stderr).toMatch(/connect|refused/i)
  })

  it("exits within 10 s of SIGTERM while a client is still connected, which is disconnected", async () => {
    const { cli, served } = await startCli(["memory", "16M", "--port", "0"])
    const client = spawn(SYSTEM_PYTHON, [
      "-c",
      `
import json, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"y" * 4096, 0)
print("connected", flush=True)
sys.stdin.readline()
try:
    h.pread(512, 0)
    print(json.dumps({"ok": True}))
except nbd.Error as e:
    print(json.dumps({"ok": False, "errno": e.errno, "string": e.string}))
`,
      served[0]!.uri
    ], { stdio: ["pipe", "pipe", "pipe"] })
    try {
      let output = ""
      client.stdout.setEncoding("utf8").on("data", (chunk: string) => (output += chunk))
      const clientExit = new Promise<number | null>((resolve) => client.on("close", (code) => resolve(code)))
      await withTimeout(
        (async () => {
          while (!output.includes("connected")) await new Promise((resolve) => setTimeout(resolve, 25))
        })(),
        20_000,
        "python client connecting"
      )

      const stopped = await cli.stop("SIGTERM")
      expect(stopped).toMatchObject({ code: 0, signal: null })
      expect(stopped.millis).toBeLessThan(STOP_TIMEOUT)

      client.stdin.end("go\n")
      expect(await withTimeout(clientExit, 20_000, "python client")).toBe(0)
      const result = JSON.parse(output.slice(output.indexOf("{"))) as { readonly ok: boolean }
      expect(result.ok).toBe(false)
    } finally {
      client.kill("SIGKILL")
    }
  })
})

// ---------------------------------------------------------------------------------------
// Bad usage
// ---------------------------------------------------------------------------------------

// Each case starts a Node.js process (about 2-3 s with tsx): run them side by side.
describe.concurrent("effect-nbd bad usage", () => {
  const cases: ReadonlyArray<{ readonly args: ReadonlyArray<string>; readonly message: RegExp }> = [
    { args: ["serve", "bad"], message: /^effect-nbd: 'bad' is not NAME=DRIVER:ARGUMENT/ },
    { args: ["memory", "12Q"], message: /^effect-nbd: memory: '12Q' is not a size/ },
    { args: ["file", "/nonexistent"], message: /^effect-nbd: opening \/nonexistent: ENOENT/ },
    { args: ["serve", "a=memory:1M", "a=memory:2M"], message: /^effect-nbd: two exports have the same name/ },
    { args: ["serve", "a=disk:1M"], message: /^effect-nbd: unknown driver 'disk'/ },
    { args: ["serve", "a=memory:1M,bogus"], message: /^effect-nbd: unknown export option 'bogus'/ },
    { args: ["serve", "a=file:/nonexistent"], message: /^effect-nbd: opening \/nonexistent: ENOENT/ },
    { args: ["memory", "64P"], message: /^effect-nbd: memory: '64P' is not a whole number of bytes/ },
    { args: ["memory", "1M", "--filter", "bogus"], message: /^effect-nbd: unknown filter 'bogus' \(known: readonly, offset, / },
    {
      args: ["memory", "1M", "--filter", "delay:speed=1"],
      message: /^effect-nbd: delay: unknown parameter 'speed' \(accepted: read, write, /
    },
    { args: ["memory", "1M", "size=2"], message: /^effect-nbd: memory: unknown parameter 'size' \(it takes no parameters\)/ },
    { args: ["serve", "a=memory:1M,filter=cow:blocksize=3"], message: /^effect-nbd: cow: / }
  ]

  for (const { args, message } of cases) {
    it(`'${args.join(" ")}' exits non-zero with a one-line message on stderr`, async ({ expect }) => {
      const result = await runCli([...args, "--port", "0"])
      expect(result.code).not.toBe(0)
      expect(result.stdout).not.toContain("serving")
      const stderr = result.stderr.trim()
      expect(stderr).toMatch(message)
      expect(stderr.split("\n")).toHaveLength(1)
    })
  }

  it("a port already in use: 'cannot listen on 127.0.0.1:PORT', non-zero exit", async ({ expect }) => {
    const blocker = net.createServer()
    await new Promise<void>((resolve, reject) => {
      blocker.once("error", reject)
      blocker.listen(0, "127.0.0.1", resolve)
    })
    try {
      const port = (blocker.address() as net.AddressInfo).port
      const result = await runCli(["memory", "64M", "--port", String(port)])
      expect(result.code).not.toBe(0)
      expect(result.stdout).not.toContain("serving")
      expect(result.stderr.trim()).toMatch(new RegExp(`^effect-nbd: cannot listen on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`))
    } finally {
      await new Promise((resolve) => blocker.close(resolve))
    }
  })

  it("a Unix socket path already in use: 'cannot listen on PATH', non-zero exit", async ({ expect }) => {
    const dir = makeTempDir()
    try {
      const socket = path.join(dir, "stale.sock")
      fs.writeFileSync(socket, "")
      const result = await runCli(["memory", "64M", "--unix", socket])
      expect(result.code).not.toBe(0)
      expect(result.stderr.trim()).toMatch(new RegExp(`^effect-nbd: cannot listen on ${socket.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: `))
      expect(fs.readFileSync(socket, "utf8")).toBe("") // the file is left alone
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
