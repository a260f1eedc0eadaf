/**
 * The ip filter: rule parsing (every kind, malformed rules), matching of addresses,
 * ranges, IPv4-mapped addresses, Unix sockets and TLS identities, nbdkit's allow-before-
 * deny order, and the filter itself on hand-made clients (refused with POLICY before the
 * driver below is opened, logged at warning level; allowed clients untouched).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { OptionReplyError } from "../../src/Errors.ts"
import * as Ip from "../../src/filters/Ip.ts"
import * as IpRules from "../../src/filters/IpRules.ts"
import * as Params from "../../src/Params.ts"
import * as Testing from "../../src/testing/Handle.ts"

// ---------------------------------------------------------------------------------------
// Hand-made clients
// ---------------------------------------------------------------------------------------

const tcp = (address: string, port = 40000): Driver.ClientInfo => ({
  connectionId: 1,
  transport: { _tag: "Tcp", address, port },
  tls: Option.none()
})
const unix = (path = "/run/nbd.sock"): Driver.ClientInfo => ({
  connectionId: 1,
  transport: { _tag: "Unix", path },
  tls: Option.none()
})
const inProcess = Testing.inProcessClient()
const withCertificate = (client: Driver.ClientInfo, subject: string): Driver.ClientInfo => ({
  ...client,
  tls: Option.some({ subject: Option.some(subject), psk: Option.none() })
})
const withPsk = (client: Driver.ClientInfo, identity: string): Driver.ClientInfo => ({
  ...client,
  tls: Option.some({ subject: Option.none(), psk: Option.some(identity) })
})

/** Parses rules, failing the test on a malformed one. */
const rules = (...texts: Array<string>): IpRules.RuleSet =>
  IpRules.compile(texts.map((text) => Either.getOrThrowWith(IpRules.parseRule(text), (e) => new Error(`${text}: ${e}`))))

const policy = (allow: Array<string>, deny: Array<string>): IpRules.Policy =>
  Either.getOrThrowWith(IpRules.policy({ allow, deny }), (e) => new Error(e))

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

describe("ip rules: parsing", () => {
  it("parses every kind of rule", () => {
    const parsed = (text: string) => Either.getOrThrow(IpRules.parseRule(text))
    expect(parsed("all")).toEqual({ _tag: "All" })
    expect(parsed("anyipv4")).toEqual({ _tag: "AnyIpv4" })
    expect(parsed("anyipv6")).toEqual({ _tag: "AnyIpv6" })
    expect(parsed("unix")).toEqual({ _tag: "Unix" })
    expect(parsed(" 127.0.0.1 ")).toEqual({ _tag: "Address", ip: { family: "ipv4", address: "127.0.0.1" } })
    expect(parsed("::1")).toEqual({ _tag: "Address", ip: { family: "ipv6", address: "::1" } })
    expect(parsed("2001:DB8:0:0:0:0:0:1")).toEqual({ _tag: "Address", ip: { family: "ipv6", address: "2001:db8::1" } })
    expect(parsed("10.0.0.0/8")).toEqual({ _tag: "Subnet", network: { family: "ipv4", address: "10.0.0.0" }, prefix: 8 })
    expect(parsed("fd00::/8")).toEqual({ _tag: "Subnet", network: { family: "ipv6", address: "fd00::" }, prefix: 8 })
    expect(parsed("dn:CN=alice,O=example")).toEqual({ _tag: "Subject", subject: "CN=alice,O=example" })
    expect(parsed("psk:alice")).toEqual({ _tag: "Psk", identity: "alice" })
  })

  it("reads IPv4-mapped addresses and ranges as IPv4", () => {
    const parsed = (text: string) => Either.getOrThrow(IpRules.parseRule(text))
    expect(parsed("::ffff:127.0.0.1")).toEqual({ _tag: "Address", ip: { family: "ipv4", address: "127.0.0.1" } })
    expect(parsed("::FFFF:7f00:2")).toEqual({ _tag: "Address", ip: { family: "ipv4", address: "127.0.0.2" } })
    expect(parsed("::ffff:10.0.0.0/104")).toEqual({
      _tag: "Subnet",
      network: { family: "ipv4", address: "10.0.0.0" },
      prefix: 8
    })
    expect(IpRules.parseAddress("0:0:0:0:0:ffff:c0a8:0102")).toEqual({ family: "ipv4", address: "192.168.1.2" })
    expect(IpRules.parseAddress("::1")).toEqual({ family: "ipv6", address: "::1" })
  })

  it("refuses malformed rules, saying why", () => {
    const malformed = [
      "",
      "10.0.0.0/33",
      "fd00::/129",
      "10.0.0.0/",
      "/8",
      "10.0.0.0/x",
      "10.0.0.0/-1",
      "10.0.0/8",
      "1.2.3.4.5",
      "01.2.3.4",
      "256.0.0.1",
      "fe80::1%eth0",
      "localhost",
      "inprocess",
      "any",
      "ALL",
      "dn:",
      "psk:"
    ]
    for (const text of malformed) expect(Either.isLeft(IpRules.parseRule(text)), text).toBe(true)
    expect(IpRules.parseRule("10.0.0.0/33")).toEqual(Either.left("the prefix length must be a whole number from 0 to 32"))
    expect(Either.getLeft(IpRules.parseRule("localhost"))).toEqual(Option.some(expect.stringContaining("dn:SUBJECT")))
  })

  it("splits rule text at commas, keeping the commas of a dn: subject", () => {
    expect(IpRules.splitRules("")).toEqual([])
    expect(IpRules.splitRules("127.0.0.1, ::1 ,10.0.0.0/8")).toEqual(["127.0.0.1", "::1", "10.0.0.0/8"])
    expect(IpRules.splitRules("dn:CN=alice,O=example,OU=dev,::1,dn:CN=bob,psk:carol")).toEqual([
      "dn:CN=alice,O=example,OU=dev",
      "::1",
      "dn:CN=bob",
      "psk:carol"
    ])
    expect(IpRules.endsInSubject("::1,dn:CN=alice")).toBe(true)
    expect(IpRules.endsInSubject("dn:CN=alice,::1")).toBe(false)
  })

  it("names the bad rule and its list", () => {
    expect(IpRules.policy({ allow: ["127.0.0.1"], deny: ["all", "10.1.0.0/99"] })).toEqual(
      Either.left("malformed rule '10.1.0.0/99' in 'deny': the prefix length must be a whole number from 0 to 32")
    )
    expect(Either.isRight(IpRules.policy({}))).toBe(true)
  })
})

// ---------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------

describe("ip rules: matching", () => {
  it("addresses and CIDR ranges of both families", () => {
    const set = rules("192.168.1.10", "10.0.0.0/8", "::1", "fd00::/8")
    for (const address of ["192.168.1.10", "10.0.0.1", "10.255.255.255", "::1", "fd12:3456::1", "FD00::"]) {
      expect(set.matches(tcp(address)), address).toBe(true)
    }
    for (const address of ["192.168.1.11", "11.0.0.1", "9.255.255.255", "::2", "fe80::1", "2001:db8::1"]) {
      expect(set.matches(tcp(address)), address).toBe(false)
    }
    expect(rules("10.1.2.3/8").matches(tcp("10.9.9.9")), "host bits of a range are ignored").toBe(true)
    expect(rules("fe80::/10").matches(tcp("fe80::1%eth0")), "a zone index is ignored").toBe(true)
  })

  it("IPv4-mapped client addresses match IPv4 rules, and mapped rules match IPv4 clients", () => {
    expect(rules("127.0.0.1").matches(tcp("::ffff:127.0.0.1"))).toBe(true)
    expect(rules("127.0.0.1").matches(tcp("::ffff:127.0.0.2"))).toBe(false)
    expect(rules("10.0.0.0/8").matches(tcp("::ffff:10.1.2.3"))).toBe(true)
    expect(rules("10.0.0.0/8").matches(tcp("::ffff:11.1.2.3"))).toBe(false)
    expect(rules("::ffff:127.0.0.1").matches(tcp("127.0.0.1"))).toBe(true)
    expect(rules("::ffff:127.0.0.1").matches(tcp("127.0.0.2"))).toBe(false)
    expect(rules("::ffff:10.0.0.0/104").matches(tcp("10.200.0.1"))).toBe(true)
    expect(rules("::ffff:10.0.0.0/104").matches(tcp("11.0.0.1"))).toBe(false)
  })

  it("anyipv4 and anyipv6 by family (a mapped address is IPv4); unix; all", () => {
    const v4 = rules("anyipv4")
    const v6 = rules("anyipv6")
    expect([v4.matches(tcp("8.8.8.8")), v4.matches(tcp("::ffff:8.8.8.8")), v4.matches(tcp("::1"))]).toEqual([
      true,
      true,
      false
    ])
    expect([v6.matches(tcp("8.8.8.8")), v6.matches(tcp("::ffff:8.8.8.8")), v6.matches(tcp("2001:db8::1"))]).toEqual([
      false,
      false,
      true
    ])
    expect(v4.matches(unix()) || v6.matches(unix())).toBe(false)
    expect(rules("unix").matches(unix())).toBe(true)
    expect(rules("unix").matches(tcp("127.0.0.1"))).toBe(false)
    expect(rules("all").matches(unix())).toBe(true)
    expect(rules("all").matches(tcp("203.0.113.9"))).toBe(true)
    expect(rules("0.0.0.0/0").matches(unix()), "an address rule never matches a Unix socket client").toBe(false)
  })

  it("dn: matches the exact certificate subject of a TLS client; psk: the PSK identity", () => {
    const set = rules("dn:CN=alice,O=example", "psk:carol")
    expect(set.matches(withCertificate(tcp("203.0.113.9"), "CN=alice,O=example"))).toBe(true)
    expect(set.matches(withCertificate(unix(), "CN=alice,O=example"))).toBe(true)
    expect(set.matches(withCertificate(tcp("203.0.113.9"), "CN=alice"))).toBe(false)
    expect(set.matches(withCertificate(tcp("203.0.113.9"), "CN=alice,O=example,OU=x"))).toBe(false)
    expect(set.matches(withCertificate(tcp("203.0.113.9"), "cn=alice,o=example"))).toBe(false)
    expect(set.matches(withCertificate(tcp("203.0.113.9"), "CN=mallory,O=example"))).toBe(false)
    expect(set.matches(tcp("203.0.113.9")), "no TLS").toBe(false)
    expect(set.matches(withPsk(tcp("203.0.113.9"), "carol"))).toBe(true)
    expect(set.matches(withPsk(tcp("203.0.113.9"), "alice"))).toBe(false)
    expect(set.matches(withCertificate(tcp("203.0.113.9"), "carol")), "a subject is not a PSK identity").toBe(false)
  })

  it("allow before deny, then allowed by default (nbdkit's order); in-process clients always allowed", () => {
    const localOnly = policy(["127.0.0.1", "::1"], ["all"])
    expect(IpRules.isAllowed(localOnly, tcp("127.0.0.1"))).toBe(true)
    expect(IpRules.isAllowed(localOnly, tcp("::ffff:127.0.0.1"))).toBe(true)
    expect(IpRules.isAllowed(localOnly, tcp("::1"))).toBe(true)
    expect(IpRules.isAllowed(localOnly, tcp("10.0.0.1"))).toBe(false)
    expect(IpRules.isAllowed(localOnly, unix())).toBe(false)
    expect(IpRules.isAllowed(localOnly, inProcess)).toBe(true)

    const bothMatch = policy(["10.0.0.0/8"], ["10.1.2.3"])
    expect(IpRules.isAllowed(bothMatch, tcp("10.1.2.3")), "an allow rule wins over a deny rule").toBe(true)

    const denyOne = policy([], ["8.0.0.0/8"])
    expect(IpRules.isAllowed(denyOne, tcp("8.8.8.8"))).toBe(false)
    expect(IpRules.isAllowed(denyOne, tcp("9.9.9.9")), "matched by no rule: allowed").toBe(true)

    const none = policy([], [])
    for (const client of [tcp("8.8.8.8"), unix(), inProcess]) expect(IpRules.isAllowed(none, client)).toBe(true)

    const certificateOnly = policy(["dn:CN=alice"], ["all"])
    expect(IpRules.isAllowed(certificateOnly, withCertificate(tcp("8.8.8.8"), "CN=alice"))).toBe(true)
    expect(IpRules.isAllowed(certificateOnly, withCertificate(tcp("127.0.0.1"), "CN=bob"))).toBe(false)
    expect(IpRules.isAllowed(certificateOnly, tcp("127.0.0.1"))).toBe(false)
  })

  it("describes clients for messages", () => {
    expect(IpRules.describeClient(tcp("10.0.0.1", 5000))).toBe("10.0.0.1:5000")
    expect(IpRules.describeClient(tcp("::1", 5000))).toBe("[::1]:5000")
    expect(IpRules.describeClient(unix("/run/x.sock"))).toBe("on Unix socket /run/x.sock")
    expect(IpRules.describeClient(withCertificate(tcp("10.0.0.1", 1), "CN=bob"))).toBe("10.0.0.1:1 (certificate CN=bob)")
    expect(IpRules.describeClient(withPsk(tcp("10.0.0.1", 1), "carol"))).toBe("10.0.0.1:1 (PSK identity carol)")
  })
})

// ---------------------------------------------------------------------------------------
// The filter
// ---------------------------------------------------------------------------------------

/** A memory driver that counts how often it is opened. */
const counted = () => {
  const store = new MemoryDriver.SparseMemory(1 << 20)
  let opens = 0
  const memory = MemoryDriver.fromStore(store)
  const driver: Driver.NbdDriverShape = {
    ...memory,
    open: (request) => Effect.zipRight(Effect.sync(() => opens++), memory.open(request))
  }
  return { store, driver, opens: () => opens }
}

/** Runs an effect with a logger that records warnings. */
const capturingWarnings = <A, E, R>(effect: Effect.Effect<A, E, R>) => {
  const warnings: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => {
    if (logLevel === LogLevel.Warning) warnings.push((Array.isArray(message) ? message : [message]).join(" "))
  })
  return Effect.map(Effect.provide(effect, Logger.replace(Logger.defaultLogger, logger)), (a) => ({ a, warnings }))
}

describe("ip filter", () => {
  it.scoped("an allowed client gets the handle below untouched (data, capabilities, fast path)", () =>
    Effect.gen(function*() {
      const below = counted()
      below.store.write(4096, new Uint8Array([1, 2, 3, 4]))
      const driver = yield* Ip.make({ allow: ["127.0.0.1"], deny: ["all"] })(below.driver)
      expect(driver.name).toBe("ip+memory")
      const handle = yield* Testing.open(driver, Testing.openRequest("disk", tcp("127.0.0.1")))
      expect(Array.from(yield* handle.read(4096, 4))).toEqual([1, 2, 3, 4])
      const direct = yield* Testing.open(below.driver)
      expect(handle.capabilities).toEqual(direct.capabilities)
      expect(handle.sync).toBeDefined()
      yield* handle.write(0, new Uint8Array([9]), { fua: false })
      expect(Array.from(below.store.read(0, 1) as Uint8Array)).toEqual([9])
    }))

  it.scoped("a refused client fails with POLICY, is logged at warning level, and the driver below is not opened", () =>
    Effect.gen(function*() {
      const below = counted()
      const driver = yield* Ip.make({ allow: ["127.0.0.1"], deny: ["all"] })(below.driver)
      const { a: error, warnings } = yield* capturingWarnings(
        Effect.flip(Testing.open(driver, Testing.openRequest("disk", tcp("192.0.2.7", 51000))))
      )
      expect(error).toBeInstanceOf(OptionReplyError)
      expect(error.reply).toBe("POLICY")
      expect(error.message).toBe("client 192.0.2.7:51000 is not allowed by the ip filter")
      expect(below.opens()).toBe(0)
      expect(warnings).toHaveLength(1)
      expect(warnings[0]).toContain("192.0.2.7:51000")
      expect(warnings[0]).toContain("'disk'")
    }))

  it.scoped("decides per client: Unix sockets, TLS subjects, in-process clients", () =>
    Effect.gen(function*() {
      const below = counted()
      const driver = yield* Ip.make({ allow: ["dn:CN=alice,O=example", "unix"], deny: ["all"] })(below.driver)
      const outcome = (client: Driver.ClientInfo) =>
        Effect.map(Effect.exit(Effect.scoped(Testing.open(driver, Testing.openRequest("", client)))), Exit.isSuccess)
      expect(yield* outcome(withCertificate(tcp("198.51.100.1"), "CN=alice,O=example"))).toBe(true)
      expect(yield* outcome(withCertificate(tcp("127.0.0.1"), "CN=bob,O=example"))).toBe(false)
      expect(yield* outcome(tcp("127.0.0.1"))).toBe(false)
      expect(yield* outcome(unix())).toBe(true)
      expect(yield* outcome(inProcess)).toBe(true)
      expect(below.opens()).toBe(3)
    }))

  it.effect("make fails with a ParameterError naming a malformed rule", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Ip.make({ deny: ["10.0.0.0/8", "10.0.0.0/40"] })(counted().driver)))
      expect(error).toBeInstanceOf(Params.ParameterError)
      expect(error.message).toContain("'10.0.0.0/40'")
      expect(error.message).toContain("'deny'")
    }))

  it.scoped("as a layer over the NbdDriver in context", () =>
    Effect.gen(function*() {
      const below = counted()
      const layer = Ip.layer({ deny: ["anyipv4"] }).pipe(Layer.provide(Layer.succeed(Driver.NbdDriver, below.driver)))
      const driver = yield* Effect.provide(Driver.NbdDriver, layer)
      const refused = yield* Effect.flip(Testing.open(driver, Testing.openRequest("", tcp("::ffff:10.0.0.1"))))
      expect(refused.reply).toBe("POLICY")
      yield* Testing.open(driver, Testing.openRequest("", tcp("2001:db8::1")))
      expect(below.opens()).toBe(1)
    }))
})

describe("ip plugin (command-line parameters)", () => {
  const fromText = (text: string) =>
    Either.flatMap(Either.mapLeft(Params.parsePairs(text), (message) => new Params.ParameterError({ message })), Ip.plugin.make)

  const decisions = (text: string, clients: ReadonlyArray<Driver.ClientInfo>) =>
    Effect.gen(function*() {
      const filter = Either.getOrThrowWith(fromText(text), (e) => new Error(e.message))
      const driver = yield* filter(counted().driver)
      return yield* Effect.forEach(clients, (client) =>
        Effect.map(Effect.exit(Effect.scoped(Testing.open(driver, Testing.openRequest("", client)))), Exit.isSuccess))
    })

  it.scoped("allow=127.0.0.1,::1,deny=all", () =>
    Effect.gen(function*() {
      expect(yield* decisions("allow=127.0.0.1,::1,deny=all", [tcp("127.0.0.1"), tcp("::1"), tcp("10.0.0.1"), unix()]))
        .toEqual([true, true, false, false])
    }))

  it.scoped("a dn: subject with commas (and a psk: identity with =), among other rules and parameters", () =>
    Effect.gen(function*() {
      const alice = withCertificate(tcp("10.0.0.1"), "CN=alice,O=example")
      const bob = withCertificate(tcp("10.0.0.1"), "CN=bob,O=example,OU=ops")
      const carol = withCertificate(tcp("10.0.0.1"), "CN=carol")
      expect(yield* decisions("allow=dn:CN=alice,O=example,deny=all", [alice, bob, carol])).toEqual([true, false, false])
      expect(yield* decisions("allow=::1,dn:CN=bob,O=example,OU=ops,127.0.0.1,deny=all", [alice, bob, tcp("127.0.0.1")]))
        .toEqual([false, true, true])
      expect(yield* decisions("deny=all,allow=dn:CN=carol", [alice, carol])).toEqual([false, true])
      const team = withPsk(tcp("10.0.0.1"), "team=ops")
      expect(yield* decisions("allow=::1,psk:team=ops,deny=all", [team, withPsk(tcp("10.0.0.1"), "team")]))
        .toEqual([true, false])
    }))

  it("refuses malformed rules and unknown parameters, naming them", () => {
    const message = (text: string) => Either.match(fromText(text), { onLeft: (e) => e.message, onRight: () => "accepted" })
    expect(message("allow=10.0.0.0/40,deny=all")).toBe(
      "ip: malformed rule '10.0.0.0/40' in 'allow': the prefix length must be a whole number from 0 to 32"
    )
    expect(message("deny=127.0.0.1,,::1")).toContain("malformed rule '' in 'deny'")
    expect(message("deny=nobody")).toContain("malformed rule 'nobody' in 'deny'")
    expect(message("allow=127.0.0.1,O=example")).toContain("unknown parameter 'O'")
    expect(message("block=all")).toContain("unknown parameter 'block'")
    expect(message("")).toBe("accepted")
  })

  it("documents both parameters", () => {
    expect(Ip.plugin.name).toBe("ip")
    expect(Ip.plugin.parameters.map((p) => p.name)).toEqual(["allow", "deny"])
  })
})
