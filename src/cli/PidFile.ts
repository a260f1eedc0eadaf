/**
 * `--pid-file FILE`: the process id, written once the server listens (so that a service
 * manager or script waiting for the file can connect at once) and removed when it stops.
 *
 * The file appears complete: it is written under a temporary name beside it and renamed.
 *
 * @since 0.1.0
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

/**
 * Writes this process's id and a newline to `path`, removing the file when the scope closes.
 *
 * @since 0.1.0
 */
export const write = (path: string): Effect.Effect<void, Error, FileSystem.FileSystem | Scope.Scope> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const partial = `${path}.${process.pid}.tmp`
    yield* Effect.acquireRelease(
      fs.writeFileString(partial, `${process.pid}\n`).pipe(
        Effect.zipRight(fs.rename(partial, path)),
        Effect.tapError(() => fs.remove(partial).pipe(Effect.ignore)),
        Effect.mapError((e) => new Error(`--pid-file: ${e.message}`))
      ),
      () => fs.remove(path).pipe(Effect.ignore)
    )
  })
