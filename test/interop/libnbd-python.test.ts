/**
 * Interop with libnbd's Python bindings: every command, block status, many requests
 * in flight on one connection, and several connections on one export; on the plain
 * memory export and under `cow` and `cache` (see TestServer.stackModes).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { SparseMemory } from "../../src/drivers/Memory.ts"
import { AllocationState } from "../../src/protocol/Constants.ts"
import * as TestServer from "../support/TestServer.ts"
import { available, run, SYSTEM_PYTHON } from "../support/Tools.ts"

const MiB = 1024 * 1024
const KiB = 1024
const SIZE = 256 * MiB
const PAGE = 32 * KiB
const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO

/** Runs a Python script with the export's URI (and more arguments) as its arguments. */
const python = (script: string, uri: string, ...args: ReadonlyArray<string>): Promise<string> =>
  run(SYSTEM_PYTHON, ["-c", script, uri, ...args])

/** The 1 MiB pattern the commands script writes at 1 MiB: byte i is (i * 7 + 3) mod 251. */
const pattern = (length: number): Buffer => {
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i++) out[i] = (i * 7 + 3) % 251
  return out
}

const COMMANDS = String.raw`
import sys
import nbd

uri = sys.argv[1]
M = 1024 * 1024
K = 1024

h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert h.get_structured_replies_negotiated(), "structured replies not negotiated"
assert h.can_meta_context("base:allocation"), "base:allocation not negotiated"
assert h.get_size() == 256 * M, h.get_size()
for name in ("can_flush", "can_fua", "can_trim", "can_zero", "can_cache", "can_multi_conn"):
    assert getattr(h, name)(), name

# write, flush, read back
pattern = bytes((i * 7 + 3) % 251 for i in range(M))
h.pwrite(pattern, M)
h.flush()
assert h.pread(M, M) == pattern, "read back differs"

# FUA write at 3 MiB
fua = b"\xa5" * (64 * K)
h.pwrite(fua, 3 * M, flags=nbd.CMD_FLAG_FUA)
assert h.pread(64 * K, 3 * M) == fua, "FUA write not read back"

# write zeroes: 128 KiB of 0xff at 4 MiB, zero the first half (may punch), and the
# first 32 KiB of the second half with NO_HOLE
h.pwrite(b"\xff" * (128 * K), 4 * M)
h.zero(64 * K, 4 * M)
h.zero(32 * K, 4 * M + 64 * K, flags=nbd.CMD_FLAG_NO_HOLE)
got = h.pread(128 * K, 4 * M)
assert got == bytes(96 * K) + b"\xff" * (32 * K), "zero did not zero exactly its range"

# trim the FUA range: trimmed data reads as zeroes on this server
h.trim(64 * K, 3 * M)
assert h.pread(64 * K, 3 * M) == bytes(64 * K), "trimmed range is not zero"

# cache is only a hint, but must succeed and leave data alone
h.cache(M, M)
assert h.pread(M, M) == pattern, "data changed after cache"

# block status over 0 .. 4 MiB: the client asks again until the range is covered
def extents(offset, length, flags=0):
    found = []
    def callback(metacontext, at, entries, err):
        assert metacontext == "base:allocation", metacontext
        found.append((at, list(entries)))
    h.block_status(length, offset, callback, flags=flags)
    return found

def coalesced(offset, length):
    out = []
    at = offset
    while at < offset + length:
        replies = extents(at, offset + length - at)
        assert len(replies) == 1, replies
        start, entries = replies[0]
        assert start == at, (start, at)
        assert len(entries) % 2 == 0 and len(entries) > 0, entries
        for i in range(0, len(entries), 2):
            size, flags = entries[i], entries[i + 1]
            assert size > 0, entries
            if out and out[-1][2] == flags:
                out[-1][1] += size
            else:
                out.append([at, size, flags])
            at += size
    # the last extent may run past the range: clip it
    out[-1][1] = offset + length - out[-1][0]
    return [tuple(e) for e in out]

HOLE_ZERO = nbd.STATE_HOLE | nbd.STATE_ZERO
got = coalesced(0, 4 * M)
assert got == [(0, M, HOLE_ZERO), (M, M, 0), (2 * M, 2 * M, HOLE_ZERO)], got

# REQ_ONE: exactly one extent, no longer than asked
replies = extents(M, 4 * M, nbd.CMD_FLAG_REQ_ONE)
assert len(replies) == 1 and replies[0][0] == M and len(replies[0][1]) == 2, replies
assert 0 < replies[0][1][0] <= M and replies[0][1][1] == 0, replies

replies = extents(M + 4 * K, 8 * K, nbd.CMD_FLAG_REQ_ONE)
assert replies == [(M + 4 * K, [8 * K, 0])], replies

h.shutdown()
print("OK")
`

const AIO = String.raw`
import struct
import sys
import nbd

uri = sys.argv[1]
M = 1024 * 1024
K = 1024
N = 64
S = 64 * K
BASE = 32 * M

def block(i, generation):
    return struct.pack(">QQ", generation, BASE + i * S) * (S // 16)

def wait(handle):
    while handle.aio_in_flight() > 0:
        handle.poll(-1)

h = nbd.NBD()
h.connect_uri(uri)

# 64 writes in flight at once (no replies are read before wait polls)
cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(block(i, 1))), BASE + i * S) for i in range(N)]
assert h.aio_in_flight() == N, h.aio_in_flight()
wait(h)
for c in cookies:
    assert h.aio_command_completed(c), c

# 64 reads in flight at once
buffers = [nbd.Buffer(S) for _ in range(N)]
cookies = [h.aio_pread(buffers[i], BASE + i * S) for i in range(N)]
assert h.aio_in_flight() == N, h.aio_in_flight()
wait(h)
for i, c in enumerate(cookies):
    assert h.aio_command_completed(c), c
    assert bytes(buffers[i].to_bytearray()) == block(i, 1), "read %d differs" % i

# 64 mixed: rewrite the even blocks while reading the odd ones
buffers = {}
cookies = []
for i in range(N):
    if i % 2 == 0:
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(block(i, 2))), BASE + i * S))
    else:
        buffers[i] = nbd.Buffer(S)
        cookies.append(h.aio_pread(buffers[i], BASE + i * S))
assert h.aio_in_flight() == N, h.aio_in_flight()
wait(h)
for c in cookies:
    assert h.aio_command_completed(c), c
for i, b in buffers.items():
    assert bytes(b.to_bytearray()) == block(i, 1), "mixed read %d differs" % i

# everything reads back in one request
expected = b"".join(block(i, 2 if i % 2 == 0 else 1) for i in range(N))
assert h.pread(N * S, BASE) == expected, "final read differs"

h.shutdown()
print("OK")
`

const MULTI_CONN = String.raw`
import sys
import nbd

uri = sys.argv[1]
M = 1024 * 1024
BASE = 64 * M
C = 4

handles = []
for _ in range(C):
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.can_multi_conn()
    handles.append(h)

# each connection writes its own MiB; a flush on one connection makes every
# connection's completed writes visible to all (multi-conn)
for i, h in enumerate(handles):
    h.pwrite(bytes([0x10 + i]) * M, BASE + i * M)
handles[0].flush()
for i, h in enumerate(handles):
    for j in range(C):
        assert h.pread(M, BASE + j * M) == bytes([0x10 + j]) * M, (i, j)
for h in handles:
    h.shutdown()
print("OK")
`

/** Fails with the first differing offset unless the bytes are equal (faster than toEqual). */
const expectBytes = (actual: Uint8Array, expected: Uint8Array, what: string): void => {
  expect(actual.length, `${what}: length`).toBe(expected.length)
  const at = actual.findIndex((b, i) => b !== expected[i])
  expect(at, `${what}: first differing byte`).toBe(-1)
}

const haveTools = available(["python3-libnbd"])

for (const mode of TestServer.stackModes) describe.skipIf(!haveTools)(`libnbd Python bindings (${mode.name})`, () => {
  const stacked = TestServer.isStacked(mode)
  let server: TestServer.TestServer
  let store: SparseMemory
  /**
   * What the export holds: the memory store itself when plain; under cow the store below
   * is never written, so what a client reads back.
   */
  const contents = async (offset: number, length: number): Promise<Uint8Array> =>
    stacked ? server.read(offset, length) : store.read(offset, length)

  beforeAll(async () => {
    server = await TestServer.start({ size: SIZE, stack: mode.stack })
    if (server.store === undefined) throw new Error("expected a memory store")
    store = server.store
  })

  afterAll(async () => {
    await server?.stop()
  })

  it("pwrite, flush, pread, FUA, zero, trim, cache and block status", async () => {
    const out = await python(COMMANDS, server.uri())
    expect(out.trim().split("\n")).toContain("OK")
    expectBytes(await contents(MiB, MiB), pattern(MiB), "pattern at 1 MiB")
    expectBytes(await contents(3 * MiB, 64 * KiB), Buffer.alloc(64 * KiB), "trimmed range at 3 MiB")
    expectBytes(
      await contents(4 * MiB, 128 * KiB),
      Buffer.concat([Buffer.alloc(96 * KiB), Buffer.alloc(32 * KiB, 0xff)]),
      "zeroed range at 4 MiB"
    )
    if (stacked) {
      // Trim and a zero without NO_HOLE left holes in cow's overlay (its blocks are 64 KiB);
      // the NO_HOLE zero of part of a block zeroed it in the block's copy: still data.
      expect(await server.blockStatus(3 * MiB, 64 * KiB)).toEqual([{ length: 64 * KiB, flags: HOLE_ZERO }])
      expect(await server.blockStatus(4 * MiB, 128 * KiB)).toEqual([
        { length: 64 * KiB, flags: HOLE_ZERO },
        { length: 64 * KiB, flags: 0 }
      ])
    } else {
      // Trim and a zero without NO_HOLE freed their pages; the NO_HOLE zero kept its page.
      expect(store.pages.has((3 * MiB) / PAGE)).toBe(false)
      expect(store.pages.has((4 * MiB) / PAGE)).toBe(false)
      expect(store.pages.has((4 * MiB + 64 * KiB) / PAGE)).toBe(true)
    }
  })

  it("64 concurrent aio_pwrite and aio_pread requests on one connection", async () => {
    const out = await python(AIO, server.uri())
    expect(out.trim().split("\n")).toContain("OK")
    const block = (i: number, generation: number): Buffer => {
      const unit = Buffer.alloc(16)
      unit.writeBigUInt64BE(BigInt(generation), 0)
      unit.writeBigUInt64BE(BigInt(32 * MiB + i * 64 * KiB), 8)
      return Buffer.concat(Array.from({ length: (64 * KiB) / 16 }, () => unit))
    }
    const written = await contents(32 * MiB, 64 * 64 * KiB)
    for (let i = 0; i < 64; i++) {
      expectBytes(written.subarray(i * 64 * KiB, (i + 1) * 64 * KiB), block(i, i % 2 === 0 ? 2 : 1), `aio block ${i}`)
    }
  })

  it("four connections see each other's writes (multi-conn)", async () => {
    const out = await python(MULTI_CONN, server.uri())
    expect(out.trim().split("\n")).toContain("OK")
    for (let i = 0; i < 4; i++) {
      expectBytes(await contents(64 * MiB + i * MiB, MiB), Buffer.alloc(MiB, 0x10 + i), `multi-conn MiB ${i}`)
    }
  })

  // The memory driver's fast path gives holes as such; over cow the server gets plain bytes
  // (holes may be sent as data, which the spec allows), so there the chunks must only tile
  // the range with hole chunks where the bytes are zero.
  it(`structured reads send ${stacked ? "chunks that tile the range" : "holes as OFFSET_HOLE chunks"}, and DF reads as one data chunk`, async () => {
    const script = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
exact_holes = sys.argv[2] == "holes"
base = 200 * 1048576
h.pwrite(b"\\xab" * 65536, base + 65536)
chunks = []
def chunk(buf, offset, status, err):
    chunks.append((status, offset, len(buf), bytes(buf) == b"\\0" * len(buf)))
    return 0
buf = h.pread_structured(4 * 65536, base, chunk)
assert buf == b"\\0" * 65536 + b"\\xab" * 65536 + b"\\0" * 131072, "bytes"
kinds = [(s, o - base, n) for (s, o, n, z) in chunks]
at = 0
for (s, o, n, z) in sorted(chunks, key=lambda c: c[1]):
    assert o - base == at and n > 0, kinds
    assert s == nbd.READ_DATA or (s == nbd.READ_HOLE and z and not (o - base < 131072 and o - base + n > 65536)), kinds
    at += n
assert at == 4 * 65536, kinds
if exact_holes:
    assert kinds == [(nbd.READ_HOLE, 0, 65536), (nbd.READ_DATA, 65536, 65536), (nbd.READ_HOLE, 131072, 131072)], kinds
chunks.clear()
buf = h.pread_structured(4 * 65536, base, chunk, flags=nbd.CMD_FLAG_DF)
assert [(s, o - base, n) for (s, o, n, z) in chunks] == [(nbd.READ_DATA, 0, 262144)], chunks
assert buf[65536:131072] == b"\\xab" * 65536
print("OK")
`
    const out = await python(script, server.uri(), stacked ? "any" : "holes")
    expect(out.trim()).toBe("OK")
  })

  it("the server still answers after the other connections", async () => {
    const out = await python(
      String.raw`
import sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print(h.get_size())
print(h.pread(16, 1024 * 1024).hex())
h.shutdown()
`,
      server.uri()
    )
    const [size, head] = out.trim().split("\n")
    expect(Number(size)).toBe(SIZE)
    expect(head).toBe(pattern(16).toString("hex"))
    // cow keeps every write in its overlay: nothing reached the store below.
    if (stacked) expect(store.pages.size).toBe(0)
  })
})
