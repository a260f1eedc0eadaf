/**
 * The `ip` filter: allows or refuses clients by their address, their transport or their
 * TLS identity (as nbdkit's ip filter, with certificate subjects and PSK identities).
 *
 * The decision is made when a client opens the export, before the driver below is
 * opened, in nbdkit's order: a client matched by an `allow` rule is allowed; otherwise
 * a client matched by a `deny` rule is refused; otherwise it is allowed. A refused
 * client gets NBD_REP_ERR_POLICY for INFO and GO (the connection is closed after
 * EXPORT_NAME), and the refusal is logged at warning level with the client's address.
 * In-process clients (no socket) are always allowed. Requests of an allowed client pass
 * through untouched, the synchronous fast path included.
 *
 * Rules (comma-separated; see `IpRules` for the details):
 * - `127.0.0.1`, `::1`: one address; an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`)
 *   is the IPv4 address, in rules and client addresses alike
 * - `10.0.0.0/8`, `fd00::/8`: a CIDR range
 * - `all`: every client; `anyipv4`, `anyipv6`: every TCP client of that family
 * - `unix`: clients on a Unix socket
 * - `dn:SUBJECT`: a TLS client whose certificate subject is exactly SUBJECT, as the
 *   server formats it (`dn:CN=alice,O=example`: the commas of a subject belong to it)
 * - `psk:IDENTITY`: a TLS client with that pre-shared-key identity
 *
 * Parameters:
 * - `allow=LIST` (default: none): clients matched are allowed
 * - `deny=LIST` (default: none): clients matched, unless allowed, are refused
 *
 * For example `allow=127.0.0.1,::1,deny=all` serves only local TCP clients, and
 * `allow=dn:CN=backup,deny=all` only the TLS client with that certificate.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import { optionReplyError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import * as IpRules from "./IpRules.ts"

/** Rules of the ip filter: each item is one rule (so a `dn:` subject may contain commas). */
export interface IpOptions {
  /** Clients matched are allowed (default: none). */
  readonly allow?: ReadonlyArray<string> | undefined
  /** Clients matched, unless allowed, are refused (default: none). */
  readonly deny?: ReadonlyArray<string> | undefined
}

/** Refuses a client with NBD_REP_ERR_POLICY, logged at warning level. */
const refuse = (request: Driver.OpenRequest) => {
  const who = IpRules.describeClient(request.client)
  return Effect.zipRight(
    Effect.logWarning(`ip: refused client ${who} (export '${request.exportName}')`),
    Effect.fail(optionReplyError("POLICY", `client ${who} is not allowed by the ip filter`))
  )
}

/** Wraps a driver so that only clients the rules allow can open it; the driver below is not opened for others. */
export const apply = (below: Driver.NbdDriverShape, rules: IpRules.Policy): Driver.NbdDriverShape => ({
  name: `ip+${below.name}`,
  canonicalName: below.canonicalName,
  description: below.description,
  open: (request) => IpRules.isAllowed(rules, request.client) ? below.open(request) : refuse(request)
})

/** The filter, for `Driver.stack`; fails with a {@link Params.ParameterError} naming a malformed rule. */
export const make = (options: IpOptions): Driver.Filter<Params.ParameterError> => (below) =>
  Either.match(IpRules.policy(options), {
    onLeft: (message) => Effect.fail(new Params.ParameterError({ message: `ip: ${message}` })),
    onRight: (rules) => Effect.succeed(apply(below, rules))
  })

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: IpOptions): Layer.Layer<Driver.NbdDriver, Params.ParameterError, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  {
    name: "allow",
    description:
      "rules of clients allowed (optional): ADDRESS, ADDRESS/PREFIX, all, anyipv4, anyipv6, unix, dn:SUBJECT, psk:IDENTITY"
  },
  { name: "deny", description: "rules of clients refused unless an allow rule matches them (optional)" }
]

/**
 * `parsePairs` splits text at every `KEY=` it sees, so `allow=::1,dn:CN=alice,O=example`
 * arrives as `allow`, `dn:CN` and `O`: a key that starts a `dn:` or `psk:` rule, or that
 * follows a list ending in a `dn:` rule, is given back to the list before it.
 */
const rejoinSubjects = (pairs: ReadonlyMap<string, string>): ReadonlyMap<string, string> => {
  const joined = new Map<string, string>()
  let last: string | undefined
  for (const [key, value] of pairs) {
    const previous = last === undefined ? undefined : joined.get(last)
    const continues = key.startsWith("dn:") || key.startsWith("psk:") ||
      (previous !== undefined && IpRules.endsInSubject(previous))
    if (key !== "allow" && key !== "deny" && previous !== undefined && continues) {
      joined.set(last!, `${previous},${key}=${value}`)
    } else {
      joined.set(key, value)
      last = key
    }
  }
  return joined
}

/** The filter by name, for the command line (`--filter ip:allow=127.0.0.1,::1,deny=all`). */
export const plugin: FilterPlugin = {
  name: "ip",
  summary: "allows or refuses clients by address, Unix socket or TLS identity (NBD_REP_ERR_POLICY)",
  parameters,
  make: (pairs) =>
    Params.decode("ip", rejoinSubjects(pairs), parameters, (reader) => {
      const list = (name: string) => IpRules.splitRules(reader.text(name) ?? "")
      return Either.match(IpRules.policy({ allow: list("allow"), deny: list("deny") }), {
        onLeft: (message): Driver.Filter => {
          throw new Params.ParameterError({ message: `ip: ${message}` })
        },
        onRight: (rules): Driver.Filter => (below) => Effect.succeed(apply(below, rules))
      })
    })
}
