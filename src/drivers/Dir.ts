/**
 * Every regular file and block device of a directory as an export named after it
 * (`effect-nbd dir /srv/images`: a client asks for `debian.img`), each served by the file
 * driver, and listed by LIST with its size as description. The first name in order is
 * also the default export. Hidden entries (a leading dot) and anything that is neither a
 * regular file nor a block device are left out; symbolic links are followed; a file that
 * cannot be opened is left out with a warning in the log. The directory is read once,
 * when the server starts.
 *
 * Parameters: those of the file driver (`cache=`, `fadvise=`), for every file.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as path from "node:path"
import { type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { DriverPlugin, NamedDriver } from "../Plugin.ts"
import { formatSize } from "../Size.ts"
import * as FileDriver from "./File.ts"
import { systemFailure } from "./FileIo.ts"

/** Options of the dir driver. */
export interface DirOptions extends Omit<FileDriver.FileOptions, "path" | "description"> {
  readonly dir: string
}

/** An entry that can be served. */
export interface Entry {
  readonly name: string
  readonly path: string
}

/** The regular files and block devices of `dir`, by name. */
export const scan = (dir: string): Effect.Effect<ReadonlyArray<Entry>, ProtocolError> =>
  Effect.async<ReadonlyArray<string>, ProtocolError>((resume) =>
    fs.readdir(dir, (error, names) =>
      resume(error ? Effect.fail(systemFailure(`reading the directory ${dir}`)(error)) : Effect.succeed(names)))
  ).pipe(
    Effect.map((names) =>
      names
        .filter((name) => !name.startsWith("."))
        .sort()
        .map((name) => ({ name, path: path.join(dir, name) }))
        .filter((entry) => {
          try {
            const stat = fs.statSync(entry.path)
            return stat.isFile() || stat.isBlockDevice()
          } catch {
            return false // a dangling link
          }
        })
    )
  )

/** Opens every file of the directory with the file driver, for the life of the scope. */
export const make = (options: DirOptions): Effect.Effect<ReadonlyArray<NamedDriver>, ProtocolError, Scope.Scope> =>
  Effect.gen(function*() {
    const { dir, ...fileOptions } = options
    const entries = yield* scan(dir)
    if (entries.length === 0) {
      return yield* Effect.fail(protocolError("EINVAL", `${dir} holds no regular file or block device to serve`))
    }
    const opened = yield* Effect.forEach(entries, (entry) =>
      FileDriver.makeSized({ ...fileOptions, path: entry.path }).pipe(
        Effect.map(({ driver, size }) =>
          Option.some({ name: entry.name, driver: { ...driver, description: Option.some(formatSize(size)) } })
        ),
        // one file that cannot be opened (permissions, a device in use) does not keep the others from being served
        Effect.catchAll((error) => Effect.as(Effect.logWarning(`dir: leaving out ${entry.name}: ${error.message}`), Option.none()))
      ))
    const served = opened.flatMap((each) => Option.isSome(each) ? [each.value] : [])
    if (served.length === 0) return yield* Effect.fail(protocolError("EIO", `no file of ${dir} could be opened`))
    return served
  })

/** The driver by name, for the command line: `dir DIR [cache=none] [fadvise=...]`. */
export const plugin: DriverPlugin = {
  name: "dir",
  summary: "every regular file and block device of a directory, each an export named after it",
  argument: { name: "DIR", description: "the directory whose files are exported" },
  parameters: FileDriver.parameters,
  make: () =>
    Either.left(new Params.ParameterError({ message: "dir: serves one export per file (see `exports`)" })),
  exports: (argument, pairs, options) =>
    Either.flatMap(Params.decode("dir", pairs, FileDriver.parameters, FileDriver.readParameters), (read) =>
      argument === ""
        ? Either.left(new Params.ParameterError({ message: "dir: a DIR is required" }))
        : Either.right(make({ dir: argument, readOnly: options?.readOnly ?? false, ...read })))
}
