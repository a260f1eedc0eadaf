/**
 * A driver for filter tests that reads into the server's buffers (`readInto`, as the
 * file driver does): byte `i` of the export is `i % 251`, and it counts its reads.
 */
import * as Effect from "effect/Effect"
import * as Driver from "../../src/Driver.ts"

/** The driver, and how many times each of its reads was called. */
export const readingInto = (size = 1024 * 1024) => {
  const calls = { read: 0, readInto: 0 }
  const fill = (offset: number, target: Uint8Array) => {
    for (let i = 0; i < target.length; i++) target[i] = (offset + i) % 251
  }
  const driver = Driver.make({
    name: "reading-into",
    size: Effect.succeed(size),
    read: (offset, length) =>
      Effect.sync(() => {
        calls.read++
        const out = new Uint8Array(length)
        fill(offset, out)
        return out
      }),
    readInto: (offset, target) => Effect.sync(() => (calls.readInto++, fill(offset, target)))
  })
  return { driver, calls }
}

/** What {@link readingInto} holds at `[offset, offset + length)`. */
export const expected = (offset: number, length: number): Uint8Array =>
  Uint8Array.from({ length }, (_, i) => (offset + i) % 251)
