/**
 * An in-memory object store with the semantics the s3 driver relies on (ETags that
 * change with every PUT, conditional PUTs, sorted listings, ranged GETs), for tests of
 * the lease and the cache that need no Ceph. Every request is counted by kind.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { createHash } from "node:crypto"
import { S3Failure, type S3Store } from "../../src/drivers/S3Store.ts"

/** The store, its objects and request counts. */
export interface MemoryStore extends S3Store {
  readonly objects: Map<string, { readonly data: Uint8Array; readonly etag: string }>
  readonly requests: Map<string, number>
}

/**
 * A new empty store of one bucket. With `interleave`, every request first yields to other
 * fibers a few times (as a network round trip would), so that concurrent requests interleave.
 */
export const make = (bucket = "test-bucket", interleave = false): MemoryStore => {
  const objects = new Map<string, { readonly data: Uint8Array; readonly etag: string }>()
  const requests = new Map<string, number>()
  let puts = 0
  const count = (kind: string) => requests.set(kind, (requests.get(kind) ?? 0) + 1)
  const conflict = (key: string) =>
    Effect.fail(new S3Failure({ reason: "Conflict", operation: `PUT ${key}`, message: "PreconditionFailed", status: 412 }))
  let turn = 0
  const pause = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    interleave ? Effect.zipRight(Effect.repeatN(Effect.yieldNow(), turn++ % 4), effect) : effect
  const store: MemoryStore = {
    bucket,
    objects,
    requests,
    get: (key) =>
      Effect.sync(() => {
        count("GET")
        const found = objects.get(key)
        return found === undefined ? Option.none() : Option.some({ data: Uint8Array.from(found.data), etag: found.etag })
      }),
    getRange: (key, start, length) =>
      Effect.sync(() => {
        count("GET")
        const found = objects.get(key)
        return found === undefined ? Option.none() : Option.some(found.data.slice(start, start + length))
      }),
    put: (key, data, condition) =>
      Effect.suspend(() => {
        count("PUT")
        const current = objects.get(key)
        if (condition?._tag === "Absent" && current !== undefined) return conflict(key)
        if (condition?._tag === "Matches" && current?.etag !== condition.etag) return conflict(key)
        const etag = createHash("md5").update(data).update(String(puts++)).digest("hex")
        objects.set(key, { data: Uint8Array.from(data), etag })
        return Effect.succeed(etag)
      }),
    delete: (key) =>
      Effect.sync(() => {
        count("DELETE")
        objects.delete(key)
      }),
    list: (prefix, startAfter, max) =>
      Effect.sync(() => {
        count("LIST")
        return [...objects.keys()]
          .filter((key) => key.startsWith(prefix) && (startAfter === undefined || key > startAfter))
          .sort()
          .slice(0, max)
          .map((key) => ({ key, size: objects.get(key)!.data.length }))
      }),
    listLevel: (prefix) =>
      Effect.sync(() => {
        count("LIST")
        const keys: Array<string> = []
        const prefixes = new Set<string>()
        for (const key of [...objects.keys()].sort()) {
          if (!key.startsWith(prefix)) continue
          const slash = key.indexOf("/", prefix.length)
          if (slash < 0) keys.push(key)
          else prefixes.add(key.slice(0, slash + 1))
        }
        return { keys, prefixes: [...prefixes] }
      }),
    bucketExists: Effect.succeed(true),
    createBucket: Effect.void
  }
  return {
    ...store,
    get: (key) => pause(store.get(key)),
    getRange: (key, start, length) => pause(store.getRange(key, start, length)),
    put: (key, data, condition) => pause(store.put(key, data, condition)),
    delete: (key) => pause(store.delete(key)),
    list: (prefix, startAfter, max) => pause(store.list(prefix, startAfter, max)),
    listLevel: (prefix) => pause(store.listLevel(prefix))
  }
}
