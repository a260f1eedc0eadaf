import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as NbdUri from "../../src/drivers/NbdUri.ts"

const parsed = (text: string): NbdUri.NbdUri => {
  const result = NbdUri.parse(text)
  if (Either.isLeft(result)) throw new Error(`expected ${text} to parse: ${result.left.message}`)
  return result.right
}

const refused = (text: string): string => {
  const result = NbdUri.parse(text)
  if (Either.isRight(result)) throw new Error(`expected ${text} to be refused`)
  expect(result.left._tag).toBe("NbdUriError")
  expect(result.left.uri).toBe(text)
  expect(result.left.message.startsWith(`${text}: `)).toBe(true)
  return result.left.message.slice(text.length + 2)
}

describe("NBD URIs: valid", () => {
  it("TCP with host, port and export", () => {
    expect(parsed("nbd://example.com:10810/disk")).toEqual({
      text: "nbd://example.com:10810/disk",
      endpoint: { _tag: "Tcp", host: "example.com", port: 10810 },
      exportName: "disk",
      tls: undefined,
      user: undefined
    })
  })

  it("defaults: port 10809, empty export, localhost for an empty host", () => {
    expect(parsed("nbd://example.com").endpoint).toEqual({ _tag: "Tcp", host: "example.com", port: 10809 })
    expect(parsed("nbd://example.com").exportName).toBe("")
    expect(parsed("nbd://example.com/").exportName).toBe("")
    expect(parsed("nbd://example.com:/x").endpoint).toEqual({ _tag: "Tcp", host: "example.com", port: 10809 })
    expect(parsed("nbd:///x").endpoint).toEqual({ _tag: "Tcp", host: "localhost", port: 10809 })
  })

  it("export names as in the URI document: leading slash kept after the first, percent-decoded", () => {
    expect(parsed("nbd://example.com//disk").exportName).toBe("/disk")
    expect(parsed("nbd://example.com/hello%20world").exportName).toBe("hello world")
    expect(parsed("nbd://example.com/a+b/c").exportName).toBe("a+b/c")
    expect(parsed("nbd://example.com/%C3%A9t%C3%A9").exportName).toBe("été")
  })

  it("IPv6 literals, with and without a port", () => {
    expect(parsed("nbd://[::1]:2000/e").endpoint).toEqual({ _tag: "Tcp", host: "::1", port: 2000 })
    expect(parsed("nbd://[2001:db8::7]/").endpoint).toEqual({ _tag: "Tcp", host: "2001:db8::7", port: 10809 })
    expect(parsed("nbd://[fe80::1%25eth0]/").endpoint).toEqual({ _tag: "Tcp", host: "fe80::1%eth0", port: 10809 })
  })

  it("Unix sockets with a percent-decoded path, abstract sockets included", () => {
    const uri = parsed("nbd+unix:///disk?socket=/tmp/my%20dir/nbd.sock")
    expect(uri.endpoint).toEqual({ _tag: "Unix", path: "/tmp/my dir/nbd.sock" })
    expect(uri.exportName).toBe("disk")
    expect(uri.tls).toBeUndefined()
    expect(parsed("nbd+unix:///?socket=%00/abstract").endpoint).toEqual({ _tag: "Unix", path: "\0/abstract" })
    expect(parsed("nbd+unix:/e?socket=s").exportName).toBe("e")
  })

  it("TLS schemes and their parameters", () => {
    expect(parsed("nbds://example.com/").tls).toEqual({ certificates: undefined, verifyPeer: true, hostname: undefined })
    const uri = parsed("NBDS+UNIX://alice@/e?socket=/s&tls-certificates=/etc/my%20certs&tls-verify-peer=false")
    expect(uri.endpoint).toEqual({ _tag: "Unix", path: "/s" })
    expect(uri.tls).toEqual({ certificates: "/etc/my certs", verifyPeer: false, hostname: undefined })
    expect(uri.user).toBe("alice")
    expect(parsed("nbds://h/?tls-verify-peer=0&tls-hostname=server.example&tls-type=x509").tls).toEqual({
      certificates: undefined,
      verifyPeer: false,
      hostname: "server.example"
    })
    expect(parsed("nbds://h/?tls-verify-peer=1").tls?.verifyPeer).toBe(true)
  })

  it("describes endpoints for messages", () => {
    expect(NbdUri.describeEndpoint(parsed("nbd://[::1]:5/").endpoint)).toBe("[::1]:5")
    expect(NbdUri.describeEndpoint(parsed("nbd://h/").endpoint)).toBe("h:10809")
    expect(NbdUri.describeEndpoint(parsed("nbd+unix:///?socket=/s").endpoint)).toBe("unix socket /s")
  })
})

describe("NBD URIs: invalid, with messages that say why", () => {
  it("not NBD URIs", () => {
    expect(refused("example.com:10809")).toContain("unknown scheme 'example.com'")
    expect(refused("/tmp/socket")).toContain("not a URI")
    expect(refused("http://example.com/")).toContain("unknown scheme 'http' (expected nbd, nbds, nbd+unix, nbds+unix)")
    expect(refused("nbd+vsock:///")).toContain("AF_VSOCK")
    expect(refused("nbd:disk")).toContain("needs '//HOST'")
    expect(refused("nbd://h/e#frag")).toContain("fragments")
  })

  it("bad ports and hosts", () => {
    expect(refused("nbd://h:0/")).toContain("port '0'")
    expect(refused("nbd://h:65536/")).toContain("port '65536'")
    expect(refused("nbd://h:ten/")).toContain("port 'ten'")
    expect(refused("nbd://[::1/")).toContain("closing ']'")
    expect(refused("nbd://[not-v6]/")).toContain("not an IPv6 address")
    expect(refused("nbd://[::1]x/")).toContain("after the IPv6 address")
    expect(refused("nbd://user:secret@h/")).toContain("passwords")
  })

  it("bad export names and encodings", () => {
    expect(refused("nbd://h/%zz")).toContain("invalid percent-encoding")
    expect(refused("nbd://h/a%00b")).toContain("NUL")
    expect(refused(`nbd://h/${"x".repeat(4097)}`)).toContain("longer than 4096 bytes")
  })

  it("socket parameter rules", () => {
    expect(refused("nbd+unix:///e")).toContain("needs a 'socket=PATH'")
    expect(refused("nbd+unix:///e?socket=")).toContain("needs a 'socket=PATH'")
    expect(refused("nbd+unix://host/e?socket=/s")).toContain("takes no host or port")
    expect(refused("nbd://h/e?socket=/s")).toContain("'socket' is only for nbd+unix")
    expect(refused("nbd+unix:///e?socket=/a&socket=/b")).toContain("given twice")
    expect(refused("nbd+unix:///e?socket")).toContain("has no value")
  })

  it("query parameters: unknown ones, and TLS ones without TLS or unsupported", () => {
    expect(refused("nbd://h/?color=blue")).toContain("unknown query parameter 'color' (accepted: socket, tls-certificates")
    expect(refused("nbd://h/?tls-certificates=/c")).toContain("'tls-certificates' needs a TLS scheme")
    expect(refused("nbd+unix:///?socket=/s&tls-verify-peer=false")).toContain("'tls-verify-peer' needs a TLS scheme")
    expect(refused("nbds://h/?tls-verify-peer=maybe")).toContain("must be true or false")
    expect(refused("nbds://h/?tls-type=psk")).toContain("tls-type 'psk' is not supported")
    expect(refused("nbds://h/?tls-psk-file=/k")).toContain("pre-shared keys")
    expect(refused("nbds://h/?tls-certificates=")).toContain("'tls-certificates' is empty")
  })
})
