/**
 * Credentials of `npm run bench -- --tls`, made fresh in a temporary directory for the
 * run: a CA and a server certificate for 127.0.0.1 with openssl (RSA 2048, nbdkit's
 * directory layout), and a TLS-PSK key file for one user with psktool when it is
 * installed (else a random 32-byte key written in its format). Servers and clients of
 * both implementations use the same files.
 */
import { spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { TlsCredentials } from "./servers.ts"

/** The user the bench's clients connect as. */
const PSK_USER = "bench"

/** Credentials, and how to remove them. */
export interface BenchCredentials extends TlsCredentials {
  /** How the key file was made, for the report. */
  readonly pskMadeBy: "psktool" | "random"
  readonly remove: () => void
}

const check = (command: string, args: ReadonlyArray<string>) => {
  const result = spawnSync(command, [...args], { encoding: "utf8" })
  if (result.error !== undefined) throw new Error(`${command} could not start: ${result.error.message}`)
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${result.stderr.trim()}`)
}

/** Makes the certificates and the key file (throws if openssl is missing). */
export const makeCredentials = (): BenchCredentials => {
  const root = mkdtempSync(path.join(os.tmpdir(), "effect-nbd-bench-tls-"))
  try {
    const serverDir = path.join(root, "server")
    const clientDir = path.join(root, "client")
    mkdirSync(serverDir)
    mkdirSync(clientDir)
    const at = (name: string) => path.join(root, name)
    check("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=effect-nbd bench CA",
      "-keyout", at("ca-key.pem"), "-out", at("ca-cert.pem")])
    writeFileSync(at("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    check("openssl", ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
      "-keyout", path.join(serverDir, "server-key.pem"), "-out", at("server.csr")])
    check("openssl", ["x509", "-req", "-in", at("server.csr"), "-CA", at("ca-cert.pem"), "-CAkey", at("ca-key.pem"),
      "-CAcreateserial", "-days", "2", "-extfile", at("server.ext"), "-out", path.join(serverDir, "server-cert.pem")])
    copyFileSync(at("ca-cert.pem"), path.join(serverDir, "ca-cert.pem"))
    copyFileSync(at("ca-cert.pem"), path.join(clientDir, "ca-cert.pem"))

    const pskFile = path.join(root, "keys.psk")
    const psktool = spawnSync("psktool", ["-u", PSK_USER, "-p", pskFile], { stdio: "ignore" })
    const pskMadeBy = psktool.status === 0 ? "psktool" : "random"
    if (pskMadeBy === "random") writeFileSync(pskFile, `${PSK_USER}:${randomBytes(32).toString("hex")}\n`)
    return {
      serverDir,
      clientDir,
      pskFile,
      pskUser: PSK_USER,
      pskMadeBy,
      remove: () => rmSync(root, { recursive: true, force: true })
    }
  } catch (error) {
    rmSync(root, { recursive: true, force: true })
    throw error
  }
}
