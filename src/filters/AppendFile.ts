/**
 * A text file opened for appending for the life of a scope, written through Node's
 * buffered write stream: a write returns at once, the writes of one tick go to the file
 * together, and closing the scope waits until everything is written, synced to disk
 * and the file closed.
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"

/** The file could not be opened. */
export class AppendFileError extends Data.TaggedError("AppendFileError")<{
  readonly path: string
  readonly message: string
}> {}

/** A file open for appending. */
export interface AppendFile {
  readonly path: string
  /**
   * Queues text to append; never waits for the disk. After a write error the file takes
   * no more text (the error is logged once, as a warning); after the scope closed, neither.
   */
  readonly write: (text: string) => Effect.Effect<void>
}

interface State {
  readonly stream: fs.WriteStream
  failure: Error | undefined
  reported: boolean
}

const opening = (path: string) =>
  Effect.async<State, AppendFileError>((resume) => {
    const stream = fs.createWriteStream(path, { flags: "a", flush: true })
    const state: State = { stream, failure: undefined, reported: false }
    // Kept for the life of the stream: an unhandled "error" event would end the process.
    stream.on("error", (error) => {
      state.failure ??= error
    })
    const refused = (error: Error) => resume(Effect.fail(new AppendFileError({ path, message: error.message })))
    stream.once("error", refused)
    stream.once("ready", () => {
      stream.off("error", refused)
      resume(Effect.succeed(state))
    })
    return Effect.sync(() => stream.destroy())
  })

const closing = ({ stream }: State) =>
  Effect.async<void>((resume) => {
    if (stream.closed) return resume(Effect.void)
    stream.once("close", () => resume(Effect.void))
    stream.end()
  })

const writer = (path: string, state: State) => (text: string): Effect.Effect<void> =>
  Effect.suspend(() => {
    const { stream } = state
    if (state.failure !== undefined) {
      if (state.reported) return Effect.void
      state.reported = true
      return Effect.logWarning(`writing ${path} failed, no more is written: ${state.failure.message}`)
    }
    if (stream.writableEnded) return Effect.void
    if (stream.writableCorked === 0) {
      stream.cork()
      process.nextTick(() => stream.uncork())
    }
    stream.write(text)
    return Effect.void
  })

/** Opens `path` for appending (created if missing); closed, after a final flush, with the scope. */
export const open = (path: string): Effect.Effect<AppendFile, AppendFileError, Scope.Scope> =>
  Effect.map(Effect.acquireRelease(opening(path), closing), (state) => ({ path, write: writer(path, state) }))
