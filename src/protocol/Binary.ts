/**
 * Building blocks for big-endian binary codecs expressed as Effect Schemas.
 *
 * A {@link Field} knows how to read and write one value at a cursor and carries the
 * Schema of the decoded value (used to validate on encode and to generate test values).
 * {@link struct} lays fields out one after the other and yields a
 * `Schema<A, Uint8Array>`: decoding and encoding both come from that one description.
 * Malformed input (too short, wrong magic, invalid UTF-8, trailing bytes) decodes to a
 * `ParseError`; nothing here throws to the caller.
 *
 * @since 0.1.0
 */
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { MAX_STRING_BYTES } from "./Constants.ts"

/** A read cursor over a byte buffer. */
export interface Reader {
  readonly bytes: Uint8Array
  readonly view: DataView
  pos: number
}

/** A write cursor over a byte buffer of the exact encoded size. */
export interface Writer {
  readonly bytes: Uint8Array
  readonly view: DataView
  pos: number
}

/** Raised inside a decoder; turned into a ParseIssue by {@link struct}. */
class DecodeFailure {
  constructor(readonly message: string) {}
}

const failDecode = (message: string): never => {
  throw new DecodeFailure(message)
}

const need = (r: Reader, n: number): void => {
  if (r.pos + n > r.bytes.length) {
    failDecode(`expected ${n} more byte(s) at offset ${r.pos}, but only ${r.bytes.length - r.pos} remain`)
  }
}

/** One value of a binary layout. */
export interface Field<A> {
  /** The Schema of the decoded value: validates values before encoding. */
  readonly schema: Schema.Schema<A>
  /** Encoded size of a value in bytes. */
  readonly size: (value: A) => number
  readonly read: (r: Reader) => A
  readonly write: (w: Writer, value: A) => void
}

/** A field that is always the same bytes on the wire and is not part of the decoded value. */
export interface Constant {
  readonly _tag: "Constant"
  readonly size: number
  readonly read: (r: Reader) => void
  readonly write: (w: Writer) => void
}

const isConstant = (u: Field<unknown> | Constant): u is Constant => "_tag" in u && u._tag === "Constant"

/** Unsigned 8-bit integer. */
export const u8: Field<number> = {
  schema: Schema.Int.pipe(Schema.between(0, 0xff)),
  size: () => 1,
  read: (r) => {
    need(r, 1)
    return r.view.getUint8(r.pos++)
  },
  write: (w, v) => {
    w.view.setUint8(w.pos++, v)
  }
}

/** Unsigned 16-bit big-endian integer. */
export const u16: Field<number> = {
  schema: Schema.Int.pipe(Schema.between(0, 0xffff)),
  size: () => 2,
  read: (r) => {
    need(r, 2)
    const v = r.view.getUint16(r.pos)
    r.pos += 2
    return v
  },
  write: (w, v) => {
    w.view.setUint16(w.pos, v)
    w.pos += 2
  }
}

/** Unsigned 32-bit big-endian integer. */
export const u32: Field<number> = {
  schema: Schema.Int.pipe(Schema.between(0, 0xffffffff)),
  size: () => 4,
  read: (r) => {
    need(r, 4)
    const v = r.view.getUint32(r.pos)
    r.pos += 4
    return v
  },
  write: (w, v) => {
    w.view.setUint32(w.pos, v)
    w.pos += 4
  }
}

/** Unsigned 64-bit big-endian integer, as a bigint. */
export const u64: Field<bigint> = {
  schema: Schema.BigIntFromSelf.pipe(Schema.betweenBigInt(0n, 0xffffffffffffffffn)),
  size: () => 8,
  read: (r) => {
    need(r, 8)
    const v = r.view.getBigUint64(r.pos)
    r.pos += 8
    return v
  },
  write: (w, v) => {
    w.view.setBigUint64(w.pos, v)
    w.pos += 8
  }
}

/** A fixed value of a numeric field (a magic number): checked on decode, written on encode. */
export const constant = <A extends number | bigint>(field: Field<A>, value: A, name: string): Constant => ({
  _tag: "Constant",
  size: field.size(value),
  read: (r) => {
    const start = r.pos
    const actual = field.read(r)
    if (actual !== value) {
      failDecode(`${name}: expected 0x${value.toString(16)} at offset ${start}, got 0x${actual.toString(16)}`)
    }
  },
  write: (w) => field.write(w, value)
})

/** `n` bytes of padding: written as zeroes, skipped on decode. */
export const padding = (n: number): Constant => ({
  _tag: "Constant",
  size: n,
  read: (r) => {
    need(r, n)
    r.pos += n
  },
  write: (w) => {
    w.bytes.fill(0, w.pos, w.pos + n)
    w.pos += n
  }
})

const utf8Decoder = new TextDecoder("utf-8", { fatal: true })
const utf8Encoder = new TextEncoder()

const decodeUtf8 = (bytes: Uint8Array): string => {
  try {
    return utf8Decoder.decode(bytes)
  } catch {
    return failDecode("invalid UTF-8 string")
  }
}

/** True when a string has no lone surrogate, so UTF-8 encoding is lossless. */
const isWellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed()

/** Byte length of a string in UTF-8. */
export const utf8Length = (s: string): number => Buffer.byteLength(s, "utf8")

/**
 * An NBD string: well-formed UTF-8, no NUL, at most 4096 bytes. Test values are
 * printable ASCII, which covers the framing (lengths) the codecs care about.
 */
export const NbdString: Schema.Schema<string> = Schema.String.pipe(
  Schema.filter((s) => isWellFormed(s) && !s.includes("\0") && utf8Length(s) <= MAX_STRING_BYTES, {
    message: () => "an NBD string: UTF-8 without NUL, at most 4096 bytes",
    arbitrary: () => (fc) => fc.string({ maxLength: 64 }).filter((s) => !s.includes("\0"))
  })
)

const readString = (r: Reader, n: number): string => {
  if (n > MAX_STRING_BYTES) failDecode(`string of ${n} bytes exceeds ${MAX_STRING_BYTES}`)
  need(r, n)
  const s = decodeUtf8(r.bytes.subarray(r.pos, r.pos + n))
  r.pos += n
  if (s.includes("\0")) failDecode("string contains NUL")
  return s
}

const writeString = (w: Writer, s: string): void => {
  const written = utf8Encoder.encodeInto(s, w.bytes.subarray(w.pos)).written
  w.pos += written
}

/** A string preceded by its byte length as a `u16` or `u32`. */
export const prefixedString = (prefix: Field<number>): Field<string> => ({
  schema: NbdString,
  size: (s) => prefix.size(0) + utf8Length(s),
  read: (r) => readString(r, prefix.read(r)),
  write: (w, s) => {
    prefix.write(w, utf8Length(s))
    writeString(w, s)
  }
})

/** A string that takes all remaining bytes. */
export const restString: Field<string> = {
  schema: NbdString,
  size: utf8Length,
  read: (r) => readString(r, r.bytes.length - r.pos),
  write: writeString
}

/** Raw bytes that take all remaining bytes (a view of the input on decode, no copy). */
export const restBytes: Field<Uint8Array> = {
  schema: Schema.Uint8ArrayFromSelf,
  size: (b) => b.length,
  read: (r) => {
    const b = r.bytes.subarray(r.pos)
    r.pos = r.bytes.length
    return b
  },
  write: (w, b) => {
    w.bytes.set(b, w.pos)
    w.pos += b.length
  }
}

/** A list preceded by its element count. */
export const array = <A>(count: Field<number>, element: Field<A>, maxItems = 0xffff): Field<ReadonlyArray<A>> => ({
  schema: Schema.Array(element.schema).pipe(Schema.maxItems(maxItems)),
  size: (items) => items.reduce((n, item) => n + element.size(item), count.size(0)),
  read: (r) => {
    const n = count.read(r)
    if (n > maxItems) failDecode(`${n} items exceed the maximum of ${maxItems}`)
    const items: Array<A> = []
    for (let i = 0; i < n; i++) items.push(element.read(r))
    return items
  },
  write: (w, items) => {
    count.write(w, items.length)
    for (const item of items) element.write(w, item)
  }
})

/** A list of fixed-size elements that takes all remaining bytes. */
export const restArray = <A>(element: Field<A>, elementSize: number): Field<ReadonlyArray<A>> => ({
  schema: Schema.Array(element.schema),
  size: (items) => items.length * elementSize,
  read: (r) => {
    const remaining = r.bytes.length - r.pos
    if (remaining % elementSize !== 0) failDecode(`${remaining} bytes is not a multiple of ${elementSize}`)
    const items: Array<A> = []
    while (r.pos < r.bytes.length) items.push(element.read(r))
    return items
  },
  write: (w, items) => {
    for (const item of items) element.write(w, item)
  }
})

type Layout = Record<string, Field<any> | Constant>

/** The decoded value of a layout: every non-constant field. */
export type LayoutType<L extends Layout> = {
  readonly [K in keyof L as L[K] extends Constant ? never : K]: L[K] extends Field<infer A> ? A : never
}

/** A Schema decoding a whole byte buffer into a value, with the layout it was made from. */
export interface BinarySchema<A> extends Schema.Schema<A, Uint8Array> {
  /** The layout as a field, to nest this message inside another. */
  readonly field: Field<A>
  /** Encoded size of a value. */
  readonly sizeOf: (value: A) => number
  /** Encodes a value that is already known to be valid (no Schema validation). */
  readonly encodeUnsafe: (value: A) => Uint8Array
}

const structField = <L extends Layout>(layout: L): Field<LayoutType<L>> => {
  const entries = Object.entries(layout)
  const schemaFields: Record<string, Schema.Schema<any>> = {}
  for (const [key, f] of entries) {
    if (!isConstant(f)) schemaFields[key] = f.schema
  }
  return {
    schema: Schema.Struct(schemaFields) as unknown as Schema.Schema<LayoutType<L>>,
    size: (value) => {
      let n = 0
      for (const [key, f] of entries) n += isConstant(f) ? f.size : f.size((value as any)[key])
      return n
    },
    read: (r) => {
      const out: Record<string, unknown> = {}
      for (const [key, f] of entries) {
        if (isConstant(f)) f.read(r)
        else out[key] = f.read(r)
      }
      return out as LayoutType<L>
    },
    write: (w, value) => {
      for (const [key, f] of entries) {
        if (isConstant(f)) f.write(w)
        else f.write(w, (value as any)[key])
      }
    }
  }
}

/** Nests a message inside another layout. */
export const embed = <A>(schema: BinarySchema<A>): Field<A> => schema.field

/** Decodes a whole buffer with a field; trailing bytes are an error. */
export const decodeWith = <A>(field: Field<A>, bytes: Uint8Array): { readonly value: A } | { readonly error: string } => {
  const r: Reader = { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), pos: 0 }
  try {
    const value = field.read(r)
    if (r.pos !== bytes.length) return { error: `${bytes.length - r.pos} unexpected trailing byte(s)` }
    return { value }
  } catch (e) {
    if (e instanceof DecodeFailure) return { error: e.message }
    return { error: String(e) }
  }
}

/** Encodes a value with a field into a new buffer of the exact size. */
export const encodeWith = <A>(field: Field<A>, value: A): Uint8Array => {
  const bytes = new Uint8Array(field.size(value))
  const w: Writer = { bytes, view: new DataView(bytes.buffer), pos: 0 }
  field.write(w, value)
  return bytes
}

/** Makes a binary message Schema from a field. */
export const fromField = <A>(field: Field<A>): BinarySchema<A> => {
  const schema = Schema.transformOrFail(Schema.Uint8ArrayFromSelf, Schema.typeSchema(field.schema), {
    strict: true,
    decode: (bytes, _, ast) => {
      const result = decodeWith(field, bytes)
      return "error" in result
        ? ParseResult.fail(new ParseResult.Type(ast, bytes, result.error))
        : ParseResult.succeed(result.value)
    },
    encode: (value) => ParseResult.succeed(encodeWith(field, value))
  })
  return Object.assign(schema, {
    field,
    sizeOf: field.size,
    encodeUnsafe: (value: A) => encodeWith(field, value)
  }) as unknown as BinarySchema<A>
}

/** A message made of fields laid out one after another. */
export const struct = <L extends Layout>(layout: L): BinarySchema<LayoutType<L>> => fromField(structField(layout))
