/**
 * Test certificates made with openssl: a CA, a server certificate for 127.0.0.1 and
 * localhost, and a client certificate, in the directory layouts nbdkit and libnbd use.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

/** Directories of certificates; `remove` deletes them. */
export interface Certificates {
  /** server-cert.pem, server-key.pem, ca-cert.pem */
  readonly serverDir: string
  /** ca-cert.pem, client-cert.pem, client-key.pem (what libnbd's tls-certificates expects) */
  readonly clientDir: string
  readonly ca: Buffer
  readonly clientCert: Buffer
  readonly clientKey: Buffer
  readonly remove: () => void
}

/** Makes fresh certificates (takes a moment: RSA keys). */
export const make = (): Certificates => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-tls-"))
  const serverDir = path.join(root, "server")
  const clientDir = path.join(root, "client")
  fs.mkdirSync(serverDir)
  fs.mkdirSync(clientDir)
  const at = (name: string) => path.join(root, name)
  const openssl = (...args: Array<string>) => execFileSync("openssl", args, { stdio: "pipe" })

  openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=effect-nbd test CA",
    "-keyout", at("ca-key.pem"), "-out", at("ca-cert.pem"))
  const signed = (name: string, subject: string, extensions: string) => {
    fs.writeFileSync(at(`${name}.ext`), extensions)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", at(`${name}-key.pem`), "-out", at(`${name}.csr`))
    openssl("x509", "-req", "-in", at(`${name}.csr`), "-CA", at("ca-cert.pem"), "-CAkey", at("ca-key.pem"),
      "-CAcreateserial", "-days", "2", "-extfile", at(`${name}.ext`), "-out", at(`${name}-cert.pem`))
  }
  signed("server", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
  signed("client", "/CN=effect-nbd test client", "extendedKeyUsage=clientAuth\n")

  for (const [dir, names] of [[serverDir, ["ca-cert", "server-cert", "server-key"]], [clientDir, ["ca-cert", "client-cert", "client-key"]]] as const) {
    for (const name of names) fs.copyFileSync(at(`${name}.pem`), path.join(dir, `${name}.pem`))
  }
  return {
    serverDir,
    clientDir,
    ca: fs.readFileSync(at("ca-cert.pem")),
    clientCert: fs.readFileSync(at("client-cert.pem")),
    clientKey: fs.readFileSync(at("client-key.pem")),
    remove: () => fs.rmSync(root, { recursive: true, force: true })
  }
}
