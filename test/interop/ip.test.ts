/**
 * The ip filter through the `effect-nbd` command line with real clients (libnbd's
 * nbdinfo, qemu-img): clients allowed by address, Unix socket and TLS certificate subject
 * are served; refused ones get NBD_REP_ERR_POLICY with the filter's message, and the
 * server logs the refusal with the client's address.
 */
import { execFile, execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Certificates from "../support/Certificates.ts"
import { type Cli, killAll, runStatus, startCli } from "../support/Cli.ts"
import { available } from "../support/Tools.ts"

const MiB = 1024 * 1024

interface Status {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/**
 * `nbdinfo --json URI` with libnbd's debug output on standard error: nbdinfo itself
 * reports any refused NBD_OPT_INFO/GO as "Operation not supported", while the debug
 * output carries the server's error message.
 */
const nbdinfo = (uri: string): Promise<Status> =>
  new Promise((resolve, reject) => {
    execFile("nbdinfo", ["--json", uri], {
      encoding: "utf8",
      timeout: 15_000,
      killSignal: "SIGKILL",
      env: { ...process.env, LIBNBD_DEBUG: "1" }
    }, (error, stdout, stderr) => {
      if (error === null) resolve({ code: 0, stdout, stderr })
      else if (typeof error.code === "number") resolve({ code: error.code, stdout, stderr })
      else reject(new Error(`nbdinfo ${uri}: ${error.message}\nstderr: ${stderr}`))
    })
  })

/** libnbd's debug line with the server's message for a refusal by the ip filter. */
const REFUSED_BY_FILTER = /server error message: client \S+( \(certificate [^)]*\))? is not allowed by the ip filter/

/** Waits until the CLI has written `text` to its standard error (logs are asynchronous). */
const stderrContains = async (cli: Cli, text: string): Promise<string> => {
  for (let waited = 0; waited < 5_000 && !cli.stderr().includes(text); waited += 25) {
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  return cli.stderr()
}

/**
 * A second client certificate (`CN=effect-nbd other client`), signed by the CA of
 * `certificates`, in a directory laid out as libnbd's tls-certificates expects.
 */
const otherClient = (certificates: Certificates.Certificates, root: string): string => {
  const caKey = path.join(path.dirname(certificates.serverDir), "ca-key.pem")
  if (!fs.existsSync(caKey)) throw new Error(`the test CA key is not at ${caKey} (Certificates.make changed its layout)`)
  const dir = fs.mkdtempSync(path.join(root, "other-client-"))
  const at = (name: string) => path.join(dir, name)
  const openssl = (...args: Array<string>) => execFileSync("openssl", args, { stdio: "pipe" })
  fs.writeFileSync(at("client.ext"), "extendedKeyUsage=clientAuth\n")
  fs.writeFileSync(at("ca-cert.pem"), certificates.ca)
  openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=effect-nbd other client",
    "-keyout", at("client-key.pem"), "-out", at("client.csr"))
  openssl("x509", "-req", "-in", at("client.csr"), "-CA", at("ca-cert.pem"), "-CAkey", caKey,
    "-CAcreateserial", "-CAserial", at("ca.srl"), "-days", "2", "-extfile", at("client.ext"), "-out", at("client-cert.pem"))
  return dir
}

describe.skipIf(!available(["nbdinfo", "qemu-img", "openssl"]))("ip filter with real clients", () => {
  let dir: string

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-ip-"))
  })
  afterAll(async () => {
    await killAll()
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
  })

  it("allow=127.0.0.1,deny=all serves a client on 127.0.0.1", async () => {
    const { cli, served } = await startCli(["memory", "16M", "--port", "0", "--filter", "ip:allow=127.0.0.1,deny=all"])
    const result = await nbdinfo(served[0]!.uri)
    expect(result.code, result.stderr).toBe(0)
    expect(JSON.parse(result.stdout).exports[0]["export-size"]).toBe(16 * MiB)
    expect(cli.stderr()).not.toContain("refused")
    await cli.stop()
  })

  it("deny=all refuses the client with NBD_REP_ERR_POLICY and logs its address", async () => {
    const { cli, served } = await startCli(["memory", "16M", "--port", "0", "--filter", "ip:deny=all"])
    const uri = served[0]!.uri
    const result = await nbdinfo(uri)
    expect(result.code).not.toBe(0)
    expect(result.stdout).not.toContain("export-size")
    expect(result.stderr).toMatch(/client (127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):\d+ is not allowed by the ip filter/)
    // qemu names the reply type: "Denied by server" is its text for NBD_REP_ERR_POLICY.
    const qemu = await runStatus("qemu-img", ["info", uri], { timeout: 15_000 })
    expect(qemu.code).not.toBe(0)
    expect(qemu.stderr).toContain("Denied by server for option 7 (go)")
    expect(qemu.stderr).toContain("is not allowed by the ip filter")
    const log = await stderrContains(cli, "ip: refused client")
    expect(log).toMatch(/WARN/)
    expect(log).toMatch(/ip: refused client (127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):\d+ \(export ''\)/)
    expect(cli.exited(), "a refusal ends only that connection").toBe(false)
    await cli.stop()
  })

  it("on a Unix socket: allow=unix serves the client", async () => {
    const socket = path.join(dir, "nbd.sock")
    const { cli, served } = await startCli([
      "memory", "16M", "--unix", socket, "--filter", "ip:allow=unix,deny=all"
    ])
    const allowed = await nbdinfo(served[0]!.uri)
    expect(allowed.code, allowed.stderr).toBe(0)
    expect(JSON.parse(allowed.stdout).exports[0]["export-size"]).toBe(16 * MiB)
    await cli.stop()
  })

  it("on a Unix socket: an address rule does not match, deny=all refuses", async () => {
    const other = path.join(dir, "nbd-other.sock")
    const refusing = await startCli(["memory", "16M", "--unix", other, "--filter", "ip:allow=127.0.0.1,deny=all"])
    const refused = await nbdinfo(refusing.served[0]!.uri)
    expect(refused.code).not.toBe(0)
    expect(refused.stderr).toContain(`client on Unix socket ${other} is not allowed by the ip filter`)
    expect(await stderrContains(refusing.cli, "ip: refused client")).toContain(`on Unix socket ${other}`)
    await refusing.cli.stop()
  })

  describe("by TLS certificate subject", () => {
    let certificates: Certificates.Certificates
    let otherDir: string
    let cli: Cli
    let uri: string

    beforeAll(async () => {
      certificates = Certificates.make()
      otherDir = otherClient(certificates, dir)
      const started = await startCli([
        "memory", "16M", "--port", "0",
        "--tls", "require", "--tls-certificates", certificates.serverDir, "--tls-verify-peer",
        "--filter", "ip:allow=dn:CN=effect-nbd test client,deny=all"
      ])
      cli = started.cli
      uri = started.served[0]!.uri
    })
    afterAll(() => certificates?.remove())

    it("the client with the allowed certificate is served", async () => {
      const result = await nbdinfo(`${uri}?tls-certificates=${certificates.clientDir}`)
      expect(result.code, result.stderr).toBe(0)
      const info = JSON.parse(result.stdout)
      expect(info.TLS).toBe(true)
      expect(info.exports[0]["export-size"]).toBe(16 * MiB)
    })

    it("a client with another certificate from the same CA is refused by the filter", async () => {
      const result = await nbdinfo(`${uri}?tls-certificates=${otherDir}`)
      expect(result.code).not.toBe(0)
      expect(result.stderr).toMatch(REFUSED_BY_FILTER)
      expect(result.stderr).toContain("(certificate CN=effect-nbd other client) is not allowed by the ip filter")
      // Refused by the filter (after the TLS handshake), not by certificate verification.
      const log = await stderrContains(cli, "certificate CN=effect-nbd other client")
      expect(log).toMatch(/ip: refused client \S+ \(certificate CN=effect-nbd other client\)/)
      expect(log).not.toContain("certificate CN=effect-nbd test client)")
      // The allowed client still gets in afterwards.
      const again = await nbdinfo(`${uri}?tls-certificates=${certificates.clientDir}`)
      expect(again.code, again.stderr).toBe(0)
    })
  })
})
