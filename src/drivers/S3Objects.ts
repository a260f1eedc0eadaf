/**
 * How an s3 export is laid out in its bucket, under the export's key prefix `PREFIX`:
 *
 * - `PREFIX/export.json`: the metadata, `{"format":1,"size":N,"objectSize":N}` (bytes);
 * - `PREFIX/lease.json`: the single-writer lease (see {@link S3Lease});
 * - `PREFIX/data/XXXXXXXXXXXXXXXX`: object number `i` (16 lower-case hex digits, so
 *   listing order is block order) holds bytes `[i * objectSize, (i + 1) * objectSize)`
 *   of the export; the last one may be short. A missing object reads as zeroes.
 *
 * @since 0.2.0
 */
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"

/** The format version written in new exports' metadata. */
export const FORMAT = 1

/** The metadata object of an export. */
export const Metadata = Schema.Struct({
  format: Schema.Literal(FORMAT),
  size: Schema.Number.pipe(Schema.int(), Schema.nonNegative()),
  objectSize: Schema.Number.pipe(Schema.int(), Schema.positive())
})
export type Metadata = typeof Metadata.Type

/** Metadata as the JSON text stored. */
export const MetadataJson = Schema.parseJson(Metadata)

/** Where an export lives: its bucket and key prefix (without a trailing slash). */
export interface Location {
  readonly bucket: string
  readonly prefix: string
}

/** Parses `BUCKET/PREFIX` (the prefix may contain slashes; it may not be empty). */
export const parseLocation = (text: string): Either.Either<Location, string> => {
  const slash = text.indexOf("/")
  const bucket = slash < 0 ? text : text.slice(0, slash)
  const prefix = slash < 0 ? "" : text.slice(slash + 1).replace(/\/+$/, "")
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    return Either.left(`'${bucket}' is not a bucket name (3 to 63 lower-case letters, digits, dots and hyphens)`)
  }
  if (prefix === "") return Either.left(`'${text}' names no export: give BUCKET/PREFIX, e.g. disks/vm1`)
  return Either.right({ bucket, prefix })
}

/** The key of the metadata object. */
export const metadataKey = (location: Location): string => `${location.prefix}/export.json`

/** The key of the lease object. */
export const leaseKey = (location: Location): string => `${location.prefix}/lease.json`

/** The common prefix of the data objects' keys. */
export const dataPrefix = (location: Location): string => `${location.prefix}/data/`

/** The key of data object `index`. */
export const dataKey = (location: Location, index: number): string =>
  dataPrefix(location) + index.toString(16).padStart(16, "0")

/** The index of a data object's key, or undefined for a key that is not one. */
export const indexOfKey = (location: Location, key: string): number | undefined => {
  const prefix = dataPrefix(location)
  if (!key.startsWith(prefix)) return undefined
  const digits = key.slice(prefix.length)
  return /^[0-9a-f]{16}$/.test(digits) ? parseInt(digits, 16) : undefined
}

/** The number of objects an export of `size` bytes spans. */
export const objectCount = (metadata: Metadata): number => Math.ceil(metadata.size / metadata.objectSize)

/** The length of object `index` (the last one may be short). */
export const objectLength = (metadata: Metadata, index: number): number =>
  Math.min(metadata.objectSize, metadata.size - index * metadata.objectSize)
