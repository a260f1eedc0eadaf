/**
 * A server asked for the owned receive path on a Node.js whose accepted sockets cannot be
 * adopted (simulated by hiding the handle method adopting needs) serves its connections
 * on the default receive path.
 */
import * as net from "node:net"
import { describe, expect, it } from "vitest"
import * as OwnedReceive from "../../src/stream/OwnedReceive.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as TestServer from "../support/TestServer.ts"

/** The prototype of accepted TCP handles that defines `useUserBuffer`. */
const handlePrototype = async (): Promise<{ useUserBuffer?: unknown }> => {
  const server = net.createServer({ pauseOnConnect: true })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve))
  const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1")
  const socket = await accepted
  let proto = (socket as unknown as { _handle: object })._handle
  while (proto !== null && !Object.prototype.hasOwnProperty.call(proto, "useUserBuffer")) proto = Object.getPrototypeOf(proto)
  client.destroy()
  socket.destroy()
  server.close()
  return proto as { useUserBuffer?: unknown }
}

describe("owned receive path unavailable", () => {
  it("connections keep the default receive path and are served", { timeout: 30_000 }, async () => {
    const proto = await handlePrototype()
    const original = proto.useUserBuffer
    expect(typeof original).toBe("function")
    delete proto.useUserBuffer
    try {
      const server = await TestServer.start({ size: 16 * 1024 * 1024, config: { receiveBuffer: "owned" } })
      try {
        const data = pattern(3 * 1024 * 1024, 11)
        await server.write(4096, data)
        expectBytes(await server.read(4096, data.length), data)
      } finally {
        await server.stop()
      }
      // The probe agrees: nothing could be adopted.
      const probe = net.createServer({ pauseOnConnect: true })
      await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve))
      const accepted = new Promise<net.Socket>((resolve) => probe.once("connection", resolve))
      const client = net.connect((probe.address() as net.AddressInfo).port, "127.0.0.1")
      const socket = await accepted
      expect(OwnedReceive.canAdopt(socket)).toBe(false)
      client.destroy()
      socket.destroy()
      probe.close()
    } finally {
      proto.useUserBuffer = original
    }
  })
})
