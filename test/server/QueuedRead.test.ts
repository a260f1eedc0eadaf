/**
 * A READ reply held in the server's queue (its client does not read its socket) while
 * another connection trims the same pages and writes them again: when the reply finally
 * leaves, it carries the old data or the new data, whole, and never bytes of another
 * offset. Run over both receive paths.
 */
import * as Effect from "effect/Effect"
import * as net from "node:net"
import { describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import { Command } from "../../src/protocol/Constants.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import { HANDSHAKE_BYTES, receiveAll, slowReader } from "../support/SlowReader.ts"
import * as TestServer from "../support/TestServer.ts"

const MiB = 1024 * 1024
const REGION = 4 * MiB
const READ_LENGTH = MiB
const READS = 48

/** Bytes of `[offset, offset + length)` where each 8-byte word holds its generation and its own offset. */
const stamped = (offset: number, length: number, generation: number): Buffer => {
  const out = Buffer.allocUnsafe(length)
  for (let at = 0; at < length; at += 8) out.writeBigUInt64BE((BigInt(generation) << 48n) | BigInt(offset + at), at)
  return out
}

/** The generation every word of a reply carries, or a description of the first word that is wrong. */
const generationOf = (data: Buffer, offset: number): number | string => {
  let generation: number | undefined
  for (let at = 0; at < data.length; at += 8) {
    const word = data.readBigUInt64BE(at)
    const wordOffset = Number(word & 0xffff_ffff_ffffn)
    const wordGeneration = Number(word >> 48n)
    if (wordOffset !== offset + at) return `offset ${offset + at} holds the data of offset ${wordOffset}`
    if (generation !== undefined && wordGeneration !== generation) return `offset ${offset + at} mixes generations`
    generation = wordGeneration
  }
  return generation ?? "empty"
}

const withClient = <A>(port: number, f: (client: Client.NbdClient) => Effect.Effect<A, unknown>) =>
  Effect.runPromise(Effect.scoped(Effect.flatMap(Client.connect(net.connect(port, "127.0.0.1")), f)))

describe.each(["stream", "owned"] as const)("a queued READ reply, %s receive path", (receiveBuffer) => {
  it("carries the old or the new data whole while its pages are trimmed and rewritten", { timeout: 60_000 }, async () => {
    const server = await TestServer.start({ size: 64 * MiB, config: { receiveBuffer } })
    try {
      await withClient(server.port, (client) => client.write(0, stamped(0, REGION, 1)))
      const reader = await slowReader(server.port)
      for (let i = 0; i < READS; i++) {
        const offset = (i * READ_LENGTH) % REGION
        reader.write(encodeRequestHeaderFast(0, Command.READ, BigInt(i), BigInt(offset), READ_LENGTH))
      }
      // The replies pile up in the server (48 MiB asked, the client reads nothing) while
      // another connection trims the region and writes it again.
      await new Promise((resolve) => setTimeout(resolve, 300))
      await withClient(server.port, (client) =>
        Effect.zipRight(client.trim(0, REGION), client.write(0, stamped(0, REGION, 2))))

      const bytes = await receiveAll(reader, HANDSHAKE_BYTES + READS * (16 + READ_LENGTH))
      reader.destroy()
      const seen = new Map<number, number>()
      for (let at = HANDSHAKE_BYTES; at < bytes.length; at += 16 + READ_LENGTH) {
        expect(bytes.readUInt32BE(at + 4)).toBe(0)
        const cookie = Number(bytes.readBigUInt64BE(at + 8))
        const offset = (cookie * READ_LENGTH) % REGION
        const generation = generationOf(bytes.subarray(at + 16, at + 16 + READ_LENGTH), offset)
        expect([1, 2]).toContain(generation)
        seen.set(cookie, generation as number)
      }
      expect(seen.size).toBe(READS)
      // Some replies were queued before the rewrite: they kept the old pages.
      expect([...seen.values()]).toContain(1)
      expect(Buffer.from(await server.read(0, REGION)).equals(stamped(0, REGION, 2))).toBe(true)
    } finally {
      await server.stop()
    }
  })
})
