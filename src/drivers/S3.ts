/**
 * The `s3` driver: an export stored in an S3 bucket (AWS S3, Ceph's radosgw, MinIO,
 * R2...), as a sequence of fixed-size objects under a key prefix, so that the NBD
 * server holds no state a replacement server could not find in the bucket.
 *
 * - Layout (see {@link S3Objects}): `PREFIX/export.json` holds the size, the object size
 *   and the format version; `PREFIX/data/%016x` the objects; `PREFIX/lease.json` the
 *   single-writer lease. A missing object reads as zeroes and is reported as a hole.
 * - Opening: an export that exists is served as it is; one that does not is created
 *   (and the bucket, if missing) when `size=` is given. A `size=` or `object-size=` that
 *   disagrees with an existing export is refused.
 * - Writes go through a bounded write-back cache of whole objects (see {@link S3Cache}):
 *   acknowledged once cached; FLUSH, FUA and the server's stop return only when the
 *   objects are stored. Partial writes of objects not cached read them first; trimming
 *   or zeroing whole objects deletes them. State is shared by every connection of the
 *   server (multi-connection).
 * - Single writer (see {@link S3Lease}): the server takes the export's lease when it
 *   starts and renews it; a server that cannot (another one holds it) serves the export
 *   read-only to the clients that connect meanwhile (NBD's READ_ONLY flag; no cache),
 *   and takes the lease over when it is released or expires: clients that connect
 *   afterwards may write. A server that loses its lease drops its cache (unflushed
 *   writes are lost, as NBD allows) and fails later writes and flushes with EIO. With
 *   `lease-time=0` no lease is taken (one server only, at the user's word).
 * - Credentials, region and endpoint come from the standard AWS environment
 *   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
 *   `~/.aws` profiles) unless given as parameters. Store failures are EIO (a refused
 *   credential EPERM).
 *
 * Argument: `BUCKET/PREFIX`. Parameters:
 * - `endpoint=URL` (default `AWS_ENDPOINT_URL`, else AWS): the S3 endpoint
 * - `region=NAME` (default `AWS_REGION`, else `us-east-1`)
 * - `size=SIZE` (default: the existing export's): creates the export when there is none
 * - `object-size=SIZE` (default 1M): object size of a new export, 4K to 64M, a power of two
 * - `cache-size=SIZE` (default 64M): most bytes of objects held in memory
 * - `uploads=N` (default 16), `downloads=N` (default 16): concurrent PUT/DELETE and GET requests
 * - `read-ahead=N` (default 8): objects fetched ahead of a sequential reader, at most a quarter of the cache
 * - `lease-time=DURATION` (default 15s): lease time; `0` takes no lease
 * - `path-style=BOOL` (default true): path-style URLs (Ceph, MinIO); false for virtual-hosted
 * - `description=TEXT` (default `s3://BUCKET/PREFIX`): description shown to clients
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import { randomBytes } from "node:crypto"
import * as os from "node:os"
import * as Driver from "../Driver.ts"
import { type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { DriverPlugin } from "../Plugin.ts"
import { formatSize } from "../Size.ts"
import * as S3Cache from "./S3Cache.ts"
import { Lease } from "./S3Lease.ts"
import * as Objects from "./S3Objects.ts"
import * as S3Store from "./S3Store.ts"

/** The export could not be opened or created. */
export class S3DriverError extends Data.TaggedError("S3DriverError")<{ readonly message: string }> {}

/** Options of the s3 driver. */
export interface S3Options {
  /** `BUCKET/PREFIX`, or the parsed location. */
  readonly location: string | Objects.Location
  readonly endpoint?: string | undefined
  readonly region?: string | undefined
  /** Path-style addressing (default true). */
  readonly pathStyle?: boolean | undefined
  /** Size of the export to create if there is none. */
  readonly size?: number | undefined
  /** Object size of a new export (default 1 MiB). */
  readonly objectSize?: number | undefined
  /** Most bytes of objects cached (default 64 MiB). */
  readonly cacheSize?: number | undefined
  readonly uploads?: number | undefined
  readonly downloads?: number | undefined
  readonly readAhead?: number | undefined
  /** Lease time (default 15 s); zero takes no lease. */
  readonly leaseTime?: Duration.DurationInput | undefined
  /** Serve read-only: no lease, no writes. */
  readonly readOnly?: boolean | undefined
  readonly description?: string | undefined
  /** A store to use instead of one made from the options (tests). */
  readonly store?: S3Store.S3Store | undefined
}

/** Defaults of {@link S3Options}. */
export const defaults = {
  objectSize: 1024 * 1024,
  cacheSize: 64 * 1024 * 1024,
  uploads: 16,
  downloads: 16,
  readAhead: 8,
  leaseTime: Duration.seconds(15)
} as const

const failure = (message: string) => new S3DriverError({ message })
const describeFailure = (e: S3Store.S3Failure) => failure(`s3: ${e.operation}: ${e.message}`)

/** Reads the export's metadata, or creates the export (and bucket) when `size` is given. */
const openExport = (store: S3Store.S3Store, location: Objects.Location, options: S3Options) =>
  Effect.gen(function*() {
    const key = Objects.metadataKey(location)
    const where = `s3://${location.bucket}/${location.prefix}`
    const decode = (data: Uint8Array) =>
      Effect.mapError(
        Schema.decode(Objects.MetadataJson)(new TextDecoder().decode(data)),
        () => failure(`${where}: ${key} is not export metadata this version understands`)
      )
    const found = yield* Effect.mapError(store.get(key), describeFailure)
    if (Option.isSome(found)) return yield* decode(found.value.data)
    if (options.size === undefined) return yield* failure(`${where}: no export there; give size= to create one`)
    if (options.readOnly === true) return yield* failure(`${where}: no export there to serve read-only`)
    const metadata: Objects.Metadata = {
      format: Objects.FORMAT,
      size: options.size,
      objectSize: options.objectSize ?? defaults.objectSize
    }
    if (!(yield* Effect.mapError(store.bucketExists, describeFailure))) {
      yield* Effect.mapError(store.createBucket, describeFailure)
    }
    const text = new TextEncoder().encode(Schema.encodeSync(Objects.MetadataJson)(metadata))
    return yield* store.put(key, text, { _tag: "Absent" }).pipe(
      Effect.as(metadata),
      // Another server created it first: serve that one.
      Effect.catchIf((e) => e.reason === "Conflict", () =>
        Effect.flatMap(Effect.mapError(store.get(key), describeFailure), (again) =>
          Option.isSome(again) ? decode(again.value.data) : Effect.fail(failure(`${where}: ${key} vanished`)))),
      Effect.mapError((e) => e instanceof S3DriverError ? e : describeFailure(e))
    )
  }).pipe(Effect.flatMap((metadata) => checkAgreement(metadata, options, location)))

/** Refuses `size=`/`object-size=` that disagree with an existing export. */
const checkAgreement = (metadata: Objects.Metadata, options: S3Options, location: Objects.Location) => {
  const where = `s3://${location.bucket}/${location.prefix}`
  if (options.size !== undefined && options.size !== metadata.size) {
    return Effect.fail(failure(`${where} exists with size ${metadata.size}, not ${options.size} (leave size= out to serve it)`))
  }
  if (options.objectSize !== undefined && options.objectSize !== metadata.objectSize) {
    return Effect.fail(failure(`${where} exists with object size ${metadata.objectSize}, not ${options.objectSize}`))
  }
  return Effect.succeed(metadata)
}

/** Takes the lease if it can and keeps it renewed (or watches it) every quarter of the lease time. */
const keepLease = (lease: Lease, ttl: number, cache: S3Cache.ObjectCache, where: string) =>
  Effect.gen(function*() {
    const step = lease.step.pipe(
      Effect.tap((transition) => {
        switch (transition) {
          case "acquired":
            cache.discard() // whatever was read before may have changed since
            return Effect.zipRight(
              Effect.logInfo(`s3: ${where}: lease taken; new connections may write`),
              Effect.catchAll(cache.learn(), (e) => Effect.logWarning(`s3: ${where}: cannot list the objects: ${e.message}`))
            )
          case "lost":
            cache.discard()
            return Effect.logError(`s3: ${where}: lease lost to another server; writes now fail`)
          default:
            return Effect.void
        }
      }),
      Effect.catchAll((e) => Effect.logWarning(`s3: ${where}: lease: ${e.operation}: ${e.message}`))
    )
    yield* step
    if (!lease.holding()) {
      yield* Effect.logWarning(
        `s3: ${where}: leased by ${lease.lastHolder ?? "another server"}: serving read-only until the lease is released or expires`
      )
    }
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Effect.sleep(Duration.millis(ttl / 4)), step)))
  })

const notWritable = (where: string) =>
  Effect.fail(protocolError("EIO", `${where}: this server lost the export's lease: writes are refused`))

/** The handle of a client: writable if the server could write when it opened. */
const handleOf = (
  cache: S3Cache.ObjectCache,
  metadata: Objects.Metadata,
  writable: boolean,
  canWrite: () => boolean,
  where: string
): Driver.DriverHandle => {
  const pass = <A>(effect: Effect.Effect<A, S3Store.S3Failure>): Effect.Effect<A, ProtocolError> =>
    Effect.mapError(effect, (e) => protocolError(S3Store.errnoOf(e), `${e.operation}: ${e.message}`))
  const writing = <A>(effect: Effect.Effect<A, S3Store.S3Failure>) =>
    Effect.suspend(() => (canWrite() ? pass(effect) : notWritable(where)))
  return {
    capabilities: {
      readOnly: !writable,
      flush: true,
      fua: true,
      trim: true,
      zero: true,
      fastZero: false,
      cache: true,
      resize: false,
      multiConn: true,
      rotational: false,
      blockStatus: true,
      blockSize: Driver.DEFAULT_BLOCK_SIZE
    },
    size: Effect.succeed(metadata.size),
    read: (offset, length) => pass(cache.read(offset, length)),
    write: (offset, data, options) => writing(cache.write(offset, data, options.fua)),
    flush: writable ? writing(cache.flush()) : Effect.void,
    trim: (offset, length, options) => writing(cache.zero(offset, length, false, options.fua)),
    writeZeroes: (offset, length, options) =>
      options.fastZero
        ? Effect.fail(protocolError("ENOTSUP", "zeroing is not faster than writing here"))
        : writing(cache.zero(offset, length, options.noHole, options.fua)),
    cache: (offset, length) => pass(cache.prefetch(offset, length)),
    blockStatus: (offset, length) => pass(cache.blockStatus(offset, length)),
    resize: () => Effect.fail(protocolError("EINVAL", "s3 exports cannot be resized"))
  }
}

/** Makes the driver: opens (or creates) the export, takes the lease, starts the cache. */
export const make = (options: S3Options): Effect.Effect<Driver.NbdDriverShape, S3DriverError, Scope.Scope> =>
  Effect.gen(function*() {
    const location = typeof options.location === "string"
      ? yield* Either.mapLeft(Objects.parseLocation(options.location), (m) => failure(`s3: ${m}`))
      : options.location
    const where = `s3://${location.bucket}/${location.prefix}`
    const store = options.store ?? S3Store.make({
      bucket: location.bucket,
      endpoint: options.endpoint,
      region: options.region,
      pathStyle: options.pathStyle,
      maxSockets: (options.uploads ?? defaults.uploads) + (options.downloads ?? defaults.downloads) + 4
    })
    const metadata = yield* openExport(store, location, options)
    const ttl = Duration.toMillis(options.leaseTime ?? defaults.leaseTime)
    const readOnly = options.readOnly === true
    const lease = readOnly || ttl === 0
      ? undefined
      : new Lease({
        // A client of its own: renewals do not queue behind data transfers.
        store: options.store ?? S3Store.make({
          bucket: location.bucket,
          endpoint: options.endpoint,
          region: options.region,
          pathStyle: options.pathStyle
        }),
        key: Objects.leaseKey(location),
        holder: `${os.hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`,
        ttl
      })
    const canWrite = () => !readOnly && (lease === undefined || lease.holding())
    const cache = yield* S3Cache.make({
      store,
      location,
      metadata,
      capacity: options.cacheSize ?? defaults.cacheSize,
      uploads: options.uploads ?? defaults.uploads,
      downloads: options.downloads ?? defaults.downloads,
      readAhead: options.readAhead ?? defaults.readAhead,
      guard: lease === undefined ? Effect.void : lease.guard,
      caching: canWrite
    })
    if (lease !== undefined) yield* keepLease(lease, ttl, cache, where)
    // Runs before the cache's fibers stop: what was written is stored, then the lease let go.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        if (canWrite()) {
          yield* cache.flush().pipe(
            Effect.catchAll((e) => Effect.logError(`s3: ${where}: unflushed writes lost at stop: ${e.operation}: ${e.message}`))
          )
        }
        if (lease !== undefined) yield* Effect.ignoreLogged(lease.release)
      })
    )
    const description = options.description ??
      `${where} (${formatSize(metadata.size)} in ${formatSize(metadata.objectSize)} objects)`
    return {
      name: "s3",
      canonicalName: Option.none(),
      description: Option.some(description),
      open: () => Effect.sync(() => handleOf(cache, metadata, canWrite(), canWrite, where))
    } satisfies Driver.NbdDriverShape
  })

/** A layer providing the s3 driver. */
export const layer = (options: S3Options): Layer.Layer<Driver.NbdDriver, S3DriverError> =>
  Layer.scoped(Driver.NbdDriver, make(options))

/** The parameters of the s3 driver, documented. */
export const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "endpoint", default: "AWS_ENDPOINT_URL, else AWS", description: "the S3 endpoint URL" },
  { name: "region", default: "AWS_REGION, else us-east-1", description: "the S3 region" },
  { name: "size", default: "the existing export's", description: "creates the export (and bucket) when there is none" },
  { name: "object-size", default: "1M", description: "object size of a new export: a power of two from 4K to 64M" },
  { name: "cache-size", default: "64M", description: "most bytes of objects held in memory" },
  { name: "uploads", default: "16", description: "concurrent PUT/DELETE requests" },
  { name: "downloads", default: "16", description: "concurrent GET requests" },
  { name: "read-ahead", default: "8", description: "objects fetched ahead of a sequential reader (at most a quarter of the cache)" },
  { name: "lease-time", default: "15s", description: "single-writer lease time; 0 takes no lease" },
  { name: "path-style", default: "true", description: "path-style URLs (Ceph, MinIO); false: virtual-hosted" },
  { name: "description", description: "description of the export shown to clients" }
]

const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0

/** Reads the s3 parameters (those given; `owner` names the driver in messages). */
export const readOptions = (read: Params.Reader, owner: string): Omit<S3Options, "location" | "readOnly"> => {
  const sizeText = read.text("size")
  const objectSize = read.text("object-size") === undefined ? undefined : read.size("object-size")
  if (objectSize !== undefined && (!isPowerOfTwo(objectSize) || objectSize < 4096 || objectSize > 64 * 1024 * 1024)) {
    throw new Params.ParameterError({ message: `${owner}: 'object-size' must be a power of two from 4K to 64M` })
  }
  return {
    endpoint: read.text("endpoint"),
    region: read.text("region"),
    size: sizeText === undefined ? undefined : read.size("size"),
    objectSize,
    cacheSize: read.size("cache-size", defaults.cacheSize),
    uploads: read.integer("uploads", defaults.uploads, { min: 1, max: 1024 }),
    downloads: read.integer("downloads", defaults.downloads, { min: 1, max: 1024 }),
    readAhead: read.integer("read-ahead", defaults.readAhead, { min: 0, max: 1024 }),
    leaseTime: read.duration("lease-time", defaults.leaseTime),
    pathStyle: read.boolean("path-style", true),
    description: read.text("description")
  }
}

/** The driver by name, for the command line: `effect-nbd s3 BUCKET/PREFIX [size=10G] [endpoint=URL]`. */
export const plugin: DriverPlugin = {
  name: "s3",
  summary: "an export stored as objects in an S3 bucket (AWS, Ceph radosgw, MinIO...)",
  argument: { name: "BUCKET/PREFIX", description: "the bucket and the key prefix of the export's objects" },
  parameters,
  make: (argument, pairs, pluginOptions) =>
    Params.decode("s3", pairs, parameters, (read): S3Options => ({
      ...readOptions(read, "s3"),
      location: argument,
      readOnly: pluginOptions?.readOnly ?? false
    })).pipe(
      Either.flatMap((options) =>
        Either.match(Objects.parseLocation(argument), {
          onLeft: (message) => Either.left(new Params.ParameterError({ message: `s3: ${message}` })),
          onRight: () => Either.right(make(options))
        })
      )
    )
}
