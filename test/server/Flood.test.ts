/**
 * A flood of large writes to a slow driver: the server must hold only a bounded amount
 * of payload (it stops reading the socket), and every write must still be applied.
 */
import * as Effect from "effect/Effect"
import * as net from "node:net"
import { describe, expect, it } from "vitest"

declare const gc: () => void
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import { Option, REQUEST_MAGIC } from "../../src/protocol/Constants.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as TestServer from "../support/TestServer.ts"

const MiB = 1024 * 1024

describe("flood of large writes", () => {
  it("to a slow driver: bounded server memory, every write applied", { timeout: 60_000 }, async () => {
    const store = new MemoryDriver.SparseMemory(256 * MiB)
    const slow = Driver.make({
      name: "slow",
      size: Effect.sync(() => store.size),
      read: (offset, length) => Effect.sync(() => store.read(offset, length)),
      write: (offset, data) => Effect.delay(Effect.sync(() => store.write(offset, data)), "150 millis")
    })
    const server = await TestServer.start({
      exports: [Export.make(slow)],
      config: { maxInFlightBytes: 8 * MiB, readHighWaterMark: 4 * MiB }
    })
    try {
      const socket = net.connect(server.port, "127.0.0.1")
      socket.on("error", () => {})
      let received = 0
      let acked = 0
      socket.on("data", (chunk: Buffer) => {
        received += chunk.length
        acked = Math.max(0, Math.floor((received - 18 - 10) / 16))
      })
      await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
      const header = Buffer.alloc(20)
      header.writeUInt32BE(3, 0) // client flags: FIXED_NEWSTYLE | NO_ZEROES
      header.writeBigUInt64BE(0x49484156454f5054n, 4)
      header.writeUInt32BE(Option.EXPORT_NAME, 12)
      socket.write(header)

      const count = 200
      const payload = pattern(MiB, 7) // one buffer for every write: the client allocates nothing per request
      const live = () => {
        gc()
        return process.memoryUsage().arrayBuffers
      }
      const baseline = live()
      let peak = 0
      // Memory held besides the pages written so far (those the store keeps).
      const sampler = setInterval(() => {
        peak = Math.max(peak, live() - baseline - store.allocatedBytes)
      }, 25)
      for (let i = 0; i < count; i++) {
        const request = encodeRequestHeaderFast(0, 1, BigInt(i), BigInt(i * MiB), MiB)
        expect(request.readUInt32BE(0)).toBe(REQUEST_MAGIC)
        socket.write(request)
        const ok = socket.write(payload)
        if (!ok) await new Promise((resolve) => socket.once("drain", resolve))
      }
      const deadline = Date.now() + 40_000
      while (acked < count && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
      clearInterval(sampler)
      socket.destroy()

      expect(acked).toBe(count)
      // 200 MiB went through; besides the pages written, the server held at most its
      // in-flight budget (8 MiB) plus its read buffer (4 MiB) and socket chunks.
      expect(peak).toBeLessThan(28 * MiB)
      expect(store.allocatedBytes).toBe(count * MiB)
      expectBytes(store.read(199 * MiB, MiB), payload)
      expectBytes(store.read(0, MiB), payload)
    } finally {
      await server.stop()
    }
  })
})
