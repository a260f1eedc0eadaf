/**
 * TLS for NBD: the server's credentials (X.509 certificates, pre-shared keys, or both) and
 * the STARTTLS upgrade of a connection.
 *
 * Modes, as in the spec: without a `TlsConfig` the server is in NOTLS mode (STARTTLS is
 * refused with ERR_POLICY); `"on"` lets clients upgrade (SELECTIVETLS with no TLS-only
 * export); `"require"` answers every option but STARTTLS and ABORT with ERR_TLS_REQD
 * until the connection is encrypted (FORCEDTLS).
 *
 * Credentials, as nbdkit and qemu take them:
 * - X.509 ({@link loadCertificates}): a directory with `server-cert.pem`, `server-key.pem`
 *   and optionally `ca-cert.pem`; with `verifyPeer` clients must present a certificate
 *   signed by that CA. The client's identity is its certificate's subject.
 * - TLS-PSK ({@link loadPsk}): a file in psktool's format, one `username:hexkey` per line
 *   (`psktool -u alice -p keys.psk`). A client proves it holds the key of a user; the user
 *   name is its identity (`ClientInfo.tls.psk`, and `psk:NAME` in the ip filter).
 * - Both ({@link load} with `certificates` and `pskFile`): X.509 clients and PSK clients on
 *   the same port. `verifyPeer` applies to X.509 clients; a PSK client proved itself by its key.
 *
 * Files are read once, when the configuration is loaded: a changed key file takes effect
 * on the next start. A malformed file fails the load with a {@link TlsConfigError} naming
 * the file and line.
 *
 * PSK and the ciphers: Node's PSK callback gives TLS 1.3 a key hashed with SHA-256, so
 * with PSK the TLS 1.3 suites are limited to `TLS_AES_128_GCM_SHA256` and
 * `TLS_CHACHA20_POLY1305_SHA256` (a client that prefers `TLS_AES_256_GCM_SHA384`, as GnuTLS
 * does, then picks AES-128-GCM and its PSK is accepted), for X.509 clients of the same
 * server too. TLS 1.2 clients get the PSK suites of {@link PSK_TLS12_CIPHERS}.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as fs from "node:fs"
import * as path from "node:path"
import type { Duplex } from "node:stream"
import * as tls from "node:tls"
import { ProtocolViolation } from "../Errors.ts"
import * as OwnedReceive from "../stream/OwnedReceive.ts"

/**
 * Pre-shared keys by identity (user name), as read from a psktool file.
 *
 * @since 0.3.0
 * @category models
 */
export type PskKeys = ReadonlyMap<string, Uint8Array>

/**
 * TLS settings of a server.
 *
 * @since 0.1.0
 * @category models
 */
export interface TlsConfig {
  readonly mode: "on" | "require"
  /**
   * The server's TLS context: its certificate, key and CA for X.509 clients (none when
   * only PSK is configured), and the ciphers PSK needs when {@link psk} is set.
   */
  readonly secureContext: tls.SecureContext
  /** Ask X.509 clients for a certificate signed by the CA (when the context has one). */
  readonly verifyClients: boolean
  /**
   * Keys of PSK clients by user name; absent: no PSK (X.509 only).
   *
   * @since 0.3.0
   */
  readonly psk?: PskKeys | undefined
}

/**
 * TLS credentials could not be loaded: `reason` tells which part, `source` names the
 * directory or file, `message` says what is wrong (with the line of a key file).
 *
 * @since 0.3.0
 * @category errors
 */
export class TlsConfigError extends Data.TaggedError("TlsConfigError")<{
  readonly reason: "Certificates" | "PskFile" | "NoCredentials"
  readonly source: string
  readonly message: string
}> {}

/**
 * What {@link load} reads: certificates, a PSK file, or both.
 *
 * @since 0.3.0
 * @category models
 */
export interface TlsOptions {
  readonly mode: TlsConfig["mode"]
  /** Directory with `server-cert.pem`, `server-key.pem` and optionally `ca-cert.pem` (nbdkit's layout). */
  readonly certificates?: string | undefined
  /** Require X.509 clients to present a certificate signed by `ca-cert.pem` (needs `certificates`). */
  readonly verifyPeer?: boolean | undefined
  /** psktool's key file: one `username:hexkey` per line. */
  readonly pskFile?: string | undefined
}

/** X.509 material in memory, for {@link make}. */
export interface Certificates {
  readonly cert: string | Buffer
  readonly key: string | Buffer
  readonly ca?: string | Buffer | undefined
}

/** How long a TLS handshake may take. */
const HANDSHAKE_TIMEOUT_MILLIS = 10_000

/** The longest key OpenSSL accepts from a PSK callback (PSK_MAX_PSK_LEN), in bytes. */
const MAX_PSK_BYTES = 512
/** The longest identity OpenSSL passes to a PSK callback (PSK_MAX_IDENTITY_LEN), in bytes. */
const MAX_IDENTITY_BYTES = 256

/**
 * TLS 1.3 suites whose hash is SHA-256, the one Node's PSK callback gives a key for.
 *
 * @since 0.3.0
 */
export const PSK_TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"

/**
 * TLS 1.2 PSK suites offered besides the default (certificate) ones: ECDHE-PSK for forward
 * secrecy, plain PSK with AEAD for clients without it.
 *
 * @since 0.3.0
 */
export const PSK_TLS12_CIPHERS =
  "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:" +
  "PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305"

/**
 * The OpenSSL cipher string of a server with PSK: the TLS 1.3 suites above, then Node's
 * default TLS 1.2 list (whose `!PSK`, which would remove PSK suites for good, becomes
 * `-PSK`), then the PSK suites.
 */
const pskCiphers = (): string => {
  const tls12 = tls.DEFAULT_CIPHERS.split(":")
    .filter((cipher) => !cipher.startsWith("TLS_"))
    .map((cipher) => (cipher === "!PSK" ? "-PSK" : cipher))
  return [PSK_TLS13_SUITES, ...tls12, PSK_TLS12_CIPHERS].join(":")
}

const isHex = (text: string) => /^(?:[0-9a-fA-F]{2})+$/.test(text)

/**
 * Parses a key file in psktool's format: one `username:hexkey` per line, blank lines
 * ignored. As in GnuTLS, a user name starting with `#` is hex-encoded (psktool writes a
 * name that contains `:` that way). Fails with a message naming the line of the first
 * problem: no `:`, an empty name, a key that is not an even number of hex digits or is
 * longer than 512 bytes, a user listed twice, or no key at all.
 *
 * @since 0.3.0
 * @category parsing
 */
export const parsePsk = (text: string): Either.Either<PskKeys, string> => {
  const keys = new Map<string, Uint8Array>()
  const lineOf = new Map<string, number>()
  const lines = text.split("\n")
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, "")
    const at = `line ${i + 1}`
    if (line.trim() === "") continue
    const colon = line.indexOf(":")
    if (colon < 0) return Either.left(`${at}: expected username:hexkey`)
    const field = line.slice(0, colon)
    const hex = line.slice(colon + 1).trim()
    if (field === "") return Either.left(`${at}: empty username`)
    let name = field
    if (field.startsWith("#")) {
      if (!isHex(field.slice(1))) {
        return Either.left(`${at}: username '${field}' starts with '#' but the rest is not hex (a '#' name is hex-encoded)`)
      }
      name = Buffer.from(field.slice(1), "hex").toString("utf8")
    }
    if (Buffer.byteLength(name) > MAX_IDENTITY_BYTES) {
      return Either.left(`${at}: username longer than ${MAX_IDENTITY_BYTES} bytes`)
    }
    if (!isHex(hex)) return Either.left(`${at}: the key of '${name}' is not an even number of hex digits`)
    if (hex.length / 2 > MAX_PSK_BYTES) return Either.left(`${at}: the key of '${name}' is longer than ${MAX_PSK_BYTES} bytes`)
    const previous = lineOf.get(name)
    if (previous !== undefined) return Either.left(`${at}: user '${name}' already has a key on line ${previous}`)
    keys.set(name, new Uint8Array(Buffer.from(hex, "hex")))
    lineOf.set(name, i + 1)
  }
  if (keys.size === 0) return Either.left("no keys (expected lines of username:hexkey, as psktool writes them)")
  return Either.right(keys)
}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/**
 * Builds a configuration from credentials in memory: X.509 certificates, PSK keys, or
 * both. At least one is needed; `verifyPeer` needs certificates with a CA.
 *
 * @since 0.3.0
 * @category constructors
 */
export const make = (options: {
  readonly mode: TlsConfig["mode"]
  readonly certificates?: Certificates | undefined
  readonly verifyPeer?: boolean | undefined
  readonly psk?: PskKeys | undefined
}): Effect.Effect<TlsConfig, TlsConfigError> =>
  Effect.try({
    try: () => {
      const { certificates, psk } = options
      const verifyPeer = options.verifyPeer ?? false
      if (certificates === undefined && psk === undefined) {
        throw new TlsConfigError({ reason: "NoCredentials", source: "", message: "TLS needs certificates or pre-shared keys" })
      }
      if (verifyPeer && certificates?.ca === undefined) {
        throw new TlsConfigError({
          reason: "Certificates",
          source: "",
          message: "verifying clients needs a CA certificate (ca-cert.pem)"
        })
      }
      const secureContext = tls.createSecureContext({
        ...(certificates === undefined ? {} : { cert: certificates.cert, key: certificates.key }),
        ...(certificates?.ca === undefined ? {} : { ca: certificates.ca }),
        // With PSK the server's order decides: GnuTLS clients would otherwise pick ChaCha20, slower for them than AES-GCM.
        ...(psk === undefined ? {} : { ciphers: pskCiphers(), honorCipherOrder: true }),
        // OpenSSL refuses a PSK handshake of TLS 1.3 (a resumption to it) while verifying peers without this.
        sessionIdContext: "effect-nbd",
        minVersion: "TLSv1.2"
      })
      return { mode: options.mode, secureContext, verifyClients: verifyPeer, ...(psk === undefined ? {} : { psk }) }
    },
    catch: (cause) =>
      cause instanceof TlsConfigError
        ? cause
        : new TlsConfigError({ reason: "Certificates", source: "", message: messageOf(cause) })
  })

/**
 * Reads X.509 certificates from a directory in nbdkit's and qemu's layout:
 * `server-cert.pem`, `server-key.pem`, and optionally `ca-cert.pem`.
 *
 * @since 0.3.0
 * @category loading
 */
export const readCertificates = (directory: string): Effect.Effect<Certificates, TlsConfigError> =>
  Effect.try({
    try: () => {
      const read = (name: string) => fs.readFileSync(path.join(directory, name))
      const caPath = path.join(directory, "ca-cert.pem")
      const ca = fs.existsSync(caPath) ? fs.readFileSync(caPath) : undefined
      return { cert: read("server-cert.pem"), key: read("server-key.pem"), ca }
    },
    catch: (cause) =>
      new TlsConfigError({
        reason: "Certificates",
        source: directory,
        message: `cannot load TLS certificates from ${directory}: ${messageOf(cause)}`
      })
  })

/**
 * Reads a psktool key file (see {@link parsePsk}).
 *
 * @since 0.3.0
 * @category loading
 */
export const readPsk = (file: string): Effect.Effect<PskKeys, TlsConfigError> =>
  Effect.flatMap(
    Effect.try({
      try: () => fs.readFileSync(file, "utf8"),
      catch: (cause) =>
        new TlsConfigError({ reason: "PskFile", source: file, message: `cannot read TLS-PSK file ${file}: ${messageOf(cause)}` })
    }),
    (text) =>
      Either.match(parsePsk(text), {
        onLeft: (problem) =>
          Effect.fail(new TlsConfigError({ reason: "PskFile", source: file, message: `TLS-PSK file ${file}: ${problem}` })),
        onRight: Effect.succeed
      })
  )

/**
 * Loads certificates, a PSK file, or both (X.509 and PSK clients on one server).
 *
 * @since 0.3.0
 * @category loading
 */
export const load = (options: TlsOptions): Effect.Effect<TlsConfig, TlsConfigError> =>
  Effect.gen(function*() {
    const directory = options.certificates
    const certificates = directory === undefined ? undefined : yield* readCertificates(directory)
    const psk = options.pskFile === undefined ? undefined : yield* readPsk(options.pskFile)
    return yield* make({ mode: options.mode, certificates, verifyPeer: options.verifyPeer, psk }).pipe(
      Effect.mapError((e) =>
        directory !== undefined && e.reason === "Certificates"
          ? new TlsConfigError({
            reason: e.reason,
            source: directory,
            message: `cannot load TLS certificates from ${directory}: ${e.message}`
          })
          : e
      )
    )
  })

/**
 * Loads certificates from a directory laid out as nbdkit and qemu expect:
 * `server-cert.pem`, `server-key.pem`, and optionally `ca-cert.pem`. With `verifyPeer`
 * clients must present a certificate signed by that CA.
 *
 * @since 0.1.0
 * @category loading
 */
export const loadCertificates = (
  directory: string,
  mode: TlsConfig["mode"],
  verifyPeer = false
): Effect.Effect<TlsConfig, TlsConfigError> => load({ mode, certificates: directory, verifyPeer })

/**
 * Loads a psktool key file for a server with TLS-PSK only.
 *
 * @since 0.3.0
 * @category loading
 */
export const loadPsk = (file: string, mode: TlsConfig["mode"]): Effect.Effect<TlsConfig, TlsConfigError> =>
  load({ mode, pskFile: file })

/** The PSK user each server socket's client named in its handshake (Node has no getter for it). */
const pskUsers = new WeakMap<tls.TLSSocket, string>()

/**
 * The PSK user name a client authenticated with, if its session was established with a
 * pre-shared key (TLS 1.2 with a PSK cipher, or TLS 1.3 with an external PSK); none for
 * an X.509 session.
 *
 * @since 0.3.0
 * @category identity
 */
export const pskIdentity = (socket: tls.TLSSocket): Option.Option<string> => {
  const user = pskUsers.get(socket)
  if (user === undefined) return Option.none()
  // TLS 1.3 PSK is a resumed session to OpenSSL (Node's own certificate check reads it so too).
  const usedPsk = socket.getProtocol() === "TLSv1.3"
    ? socket.isSessionReused()
    : (socket.getCipher()?.name ?? "").includes("PSK")
  return usedPsk ? Option.some(user) : Option.none()
}

/**
 * Runs the server side of a TLS handshake over a stream; the result is the encrypted stream.
 * With `receiveBufferSize`, decrypted bytes arrive in one buffer of that size owned by the
 * connection ({@link OwnedReceive.adoptTls}) where the Node.js release allows it.
 *
 * @since 0.1.0
 */
export const upgrade = (
  stream: Duplex,
  config: TlsConfig,
  receiveBufferSize?: number
): Effect.Effect<tls.TLSSocket, ProtocolViolation> =>
  Effect.async<tls.TLSSocket, ProtocolViolation>((resume) => {
    const keys = config.psk
    // Node reads `pskCallback` in the TLSSocket constructor too, though its types list it for servers only.
    const psk: Pick<tls.TlsOptions, "pskCallback"> = keys === undefined ? {} : {
      pskCallback: (owner, identity) => {
        const key = keys.get(identity)
        if (key === undefined) return null
        pskUsers.set(owner, identity)
        return key
      }
    }
    const options: tls.TLSSocketOptions = {
      isServer: true,
      secureContext: config.secureContext,
      requestCert: config.verifyClients,
      rejectUnauthorized: config.verifyClients
    }
    const socket = new tls.TLSSocket(stream, { ...options, ...psk })
    if (receiveBufferSize !== undefined) OwnedReceive.adoptTls(socket, receiveBufferSize)
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
