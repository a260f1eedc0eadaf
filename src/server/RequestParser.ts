/**
 * The request parser of the transmission phase: an explicit state (a header is expected,
 * a payload, a streamed payload, or a rejected payload being skipped) and a step function
 * that takes what it can from the buffered bytes and says what happened. It never waits
 * and never runs anything: the session's pipeline decides when to step and what to do
 * with each step.
 *
 * A WRITE for which {@link Parser.stream} gives a {@link PayloadSink} has its payload handed
 * on in pieces as they arrive (`Pieces` steps, in whole blocks of the export, see
 * {@link BLOCK}); any other payload is handed on whole.
 *
 * @since 0.2.0
 */
import type { ProtocolError } from "../Errors.ts"
import { Command, CommandFlags, EXTENDED_REQUEST_MAGIC, REQUEST_MAGIC } from "../protocol/Constants.ts"
import * as Wire from "../protocol/Transmission.ts"
import type { FrameReader } from "../stream/FrameReader.ts"
import { BLOCK, type PayloadSink } from "./PayloadSink.ts"
import * as Request from "./Request.ts"

/** Where the parser is in the byte stream. */
export type ParserState =
  | { readonly _tag: "Header" }
  | { readonly _tag: "Payload"; readonly req: Request.Request }
  | { readonly _tag: "Stream"; readonly req: Request.Request; readonly sink: PayloadSink; readonly left: number }
  | { readonly _tag: "Skip"; readonly req: Request.Request; readonly left: number; readonly error: ProtocolError }

/** What one step produced. */
export type Step =
  /** Nothing more can be parsed before `bytes` are buffered. */
  | { readonly _tag: "NeedBytes"; readonly bytes: number }
  /** A request that passed the checks, with its payload as received pieces. */
  | { readonly _tag: "Run"; readonly req: Request.Request; readonly payload: ReadonlyArray<Uint8Array> }
  /** The next pieces of a streamed payload, for `sink`; `last` when the payload is complete. */
  | {
    readonly _tag: "Pieces"
    readonly req: Request.Request
    readonly sink: PayloadSink
    readonly pieces: ReadonlyArray<Uint8Array>
    readonly last: boolean
  }
  /** A request to answer with an error (its payload, if any, was discarded). */
  | { readonly _tag: "Reject"; readonly req: Request.Request; readonly error: ProtocolError }
  /** The state advanced (a payload is next, or part of a rejected one was discarded). */
  | { readonly _tag: "Continue" }
  /** NBD_CMD_DISC. */
  | { readonly _tag: "Disconnect" }
  /** The stream can no longer be trusted (bad magic, absurd payload): close the connection. */
  | { readonly _tag: "Violation"; readonly message: string }

/** The parser of one connection. */
export interface Parser {
  state: ParserState
  readonly extended: boolean
  /** The error a request gets before it runs, if any. */
  readonly check: (req: Request.Request) => ProtocolError | undefined
  /** Largest rejected payload that is read and discarded; a larger one is a violation. */
  readonly maxDiscard: number
  /** Where a checked WRITE's payload goes as it arrives, if it is streamed. */
  readonly stream?: ((req: Request.Request) => PayloadSink | undefined) | undefined
}

/** Bytes a discarded payload waits for at a time (the reader keeps at most that much). */
const SKIP_CHUNK = 1024 * 1024
const NO_PAYLOAD: ReadonlyArray<Uint8Array> = [new Uint8Array(0)]

/** A parser at the start of the transmission phase. */
export const make = (options: Omit<Parser, "state">): Parser => ({ ...options, state: { _tag: "Header" } })

/** Bytes that follow a header: a compact WRITE's data, or any payload announced by PAYLOAD_LEN. */
const payloadLength = (req: Request.Request, extended: boolean): number =>
  extended
    ? ((req.flags & CommandFlags.PAYLOAD_LEN) !== 0 ? req.length : 0)
    : (req.type === Command.WRITE ? req.length : 0)

/** A new header: the request, and the state its payload (if any) puts the parser in. */
const header = (parser: Parser, reader: FrameReader): Step => {
  const size = parser.extended ? Wire.EXTENDED_REQUEST_HEADER_SIZE : Wire.REQUEST_HEADER_SIZE
  const bytes = reader.tryRead(size)
  if (bytes === undefined) return { _tag: "NeedBytes", bytes: size }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const magic = view.getUint32(0)
  if (magic !== (parser.extended ? EXTENDED_REQUEST_MAGIC : REQUEST_MAGIC)) {
    return { _tag: "Violation", message: `bad request magic 0x${magic.toString(16)}` }
  }
  const req = Request.decode(view, parser.extended)
  if (req.type === Command.DISC) return { _tag: "Disconnect" }
  const length = payloadLength(req, parser.extended)
  const error = parser.check(req)
  if (error !== undefined && length > 0) {
    if (length > parser.maxDiscard) return { _tag: "Violation", message: `request payload of ${length} bytes` }
    parser.state = { _tag: "Skip", req, left: length, error }
    return { _tag: "Continue" }
  }
  if (error !== undefined) return { _tag: "Reject", req, error }
  if (length > 0) {
    const sink = req.type === Command.WRITE ? parser.stream?.(req) : undefined
    // The pipeline checks its payload budget before a whole payload is taken.
    parser.state = sink === undefined ? { _tag: "Payload", req } : { _tag: "Stream", req, sink, left: length }
    return { _tag: "Continue" }
  }
  return { _tag: "Run", req, payload: NO_PAYLOAD }
}

const payload = (parser: Parser, reader: FrameReader, req: Request.Request): Step => {
  const pieces = reader.tryReadChunks(req.length)
  if (pieces === undefined) return { _tag: "NeedBytes", bytes: req.length }
  parser.state = { _tag: "Header" }
  return { _tag: "Run", req, payload: pieces }
}

/** Hands on the buffered part of a streamed payload that ends at a block boundary (or the payload's end). */
const streamed = (parser: Parser, reader: FrameReader, state: Extract<ParserState, { _tag: "Stream" }>): Step => {
  const at = state.req.offset + state.req.length - state.left
  const buffered = reader.buffered()
  const next = Math.min(state.left, (Math.floor(at / BLOCK) + 1) * BLOCK - at)
  if (buffered < next) return { _tag: "NeedBytes", bytes: next }
  const n = buffered >= state.left ? state.left : Math.floor((at + buffered) / BLOCK) * BLOCK - at
  const pieces = reader.takeChunks(n)
  const left = state.left - n
  parser.state = left === 0 ? { _tag: "Header" } : { ...state, left }
  return { _tag: "Pieces", req: state.req, sink: state.sink, pieces, last: left === 0 }
}

const skip = (parser: Parser, reader: FrameReader, state: Extract<ParserState, { _tag: "Skip" }>): Step => {
  const n = reader.discard(state.left)
  if (n === 0) return { _tag: "NeedBytes", bytes: Math.min(state.left, SKIP_CHUNK) }
  const left = state.left - n
  if (left > 0) {
    parser.state = { ...state, left }
    return { _tag: "Continue" }
  }
  parser.state = { _tag: "Header" }
  return { _tag: "Reject", req: state.req, error: state.error }
}

/** Takes one step from the buffered bytes. */
export const step = (parser: Parser, reader: FrameReader): Step => {
  const state = parser.state
  switch (state._tag) {
    case "Header":
      return header(parser, reader)
    case "Payload":
      return payload(parser, reader, state.req)
    case "Stream":
      return streamed(parser, reader, state)
    case "Skip":
      return skip(parser, reader, state)
  }
}

/** The payload the parser waits for, in bytes (0 unless a request's payload is next). */
export const pendingPayload = (parser: Parser): number => (parser.state._tag === "Payload" ? parser.state.req.length : 0)
