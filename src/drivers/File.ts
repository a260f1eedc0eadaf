/**
 * A driver over a regular file. One file descriptor is shared by every connection, and
 * FLUSH is `fdatasync` on it, so the export offers multi-connection; FUA writes are
 * followed by a flush. Zeroing writes zero buffers; RESIZE truncates or extends the file.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as Driver from "../Driver.ts"
import { errnoFromSystemError, type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { DriverPlugin } from "../Plugin.ts"

/** Options of the file driver. */
export interface FileOptions {
  readonly path: string
  /** Open the file read-only (the export refuses writes). */
  readonly readOnly?: boolean | undefined
  readonly description?: string | undefined
}

const failure = (what: string) => (cause: NodeJS.ErrnoException | null) =>
  protocolError(errnoFromSystemError(cause), `${what}: ${cause?.message ?? "unknown error"}`)

/** Calls a Node.js callback API and resumes with its result. */
const call = <A>(what: string, run: (done: (error: NodeJS.ErrnoException | null, value: A) => void) => void) =>
  Effect.async<A, ProtocolError>((resume) => {
    run((error, value) => resume(error ? Effect.fail(failure(what)(error)) : Effect.succeed(value)))
  })

/** Opens the file for the life of the scope and makes the driver. */
export const make = (options: FileOptions): Effect.Effect<Driver.NbdDriverShape, ProtocolError, Scope.Scope> =>
  Effect.gen(function*() {
    const readOnly = options.readOnly ?? false
    const fd = yield* Effect.acquireRelease(
      call<number>(`opening ${options.path}`, (done) => fs.open(options.path, readOnly ? "r" : "r+", done)),
      (fd) => Effect.async<void>((resume) => fs.close(fd, () => resume(Effect.void)))
    )
    const stat = yield* call<fs.Stats>(`reading the size of ${options.path}`, (done) => fs.fstat(fd, done))
    if (!stat.isFile()) return yield* Effect.fail(protocolError("EINVAL", `${options.path} is not a regular file`))

    const read = (offset: number, length: number) =>
      Effect.async<Uint8Array, ProtocolError>((resume) => {
        const buffer = Buffer.allocUnsafe(length)
        const step = (done: number) => {
          if (done === length) return resume(Effect.succeed(buffer))
          fs.read(fd, buffer, done, length - done, offset + done, (error, n) => {
            if (error) return resume(Effect.fail(failure("read")(error)))
            if (n === 0) {
              buffer.fill(0, done) // past the end of a file that shrank: zeroes
              return resume(Effect.succeed(buffer))
            }
            step(done + n)
          })
        }
        step(0)
      })

    const write = (offset: number, data: Uint8Array) =>
      Effect.async<void, ProtocolError>((resume) => {
        const step = (done: number) => {
          if (done === data.length) return resume(Effect.void)
          fs.write(fd, data, done, data.length - done, offset + done, (error, n) => {
            if (error) return resume(Effect.fail(failure("write")(error)))
            step(done + n)
          })
        }
        step(0)
      })

    const flush = call<void>("flush", (done) => fs.fdatasync(fd, (error) => done(error, undefined)))

    return Driver.make({
      name: "file",
      description: options.description,
      capabilities: { multiConn: true },
      size: Effect.map(call<fs.Stats>("fstat", (done) => fs.fstat(fd, done)), (s) => s.size),
      read,
      ...(readOnly ? {} : {
        write: (offset, data) => write(offset, data),
        flush,
        resize: (size: number) => call<void>("resize", (done) => fs.ftruncate(fd, size, (error) => done(error, undefined)))
      })
    })
  })

/** A layer providing a file driver; the file is closed when the layer's scope closes. */
export const layer = (options: FileOptions): Layer.Layer<Driver.NbdDriver, ProtocolError> =>
  Layer.scoped(Driver.NbdDriver, make(options))

/** The driver by name, for the command line: `file PATH` (opened read-only for a read-only export). */
export const plugin: DriverPlugin = {
  name: "file",
  summary: "a regular file (multi-connection; FLUSH and FUA are fdatasync)",
  argument: { name: "PATH", description: "the file to export" },
  parameters: [],
  make: (argument, pairs, options) =>
    Either.flatMap(Params.decode("file", pairs, [], () => argument), (path) =>
      path === ""
        ? Either.left(new Params.ParameterError({ message: "file: a PATH is required" }))
        : Either.right(make({ path, readOnly: options?.readOnly ?? false })))
}
