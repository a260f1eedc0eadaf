/**
 * Access rules of the `ip` filter: parsing `allow=`/`deny=` rule text, and matching a
 * client (its transport and TLS identity) against the rules.
 *
 * A rule is one of:
 * - an IPv4 or IPv6 address (`127.0.0.1`, `::1`);
 * - a CIDR range (`10.0.0.0/8`, `fd00::/8`);
 * - `all` (every client that reaches the check), `anyipv4`, `anyipv6`;
 * - `unix`: clients on a Unix socket;
 * - `dn:SUBJECT`: a TLS client whose certificate subject, as the server formats it
 *   (`CN=alice,O=example`: the attributes in certificate order, joined by commas), is
 *   exactly `SUBJECT`;
 * - `psk:IDENTITY`: a TLS client that used the pre-shared key of `IDENTITY`.
 *
 * An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is the IPv4 address it carries, for
 * client addresses and rules alike: it matches `127.0.0.1` rules and `anyipv4`, never
 * `anyipv6`.
 *
 * @since 0.2.0
 */
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as net from "node:net"
import type { ClientInfo } from "../Driver.ts"

/** An IP address family, as `net.BlockList` names them. */
export type Family = "ipv4" | "ipv6"

/** An address with its family; IPv4-mapped IPv6 addresses are given as IPv4. */
export interface IpAddress {
  readonly family: Family
  readonly address: string
}

/** One parsed rule. */
export type Rule =
  | { readonly _tag: "All" }
  | { readonly _tag: "AnyIpv4" }
  | { readonly _tag: "AnyIpv6" }
  | { readonly _tag: "Unix" }
  | { readonly _tag: "Address"; readonly ip: IpAddress }
  | { readonly _tag: "Subnet"; readonly network: IpAddress; readonly prefix: number }
  | { readonly _tag: "Subject"; readonly subject: string }
  | { readonly _tag: "Psk"; readonly identity: string }

/** The canonical text of an IPv4-mapped address, as WHATWG URL serializes IPv6 hosts. */
const MAPPED = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\]$/

/**
 * Parses an IP address (no zone index), giving IPv4-mapped IPv6 addresses as the IPv4
 * address they carry. `net.BlockList` already matches mapped addresses against IPv4
 * rules both ways; normalizing anyway keeps `anyipv4`/`anyipv6` and messages right.
 */
export const parseAddress = (text: string): IpAddress | undefined => {
  switch (net.isIP(text)) {
    case 4:
      return { family: "ipv4", address: text }
    case 6: {
      if (text.includes("%")) return undefined
      // URL serializes IPv6 canonically (lower case, `::` compressed, dotted tail in hex).
      const canonical = new URL(`http://[${text}]`).hostname
      const mapped = MAPPED.exec(canonical)
      if (mapped === null) return { family: "ipv6", address: canonical.slice(1, -1) }
      const high = parseInt(mapped[1]!, 16)
      const low = parseInt(mapped[2]!, 16)
      return { family: "ipv4", address: `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}` }
    }
    default:
      return undefined
  }
}

/** A client address as the rules see it: a zone index (`fe80::1%eth0`) is dropped. */
const clientAddress = (text: string): IpAddress | undefined => parseAddress(text.split("%")[0]!)

const KINDS = "an IP address, a CIDR range, all, anyipv4, anyipv6, unix, dn:SUBJECT or psk:IDENTITY"

/** `ADDRESS/PREFIX`; a mapped IPv6 range of prefix 96 or more is the IPv4 range it covers. */
const parseSubnet = (base: string, bits: string): Either.Either<Rule, string> => {
  const ip = parseAddress(base)
  if (ip === undefined) return Either.left(`'${base}' is not an IP address`)
  const mappedV6 = ip.family === "ipv4" && net.isIPv6(base)
  const max = ip.family === "ipv4" && !mappedV6 ? 32 : 128
  const prefix = /^\d{1,3}$/.test(bits) ? Number(bits) : NaN
  if (!(prefix >= 0 && prefix <= max)) return Either.left(`the prefix length must be a whole number from 0 to ${max}`)
  if (!mappedV6) return Either.right({ _tag: "Subnet", network: ip, prefix })
  if (prefix >= 96) return Either.right({ _tag: "Subnet", network: ip, prefix: prefix - 96 })
  // A wider range than the mapped block stays an IPv6 range (net.BlockList still matches IPv4 clients in it).
  return Either.right({ _tag: "Subnet", network: { family: "ipv6", address: base }, prefix })
}

/** Parses one rule; the error says why it is malformed. */
export const parseRule = (text: string): Either.Either<Rule, string> => {
  const rule = text.trim()
  switch (rule) {
    case "":
      return Either.left("empty rule")
    case "all":
      return Either.right({ _tag: "All" })
    case "anyipv4":
      return Either.right({ _tag: "AnyIpv4" })
    case "anyipv6":
      return Either.right({ _tag: "AnyIpv6" })
    case "unix":
      return Either.right({ _tag: "Unix" })
  }
  if (rule.startsWith("dn:")) {
    const subject = rule.slice("dn:".length)
    return subject === "" ? Either.left("dn: needs a certificate subject") : Either.right({ _tag: "Subject", subject })
  }
  if (rule.startsWith("psk:")) {
    const identity = rule.slice("psk:".length)
    return identity === "" ? Either.left("psk: needs an identity") : Either.right({ _tag: "Psk", identity })
  }
  const slash = rule.lastIndexOf("/")
  if (slash >= 0) return parseSubnet(rule.slice(0, slash), rule.slice(slash + 1))
  const ip = parseAddress(rule)
  return ip === undefined ? Either.left(`not ${KINDS}`) : Either.right({ _tag: "Address", ip })
}

/** A DN attribute (`O=example`) following a `dn:` rule continues it: subjects contain commas. */
const DN_COMPONENT = /^[A-Za-z][A-Za-z0-9.-]*=/

/**
 * Splits comma-separated rule text into rules; a piece like `O=example` after a `dn:`
 * rule belongs to it (`dn:CN=alice,O=example,::1` is two rules). Empty text: no rules.
 */
export const splitRules = (text: string): ReadonlyArray<string> => {
  if (text.trim() === "") return []
  const rules: Array<string> = []
  for (const piece of text.split(",")) {
    const last = rules.length - 1
    if (last >= 0 && rules[last]!.trim().startsWith("dn:") && DN_COMPONENT.test(piece.trim())) {
      rules[last] = `${rules[last]},${piece}`
    } else {
      rules.push(piece)
    }
  }
  return rules.map((rule) => rule.trim())
}

/** Whether the last rule of `text` is a `dn:` rule (that a following `KEY=VALUE` piece would continue). */
export const endsInSubject = (text: string): boolean => splitRules(text).at(-1)?.startsWith("dn:") ?? false

/** Rules ready for matching: addresses and ranges in one `net.BlockList`, identities in sets. */
export interface RuleSet {
  readonly rules: ReadonlyArray<Rule>
  /** Whether any rule matches the client (in-process clients match only `all`). */
  readonly matches: (client: ClientInfo) => boolean
}

/** Compiles rules for matching. */
export const compile = (rules: ReadonlyArray<Rule>): RuleSet => {
  // net.BlockList does the address and CIDR matching (both families, mapped addresses included).
  const addresses = new net.BlockList()
  const subjects = new Set<string>()
  const identities = new Set<string>()
  const has = (tag: Rule["_tag"]) => rules.some((rule) => rule._tag === tag)
  for (const rule of rules) {
    if (rule._tag === "Address") addresses.addAddress(rule.ip.address, rule.ip.family)
    else if (rule._tag === "Subnet") addresses.addSubnet(rule.network.address, rule.prefix, rule.network.family)
    else if (rule._tag === "Subject") subjects.add(rule.subject)
    else if (rule._tag === "Psk") identities.add(rule.identity)
  }
  const all = has("All")
  const anyIpv4 = has("AnyIpv4")
  const anyIpv6 = has("AnyIpv6")
  const unix = has("Unix")
  const byTransport = (transport: ClientInfo["transport"]): boolean => {
    switch (transport._tag) {
      case "Tcp": {
        const ip = clientAddress(transport.address)
        if (ip === undefined) return false
        return (ip.family === "ipv4" ? anyIpv4 : anyIpv6) || addresses.check(ip.address, ip.family)
      }
      case "Unix":
        return unix
      case "InProcess":
        return false
    }
  }
  const byIdentity = (client: ClientInfo): boolean =>
    Option.match(client.tls, {
      onNone: () => false,
      onSome: (tls) =>
        Option.exists(tls.subject, (subject) => subjects.has(subject)) ||
        Option.exists(tls.psk, (identity) => identities.has(identity))
    })
  return { rules, matches: (client) => all || byTransport(client.transport) || byIdentity(client) }
}

/** The `allow` and `deny` rules of a filter. */
export interface Policy {
  readonly allow: RuleSet
  readonly deny: RuleSet
}

/** Parses the rules of both lists (each item one rule); the error names the bad rule and its list. */
export const policy = (lists: {
  readonly allow?: ReadonlyArray<string> | undefined
  readonly deny?: ReadonlyArray<string> | undefined
}): Either.Either<Policy, string> => {
  const parseList = (name: "allow" | "deny") =>
    Either.map(
      Either.all((lists[name] ?? []).map((text) =>
        Either.mapLeft(parseRule(text), (why) => `malformed rule '${text}' in '${name}': ${why}`)
      )),
      compile
    )
  return Either.all({ allow: parseList("allow"), deny: parseList("deny") })
}

/**
 * nbdkit's order: a client matched by an `allow` rule is allowed; otherwise one matched
 * by a `deny` rule is refused; otherwise it is allowed. In-process clients are always
 * allowed (they did not come through a socket).
 */
export const isAllowed = (rules: Policy, client: ClientInfo): boolean =>
  client.transport._tag === "InProcess" || rules.allow.matches(client) || !rules.deny.matches(client)

/** The client for messages: `127.0.0.1:40000`, `[::1]:40000`, `on Unix socket PATH`, with its TLS identity. */
export const describeClient = (client: ClientInfo): string => {
  const transport = client.transport
  const where = transport._tag === "Tcp"
    ? (transport.address.includes(":") ? `[${transport.address}]:${transport.port}` : `${transport.address}:${transport.port}`)
    : transport._tag === "Unix"
    ? `on Unix socket ${transport.path}`
    : "in process"
  const identity = Option.match(client.tls, {
    onNone: () => "",
    onSome: (tls) =>
      Option.match(tls.subject, {
        onSome: (subject) => ` (certificate ${subject})`,
        onNone: () => Option.match(tls.psk, { onSome: (psk) => ` (PSK identity ${psk})`, onNone: () => " (TLS)" })
      })
  })
  return `${where}${identity}`
}
