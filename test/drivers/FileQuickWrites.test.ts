/**
 * Quick writes of the file driver (`FileQuickWrites.ts`): with an injected clock and
 * write function, the pause after a slow write (100 ms, doubling while slow writes keep
 * coming, at most 10 s, back to 100 ms after a quiet time), the size limit, and failures
 * answered as protocol errors; and `writePiecesNow` on a real file.
 */
import * as fs from "node:fs"
import nodeFs from "node:fs"
import { syncBuiltinESMExports } from "node:module"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { ProtocolError } from "../../src/Errors.ts"
import * as QuickWrites from "../../src/drivers/FileQuickWrites.ts"
import { writePiecesNow } from "../../src/drivers/FileIo.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

const FD = 42
/** How long a slow write takes in these tests (ms). */
const SLOW = QuickWrites.SLOW_WRITE_MS + 3

/** A system error as Node.js throws it. */
const systemError = (code: string): NodeJS.ErrnoException =>
  Object.assign(new Error(`${code}: failed, write`), { code, syscall: "write", errno: -1 })

/**
 * Quick writes over a fake clock and a fake write: each write advances the clock by
 * `cost` ms (then resets it to 0), or throws `failure` when set.
 */
const harness = () => {
  const state = { t: 0, cost: 0, failure: undefined as unknown }
  const calls: Array<{ fd: number; offset: number; pieces: ReadonlyArray<Uint8Array> }> = []
  const quick = QuickWrites.make(FD, {
    now: () => state.t,
    write: (fd, offset, pieces) => {
      calls.push({ fd, offset, pieces })
      state.t += state.cost
      state.cost = 0
      if (state.failure !== undefined) throw state.failure
    }
  })
  /** A write that takes `ms` at time `at`; returns its outcome and the time it ended. */
  const writeAt = (at: number, ms: number) => {
    state.t = at
    state.cost = ms
    const outcome = quick.write(0, [new Uint8Array(512)])
    return { outcome, end: state.t }
  }
  return { state, calls, quick, writeAt }
}

/** Asserts that quick writes are paused from `from` for exactly `ms`. */
const expectPause = (quick: QuickWrites.QuickWrites, from: number, ms: number) => {
  expect(quick.paused(from), `paused at ${from}`).toBe(true)
  expect(quick.paused(from + ms - 0.5), `paused until ${from + ms}`).toBe(true)
  expect(quick.paused(from + ms), `resumed at ${from + ms}`).toBe(false)
}

describe("quick writes: the pause after a slow write", () => {
  it("writes at once while writes are quick (up to SLOW_WRITE_MS)", () => {
    const { calls, quick, writeAt } = harness()
    for (let i = 0; i < 5; i++) expect(writeAt(i * 10, QuickWrites.SLOW_WRITE_MS).outcome).toBe(true)
    expect(calls).toHaveLength(5)
    expect(calls.every((call) => call.fd === FD)).toBe(true)
    expect(quick.paused(50)).toBe(false)
  })

  it("pauses for 100 ms after a slow write, declining without writing meanwhile", () => {
    const { calls, quick, writeAt } = harness()
    const slow = writeAt(1000, QuickWrites.SLOW_WRITE_MS + 1)
    expect(slow.outcome).toBe(true) // the slow write itself was made
    expectPause(quick, slow.end, 100)
    expect(writeAt(slow.end + 50, 0).outcome).toBe(false)
    expect(writeAt(slow.end + 99, 0).outcome).toBe(false)
    expect(calls).toHaveLength(1)
    expect(writeAt(slow.end + 100, 0).outcome).toBe(true)
    expect(calls).toHaveLength(2)
  })

  it("doubles the pause for each slow write right after the previous pause, up to 10 s", () => {
    const { quick, writeAt } = harness()
    const expected = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
    let at = 0
    for (const ms of expected) {
      const slow = writeAt(at, SLOW)
      expect(slow.outcome).toBe(true)
      expectPause(quick, slow.end, ms)
      at = slow.end + ms // the first moment writes are made again
    }
  })

  it("keeps doubling for a slow write within four pauses of the previous one", () => {
    const { quick, writeAt } = harness()
    const first = writeAt(0, SLOW)
    expectPause(quick, first.end, 100)
    const second = writeAt(first.end + 399 - SLOW, SLOW) // ends 399 ms after the first
    expectPause(quick, second.end, 200)
  })

  it("goes back to 100 ms after a quiet time of four pauses", () => {
    const { quick, writeAt } = harness()
    let at = 0
    let lastEnd = 0
    for (const ms of [100, 200, 400]) {
      lastEnd = writeAt(at, SLOW).end
      expectPause(quick, lastEnd, ms)
      at = lastEnd + ms
    }
    // Quick writes in between change nothing.
    for (let i = 0; i < 10; i++) expect(writeAt(at + i * 100, 1).outcome).toBe(true)
    const later = writeAt(lastEnd + 4 * 400 - SLOW, SLOW) // ends four pauses after the previous slow one
    expectPause(quick, later.end, 100)
    const next = writeAt(later.end + 100, SLOW)
    expectPause(quick, next.end, 200)
  })

  it("goes back to 100 ms after a quiet time even from the longest pause", () => {
    const { quick, writeAt } = harness()
    let at = 0
    let end = 0
    for (const ms of [100, 200, 400, 800, 1600, 3200, 6400, 10_000]) {
      end = writeAt(at, SLOW).end
      expectPause(quick, end, ms)
      at = end + ms
    }
    const quiet = writeAt(end + 40_000, SLOW)
    expectPause(quick, quiet.end, 100)
  })
})

describe("quick writes: what is declined and what fails", () => {
  it("declines a write of more than QUICK_WRITE_MAX bytes without writing", () => {
    const { calls, quick, state } = harness()
    const half = QuickWrites.QUICK_WRITE_MAX / 2
    expect(quick.write(0, [new Uint8Array(half), new Uint8Array(0), new Uint8Array(half + 1)])).toBe(false)
    expect(quick.write(0, [new Uint8Array(QuickWrites.QUICK_WRITE_MAX + 1)])).toBe(false)
    expect(calls).toHaveLength(0)
    const pieces = [new Uint8Array(half), new Uint8Array(half)]
    expect(quick.write(8192, pieces)).toBe(true)
    expect(calls).toEqual([{ fd: FD, offset: 8192, pieces }])
    expect(quick.paused(state.t)).toBe(false)
  })

  it("answers a failed write with the errno of its system error, not as declined", () => {
    const cases: Array<[string, string]> = [["ENOSPC", "ENOSPC"], ["EDQUOT", "ENOSPC"], ["EROFS", "EPERM"], ["EIO", "EIO"]]
    for (const [code, errno] of cases) {
      const { calls, quick, state } = harness()
      state.failure = systemError(code)
      const outcome = quick.write(4096, [new Uint8Array(100)])
      expect(outcome, code).toBeInstanceOf(ProtocolError)
      expect((outcome as ProtocolError).errno, code).toBe(errno)
      expect((outcome as ProtocolError).message).toContain("write")
      expect(calls).toHaveLength(1)
      // A failure does not pause quick writes: the next one is made.
      state.failure = undefined
      expect(quick.write(4096, [new Uint8Array(100)])).toBe(true)
      expect(calls).toHaveLength(2)
    }
  })
})

describe("writePiecesNow and quick writes on a real file", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-quick-"))
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
  let files = 0
  /** A fresh file open for reading and writing, with its path. */
  const freshFile = () => {
    const file = path.join(dir, `f${files++}.img`)
    return { file, fd: fs.openSync(file, "w+") }
  }

  it("writes several pieces, empty ones among them, consecutively from the offset", () => {
    const { fd, file } = freshFile()
    try {
      const pieces = [pattern(1000, 1), new Uint8Array(0), pattern(4096, 2), new Uint8Array(0), pattern(1, 3), new Uint8Array(0)]
      writePiecesNow(fd, 12_345, pieces)
      writePiecesNow(fd, 100, [pattern(7, 4)])
      writePiecesNow(fd, 200, [new Uint8Array(0)])
      writePiecesNow(fd, 300, [new Uint8Array(0), new Uint8Array(0)])
      const expected = new Uint8Array(12_345 + 5097)
      expected.set(pattern(7, 4), 100)
      expected.set(Buffer.concat(pieces), 12_345)
      expectBytes(fs.readFileSync(file), expected)
    } finally {
      fs.closeSync(fd)
    }
  })

  it("writes more pieces than one system call takes", () => {
    const { fd, file } = freshFile()
    try {
      const pieces = Array.from({ length: 3000 }, (_, i) => (i % 7 === 0 ? new Uint8Array(0) : pattern(1 + (i % 13), i)))
      writePiecesNow(fd, 64, pieces)
      const data = Buffer.concat(pieces)
      const expected = new Uint8Array(64 + data.length)
      expected.set(data, 64)
      expectBytes(fs.readFileSync(file), expected)
    } finally {
      fs.closeSync(fd)
    }
  })

  it("loops over short writes, resuming inside a piece and past empty ones", () => {
    const { fd, file } = freshFile()
    const { writeSync, writevSync } = nodeFs
    const SHORT = 1000
    let calls = 0
    // Every write writes at most SHORT bytes, as a signal or a full disk can make it do.
    nodeFs.writeSync = ((fd: number, data: Uint8Array, offset: number, length: number, position: number) => {
      calls++
      return writeSync(fd, data, offset, Math.min(length, SHORT), position)
    }) as typeof writeSync
    nodeFs.writevSync = ((fd: number, pieces: ReadonlyArray<Uint8Array>, position: number) => {
      calls++
      const data = Buffer.concat(pieces).subarray(0, SHORT)
      return writeSync(fd, data, 0, data.length, position)
    }) as typeof writevSync
    syncBuiltinESMExports()
    try {
      const pieces = [pattern(2500, 1), new Uint8Array(0), pattern(999, 2), new Uint8Array(0), pattern(1, 3), pattern(1600, 4)]
      writePiecesNow(fd, 10, pieces)
      writePiecesNow(fd, 8000, [pattern(2100, 5)])
      expect(calls).toBe(6 + 3)
      const expected = new Uint8Array(8000 + 2100)
      expected.set(Buffer.concat(pieces), 10)
      expected.set(pattern(2100, 5), 8000)
      expectBytes(fs.readFileSync(file), expected)
    } finally {
      nodeFs.writeSync = writeSync
      nodeFs.writevSync = writevSync
      syncBuiltinESMExports()
      fs.closeSync(fd)
    }
  })

  it("writes through the default write and reports a failing descriptor as an error", () => {
    const { fd, file } = freshFile()
    try {
      const quick = QuickWrites.make(fd)
      expect(quick.write(10, [pattern(20, SLOW), pattern(30, 6)])).toBe(true)
      const expected = new Uint8Array(60)
      expected.set(pattern(20, SLOW), 10)
      expected.set(pattern(30, 6), 30)
      expectBytes(fs.readFileSync(file), expected)
    } finally {
      fs.closeSync(fd)
    }
    const readOnly = fs.openSync(file, "r")
    try {
      const outcome = QuickWrites.make(readOnly).write(0, [pattern(10, 7)])
      expect(outcome).toBeInstanceOf(ProtocolError)
      expect((outcome as ProtocolError).errno).toBe("EIO") // EBADF has no closer errno
    } finally {
      fs.closeSync(readOnly)
    }
  })
})
