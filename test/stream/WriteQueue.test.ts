import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { Duplex } from "node:stream"
import * as FrameWriter from "../../src/stream/FrameWriter.ts"
import * as WriteQueue from "../../src/stream/WriteQueue.ts"

/** A stream that completes each write on a later turn, keeps a copy of what it got, and counts batched writes. */
const recorder = () => {
  const writes: Array<Buffer> = []
  const buffers: Array<ArrayBufferLike> = []
  let batched = 0
  const stream = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      writes.push(Buffer.from(chunk))
      buffers.push(chunk.buffer)
      setImmediate(callback)
    },
    writev(chunks, callback) {
      batched++
      for (const { chunk } of chunks) writes.push(Buffer.from(chunk as Buffer))
      setImmediate(callback)
    }
  })
  return { stream, writes, buffers, batched: () => batched }
}

const bytes = (length: number, seed: number) => Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff)
const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 20))

describe("WriteQueue", () => {
  it("merges a run of small chunks into one write and writes a large chunk as it is", async () => {
    const { stream, writes, buffers } = recorder()
    const queue = WriteQueue.make(stream)
    const small = [bytes(16, 1), bytes(4096, 2), bytes(16, 3)]
    const large = bytes(WriteQueue.MERGE_BELOW, 4)
    for (const chunk of [...small, large, bytes(20, 5)]) queue.push(chunk)
    queue.kick()
    await settle()
    expect(writes.map((w) => w.length)).toEqual([16 + 4096 + 16, WriteQueue.MERGE_BELOW, 20])
    expect(Buffer.concat(writes).equals(Buffer.concat([...small, large, bytes(20, 5)]))).toBe(true)
    expect(buffers[1]).toBe(large.buffer) // the large payload itself, not a copy
    expect(queue.queuedBytes()).toBe(0)
  })

  it("merges the 32 KiB pages of a reply into writes of at most MERGE_AT_MOST bytes", async () => {
    const { stream, writes } = recorder()
    const queue = WriteQueue.make(stream)
    const header = bytes(28, 9)
    const pages = Array.from({ length: 8 }, (_, i) => bytes(32 * 1024, i))
    for (const chunk of [header, ...pages]) queue.push(chunk)
    queue.kick()
    await settle()
    expect(writes.every((w) => w.length <= WriteQueue.MERGE_AT_MOST)).toBe(true)
    expect(writes.length).toBe(Math.ceil((28 + 8 * 32 * 1024) / WriteQueue.MERGE_AT_MOST))
    expect(Buffer.concat(writes).equals(Buffer.concat([header, ...pages]))).toBe(true)
  })

  it("keeps one write in flight: chunks pushed meanwhile wait, in order, and the merge buffer is reused safely", async () => {
    const { stream, writes, batched } = recorder()
    const queue = WriteQueue.make(stream)
    const expected: Array<Uint8Array> = []
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 5; i++) {
        const chunk = bytes(100 + round * 5 + i, round * 5 + i)
        expected.push(chunk)
        queue.push(chunk)
      }
      queue.kick()
      expect(stream.writableLength).toBeLessThanOrEqual(5 * 400) // never more than the write in flight
      await new Promise((resolve) => setImmediate(resolve))
    }
    await settle()
    expect(batched()).toBe(0)
    expect(Buffer.concat(writes).equals(Buffer.concat(expected))).toBe(true)
  })

  it("drops what is queued once the stream is destroyed, and reports progress", async () => {
    const { stream } = recorder()
    const queue = WriteQueue.make(stream)
    let progress = 0
    queue.onProgress(() => progress++)
    queue.push(bytes(10, 1))
    queue.push(bytes(WriteQueue.MERGE_BELOW, 2))
    queue.kick()
    stream.destroy()
    await settle()
    queue.kick()
    expect(queue.queuedBytes()).toBe(0)
    expect(progress).toBeGreaterThan(0)
  })
})

describe("FrameWriter over a write queue", () => {
  it.effect("sends frames whole and in order without batched writes, and ends only after everything was handed over", () =>
    Effect.gen(function*() {
      const { stream, writes, batched } = recorder()
      const writer = FrameWriter.make(stream, { queued: true })
      const frames = Array.from({ length: 40 }, (_, i) => [bytes(16, i), bytes(i % 4 === 0 ? 256 * 1024 : 4096, i)])
      for (const frame of frames) writer.write(frame)
      let finished = false
      stream.on("finish", () => (finished = true))
      yield* writer.end
      expect(finished).toBe(true)
      expect(batched()).toBe(0)
      expect(Buffer.concat(writes).equals(Buffer.concat(frames.flat()))).toBe(true)
    }))

  it("is full while the queue holds more than the high-water mark, and calls back once it drained", async () => {
    const { stream } = recorder()
    const writer = FrameWriter.make(stream, { queued: true, highWaterMark: 64 * 1024 })
    for (let i = 0; i < 8; i++) writer.write([bytes(32 * 1024, i)])
    expect(writer.isFull()).toBe(true)
    const drained = new Promise<void>((resolve) => writer.onceDrained(resolve))
    writer.flush()
    await drained
    expect(writer.isFull()).toBe(false)
  })
})
