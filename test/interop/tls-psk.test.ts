/**
 * TLS-PSK with real clients (libnbd's nbdinfo and nbdcopy, on GnuTLS) against the
 * `effect-nbd` command line: `--tls-psk FILE` alone, beside `--tls-certificates DIR` on
 * the same port (with `--tls-verify-peer`), and the PSK user name as the identity the ip
 * filter decides on. Keys are made with psktool when it is installed (Debian's
 * gnutls-bin), else written in its format here.
 */
import { spawnSync } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Certificates from "../support/Certificates.ts"
import { type Cli, killAll, runCli, runStatus, startCli } from "../support/Cli.ts"
import { available, run } from "../support/Tools.ts"

const MiB = 1024 * 1024

const hasPsktool = spawnSync("sh", ["-c", "command -v psktool"]).status === 0

/** Writes a key file for the users: with psktool if installed, else random 32-byte keys in its format. */
const makeKeys = (file: string, users: ReadonlyArray<string>) => {
  for (const user of users) {
    if (hasPsktool) {
      const made = spawnSync("psktool", ["-u", user, "-p", file], { encoding: "utf8" })
      if (made.status !== 0) throw new Error(`psktool -u ${user}: ${made.stderr}`)
    } else {
      fs.appendFileSync(file, `${user}:${randomBytes(32).toString("hex")}\n`)
    }
  }
}

const sha256 = (file: string, bytes: number) =>
  createHash("sha256").update(fs.readFileSync(file).subarray(0, bytes)).digest("hex")

describe.skipIf(!available(["nbdinfo", "nbdcopy", "openssl"]))("TLS-PSK with libnbd clients", () => {
  let certificates: Certificates.Certificates
  let dir: string
  let keys: string
  let server: Cli
  let port: string

  beforeAll(async () => {
    if (!hasPsktool) console.warn("psktool not installed (apt-get install -y gnutls-bin): keys written by the test")
    certificates = Certificates.make()
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-psk-interop-"))
    keys = path.join(dir, "keys.psk")
    makeKeys(keys, ["alice", "bob"])
    const started = await startCli([
      "memory", "64M", "--port", "0", "--tls", "require",
      "--tls-psk", keys, "--tls-certificates", certificates.serverDir, "--tls-verify-peer"
    ])
    server = started.cli
    port = /^nbds:\/\/127\.0\.0\.1:(\d+)\/$/.exec(started.served[0]!.uri)![1]!
  })
  afterAll(async () => {
    await killAll()
    certificates?.remove()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  const pskUri = (user: string, file = keys, at = port) => `nbds://${user}@127.0.0.1:${at}/?tls-psk-file=${file}`

  it("nbdinfo connects as alice with her key and reads the export over TLS", async () => {
    const info = JSON.parse(await run("nbdinfo", ["--json", pskUri("alice")]))
    expect(info.TLS).toBe(true)
    expect(info.exports[0]["export-size"]).toBe(64 * MiB)
  })

  it("TLS 1.3 PSK with ECDHE; with TLS 1.3 disabled in GnuTLS, a TLS 1.2 PSK suite", async () => {
    const tls13 = await runStatus("env", ["GNUTLS_DEBUG_LEVEL=4", "nbdinfo", "--size", pskUri("alice")])
    expect(tls13.code).toBe(0)
    expect(tls13.stdout.trim()).toBe(String(64 * MiB))
    expect(tls13.stderr).toContain("Negotiated version: 3.4")
    expect(tls13.stderr).toContain("selected PSK mode")
    const config = path.join(dir, "gnutls-no-tls13.conf")
    fs.writeFileSync(config, "[overrides]\ndisabled-version = tls1.3\n")
    const tls12 = await runStatus("env", [`GNUTLS_SYSTEM_PRIORITY_FILE=${config}`, "GNUTLS_DEBUG_LEVEL=4", "nbdinfo", "--size", pskUri("alice")])
    expect(tls12.code).toBe(0)
    expect(tls12.stdout.trim()).toBe(String(64 * MiB))
    expect(tls12.stderr).toMatch(/Selected cipher suite: GNUTLS_\w*PSK\w*/)
    expect(tls12.stderr).not.toContain("Negotiated version: 3.4")
  })

  it("nbdcopy copies 32 MiB in and out over PSK, every byte intact", async () => {
    const source = path.join(dir, "source.bin")
    const back = path.join(dir, "back.bin")
    fs.writeFileSync(source, randomBytes(32 * MiB))
    await run("nbdcopy", [source, pskUri("bob")])
    await run("nbdcopy", [pskUri("alice"), back])
    expect(fs.statSync(back).size).toBe(64 * MiB)
    expect(sha256(back, 32 * MiB)).toBe(sha256(source, 32 * MiB))
  })

  it("a wrong key, an unknown user and a plain client are refused", async () => {
    const wrong = path.join(dir, "wrong.psk")
    fs.writeFileSync(wrong, `alice:${randomBytes(32).toString("hex")}\n`)
    expect((await runStatus("nbdinfo", ["--size", pskUri("alice", wrong)])).code).not.toBe(0)
    const carol = path.join(dir, "carol.psk")
    fs.writeFileSync(carol, `carol:${randomBytes(32).toString("hex")}\n`)
    expect((await runStatus("nbdinfo", ["--size", pskUri("carol", carol)])).code).not.toBe(0)
    const plain = await runStatus("nbdinfo", ["--size", `nbd://127.0.0.1:${port}/`])
    expect(plain.code).not.toBe(0)
    expect(plain.stderr).toContain("server requires TLS encryption first")
  })

  it("an X.509 client with a CA-signed certificate works on the same port; one without a certificate is refused", async () => {
    const info = JSON.parse(await run("nbdinfo", ["--json", `nbds://127.0.0.1:${port}/?tls-certificates=${certificates.clientDir}`]))
    expect(info.TLS).toBe(true)
    expect(info.exports[0]["export-size"]).toBe(64 * MiB)
    const caOnly = fs.mkdtempSync(path.join(dir, "ca-only-"))
    fs.copyFileSync(path.join(certificates.clientDir, "ca-cert.pem"), path.join(caOnly, "ca-cert.pem"))
    expect((await runStatus("nbdinfo", ["--size", `nbds://127.0.0.1:${port}/?tls-certificates=${caOnly}`])).code).not.toBe(0)
  })

  it("--filter ip:allow=psk:alice,deny=all serves alice and refuses bob", async () => {
    const { cli, served } = await startCli([
      "memory", "8M", "--port", "0", "--tls", "require", "--tls-psk", keys, "--filter", "ip:allow=psk:alice,deny=all"
    ])
    const at = /:(\d+)\/$/.exec(served[0]!.uri)![1]!
    expect((await run("nbdinfo", ["--size", pskUri("alice", keys, at)])).trim()).toBe(String(8 * MiB))
    const bob = await runStatus("nbdinfo", ["--size", pskUri("bob", keys, at)])
    expect(bob.code).not.toBe(0)
    expect(bob.stderr).toContain("server policy prevents NBD_OPT_GO")
    expect(cli.stderr()).toContain("PSK identity bob")
    await cli.stop()
  })

  it("usage: --tls needs credentials, --tls-psk needs --tls", async () => {
    const none = await runCli(["memory", "1M", "--port", "0", "--tls", "require"])
    expect(none.code).not.toBe(0)
    expect(none.stderr).toContain("--tls require needs --tls-certificates DIR or --tls-psk FILE")
    const unused = await runCli(["memory", "1M", "--port", "0", "--tls-psk", keys])
    expect(unused.code).not.toBe(0)
    expect(unused.stderr).toContain("--tls-psk needs --tls on or --tls require")
  })

  it("usage: --tls-verify-peer needs certificates; a malformed key file is refused with its line", async () => {
    const verify = await runCli(["memory", "1M", "--port", "0", "--tls", "on", "--tls-psk", keys, "--tls-verify-peer"])
    expect(verify.code).not.toBe(0)
    expect(verify.stderr).toContain("--tls-verify-peer needs --tls-certificates DIR")
    const bad = path.join(dir, "bad.psk")
    fs.writeFileSync(bad, `alice:${randomBytes(32).toString("hex")}\nbob:xyz\n`)
    const malformed = await runCli(["memory", "1M", "--port", "0", "--tls", "require", "--tls-psk", bad])
    expect(malformed.code).not.toBe(0)
    expect(malformed.stderr).toContain(`TLS-PSK file ${bad}: line 2: the key of 'bob' is not an even number of hex digits`)
  })

  it("the server is still up", () => {
    expect(server.exited()).toBe(false)
  })
})
