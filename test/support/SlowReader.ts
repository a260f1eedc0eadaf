/**
 * A raw client that negotiates with EXPORT_NAME (simple replies) and then leaves its
 * socket unread, so that the server's replies queue up, until the test collects them.
 */
import * as net from "node:net"
import { Option } from "../../src/protocol/Constants.ts"

/**
 * Bytes the server sends a {@link slowReader} before any reply: its greeting (18) and, for
 * EXPORT_NAME with NO_ZEROES, the export's size and flags (10).
 */
export const HANDSHAKE_BYTES = 18 + 10

/** Connects and sends the client flags (FIXED_NEWSTYLE | NO_ZEROES) and EXPORT_NAME "", then stops reading. */
export const slowReader = async (port: number): Promise<net.Socket> => {
  const socket = net.connect(port, "127.0.0.1")
  socket.on("error", () => {})
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
  socket.pause()
  const hello = Buffer.alloc(20)
  hello.writeUInt32BE(3, 0) // FIXED_NEWSTYLE | NO_ZEROES
  hello.writeBigUInt64BE(0x49484156454f5054n, 4)
  hello.writeUInt32BE(Option.EXPORT_NAME, 12)
  socket.write(hello)
  return socket
}

/** Resumes reading and resolves with the first `length` bytes (or more) received; fails after 30 s. */
export const receiveAll = (socket: net.Socket, length: number): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    let received = 0
    const timer = setTimeout(() => reject(new Error(`received ${received} of ${length} bytes`)), 30_000)
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk)
      received += chunk.length
      if (received >= length) {
        clearTimeout(timer)
        resolve(Buffer.concat(chunks))
      }
    })
    socket.resume()
  })
