/**
 * The I/O operations of a handle by their parameter names (`read`, `write`, `zero`,
 * `trim`, `flush`, `cache`, `extents`), for filters that act on a chosen set of them
 * (`ops=read,write`): one function that builds the overrides from a single wrapper.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type { DriverHandle } from "../Driver.ts"
import type { ProtocolError } from "../Errors.ts"
import { ParameterError } from "../Params.ts"

/** Every operation name, in documentation order. */
export const all = ["read", "write", "zero", "trim", "flush", "cache", "extents"] as const

/** An operation name: `zero` is WRITE_ZEROES, `extents` is BLOCK_STATUS. */
export type Operation = (typeof all)[number]

/** The handle members the operations stand for. */
export type Operations = Pick<
  DriverHandle,
  "read" | "write" | "writeZeroes" | "trim" | "flush" | "cache" | "blockStatus"
>

/** Runs operation `op` as `call` on some handle (the filter chooses which, and what happens around it). */
export type Runner = <A>(
  op: Operation,
  call: (handle: DriverHandle) => Effect.Effect<A, ProtocolError>
) => Effect.Effect<A, ProtocolError>

const members: Record<Operation, keyof Operations> = {
  read: "read",
  write: "write",
  zero: "writeZeroes",
  trim: "trim",
  flush: "flush",
  cache: "cache",
  extents: "blockStatus"
}

/** All operations, each going through `run` (called per request, never ahead). */
export const wrapAll = (run: Runner): Operations => ({
  read: (offset, length) => run("read", (h) => h.read(offset, length)),
  write: (offset, data, options) => run("write", (h) => h.write(offset, data, options)),
  writeZeroes: (offset, length, options) => run("zero", (h) => h.writeZeroes(offset, length, options)),
  trim: (offset, length, options) => run("trim", (h) => h.trim(offset, length, options)),
  flush: Effect.suspend(() => run("flush", (h) => h.flush)),
  cache: (offset, length) => run("cache", (h) => h.cache(offset, length)),
  blockStatus: (offset, length) => run("extents", (h) => h.blockStatus(offset, length))
})

/**
 * READ into the server's buffers through `run` as the `read` operation, where `below`
 * reads into them (else `undefined`, and the server reads through `read`). The handle
 * `run` calls may be another opening of the same driver; one without `readInto` is read
 * and copied.
 */
export const readIntoVia = (below: DriverHandle, run: Runner): DriverHandle["readInto"] =>
  below.readInto === undefined ? undefined : (offset, target) =>
    run("read", (h) =>
      h.readInto !== undefined
        ? h.readInto(offset, target)
        : Effect.map(h.read(offset, target.length), (data) => void target.set(data)))

/**
 * What {@link wrap} overrides: some operations, reads into the server's buffers with `read`,
 * and with `write` whether writes copy their data.
 */
type Wrapped = Partial<Operations> & Pick<Partial<DriverHandle>, "readInto" | "writeCopies">

/**
 * Only the operations in `ops`, each going through `run` (overrides for `Driver.filter`
 * over `below`); with `read`, reads into the server's buffers too ({@link readIntoVia});
 * with `write`, writes copy their data when `below`'s do (`run` hands the data to a handle
 * and keeps none of it).
 */
export const wrap = (
  ops: Iterable<Operation>,
  run: Runner,
  below: DriverHandle
): Wrapped => {
  const wrapped = wrapAll(run)
  const out: Partial<Record<keyof Operations | "readInto" | "writeCopies", unknown>> = {}
  for (const op of ops) {
    out[members[op]] = wrapped[members[op]]
    if (op === "read") out.readInto = readIntoVia(below, run)
    if (op === "write") out.writeCopies = below.writeCopies
  }
  return out as Wrapped
}

/** Parses an `ops=` list (empty or absent: `fallback`); throws a {@link ParameterError} inside `Params.decode`. */
export const parse = (
  owner: string,
  items: ReadonlyArray<string>,
  fallback: ReadonlyArray<Operation>
): ReadonlyArray<Operation> => {
  if (items.length === 0) return fallback
  for (const item of items) {
    if (!(all as ReadonlyArray<string>).includes(item)) {
      throw new ParameterError({ message: `${owner}: unknown operation '${item}' in 'ops' (${all.join(", ")})` })
    }
  }
  return items as ReadonlyArray<Operation>
}
