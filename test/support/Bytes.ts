/** Byte helpers for tests. */
import { createHash } from "node:crypto"
import { expect } from "vitest"

/** Hex SHA-256 of bytes. */
export const sha256 = (data: Uint8Array): string => createHash("sha256").update(data).digest("hex")

/** A deterministic pattern of `length` bytes. */
export const pattern = (length: number, seed: number): Uint8Array => {
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 0xff
  return out
}

/** Asserts two byte arrays are equal, naming the first differing offset (fast on large buffers). */
export const expectBytes = (actual: Uint8Array, expected: Uint8Array, what = "bytes"): void => {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength)
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength)
  if (a.equals(b)) return
  let i = 0
  while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++
  expect.fail(`${what} differ: lengths ${a.length} and ${b.length}, first difference at offset ${i}`)
}
