/**
 * NBD URIs (NetworkBlockDevice/nbd doc/uri.md), parsed by a pure function.
 *
 * Accepted forms:
 * - `nbd://HOST[:PORT]/[EXPORT]`: TCP, no TLS; `HOST` may be an IPv6 literal in
 *   brackets (`[::1]`), defaults to `localhost` when empty; `PORT` defaults to 10809.
 * - `nbds://HOST[:PORT]/[EXPORT]`: TCP with TLS required (STARTTLS).
 * - `nbd+unix:///[EXPORT]?socket=PATH`, `nbds+unix:///[EXPORT]?socket=PATH`: a Unix
 *   socket, without or with TLS (a `PATH` beginning with `%00` is in the abstract namespace).
 *
 * The export name is the path after its first `/`, percent-decoded (`nbd://h//disk` is
 * `/disk`, `nbd://h/a%20b` is `a b`); query values are percent-decoded too (`+` stays `+`).
 *
 * Query parameters (others are refused, as the URI document asks of parsers):
 * - `socket=PATH`: the Unix socket (required for, and only allowed with, `+unix` schemes)
 * - `tls-certificates=DIR`: a directory holding `ca-cert.pem`, and `client-cert.pem` +
 *   `client-key.pem` when the server wants a client certificate (libnbd's layout)
 * - `tls-verify-peer=BOOL` (default true): verify the server's certificate and name
 * - `tls-hostname=NAME`: the name the certificate must carry (default: the URI's host;
 *   none over a Unix socket, where only the chain is verified)
 * - `tls-type=x509` (default): the only TLS method supported (no PSK, no anonymous)
 * The TLS parameters need an `nbds` scheme.
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import { isIPv6 } from "node:net"
import { DEFAULT_PORT, MAX_STRING_BYTES } from "../protocol/Constants.ts"

/** Where the server listens. */
export type Endpoint =
  | { readonly _tag: "Tcp"; readonly host: string; readonly port: number }
  | { readonly _tag: "Unix"; readonly path: string }

/** TLS settings of an `nbds` URI. */
export interface TlsSettings {
  /** Directory of `ca-cert.pem` (and `client-cert.pem`, `client-key.pem`), if given. */
  readonly certificates: string | undefined
  /** Verify the server's certificate chain and name. */
  readonly verifyPeer: boolean
  /** Name to verify the certificate against, if given (`tls-hostname`). */
  readonly hostname: string | undefined
}

/** A parsed NBD URI. */
export interface NbdUri {
  /** The URI as given (for messages). */
  readonly text: string
  readonly endpoint: Endpoint
  readonly exportName: string
  /** Set for `nbds` and `nbds+unix`: TLS is required. */
  readonly tls: TlsSettings | undefined
  /** The authority's user name, if any (kept for reference: only PSK would use it). */
  readonly user: string | undefined
}

/** A URI that is not an NBD URI we can use; `message` says why. */
export class NbdUriError extends Data.TaggedError("NbdUriError")<{
  readonly uri: string
  readonly message: string
}> {}

/** RFC 3986 appendix B: scheme, authority, path, query, fragment. */
const URI = /^([^:/?#]+):(?:\/\/([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$/

const SCHEMES = ["nbd", "nbds", "nbd+unix", "nbds+unix"] as const
const TLS_PARAMETERS = ["tls-certificates", "tls-verify-peer", "tls-hostname", "tls-type"] as const
const PARAMETERS: ReadonlyArray<string> = ["socket", ...TLS_PARAMETERS]

/** A failure of one parsing step, turned into an {@link NbdUriError} by {@link parse}. */
class Invalid {
  constructor(readonly message: string) {}
}
const invalid = (message: string): never => {
  throw new Invalid(message)
}

/** Strict percent-decoding: a `%` must start a valid UTF-8 escape. */
const decode = (text: string, what: string): string => {
  try {
    return decodeURIComponent(text)
  } catch {
    return invalid(`${what} '${text}' has an invalid percent-encoding`)
  }
}

/** The query as decoded pairs; a repeated or malformed parameter is refused. */
const parseQuery = (query: string | undefined): ReadonlyMap<string, string> => {
  const pairs = new Map<string, string>()
  for (const segment of (query ?? "").split("&")) {
    if (segment === "") continue
    const equals = segment.indexOf("=")
    if (equals < 0) invalid(`query parameter '${segment}' has no value (expected KEY=VALUE)`)
    const key = decode(segment.slice(0, equals), "query parameter")
    if (!PARAMETERS.includes(key)) {
      if (key === "tls-psk-file" || key === "tls-username") invalid(`'${key}': TLS with pre-shared keys is not supported`)
      invalid(`unknown query parameter '${key}' (accepted: ${PARAMETERS.join(", ")})`)
    }
    if (pairs.has(key)) invalid(`query parameter '${key}' is given twice`)
    pairs.set(key, decode(segment.slice(equals + 1), `'${key}'`))
  }
  return pairs
}

/** Splits `[userinfo@]host[:port]`. */
const parseAuthority = (authority: string) => {
  const at = authority.lastIndexOf("@")
  const userinfo = at < 0 ? undefined : authority.slice(0, at)
  const hostPort = authority.slice(at + 1)
  if (userinfo?.includes(":")) invalid("passwords in the URI are not supported")
  let host: string
  let portText: string | undefined
  if (hostPort.startsWith("[")) {
    const close = hostPort.indexOf("]")
    if (close < 0) invalid(`'${hostPort}': IPv6 address without its closing ']'`)
    host = decode(hostPort.slice(1, close), "host")
    if (!isIPv6(host.split("%")[0]!)) invalid(`'${host}' is not an IPv6 address`)
    const rest = hostPort.slice(close + 1)
    if (rest !== "" && !rest.startsWith(":")) invalid(`unexpected '${rest}' after the IPv6 address`)
    portText = rest === "" ? undefined : rest.slice(1)
  } else {
    const colon = hostPort.indexOf(":")
    host = decode(colon < 0 ? hostPort : hostPort.slice(0, colon), "host")
    portText = colon < 0 ? undefined : hostPort.slice(colon + 1)
    if (/[\s[\]]/.test(host)) invalid(`'${host}' is not a valid host name`)
  }
  return { user: userinfo === undefined ? undefined : decode(userinfo, "user name"), host, portText }
}

const parsePort = (text: string | undefined): number => {
  if (text === undefined || text === "") return DEFAULT_PORT
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN
  return port >= 1 && port <= 65535 ? port : invalid(`port '${text}' is not a number from 1 to 65535`)
}

const parseExportName = (path: string): string => {
  if (path !== "" && !path.startsWith("/")) invalid(`the export name must follow a '/' (got '${path}')`)
  const name = decode(path.slice(1), "export name")
  if (name.includes("\0")) invalid("the export name contains a NUL character")
  if (Buffer.byteLength(name) > MAX_STRING_BYTES) invalid(`the export name is longer than ${MAX_STRING_BYTES} bytes`)
  return name
}

const parseBoolean = (key: string, text: string): boolean => {
  if (["1", "true", "yes", "on"].includes(text.toLowerCase())) return true
  if (["0", "false", "no", "off"].includes(text.toLowerCase())) return false
  return invalid(`'${key}' must be true or false (or 1 or 0), not '${text}'`)
}

const parseTls = (query: ReadonlyMap<string, string>, scheme: string, tls: boolean): TlsSettings | undefined => {
  if (!tls) {
    const given = TLS_PARAMETERS.find((key) => query.has(key))
    if (given !== undefined) invalid(`'${given}' needs a TLS scheme (nbds:// or nbds+unix://), not ${scheme}://`)
    return undefined
  }
  const type = query.get("tls-type")
  if (type !== undefined && type !== "x509") invalid(`tls-type '${type}' is not supported (only x509)`)
  const verify = query.get("tls-verify-peer")
  const certificates = query.get("tls-certificates")
  const hostname = query.get("tls-hostname")
  if (certificates === "") invalid("'tls-certificates' is empty")
  return { certificates, verifyPeer: verify === undefined ? true : parseBoolean("tls-verify-peer", verify), hostname }
}

const parseEndpoint = (
  scheme: string,
  authority: ReturnType<typeof parseAuthority> | undefined,
  query: ReadonlyMap<string, string>
): Endpoint => {
  const socket = query.get("socket")
  if (scheme.endsWith("+unix")) {
    if (socket === undefined || socket === "") return invalid(`${scheme}:// needs a 'socket=PATH' query parameter`)
    if (authority !== undefined && (authority.host !== "" || authority.portText !== undefined)) {
      invalid(`${scheme}:// takes no host or port (the socket is given by 'socket=')`)
    }
    return { _tag: "Unix", path: socket }
  }
  if (socket !== undefined) invalid(`'socket' is only for nbd+unix:// and nbds+unix://, not ${scheme}://`)
  if (authority === undefined) return invalid(`${scheme}: needs '//HOST' after the scheme`)
  return { _tag: "Tcp", host: authority.host === "" ? "localhost" : authority.host, port: parsePort(authority.portText) }
}

const parseUnsafe = (text: string): Omit<NbdUri, "text"> => {
  const match = URI.exec(text.trim())
  if (match === null) return invalid("not a URI (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)")
  const [, rawScheme, rawAuthority, path, rawQuery, fragment] = match
  const scheme = rawScheme!.toLowerCase()
  if (scheme === "nbd+vsock" || scheme === "nbds+vsock") invalid(`${scheme}:// (AF_VSOCK) is not supported`)
  if (!(SCHEMES as ReadonlyArray<string>).includes(scheme)) {
    invalid(`unknown scheme '${rawScheme}' (expected ${SCHEMES.join(", ")})`)
  }
  if (fragment !== undefined) invalid(`fragments ('#${fragment}') are not allowed`)
  const authority = rawAuthority === undefined ? undefined : parseAuthority(rawAuthority)
  const query = parseQuery(rawQuery)
  const tls = scheme.startsWith("nbds")
  return {
    endpoint: parseEndpoint(scheme, authority, query),
    exportName: parseExportName(path!),
    tls: parseTls(query, scheme, tls),
    user: authority?.user
  }
}

/** Parses an NBD URI; a `Left` says what is wrong with it. */
export const parse = (text: string): Either.Either<NbdUri, NbdUriError> => {
  try {
    return Either.right({ text, ...parseUnsafe(text) })
  } catch (error) {
    if (error instanceof Invalid) return Either.left(new NbdUriError({ uri: text, message: `${text}: ${error.message}` }))
    throw error
  }
}

/** Where a URI connects, for messages: `HOST:PORT` (IPv6 in brackets) or the socket path. */
export const describeEndpoint = (endpoint: Endpoint): string =>
  endpoint._tag === "Unix"
    ? `unix socket ${endpoint.path}`
    : `${endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`
