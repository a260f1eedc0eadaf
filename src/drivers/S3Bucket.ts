/**
 * The `s3-bucket` driver: every s3 export found in a bucket, each served by the s3
 * driver under its key prefix as export name (`effect-nbd s3-bucket disks`: a client
 * asks for `vm1`, or `team/vm2`), so that LIST shows them. An export is a prefix holding
 * an `export.json` (see {@link S3Objects}); the bucket is searched level by level (one
 * LIST per prefix, not per object; an export's own prefixes are not searched), once,
 * when the server starts. The first export in key order is also the default export.
 *
 * Parameters: those of the s3 driver that apply to existing exports (`endpoint=`,
 * `region=`, `cache-size=`, `uploads=`, `downloads=`, `read-ahead=`, `lease-time=`,
 * `path-style=`), for every export; each export has its own cache and lease.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Scope from "effect/Scope"
import * as Params from "../Params.ts"
import type { DriverPlugin, NamedDriver } from "../Plugin.ts"
import * as S3 from "./S3.ts"
import * as S3Store from "./S3Store.ts"

/** Prefix levels searched below the bucket's root. */
const MAX_DEPTH = 8

/** The prefixes (without the trailing `/`) under which an export lives, in key order. */
export const discover = (store: S3Store.S3Store): Effect.Effect<ReadonlyArray<string>, S3Store.S3Failure> => {
  const search = (prefix: string, depth: number): Effect.Effect<ReadonlyArray<string>, S3Store.S3Failure> =>
    Effect.flatMap(store.listLevel(prefix), (level) => {
      if (prefix !== "" && level.keys.includes(`${prefix}export.json`)) return Effect.succeed([prefix.slice(0, -1)])
      if (depth >= MAX_DEPTH) return Effect.succeed([])
      return Effect.map(
        Effect.forEach([...level.prefixes].sort(), (sub) => search(sub, depth + 1), { concurrency: 8 }),
        (found) => found.flat()
      )
    })
  return search("", 0)
}

/** The parameters of the bucket driver: the s3 driver's, less those that create or describe one export. */
export const parameters: ReadonlyArray<Params.ParameterDoc> = S3.parameters.filter((p) =>
  !["size", "object-size", "description"].includes(p.name)
)

/** Serves every export of a bucket, each by the s3 driver in the current scope. */
export const make = (
  bucket: string,
  options: Omit<S3.S3Options, "location" | "store">
): Effect.Effect<ReadonlyArray<NamedDriver>, S3.S3DriverError, Scope.Scope> =>
  Effect.gen(function*() {
    const store = S3Store.make({
      bucket,
      endpoint: options.endpoint,
      region: options.region,
      pathStyle: options.pathStyle
    })
    const prefixes = yield* Effect.mapError(
      discover(store),
      (e) => new S3.S3DriverError({ message: `s3-bucket: ${e.operation}: ${e.message}` })
    )
    if (prefixes.length === 0) {
      return yield* new S3.S3DriverError({ message: `s3-bucket: no exports in bucket '${bucket}'` })
    }
    return yield* Effect.forEach(prefixes, (prefix) =>
      Effect.map(S3.make({ ...options, location: { bucket, prefix } }), (driver) => ({ name: prefix, driver })))
  })

/** The driver by name, for the command line: `effect-nbd s3-bucket BUCKET [endpoint=URL]`. */
export const plugin: DriverPlugin = {
  name: "s3-bucket",
  summary: "every s3 export found in a bucket, each named after its key prefix",
  argument: { name: "BUCKET", description: "the bucket whose exports are served" },
  parameters,
  make: () =>
    Either.left(new Params.ParameterError({ message: "s3-bucket: serves one export per prefix (see `exports`)" })),
  exports: (argument, pairs, pluginOptions) =>
    Either.flatMap(
      Params.decode("s3-bucket", pairs, parameters, (read) => S3.readOptions(read, "s3-bucket")),
      (options) =>
        /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(argument)
          ? Either.right(make(argument, { ...options, readOnly: pluginOptions?.readOnly ?? false }))
          : Either.left(new Params.ParameterError({ message: `s3-bucket: '${argument}' is not a bucket name` }))
    )
}
