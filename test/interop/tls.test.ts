/**
 * STARTTLS with real clients (libnbd's nbdinfo and nbdcopy, and its Python binding, all on
 * GnuTLS) against the `effect-nbd` command line with `--tls require` / `--tls on`.
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Certificates from "../support/Certificates.ts"
import { type Cli, killAll, runCli, runStatus, startCli } from "../support/Cli.ts"
import { available, run, SYSTEM_PYTHON } from "../support/Tools.ts"

const MiB = 1024 * 1024

describe.skipIf(!available(["nbdinfo", "nbdcopy", "python3-libnbd", "openssl"]))("TLS with libnbd clients", () => {
  let certificates: Certificates.Certificates
  let required: Cli
  let requiredUri: string
  let optional: Cli
  let optionalUri: string
  let dir: string

  beforeAll(async () => {
    certificates = Certificates.make()
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-tls-interop-"))
    const a = await startCli(["memory", "64M", "--port", "0", "--tls", "require", "--tls-certificates", certificates.serverDir])
    required = a.cli
    requiredUri = a.served[0]!.uri
    const b = await startCli(["memory", "64M", "--port", "0", "--tls", "on", "--tls-certificates", certificates.serverDir])
    optional = b.cli
    optionalUri = b.served[0]!.uri
  })
  afterAll(async () => {
    await killAll()
    certificates?.remove()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  const withCertificates = (uri: string) => `${uri}?tls-certificates=${certificates.clientDir}`

  it("prints an nbds:// URI when TLS is required, nbd:// when it is optional", () => {
    expect(requiredUri).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/$/)
    expect(optionalUri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/$/)
    expect(required.stderr()).not.toContain("ERROR")
  })

  it("nbdinfo negotiates TLS and reads the export", async () => {
    const info = JSON.parse(await run("nbdinfo", ["--json", withCertificates(requiredUri)]))
    expect(info.protocol).toBe("newstyle-fixed")
    expect(info.TLS).toBe(true)
    expect(info.exports[0]["export-size"]).toBe(64 * MiB)
  })

  it("a client without TLS is refused by the TLS-only server", async () => {
    const plain = requiredUri.replace(/^nbds:/, "nbd:")
    const result = await runStatus("nbdinfo", [plain])
    expect(result.code).not.toBe(0)
  })

  it("--tls-verify-peer: a client certificate signed by the CA gets in, none is refused", async () => {
    const { served } = await startCli([
      "memory", "8M", "--port", "0", "--tls", "require", "--tls-certificates", certificates.serverDir, "--tls-verify-peer"
    ])
    const uri = served[0]!.uri
    const info = JSON.parse(await run("nbdinfo", ["--json", withCertificates(uri)]))
    expect(info.exports[0]["export-size"]).toBe(8 * MiB)
    const caOnly = fs.mkdtempSync(path.join(dir, "ca-only-"))
    fs.copyFileSync(path.join(certificates.clientDir, "ca-cert.pem"), path.join(caOnly, "ca-cert.pem"))
    const refused = await runStatus("nbdinfo", [`${uri}?tls-certificates=${caOnly}`])
    expect(refused.code).not.toBe(0)
  })

  it("nbdcopy round trip of 16 MiB over TLS keeps every byte", async () => {
    const source = path.join(dir, "source.bin")
    const back = path.join(dir, "back.bin")
    const data = randomBytes(16 * MiB)
    fs.writeFileSync(source, data)
    await run("nbdcopy", [source, withCertificates(requiredUri)])
    await run("nbdcopy", [withCertificates(requiredUri), back])
    expect(fs.readFileSync(back).subarray(0, 16 * MiB).equals(data)).toBe(true)
  })

  it("libnbd (Python) upgrades on the optional server and writes and reads data", async () => {
    const script = `
import nbd, sys
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_certificates(sys.argv[2])
h.connect_uri(sys.argv[1])
assert h.get_tls_negotiated(), "TLS was not negotiated"
assert h.get_structured_replies_negotiated()
buf = bytes(range(256)) * 4096
h.pwrite(buf, 1048576)
h.flush()
assert h.pread(len(buf), 1048576) == buf
plain = nbd.NBD()
plain.connect_uri(sys.argv[1])
assert not plain.get_tls_negotiated()
assert plain.pread(len(buf), 1048576) == buf, "a plain client sees the same export"
print("OK")
`
    const out = await run(SYSTEM_PYTHON, ["-c", script, optionalUri, certificates.clientDir])
    expect(out.trim()).toBe("OK")
  })

  it("--tls without certificates, and certificates without --tls, are usage errors", async () => {
    const missing = await runCli(["memory", "1M", "--port", "0", "--tls", "require"])
    expect(missing.code).not.toBe(0)
    expect(missing.stderr).toContain("--tls require needs --tls-certificates DIR")
    const unused = await runCli(["memory", "1M", "--port", "0", "--tls-certificates", certificates.serverDir])
    expect(unused.code).not.toBe(0)
    expect(unused.stderr).toContain("--tls-certificates needs --tls on or --tls require")
  })

  it("both servers are still up", async () => {
    expect(required.exited()).toBe(false)
    expect(optional.exited()).toBe(false)
    const info = JSON.parse(await run("nbdinfo", ["--json", withCertificates(requiredUri)]))
    expect(info.exports[0]["export-size"]).toBe(64 * MiB)
  })
})
