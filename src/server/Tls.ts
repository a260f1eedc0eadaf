/**
 * TLS for NBD: the server's certificates and the STARTTLS upgrade of a connection.
 *
 * Modes, as in the spec: without a `TlsConfig` the server is in NOTLS mode (STARTTLS is
 * refused with ERR_POLICY); `"on"` lets clients upgrade (SELECTIVETLS with no TLS-only
 * export); `"require"` answers every option but STARTTLS and ABORT with ERR_TLS_REQD
 * until the connection is encrypted (FORCEDTLS).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as fs from "node:fs"
import * as path from "node:path"
import type { Duplex } from "node:stream"
import * as tls from "node:tls"
import { ProtocolViolation } from "../Errors.ts"

/** TLS settings of a server. */
export interface TlsConfig {
  readonly mode: "on" | "require"
  readonly secureContext: tls.SecureContext
  /** Ask clients for a certificate signed by the CA (when the context has one). */
  readonly verifyClients: boolean
}

/** How long a TLS handshake may take. */
const HANDSHAKE_TIMEOUT_MILLIS = 10_000

/**
 * Loads certificates from a directory laid out as nbdkit and qemu expect:
 * `server-cert.pem`, `server-key.pem`, and optionally `ca-cert.pem`. With `verifyPeer`
 * clients must present a certificate signed by that CA.
 */
export const loadCertificates = (
  directory: string,
  mode: TlsConfig["mode"],
  verifyPeer = false
): Effect.Effect<TlsConfig, Error> =>
  Effect.try({
    try: () => {
      const read = (name: string) => fs.readFileSync(path.join(directory, name))
      const caPath = path.join(directory, "ca-cert.pem")
      const ca = fs.existsSync(caPath) ? fs.readFileSync(caPath) : undefined
      if (verifyPeer && ca === undefined) throw new Error("verifying clients needs ca-cert.pem")
      const secureContext = tls.createSecureContext({
        cert: read("server-cert.pem"),
        key: read("server-key.pem"),
        ...(ca === undefined ? {} : { ca }),
        minVersion: "TLSv1.2"
      })
      return { mode, secureContext, verifyClients: verifyPeer }
    },
    catch: (cause) =>
      new Error(`cannot load TLS certificates from ${directory}: ${cause instanceof Error ? cause.message : String(cause)}`)
  })

/** Runs the server side of a TLS handshake over a stream; the result is the encrypted stream. */
export const upgrade = (stream: Duplex, config: TlsConfig): Effect.Effect<tls.TLSSocket, ProtocolViolation> =>
  Effect.async<tls.TLSSocket, ProtocolViolation>((resume) => {
    const socket = new tls.TLSSocket(stream, {
      isServer: true,
      secureContext: config.secureContext,
      requestCert: config.verifyClients,
      rejectUnauthorized: config.verifyClients
    })
    const timer = setTimeout(() => fail(new Error("TLS handshake timed out")), HANDSHAKE_TIMEOUT_MILLIS)
    const fail = (error: Error) => {
      clearTimeout(timer)
      socket.off("secure", secure)
      socket.destroy()
      resume(Effect.fail(new ProtocolViolation({ message: `TLS handshake failed: ${error.message}` })))
    }
    const secure = () => {
      clearTimeout(timer)
      socket.off("error", fail)
      socket.on("error", () => {}) // later errors end the session through the frame reader
      resume(Effect.succeed(socket))
    }
    socket.once("secure", secure)
    socket.once("error", fail)
    return Effect.sync(() => {
      clearTimeout(timer)
      socket.destroy()
    })
  })
