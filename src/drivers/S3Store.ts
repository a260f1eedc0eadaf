/**
 * The object-store operations the s3 driver needs, over `@aws-sdk/client-s3`, as
 * Effects with typed failures: whole-object GET, PUT (optionally conditional on the
 * ETag), DELETE, listing keys, and making the bucket. Interrupting an operation aborts
 * its HTTP request.
 *
 * The client is configured for S3-compatible stores as well as AWS: checksums only
 * when an operation requires them (Ceph's radosgw rejects the SDK's default trailing
 * checksums), path-style addressing when asked (Ceph, MinIO), credentials, region and
 * endpoint from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
 * `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, profiles) unless given.
 * The SDK is loaded on a store's first request: it takes a few hundred milliseconds to
 * load, which a process serving other drivers should not pay at start.
 *
 * @since 0.2.0
 */
import type { S3Client, S3ClientConfig } from "@aws-sdk/client-s3"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { ErrnoName } from "../Errors.ts"

/** Why an object-store request failed. */
export type S3FailureReason =
  /** The object or bucket does not exist (404). */
  | "NotFound"
  /** A conditional request lost (412, 409, or a 500 from a store that races badly). */
  | "Conflict"
  /** The credentials were refused (403). */
  | "Denied"
  /** Anything else: network, throttling after the SDK's retries, server errors. */
  | "Failed"

/** An object-store request failed. */
export class S3Failure extends Data.TaggedError("S3Failure")<{
  readonly reason: S3FailureReason
  /** What was asked, e.g. `PUT bucket/key`. */
  readonly operation: string
  readonly message: string
  /** The HTTP status, when the store answered. */
  readonly status?: number | undefined
}> {}

/** The NBD errno of a failure (a refused credential is EPERM, everything else EIO). */
export const errnoOf = (failure: S3Failure): ErrnoName => failure.reason === "Denied" ? "EPERM" : "EIO"

/** A precondition on a PUT: create only (`If-None-Match: *`) or replace only that version (`If-Match`). */
export type PutCondition =
  | { readonly _tag: "Absent" }
  | { readonly _tag: "Matches"; readonly etag: string }

/** Where to connect and how. */
export interface S3StoreOptions {
  readonly bucket: string
  /** `http(s)://host[:port]`; default: `AWS_ENDPOINT_URL` or AWS itself. */
  readonly endpoint?: string | undefined
  /** Default: `AWS_REGION`, else `us-east-1`. */
  readonly region?: string | undefined
  /** Path-style addressing (`endpoint/bucket/key`), as Ceph and MinIO expect; default true. */
  readonly pathStyle?: boolean | undefined
  /** Most requests in flight at once (HTTP sockets). */
  readonly maxSockets?: number | undefined
  /** A client to use instead of one made from these options (tests, custom credentials). */
  readonly client?: S3Client | undefined
}

/** One object of a listing. */
export interface Listed {
  readonly key: string
  readonly size: number
}

/** One level of a listing with `/` as the delimiter. */
export interface Level {
  readonly keys: ReadonlyArray<string>
  readonly prefixes: ReadonlyArray<string>
}

/** The object-store operations of one bucket. */
export interface S3Store {
  readonly bucket: string
  /** The object's bytes and ETag, or none if it does not exist. */
  readonly get: (key: string) => Effect.Effect<Option.Option<{ readonly data: Uint8Array; readonly etag: string }>, S3Failure>
  /** Bytes `[start, start + length)` of an object (fewer where it ends), or none if it does not exist. */
  readonly getRange: (key: string, start: number, length: number) => Effect.Effect<Option.Option<Uint8Array>, S3Failure>
  /** Stores an object; returns its ETag (unquoted). */
  readonly put: (key: string, data: Uint8Array, condition?: PutCondition) => Effect.Effect<string, S3Failure>
  /** Deletes an object (deleting a missing one succeeds). */
  readonly delete: (key: string) => Effect.Effect<void, S3Failure>
  /** Keys under `prefix` after `startAfter`, in order, at most `max` (1 to 1000). */
  readonly list: (prefix: string, startAfter: string | undefined, max: number) => Effect.Effect<ReadonlyArray<Listed>, S3Failure>
  /**
   * One level of the key hierarchy under `prefix` (which ends with `/` or is empty): the
   * keys directly in it and the prefixes one `/` deeper, every page of them.
   */
  readonly listLevel: (prefix: string) => Effect.Effect<Level, S3Failure>
  /** Whether the bucket exists. */
  readonly bucketExists: Effect.Effect<boolean, S3Failure>
  /** Creates the bucket (one that exists already and is ours is fine). */
  readonly createBucket: Effect.Effect<void, S3Failure>
}

/** The S3 error name and HTTP status of a rejected SDK call. */
const describe = (error: unknown): { readonly name: string; readonly status: number | undefined; readonly text: string } => {
  const e = error as { name?: unknown; message?: unknown; $metadata?: { httpStatusCode?: unknown } }
  const name = typeof e?.name === "string" ? e.name : "Error"
  const status = typeof e?.$metadata?.httpStatusCode === "number" ? e.$metadata.httpStatusCode : undefined
  const message = typeof e?.message === "string" && e.message !== "UnknownError" ? e.message : ""
  return { name, status, text: message === "" ? name : `${name}: ${message}` }
}

const reasonOf = (name: string, status: number | undefined, conditional: boolean): S3FailureReason => {
  if (status === 404 || name === "NoSuchKey" || name === "NotFound" || name === "NoSuchBucket") return "NotFound"
  if (status === 412 || name === "PreconditionFailed" || (conditional && (status === 409 || status === 500))) {
    return "Conflict"
  }
  if (status === 403 || name === "AccessDenied") return "Denied"
  return "Failed"
}

/** Unquoted ETag (Ceph's radosgw compares `If-Match` with the bare value). */
export const bareEtag = (etag: string | undefined): string => (etag ?? "").replaceAll("\"", "")

/** The AWS SDK's S3 module. */
type Sdk = typeof import("@aws-sdk/client-s3")

let sdkLoading: Promise<Sdk> | undefined
/** Loads the SDK once, on first use. */
const loadSdk = (): Promise<Sdk> => (sdkLoading ??= import("@aws-sdk/client-s3"))

/** The SDK and a store's client, once loaded. */
interface Loaded {
  readonly sdk: Sdk
  readonly client: S3Client
}

/** Makes the store of one bucket. */
export const make = (options: S3StoreOptions): S3Store => {
  const config: S3ClientConfig = {
    forcePathStyle: options.pathStyle ?? true,
    region: options.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
    ...(options.maxSockets === undefined ? {} : { requestHandler: { httpAgent: { maxSockets: options.maxSockets } } })
  }
  let loading: Promise<Loaded> | undefined
  const loaded = () =>
    (loading ??= loadSdk().then((sdk) => ({ sdk, client: options.client ?? new sdk.S3Client(config) })))
  const bucket = options.bucket
  const call = <A>(operation: string, send: (loaded: Loaded, signal: AbortSignal) => Promise<A>, conditional = false) =>
    Effect.tryPromise({
      try: async (signal) => send(await loaded(), signal),
      catch: (error) => {
        const { name, status, text } = describe(error)
        return new S3Failure({ reason: reasonOf(name, status, conditional), operation, message: text, status })
      }
    })
  const where = (key: string) => `${bucket}/${key}`
  return {
    bucket,
    get: (key) =>
      call(`GET ${where(key)}`, async ({ client, sdk }, abortSignal) => {
        const out = await client.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal })
        const data = out.Body === undefined ? new Uint8Array(0) : await out.Body.transformToByteArray()
        return { data, etag: bareEtag(out.ETag) }
      }).pipe(
        Effect.map(Option.some),
        Effect.catchIf((e) => e.reason === "NotFound", () => Effect.succeed(Option.none()))
      ),
    getRange: (key, start, length) =>
      call(`GET ${where(key)} bytes ${start}+${length}`, async ({ client, sdk }, abortSignal) => {
        const Range = `bytes=${start}-${start + length - 1}`
        const out = await client.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: key, Range }), { abortSignal })
        return out.Body === undefined ? new Uint8Array(0) : await out.Body.transformToByteArray()
      }).pipe(
        Effect.map(Option.some),
        // 416: the range starts past the object's end (reads as zeroes, as beyond any object).
        Effect.catchIf((e) => e.reason === "NotFound" || e.status === 416, () => Effect.succeed(Option.none()))
      ),
    put: (key, data, condition) =>
      call(
        `PUT ${where(key)}`,
        async ({ client, sdk }, abortSignal) => {
          const out = await client.send(
            new sdk.PutObjectCommand({
              Bucket: bucket,
              Key: key,
              Body: data,
              ContentLength: data.length,
              ...(condition === undefined
                ? {}
                : condition._tag === "Absent"
                ? { IfNoneMatch: "*" }
                : { IfMatch: condition.etag })
            }),
            { abortSignal }
          )
          return bareEtag(out.ETag)
        },
        condition !== undefined
      ).pipe(
        // A conditional PUT on a key that vanished is a lost race too.
        Effect.mapError((e) => condition?._tag === "Matches" && e.reason === "NotFound" ? new S3Failure({ ...e, reason: "Conflict" }) : e)
      ),
    delete: (key) =>
      call(`DELETE ${where(key)}`, ({ client, sdk }, abortSignal) =>
        client.send(new sdk.DeleteObjectCommand({ Bucket: bucket, Key: key }), { abortSignal })).pipe(
          Effect.asVoid,
          Effect.catchIf((e) => e.reason === "NotFound" && e.message.startsWith("NoSuchKey"), () => Effect.void)
        ),
    list: (prefix, startAfter, max) =>
      call(`LIST ${where(prefix)}`, async ({ client, sdk }, abortSignal) => {
        const out = await client.send(
          new sdk.ListObjectsV2Command({
            Bucket: bucket,
            Prefix: prefix,
            MaxKeys: max,
            ...(startAfter === undefined ? {} : { StartAfter: startAfter })
          }),
          { abortSignal }
        )
        return (out.Contents ?? []).map((o) => ({ key: o.Key ?? "", size: o.Size ?? 0 }))
      }),
    listLevel: (prefix) =>
      call(`LIST ${where(prefix)}`, async ({ client, sdk }, abortSignal) => {
        const keys: Array<string> = []
        const prefixes: Array<string> = []
        let token: string | undefined
        do {
          const out = await client.send(
            new sdk.ListObjectsV2Command({
              Bucket: bucket,
              Prefix: prefix,
              Delimiter: "/",
              ...(token === undefined ? {} : { ContinuationToken: token })
            }),
            { abortSignal }
          )
          for (const o of out.Contents ?? []) if (o.Key !== undefined) keys.push(o.Key)
          for (const p of out.CommonPrefixes ?? []) if (p.Prefix !== undefined) prefixes.push(p.Prefix)
          token = out.IsTruncated === true ? out.NextContinuationToken : undefined
        } while (token !== undefined)
        return { keys, prefixes }
      }),
    bucketExists: call(`HEAD ${bucket}`, ({ client, sdk }, abortSignal) =>
      client.send(new sdk.HeadBucketCommand({ Bucket: bucket }), { abortSignal })).pipe(
        Effect.as(true),
        Effect.catchIf((e) => e.reason === "NotFound", () => Effect.succeed(false))
      ),
    createBucket: call(`CREATE ${bucket}`, ({ client, sdk }, abortSignal) =>
      client.send(new sdk.CreateBucketCommand({ Bucket: bucket }), { abortSignal })).pipe(
        Effect.asVoid,
        Effect.catchIf((e) => e.message.startsWith("BucketAlreadyOwnedByYou"), () => Effect.void)
      )
  }
}
