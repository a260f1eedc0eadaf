/**
 * The `s3-bucket` driver: every s3 export found in a bucket, each served by the s3
 * driver under its key prefix as export name (`effect-nbd s3-bucket disks`: a client
 * asks for `vm1`, or `team/vm2`), so that LIST shows them. An export is a prefix holding
 * an `export.json` (see {@link S3Objects}); the bucket is searched level by level (one
 * LIST per prefix, not per object; an export's own prefixes are not searched) when the
 * server starts, and again for LIST when the last search is older than `rescan=`, so
 * that exports added to the bucket later are served too. A client asking for a name not
 * known yet makes the server look for that export (one GET of its `export.json`; a name
 * found missing is not looked for again before `rescan=` has passed). An export is
 * opened (its lease taken) when first found and stays open until the server stops. The
 * first export found at start is also the default export.
 *
 * Parameters: those of the s3 driver that apply to existing exports (`endpoint=`,
 * `region=`, `cache-size=`, `uploads=`, `downloads=`, `read-ahead=`, `lease-time=`,
 * `path-style=`), for every export; each export has its own cache and lease. And:
 * - `rescan=DURATION` (default 2s): how long a search of the bucket (or a name found
 *   missing) is reused; `0` searches on every LIST and unknown name.
 *
 * @since 0.2.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Params from "../Params.ts"
import type { DriverPlugin, DriverSource, NamedDriver } from "../Plugin.ts"
import * as S3 from "./S3.ts"
import * as Objects from "./S3Objects.ts"
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

/** Default of `rescan=`. */
export const DEFAULT_RESCAN = Duration.seconds(2)

/** The parameters of the bucket driver: the s3 driver's, less those that create or describe one export. */
export const parameters: ReadonlyArray<Params.ParameterDoc> = [
  ...S3.parameters.filter((p) => !["size", "object-size", "description"].includes(p.name)),
  { name: "rescan", default: "2s", description: "how long a search of the bucket, or a name found missing, is reused" }
]

/** Options of the bucket driver: those of the s3 driver for every export, and how often to search. */
export type BucketOptions = Omit<S3.S3Options, "location"> & {
  /** How long a search of the bucket, or a name found missing, is reused (default 2 s). */
  readonly rescan?: Duration.DurationInput | undefined
}

const bucketFailure = (e: S3Store.S3Failure) => new S3.S3DriverError({ message: `s3-bucket: ${e.operation}: ${e.message}` })

/**
 * The exports of a bucket as they are now and as they appear: searched at start (at
 * least one must be there), again for LIST when the last search is older than
 * `rescan`, and looked for by name when a client asks for one not known. Each export
 * is opened once, in the current scope.
 */
export const source = (bucket: string, options: BucketOptions): Effect.Effect<DriverSource, S3.S3DriverError, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const store = options.store ??
      S3Store.make({ bucket, endpoint: options.endpoint, region: options.region, pathStyle: options.pathStyle })
    const rescan = Duration.toMillis(options.rescan ?? DEFAULT_RESCAN)
    const opened = new Map<string, NamedDriver>()
    const missing = new Map<string, number>() // name -> when it was found missing
    let searched = -Infinity
    const lock = yield* Effect.makeSemaphore(1)
    /** Opens an export (once); none, logged, if it cannot be. */
    const open = (prefix: string) =>
      Effect.suspend(() => {
        const known = opened.get(prefix)
        if (known !== undefined) return Effect.succeed(Option.some(known))
        return S3.make({ ...options, location: { bucket, prefix } }).pipe(
          Scope.extend(scope),
          Effect.map((driver) => {
            const named = { name: prefix, driver }
            opened.set(prefix, named)
            return Option.some(named)
          }),
          Effect.catchAll((e) => Effect.as(Effect.logWarning(`s3-bucket: export '${prefix}' not served: ${e.message}`), Option.none()))
        )
      })
    const search = lock.withPermits(1)(Effect.suspend(() => {
      if (Date.now() - searched < rescan) return Effect.void
      return Effect.flatMap(discover(store), (prefixes) =>
        Effect.forEach(prefixes, open, { discard: true }).pipe(Effect.tap(() => {
          searched = Date.now()
        })))
    }))
    yield* Effect.mapError(search, bucketFailure)
    if (opened.size === 0) return yield* new S3.S3DriverError({ message: `s3-bucket: no exports in bucket '${bucket}'` })
    const first = [...opened.keys()]
    const current = () => {
      // The exports found at start first (the first is the default), then the others in key order.
      const later = [...opened.keys()].filter((p) => !first.includes(p)).sort()
      return [...first, ...later].flatMap((p) => Option.toArray(Option.fromNullable(opened.get(p))))
    }
    /** Notes a name found missing (forgetting those noted before the last `rescan`, if there are many). */
    const remember = (name: string) => {
      const now = Date.now()
      if (missing.size >= 1024) for (const [old, at] of missing) if (now - at >= rescan) missing.delete(old)
      missing.set(name, now)
    }
    const lookUp = (name: string) =>
      lock.withPermits(1)(Effect.suspend(() => {
        if (opened.has(name)) return Effect.succeed(Option.some(opened.get(name)!))
        if (Date.now() - (missing.get(name) ?? -Infinity) < rescan) return Effect.succeed(Option.none())
        return store.get(Objects.metadataKey({ bucket, prefix: name })).pipe(
          Effect.flatMap((found) => Option.isSome(found) ? open(name) : Effect.succeed(Option.none())),
          Effect.catchAll((e) => Effect.as(Effect.logWarning(`s3-bucket: looking for '${name}': ${e.message}`), Option.none())),
          Effect.tap((found) => Effect.sync(() => Option.isNone(found) && remember(name)))
        )
      }))
    return {
      list: Effect.zipRight(
        Effect.catchAll(search, (e) => Effect.logWarning(`s3-bucket: searching '${bucket}': ${e.operation}: ${e.message}`)),
        Effect.sync(current)
      ),
      find: (name) => {
        const known = opened.get(name)
        if (known !== undefined) return Effect.succeed(Option.some(known))
        return Either.isRight(Objects.parseLocation(`${bucket}/${name}`)) && !name.startsWith("/") && !name.includes("//")
          ? lookUp(name)
          : Effect.succeed(Option.none())
      }
    } satisfies DriverSource
  })

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

/** Reads the bucket driver's argument and parameters. */
const readBucketOptions = (argument: string, pairs: ReadonlyMap<string, string>) =>
  Either.flatMap(
    Params.decode("s3-bucket", pairs, parameters, (read): BucketOptions => ({
      ...S3.readOptions(read, "s3-bucket"),
      rescan: read.duration("rescan", DEFAULT_RESCAN)
    })),
    (options) =>
      /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(argument)
        ? Either.right(options)
        : Either.left(new Params.ParameterError({ message: `s3-bucket: '${argument}' is not a bucket name` }))
  )

/** The driver by name, for the command line: `effect-nbd s3-bucket BUCKET [endpoint=URL]`. */
export const plugin: DriverPlugin = {
  name: "s3-bucket",
  summary: "every s3 export found in a bucket, each named after its key prefix",
  argument: { name: "BUCKET", description: "the bucket whose exports are served" },
  parameters,
  make: () =>
    Either.left(new Params.ParameterError({ message: "s3-bucket: serves one export per prefix (see `exports`)" })),
  exports: (argument, pairs, pluginOptions) =>
    Either.map(readBucketOptions(argument, pairs), (options) =>
      make(argument, { ...options, readOnly: pluginOptions?.readOnly ?? false })),
  exportSource: (argument, pairs, pluginOptions) =>
    Either.map(readBucketOptions(argument, pairs), (options) =>
      source(argument, { ...options, readOnly: pluginOptions?.readOnly ?? false }))
}
