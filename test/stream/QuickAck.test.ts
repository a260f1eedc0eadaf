/**
 * Quick acknowledgements (`TCP_QUICKACK`) asked for on the owned receive path: the
 * binding reaches the kernel, and an adopted TCP connection asks again on every large read.
 * The socket's mode is read back with `getsockopt`, which reports 0 while Linux holds
 * acknowledgements back (interactive mode) and 1 once quick-ACK mode was asked for.
 */
import { createRequire } from "node:module"
import type * as net from "node:net"
import { describe, expect, it } from "vitest"
import * as OwnedReceive from "../../src/stream/OwnedReceive.ts"
import * as QuickAck from "../../src/stream/QuickAck.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { connected } from "../support/PausedConnection.ts"

const IPPROTO_TCP = 6
const TCP_QUICKACK = 12

/** Sets and reads a TCP socket's quick-ACK mode (0: interactive, acknowledgements held back). */
const mode = (() => {
  const koffi = createRequire(import.meta.url)("koffi") as typeof import("koffi")
  const libc = koffi.load("libc.so.6")
  const setsockopt = libc.func("int setsockopt(int, int, int, void *, uint32_t)")
  const getsockopt = libc.func("int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)")
  return {
    set: (fd: number, value: number) => {
      const v = Buffer.alloc(4)
      v.writeInt32LE(value)
      expect(setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, v, 4)).toBe(0)
    },
    get: (fd: number): number => {
      const v = Buffer.alloc(4)
      const length = [4]
      expect(getsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, v, length)).toBe(0)
      return v.readInt32LE(0)
    }
  }
})()

const fdOf = (socket: net.Socket): number => (socket as unknown as { _handle: { fd: number } })._handle.fd

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe.skipIf(process.platform !== "linux")("QuickAck", () => {
  it("is available here, and takes a socket out of interactive mode", async () => {
    const quickAck = QuickAck.load()
    expect(quickAck, "setsockopt could not be bound through koffi").toBeDefined()
    const { client, server, socket } = await connected()
    try {
      const fd = fdOf(socket)
      mode.set(fd, 0)
      expect(mode.get(fd)).toBe(0)
      quickAck!(fd)
      expect(mode.get(fd)).toBe(1)
    } finally {
      client.destroy()
      socket.destroy()
      server.close()
    }
  })

  it("an adopted TCP connection asks for it on each read that completes a bulk of bytes", async () => {
    const { client, server, socket: accepted } = await connected()
    const fd = fdOf(accepted)
    const socket = OwnedReceive.adopt(accepted, QuickAck.BULK_READ)!
    const data = pattern(4 * 1024 * 1024, 7)
    const received: Array<Buffer> = []
    const seen: Array<number> = []
    mode.set(fd, 0)
    OwnedReceive.sourceOf(socket)!.setSink((bytes) => {
      received.push(Buffer.from(bytes))
      // A full buffer is a bulk read: the mode was asked for just before this call.
      if (bytes.length === QuickAck.BULK_READ) {
        seen.push(mode.get(fd))
        mode.set(fd, 0)
      }
      return true
    })
    client.write(data)
    while (received.reduce((n, b) => n + b.length, 0) < data.length) await sleep(5)
    expectBytes(Buffer.concat(received), data)
    expect(seen.length).toBeGreaterThan(0)
    expect(seen.every((value) => value === 1)).toBe(true)
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    client.destroy()
    socket.destroy()
    await closed
  })
})
