/**
 * A transmission request as the server handles it: the header's fields, with offset and
 * length as numbers.
 *
 * @since 0.2.0
 */
import * as Wire from "../protocol/Transmission.ts"

/** A decoded request (offsets and lengths past 2^53 are clamped, and so rejected by the checks). */
export interface Request {
  readonly type: number
  readonly flags: number
  readonly cookie: bigint
  /** The offset as sent, echoed in extended reply headers. */
  readonly wireOffset: bigint
  readonly offset: number
  readonly length: number
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)
const toNumber = (value: bigint): number => (value > MAX_SAFE ? Number.MAX_SAFE_INTEGER : Number(value))

/** Decodes a compact or extended request header (its magic already checked). */
export const decode = (view: DataView, extended: boolean): Request => {
  const header = extended ? Wire.decodeExtendedRequestHeaderFast(view, 0) : Wire.decodeRequestHeaderFast(view, 0)
  return {
    type: header.type,
    flags: header.flags,
    cookie: header.cookie,
    wireOffset: header.offset,
    offset: toNumber(header.offset),
    length: typeof header.length === "bigint" ? toNumber(header.length) : header.length
  }
}
