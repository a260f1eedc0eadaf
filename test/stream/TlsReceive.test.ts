/**
 * Decrypted bytes of a TLS connection received into the connection's own buffer
 * (`OwnedReceive.adoptTls`), which relies on Node.js internals: these tests fail loudly when
 * a Node.js release changes them, and check the bytes, the one reused buffer, bytes that
 * arrive before a reader takes them, and that replies still flow the other way.
 */
import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import * as tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as OwnedReceive from "../../src/stream/OwnedReceive.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as Certificates from "../support/Certificates.ts"

let certificates: Certificates.Certificates
beforeAll(() => {
  certificates = Certificates.make()
})
afterAll(() => certificates.remove())

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** A TLS server socket made over an accepted connection, adopted, and a client connected to it. */
const connected = async (bufferSize = 64 * 1024) => {
  const secureContext = tls.createSecureContext({
    cert: fs.readFileSync(path.join(certificates.serverDir, "server-cert.pem")),
    key: fs.readFileSync(path.join(certificates.serverDir, "server-key.pem"))
  })
  let accept: (socket: tls.TLSSocket) => void = () => {}
  const accepted = new Promise<tls.TLSSocket>((resolve) => (accept = resolve))
  const server = net.createServer((raw) => accept(new tls.TLSSocket(raw, { isServer: true, secureContext })))
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as net.AddressInfo).port
  const client = tls.connect({ port, host: "127.0.0.1", ca: certificates.ca, servername: "localhost" })
  client.on("error", () => {})
  const socket = await accepted
  const adopted = OwnedReceive.adoptTls(socket, bufferSize)
  const secure = new Promise<void>((resolve) => client.once("secureConnect", () => resolve()))
  return { server, client, socket, adopted, secure }
}

describe("OwnedReceive over TLS", () => {
  it("receives decrypted bytes into one reused buffer, keeps what came before the reader, and still replies", async () => {
    const { adopted, client, secure, server, socket } = await connected()
    try {
      expect(adopted, `Node.js ${process.version} changed the TLS socket's onread fields or handle`).toBe(true)
      const source = OwnedReceive.sourceOf(socket)!
      expect(source).toBeDefined()
      await secure
      const data = pattern(3 * 1024 * 1024, 9)
      client.write(data)
      // Bytes arriving before there is a sink are kept (copied) and reading stops.
      await sleep(100)
      const received: Array<Buffer> = []
      const ownBuffers = new Set<ArrayBufferLike>()
      let fromOwnBuffer = 0
      source.setSink((bytes) => {
        if (bytes.buffer.byteLength === 64 * 1024) {
          ownBuffers.add(bytes.buffer)
          fromOwnBuffer++
        }
        received.push(Buffer.from(bytes))
        return true
      })
      while (received.reduce((n, b) => n + b.length, 0) < data.length) await sleep(5)
      expectBytes(Buffer.concat(received), data)
      // After the kept bytes, every read lands in the connection's one 64 KiB buffer.
      expect(fromOwnBuffer).toBeGreaterThan(10)
      expect(ownBuffers.size).toBe(1)
      const reply = new Promise<Buffer>((resolve) => client.once("data", resolve))
      socket.write("done")
      expect((await reply).toString()).toBe("done")
    } finally {
      client.destroy()
      socket.destroy()
      server.close()
    }
  })

  it("gives its buffer back once closed: the next TLS connection receives into the same one", async () => {
    const size = 96 * 1024 // a size no other test uses
    /** Connects, sends a few bytes, and returns the buffer they landed in once both sides closed. */
    const bufferOfOne = async () => {
      const { client, secure, server, socket } = await connected(size)
      try {
        await secure
        let seen: ArrayBufferLike | undefined
        OwnedReceive.sourceOf(socket)!.setSink((bytes) => {
          seen ??= bytes.buffer
          return true
        })
        client.write("hello")
        while (seen === undefined) await sleep(5)
        const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()))
        client.destroy()
        socket.destroy()
        await closed
        return seen
      } finally {
        server.close()
      }
    }
    const first = await bufferOfOne()
    expect(first.byteLength).toBe(size)
    expect(await bufferOfOne()).toBe(first)
  })
})
