/**
 * The pure request checks of src/server/RequestCheck.ts: a table of requests × contexts
 * with the errno the spec prescribes (or none), the bounds check, the transmission flags
 * advertised for a set of capabilities, and a property tying the two together: a flag or
 * command is accepted exactly when the server advertised it.
 */
import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import type { Capabilities } from "../../src/Driver.ts"
import { type ErrnoName, ProtocolError } from "../../src/Errors.ts"
import { Command, CommandFlags, TransmissionFlags } from "../../src/protocol/Constants.ts"
import type { Request } from "../../src/server/Request.ts"
import { check, type CheckContext, checkBounds, transmissionFlags } from "../../src/server/RequestCheck.ts"

const MiB = 1024 * 1024

/** Everything offered, writable, byte-granular. */
const allCaps: Capabilities = {
  readOnly: false,
  flush: true,
  fua: true,
  trim: true,
  zero: true,
  fastZero: true,
  cache: true,
  resize: true,
  multiConn: true,
  rotational: true,
  blockStatus: true,
  blockSize: { minimum: 1, preferred: 4096, maximum: 32 * MiB }
}

/** Nothing optional offered. */
const noCaps: Capabilities = {
  ...allCaps,
  flush: false,
  fua: false,
  trim: false,
  zero: false,
  fastZero: false,
  cache: false,
  resize: false,
  multiConn: false,
  rotational: false,
  blockStatus: false
}

type Mode = "simple" | "structured" | "extended"

const context = (mode: Mode, capabilities: Partial<Capabilities> = {}, extra: Partial<CheckContext> = {}): CheckContext => ({
  capabilities: { ...allCaps, ...capabilities },
  structured: mode !== "simple",
  extended: mode === "extended",
  metaContexts: mode !== "simple",
  shuttingDown: false,
  ...extra
})

const request = (type: number, flags = 0, offset = 0, length = 4096): Request => ({
  type,
  flags,
  cookie: 7n,
  wireOffset: BigInt(offset),
  offset,
  length
})

const { CACHE, BLOCK_STATUS, DISC, FLUSH, READ, RESIZE, TRIM, WRITE, WRITE_ZEROES } = Command
const { DF, FAST_ZERO, FUA, NO_HOLE, PAYLOAD_LEN, REQ_ONE } = CommandFlags

/** A WRITE as a client sends it in a mode: extended headers require PAYLOAD_LEN. */
const writeFlags = (mode: Mode, flags = 0) => (mode === "extended" ? flags | PAYLOAD_LEN : flags)

interface Row {
  readonly name: string
  readonly req: Request
  readonly ctx: CheckContext
  readonly errno: ErrnoName | undefined
}

const row = (name: string, req: Request, ctx: CheckContext, errno: ErrnoName | undefined): Row => ({ name, req, ctx, errno })

const modes: ReadonlyArray<Mode> = ["simple", "structured", "extended"]

/** Every command but DISC, with a request valid in that mode on a writable export with every capability. */
const validRequests = (mode: Mode): ReadonlyArray<readonly [string, Request]> => [
  ["READ", request(READ)],
  ["WRITE", request(WRITE, writeFlags(mode))],
  ["FLUSH", request(FLUSH, 0, 0, 0)],
  ["TRIM", request(TRIM)],
  ["CACHE", request(CACHE)],
  ["WRITE_ZEROES", request(WRITE_ZEROES)],
  ["RESIZE", request(RESIZE, 0, 8 * MiB, 0)],
  ...(mode === "simple" ? [] : [["BLOCK_STATUS", request(BLOCK_STATUS)] as const])
]

const rows: Array<Row> = []

for (const mode of modes) {
  const ctx = context(mode)
  const at = (name: string) => `${mode}: ${name}`

  // Every valid request passes; shutting down, every request (even an invalid one) gets ESHUTDOWN first.
  for (const [name, req] of validRequests(mode)) {
    rows.push(row(at(`${name} is accepted`), req, ctx, undefined))
    rows.push(row(at(`${name} while shutting down`), req, { ...ctx, shuttingDown: true }, "ESHUTDOWN"))
  }
  rows.push(row(at("an unknown command while shutting down"), request(99), { ...ctx, shuttingDown: true }, "ESHUTDOWN"))
  rows.push(
    row(at("a WRITE on a read-only export while shutting down"), request(WRITE, writeFlags(mode)), {
      ...context(mode, { readOnly: true }),
      shuttingDown: true
    }, "ESHUTDOWN")
  )

  // Unknown commands (DISC never reaches the checks: it is not a request to answer).
  for (const type of [DISC, 9, 0x100, 0xffff]) rows.push(row(at(`command ${type} is unknown`), request(type), ctx, "EINVAL"))

  // FUA: accepted on every command once SEND_FUA is advertised (native FUA, or a flush to emulate it).
  for (const [name, req] of validRequests(mode)) {
    const fua = { ...req, flags: req.flags | FUA }
    rows.push(row(at(`${name} with FUA`), fua, ctx, undefined))
    rows.push(row(at(`${name} with FUA emulated by flush`), fua, context(mode, { fua: false }), undefined))
    rows.push(row(at(`${name} with FUA, neither fua nor flush`), fua, context(mode, { fua: false, flush: false }), "EINVAL"))
  }
  // Read-only exports do not advertise SEND_FUA, so FUA is an unknown flag even on reads.
  rows.push(row(at("READ with FUA on a read-only export"), request(READ, FUA), context(mode, { readOnly: true }), "EINVAL"))
  rows.push(row(at("READ on a read-only export"), request(READ), context(mode, { readOnly: true }), undefined))

  // DF only with structured replies, and only on READ.
  rows.push(row(at("READ with DF"), request(READ, DF), ctx, mode === "simple" ? "EINVAL" : undefined))
  rows.push(row(at("WRITE with DF"), request(WRITE, writeFlags(mode, DF)), ctx, "EINVAL"))
  rows.push(row(at("CACHE with DF"), request(CACHE, DF), ctx, "EINVAL"))

  // PAYLOAD_LEN only with extended headers, where a WRITE must set it.
  if (mode === "extended") {
    rows.push(row(at("WRITE without PAYLOAD_LEN"), request(WRITE, 0), ctx, "EINVAL"))
    rows.push(row(at("READ with PAYLOAD_LEN"), request(READ, PAYLOAD_LEN), ctx, "EINVAL"))
    rows.push(row(at("BLOCK_STATUS with PAYLOAD_LEN (not advertised)"), request(BLOCK_STATUS, PAYLOAD_LEN), ctx, "EINVAL"))
  } else {
    rows.push(row(at("WRITE with PAYLOAD_LEN"), request(WRITE, PAYLOAD_LEN), ctx, "EINVAL"))
  }

  // REQ_ONE only on BLOCK_STATUS.
  if (mode !== "simple") rows.push(row(at("BLOCK_STATUS with REQ_ONE"), request(BLOCK_STATUS, REQ_ONE), ctx, undefined))
  rows.push(row(at("READ with REQ_ONE"), request(READ, REQ_ONE), ctx, "EINVAL"))
  rows.push(row(at("TRIM with REQ_ONE"), request(TRIM, REQ_ONE), ctx, "EINVAL"))

  // NO_HOLE and FAST_ZERO only on WRITE_ZEROES.
  rows.push(row(at("WRITE_ZEROES with NO_HOLE"), request(WRITE_ZEROES, NO_HOLE), ctx, undefined))
  rows.push(row(at("WRITE_ZEROES with FAST_ZERO"), request(WRITE_ZEROES, FAST_ZERO), ctx, undefined))
  rows.push(row(at("WRITE_ZEROES with every flag"), request(WRITE_ZEROES, FUA | NO_HOLE | FAST_ZERO), ctx, undefined))
  rows.push(row(at("WRITE with NO_HOLE"), request(WRITE, writeFlags(mode, NO_HOLE)), ctx, "EINVAL"))
  rows.push(row(at("TRIM with NO_HOLE"), request(TRIM, NO_HOLE), ctx, "EINVAL"))
  rows.push(row(at("TRIM with FAST_ZERO"), request(TRIM, FAST_ZERO), ctx, "EINVAL"))
  rows.push(row(at("READ with FAST_ZERO"), request(READ, FAST_ZERO), ctx, "EINVAL"))

  // Bits no command defines.
  for (const bit of [1 << 6, 1 << 7, 1 << 15]) {
    rows.push(row(at(`READ with flag 0x${bit.toString(16)}`), request(READ, bit), ctx, "EINVAL"))
    rows.push(row(at(`WRITE_ZEROES with flag 0x${bit.toString(16)}`), request(WRITE_ZEROES, bit), ctx, "EINVAL"))
  }

  // Read-only: the commands that change the export are EPERM, however well-formed; the others pass.
  const readOnly = context(mode, { readOnly: true })
  rows.push(row(at("WRITE on a read-only export"), request(WRITE, writeFlags(mode)), readOnly, "EPERM"))
  rows.push(row(at("TRIM on a read-only export"), request(TRIM), readOnly, "EPERM"))
  rows.push(row(at("WRITE_ZEROES on a read-only export"), request(WRITE_ZEROES), readOnly, "EPERM"))
  rows.push(row(at("RESIZE on a read-only export"), request(RESIZE, 0, 8 * MiB, 0), readOnly, "EPERM"))
  rows.push(row(at("FLUSH on a read-only export"), request(FLUSH, 0, 0, 0), readOnly, undefined))
  rows.push(row(at("CACHE on a read-only export"), request(CACHE), readOnly, undefined))
  if (mode !== "simple") rows.push(row(at("BLOCK_STATUS on a read-only export"), request(BLOCK_STATUS), readOnly, undefined))
  // Read-only comes before "unsupported": a read-only export without trim still answers EPERM.
  rows.push(row(at("TRIM on a read-only export without trim"), request(TRIM), context(mode, { readOnly: true, trim: false }), "EPERM"))

  // Commands the export does not offer are EINVAL; CACHE is never refused (it is only advice).
  rows.push(row(at("FLUSH unsupported"), request(FLUSH, 0, 0, 0), context(mode, { flush: false, fua: false }), "EINVAL"))
  rows.push(row(at("TRIM unsupported"), request(TRIM), context(mode, { trim: false }), "EINVAL"))
  rows.push(row(at("WRITE_ZEROES unsupported"), request(WRITE_ZEROES), context(mode, { zero: false }), "EINVAL"))
  rows.push(
    row(at("WRITE_ZEROES with FAST_ZERO unsupported"), request(WRITE_ZEROES, FAST_ZERO), context(mode, { zero: false }), "EINVAL")
  )
  rows.push(row(at("RESIZE unsupported"), request(RESIZE, 0, 8 * MiB, 0), context(mode, { resize: false }), "EINVAL"))
  rows.push(row(at("CACHE without cache"), request(CACHE), context(mode, { cache: false }), undefined))
  rows.push(row(at("CACHE on an export with nothing optional"), request(CACHE), { ...context(mode), capabilities: noCaps }, undefined))
  rows.push(row(at("READ on an export with nothing optional"), request(READ), { ...context(mode), capabilities: noCaps }, undefined))

  // FAST_ZERO on an export that cannot zero fast fails at once with ENOTSUP (not EINVAL: it is advertised).
  rows.push(row(at("WRITE_ZEROES with FAST_ZERO, no fastZero"), request(WRITE_ZEROES, FAST_ZERO), context(mode, { fastZero: false }), "ENOTSUP"))
  rows.push(row(at("WRITE_ZEROES without FAST_ZERO, no fastZero"), request(WRITE_ZEROES, NO_HOLE), context(mode, { fastZero: false }), undefined))

  // BLOCK_STATUS needs structured replies and a meta context, and at least one byte.
  rows.push(row(at("BLOCK_STATUS without a meta context"), request(BLOCK_STATUS), { ...ctx, metaContexts: false }, "EINVAL"))
  rows.push(row(at("BLOCK_STATUS of zero bytes"), request(BLOCK_STATUS, 0, 0, 0), ctx, "EINVAL"))
  if (mode === "simple") {
    rows.push(row(at("BLOCK_STATUS (no structured replies)"), request(BLOCK_STATUS), ctx, "EINVAL"))
    rows.push(row(at("BLOCK_STATUS with a meta context but no structured replies"), request(BLOCK_STATUS), { ...ctx, metaContexts: true }, "EINVAL"))
  }

  // Alignment to the minimum block size, and the maximum payload of READ and WRITE.
  const aligned = context(mode, { blockSize: { minimum: 4096, preferred: 4096, maximum: MiB } })
  for (const [name, req] of validRequests(mode)) {
    if (req.type === FLUSH || req.type === RESIZE) continue
    rows.push(row(at(`${name} aligned`), { ...req, offset: 8192, wireOffset: 8192n, length: 4096 }, aligned, undefined))
    rows.push(row(at(`${name} at an unaligned offset`), { ...req, offset: 512, wireOffset: 512n }, aligned, "EINVAL"))
    rows.push(row(at(`${name} of an unaligned length`), { ...req, length: 4096 + 512 }, aligned, "EINVAL"))
    const tooBig = req.type === READ || req.type === WRITE
    rows.push(row(at(`${name} of the maximum`), { ...req, length: MiB }, aligned, undefined))
    rows.push(row(at(`${name} past the maximum`), { ...req, length: MiB + 4096 }, aligned, tooBig ? "EINVAL" : undefined))
  }
  rows.push(row(at("READ of zero bytes"), request(READ, 0, 0, 0), aligned, undefined))
  rows.push(row(at("RESIZE to an aligned size"), request(RESIZE, 0, 64 * MiB, 0), aligned, undefined))
  rows.push(row(at("RESIZE to an unaligned size"), request(RESIZE, 0, 64 * MiB + 512, 0), aligned, "EINVAL"))
  rows.push(row(at("FLUSH ignores alignment"), request(FLUSH, 0, 512, 512), aligned, undefined))
}

describe("check", () => {
  it("the table covers every command", () => {
    const types = new Set(rows.map((r) => r.req.type))
    for (const type of Object.values(Command)) expect(types.has(type)).toBe(true)
  })

  it.each(rows)("$name → $errno", ({ ctx, errno, req }) => {
    const error = check(req, ctx)
    if (errno === undefined) {
      expect(error).toBeUndefined()
    } else {
      expect(error).toBeInstanceOf(ProtocolError)
      expect(error?.errno).toBe(errno)
      expect(error?.message.length).toBeGreaterThan(0)
    }
  })

  it("messages name what is wrong", () => {
    const ctx = context("structured")
    expect(check(request(READ, 1 << 6), ctx)?.message).toContain("0x40")
    expect(check(request(17), ctx)?.message).toContain("17")
    const aligned = context("structured", { blockSize: { minimum: 4096, preferred: 4096, maximum: MiB } })
    expect(check(request(READ, 0, 512), aligned)?.message).toContain("4096")
    expect(check(request(WRITE, 0, 0, 2 * MiB), aligned)?.message).toContain(String(MiB))
  })
})

describe("checkBounds", () => {
  const size = 16 * MiB
  const cases: ReadonlyArray<readonly [string, number, ErrnoName | undefined]> = [
    ["READ", READ, "EINVAL"],
    ["CACHE", CACHE, "EINVAL"],
    ["BLOCK_STATUS", BLOCK_STATUS, "EINVAL"],
    ["TRIM", TRIM, "EINVAL"],
    ["WRITE", WRITE, "ENOSPC"],
    ["WRITE_ZEROES", WRITE_ZEROES, "ENOSPC"],
    ["FLUSH", FLUSH, undefined],
    ["RESIZE", RESIZE, undefined]
  ]

  it.each(cases)("%s past the end → %s", (_name, type, errno) => {
    // Straddling the end, starting at the end, and starting past it.
    for (const [offset, length] of [[size - 4096, 8192], [size, 1], [size + 4096, 4096], [size + 1, 0]] as const) {
      const error = checkBounds(request(type, 0, offset, length), size)
      if (errno === undefined) expect(error).toBeUndefined()
      else {
        expect(error).toBeInstanceOf(ProtocolError)
        expect(error?.errno).toBe(errno)
        expect(error?.message).toContain(String(size))
      }
    }
  })

  it.each(cases)("%s inside the export passes", (_name, type) => {
    for (const [offset, length] of [[0, 0], [0, size], [size - 1, 1], [size, 0], [4096, 4096]] as const) {
      expect(checkBounds(request(type, 0, offset, length), size)).toBeUndefined()
    }
  })

  it("offsets clamped to 2^53 (beyond any export) are out of bounds", () => {
    expect(checkBounds(request(READ, 0, Number.MAX_SAFE_INTEGER, 4096), size)?.errno).toBe("EINVAL")
    expect(checkBounds(request(WRITE, 0, 0, Number.MAX_SAFE_INTEGER), size)?.errno).toBe("ENOSPC")
  })
})

describe("transmissionFlags", () => {
  const F = TransmissionFlags
  const WRITE_FLAGS = F.SEND_FUA | F.SEND_TRIM | F.SEND_WRITE_ZEROES | F.SEND_FAST_ZERO | F.SEND_RESIZE

  it("a writable export with every capability advertises everything but READ_ONLY", () => {
    expect(transmissionFlags(allCaps, true)).toBe(
      F.HAS_FLAGS | F.SEND_FLUSH | F.SEND_FUA | F.ROTATIONAL | F.SEND_TRIM | F.SEND_WRITE_ZEROES | F.SEND_DF |
        F.CAN_MULTI_CONN | F.SEND_RESIZE | F.SEND_CACHE | F.SEND_FAST_ZERO
    )
  })

  it("a read-only export with the same capabilities advertises READ_ONLY and no write flag", () => {
    const flags = transmissionFlags({ ...allCaps, readOnly: true }, true)
    expect(flags).toBe(F.HAS_FLAGS | F.READ_ONLY | F.SEND_FLUSH | F.ROTATIONAL | F.SEND_DF | F.CAN_MULTI_CONN | F.SEND_CACHE)
    expect(flags & WRITE_FLAGS).toBe(0)
  })

  it("nothing optional: HAS_FLAGS alone (READ_ONLY when read-only)", () => {
    expect(transmissionFlags(noCaps, false)).toBe(F.HAS_FLAGS)
    expect(transmissionFlags({ ...noCaps, readOnly: true }, false)).toBe(F.HAS_FLAGS | F.READ_ONLY)
  })

  it("DF only with structured replies", () => {
    expect(transmissionFlags(allCaps, false) & F.SEND_DF).toBe(0)
    expect(transmissionFlags(noCaps, true)).toBe(F.HAS_FLAGS | F.SEND_DF)
  })

  it("SEND_FUA with native FUA or with flush (FUA emulated by a flush)", () => {
    expect(transmissionFlags({ ...noCaps, fua: true }, false)).toBe(F.HAS_FLAGS | F.SEND_FUA)
    expect(transmissionFlags({ ...noCaps, flush: true }, false)).toBe(F.HAS_FLAGS | F.SEND_FLUSH | F.SEND_FUA)
  })

  it("SEND_FAST_ZERO comes with WRITE_ZEROES (without fastZero, FAST_ZERO fails fast with ENOTSUP)", () => {
    expect(transmissionFlags({ ...noCaps, zero: true }, false)).toBe(F.HAS_FLAGS | F.SEND_WRITE_ZEROES | F.SEND_FAST_ZERO)
  })

  it("BLOCK_STATUS_PAYLOAD is never advertised", () => {
    expect(transmissionFlags(allCaps, true) & F.BLOCK_STATUS_PAYLOAD).toBe(0)
  })

  // ---- the checks accept exactly what is advertised ----------------------------------------

  const capabilities = FastCheck.record({
    readOnly: FastCheck.boolean(),
    flush: FastCheck.boolean(),
    fua: FastCheck.boolean(),
    trim: FastCheck.boolean(),
    zero: FastCheck.boolean(),
    fastZero: FastCheck.boolean(),
    cache: FastCheck.boolean(),
    resize: FastCheck.boolean(),
    multiConn: FastCheck.boolean(),
    rotational: FastCheck.boolean(),
    blockStatus: FastCheck.boolean(),
    blockSize: FastCheck.constant({ minimum: 1, preferred: 4096, maximum: 32 * MiB })
  })

  it.prop(
    "a command or flag is refused as unknown or unsupported exactly when it is not advertised",
    { caps: capabilities, mode: FastCheck.constantFrom<Mode>("simple", "structured", "extended") },
    ({ caps, mode }) => {
      const ctx = context(mode, caps)
      const flags = transmissionFlags(caps, mode !== "simple")
      const has = (flag: number) => (flags & flag) !== 0
      const accepted = (req: Request) => check(req, ctx) === undefined
      const write = request(WRITE, writeFlags(mode))

      expect(has(TransmissionFlags.READ_ONLY)).toBe(caps.readOnly)
      expect(accepted(request(FLUSH, 0, 0, 0))).toBe(has(TransmissionFlags.SEND_FLUSH))
      expect(accepted(request(TRIM))).toBe(has(TransmissionFlags.SEND_TRIM))
      expect(accepted(request(WRITE_ZEROES))).toBe(has(TransmissionFlags.SEND_WRITE_ZEROES))
      expect(accepted(request(RESIZE, 0, MiB, 0))).toBe(has(TransmissionFlags.SEND_RESIZE))
      expect(accepted(write)).toBe(!has(TransmissionFlags.READ_ONLY))
      expect(accepted(request(READ, FUA))).toBe(has(TransmissionFlags.SEND_FUA))
      expect(accepted(request(READ, DF))).toBe(has(TransmissionFlags.SEND_DF))
      expect(accepted(request(CACHE))).toBe(true)
      // FAST_ZERO is never an unknown flag where WRITE_ZEROES is advertised: without fastZero it is ENOTSUP.
      const fastZero = check(request(WRITE_ZEROES, FAST_ZERO), ctx)
      if (has(TransmissionFlags.SEND_WRITE_ZEROES)) {
        expect(has(TransmissionFlags.SEND_FAST_ZERO)).toBe(true)
        expect(fastZero?.errno).toBe(caps.fastZero ? undefined : "ENOTSUP")
      } else {
        expect(has(TransmissionFlags.SEND_FAST_ZERO)).toBe(false)
        expect(fastZero?.errno).toBe(caps.readOnly ? "EPERM" : "EINVAL")
      }
      // A read-only export advertises no write flag, and refuses every write with EPERM.
      if (caps.readOnly) {
        expect(flags & WRITE_FLAGS).toBe(0)
        for (const req of [write, request(TRIM), request(WRITE_ZEROES), request(RESIZE, 0, MiB, 0)]) {
          expect(check(req, ctx)?.errno).toBe("EPERM")
        }
      }
    }
  )
})
