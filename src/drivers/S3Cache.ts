/**
 * The s3 driver's cache of data objects: a bounded, write-back cache of whole objects,
 * shared by every connection of the export.
 *
 * - A write changes the cached object (an object not cached is first fetched, unless
 *   the write covers all of it) and is acknowledged once it is in memory. A changed
 *   ("dirty") object is stored when the write reached its last byte (write-behind for
 *   sequential writers), when it has not changed for a second, when room is needed,
 *   and on FLUSH; a FUA write stores the objects it touched before it is acknowledged.
 * - An object is stored by one PUT (or DELETE, when it became all holes) at a time; a
 *   write during its upload changes a copy, so what is sent is what was there when the
 *   upload started, and the object stays dirty until that newer version is stored too.
 * - Zeroing or trimming whole objects makes them holes (deleted when stored); partial
 *   ranges are zeroed in the cached object.
 * - Reads of cached objects are served from memory; one within a single object gets the
 *   cached bytes themselves, not a copy (the object is then copied before its next change,
 *   so that a reply on its way keeps what was read). A read that continues the previous
 *   one (sequential), or covers a whole object, fetches whole objects into the cache; a
 *   sequential one first starts fetching the next `readAhead` objects (at most a quarter
 *   of the capacity). Other reads fetch only the bytes asked (ranged GET) and cache nothing.
 * - The cache holds at most `capacity` bytes: unchanged objects leave it least recently
 *   used first; when only dirty ones are left, a writer waits for uploads to make room.
 * - At most `uploads` PUT/DELETE and `downloads` GET requests are in flight.
 * - Block status: a cached object is data unless it is a hole; other objects are data
 *   when they exist in the store (one LIST request per query).
 * - While this server is the export's only writer (it holds the lease), it lists the
 *   objects once and keeps the list current: fetching a hole, reading one and block
 *   status then cost no request.
 *
 * @since 0.2.0
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Scope from "effect/Scope"
import * as Driver from "../Driver.ts"
import * as Objects from "./S3Objects.ts"
import type { S3Failure, S3Store } from "./S3Store.ts"

/** What the cache needs. */
export interface CacheOptions {
  readonly store: S3Store
  readonly location: Objects.Location
  readonly metadata: Objects.Metadata
  /** The most bytes of objects held. */
  readonly capacity: number
  /** Most PUT/DELETE requests in flight. */
  readonly uploads: number
  /** Most GET requests in flight. */
  readonly downloads: number
  /** Objects fetched ahead of a sequential reader. */
  readonly readAhead: number
  /** Checked before every PUT or DELETE of a data object (the lease). */
  readonly guard: Effect.Effect<void, S3Failure>
  /**
   * Whether objects read may be kept (false while another server may be changing them:
   * reads then fetch what they need each time).
   */
  readonly caching: () => boolean
  /** Milliseconds a dirty object may stay unchanged before it is stored (default 1000). */
  readonly writeBackDelay?: number | undefined
}

/** One cached object. */
interface Entry {
  readonly index: number
  /** The object's bytes, or null when it is a hole (reads as zeroes, not stored). */
  data: Uint8Array | null
  /** Bumped by every change. */
  version: number
  /** The newest version known to be in the store. */
  stored: number
  /** `Date.now()` of the last change. */
  changed: number
  /** Completed when the object's first fetch ends (set while fetching). */
  loading: Deferred.Deferred<void, S3Failure> | undefined
  /** Completed when the upload in flight ends. */
  upload: Deferred.Deferred<void, S3Failure> | undefined
  /** The upload in flight sends `data` itself: copy it before changing it. */
  shared: boolean
  /** A read returned part of `data` itself (a reply may still be on its way): copy it before changing it. */
  lent: boolean
}

/** What a hole costs in the cache's accounting (its entry, not its bytes). */
const HOLE_COST = 4096

/** Most objects one block-status answer covers (the client asks again for the rest): one listing. */
const STATUS_OBJECTS = 1000

/** The same, when the objects the store holds are known without asking it. */
const STATUS_KNOWN_OBJECTS = 1 << 16

/** Whole objects a zeroing may mark as holes without first listing which exist. */
const UNLISTED_ZEROES = 16

/** One object's part of a request. */
interface Piece {
  readonly index: number
  /** Offset in the object. */
  readonly start: number
  readonly length: number
  /** Bytes of the request before this piece. */
  readonly done: number
}

const isDirty = (entry: Entry) => entry.version > entry.stored

/** Fits fetched bytes to the object's length (a store may hold a shorter object). */
const fit = (data: Uint8Array, length: number): Uint8Array => {
  if (data.length === length) return data
  const out = new Uint8Array(length)
  out.set(data.subarray(0, length))
  return out
}

/** The write-back object cache of one export (see the module documentation). */
export class ObjectCache {
  private readonly entries = new Map<number, Entry>()
  /**
   * The objects the store holds, while this server is the only writer (the lease holder
   * that listed them after taking the lease): a fetch of an object not in it, a hole,
   * costs no request, nor does block status. Undefined when not known.
   */
  private existing: Set<number> | undefined
  private bytes = 0
  private lastReadEnd = -1
  private readonly objectSize: number
  private readonly count: number

  constructor(
    private readonly options: CacheOptions,
    private readonly scope: Scope.Scope,
    private readonly uploadPermits: Effect.Semaphore,
    private readonly downloadPermits: Effect.Semaphore
  ) {
    this.objectSize = options.metadata.objectSize
    this.count = Objects.objectCount(options.metadata)
  }

  private key(index: number): string {
    return Objects.dataKey(this.options.location, index)
  }

  private lengthOf(index: number): number {
    return Objects.objectLength(this.options.metadata, index)
  }

  private pieces(offset: number, length: number): Array<Piece> {
    const out: Array<Piece> = []
    for (let done = 0; done < length;) {
      const at = offset + done
      const index = Math.floor(at / this.objectSize)
      const start = at - index * this.objectSize
      const n = Math.min(this.objectSize - start, length - done)
      out.push({ index, start, length: n, done })
      done += n
    }
    return out
  }

  private costOf(data: Uint8Array | null): number {
    return data === null ? HOLE_COST : data.length
  }

  private setData(entry: Entry, data: Uint8Array | null): void {
    if (this.entries.get(entry.index) === entry) this.bytes += this.costOf(data) - this.costOf(entry.data)
    entry.data = data
    entry.lent = false
  }

  private insert(index: number): Entry {
    const entry: Entry = {
      index,
      data: null,
      version: 0,
      stored: 0,
      changed: 0,
      loading: undefined,
      upload: undefined,
      shared: false,
      lent: false
    }
    this.entries.set(index, entry)
    this.bytes += HOLE_COST
    return entry
  }

  private remove(entry: Entry): void {
    if (this.entries.get(entry.index) !== entry) return
    this.entries.delete(entry.index)
    this.bytes -= this.costOf(entry.data)
  }

  /** Marks an entry most recently used. */
  private touch(entry: Entry): void {
    if (this.entries.get(entry.index) !== entry) return
    this.entries.delete(entry.index)
    this.entries.set(entry.index, entry)
  }

  private forkBackground(effect: Effect.Effect<unknown, S3Failure>): Effect.Effect<void> {
    return effect.pipe(
      Effect.catchAll((e) => Effect.logWarning(`s3: ${e.operation}: ${e.message}`)),
      Effect.forkIn(this.scope),
      Effect.asVoid
    )
  }

  /** Drops unchanged objects, least recently used first, until `needed` more bytes fit. */
  private evictClean(needed: number): void {
    for (const entry of this.entries.values()) {
      if (this.bytes + needed <= this.options.capacity) return
      if (!isDirty(entry) && entry.loading === undefined && entry.upload === undefined) this.remove(entry)
    }
  }

  /** Waits until `needed` more bytes fit, storing dirty objects (oldest first) if it must. */
  private makeRoom(needed: number): Effect.Effect<void, S3Failure> {
    return Effect.suspend(() => {
      this.evictClean(needed)
      if (this.bytes + needed <= this.options.capacity) return Effect.void
      const all = [...this.entries.values()]
      const dirty = all.filter((e) => isDirty(e) && e.upload === undefined)
      const inFlight = all.find((e) => e.upload !== undefined)
      const oldest = dirty[0]
      if (oldest === undefined && inFlight === undefined) return Effect.void // only fetches: over by a little, briefly
      const wait = oldest === undefined ? Deferred.await(inFlight!.upload!) : this.persist(oldest)
      return Effect.forEach(dirty.slice(1, this.options.uploads), (e) => this.forkBackground(this.persist(e)), {
        discard: true
      }).pipe(Effect.zipRight(wait), Effect.zipRight(this.makeRoom(needed)))
    })
  }

  /** The entry of an object if it is cached (marked recently used), once any fetch of it completed. */
  private cached(index: number): Effect.Effect<Entry, S3Failure> | undefined {
    const entry = this.entries.get(index)
    if (entry === undefined) return undefined
    this.touch(entry)
    return entry.loading === undefined ? Effect.succeed(entry) : Effect.as(Deferred.await(entry.loading), entry)
  }

  /** The cached entry of an object, fetching the whole object if it is not cached. */
  private load(index: number): Effect.Effect<Entry, S3Failure> {
    return Effect.suspend(() => {
      const cached = this.cached(index)
      if (cached !== undefined) return cached
      return Effect.zipRight(
        this.makeRoom(this.lengthOf(index)),
        Effect.suspend(() => this.entries.has(index) ? this.load(index) : this.fetch(index))
      )
    })
  }

  /** Inserts an entry for an object and fetches it (in the cache's scope: a reader that gives up does not stop it). */
  private fetch(index: number): Effect.Effect<Entry, S3Failure> {
    return Effect.gen(this, function*() {
      const loading = yield* Deferred.make<void, S3Failure>()
      // Another fiber may have inserted it while this one was suspended.
      if (this.entries.has(index)) return yield* this.load(index)
      const entry = this.insert(index)
      entry.loading = loading
      const known = this.exists(index) === false
        ? Effect.succeed(Option.none())
        : this.downloadPermits.withPermits(1)(this.options.store.get(this.key(index)))
      const get = known.pipe(
        Effect.map((found) => {
          this.setData(entry, Option.isSome(found) ? fit(found.value.data, this.lengthOf(index)) : null)
        }),
        Effect.onExit((exit) =>
          Effect.suspend(() => {
            entry.loading = undefined
            if (exit._tag === "Failure") this.remove(entry)
            return Deferred.done(loading, exit)
          })
        )
      )
      yield* Effect.forkIn(get, this.scope)
      yield* Deferred.await(loading)
      return entry
    })
  }

  /** The entry of an object about to be replaced whole (not fetched). */
  private claim(index: number): Effect.Effect<Entry, S3Failure> {
    return Effect.suspend(() => {
      const cached = this.cached(index)
      if (cached !== undefined) return cached
      return Effect.zipRight(
        this.makeRoom(this.lengthOf(index)),
        Effect.sync(() => this.entries.get(index) ?? this.insert(index))
      ).pipe(Effect.flatMap((entry) => entry.loading === undefined ? Effect.succeed(entry) : this.claim(index)))
    })
  }

  /**
   * Runs `f` on the cached entry of an object (claimed if `whole`, else loaded), in the
   * same step as checking that it is still the cached one: an entry dropped while its
   * fetch was awaited is fetched again, so that no change lands on a forgotten entry.
   */
  private resident<A>(
    index: number,
    whole: boolean,
    f: (entry: Entry) => Effect.Effect<A, S3Failure>
  ): Effect.Effect<A, S3Failure> {
    return Effect.flatMap(whole ? this.claim(index) : this.load(index), (entry) =>
      this.entries.get(index) === entry ? f(entry) : this.resident(index, whole, f))
  }

  /** Records a change of an entry's bytes: `change` gets a buffer it may modify. */
  private change(entry: Entry, change: (data: Uint8Array) => void): void {
    if (entry.data === null) this.setData(entry, new Uint8Array(this.lengthOf(entry.index)))
    else if (entry.shared || entry.lent) {
      entry.data = Uint8Array.prototype.slice.call(entry.data)
      entry.shared = false
      entry.lent = false
    }
    change(entry.data!)
    this.changed(entry)
  }

  private changed(entry: Entry): void {
    entry.version++
    entry.changed = Date.now()
    this.touch(entry)
  }

  /** Stores the entry's current version (one upload at a time; returns when it is stored). */
  persist(entry: Entry): Effect.Effect<void, S3Failure> {
    return Effect.suspend(() => {
      const target = entry.version
      const loop: Effect.Effect<void, S3Failure> = Effect.suspend(() => {
        if (entry.stored >= target) return Effect.void
        const inFlight = entry.upload
        return Effect.zipRight(inFlight === undefined ? this.upload(entry) : Deferred.await(inFlight), loop)
      })
      return loop
    })
  }

  /** One PUT or DELETE of the entry as it is when a permit is granted. */
  private upload(entry: Entry): Effect.Effect<void, S3Failure> {
    return Effect.gen(this, function*() {
      const done = yield* Deferred.make<void, S3Failure>()
      // Another fiber may have started one while this one was suspended: one at a time.
      if (entry.upload !== undefined) return yield* Deferred.await(entry.upload)
      entry.upload = done
      const send = this.uploadPermits.withPermits(1)(Effect.suspend(() => {
        const version = entry.version
        const data = entry.data
        entry.shared = data !== null
        const key = this.key(entry.index)
        const request = data === null ? this.options.store.delete(key) : Effect.asVoid(this.options.store.put(key, data))
        return this.options.guard.pipe(
          Effect.zipRight(request),
          Effect.tap(() => {
            entry.stored = Math.max(entry.stored, version)
            if (data === null) this.existing?.delete(entry.index)
            else this.existing?.add(entry.index)
          })
        )
      })).pipe(
        Effect.onExit((exit) =>
          Effect.suspend(() => {
            entry.upload = undefined
            entry.shared = false
            return Deferred.done(done, exit)
          })
        )
      )
      yield* Effect.forkIn(send, this.scope)
      return yield* Deferred.await(done)
    })
  }

  /**
   * Whether a read piece is served through the cache: its object is cached, or is to be
   * (caching is on and the read is sequential or covers the whole object); else it is a
   * ranged GET that caches nothing.
   */
  private fromCache(piece: Piece, sequential: boolean): boolean {
    return this.entries.has(piece.index) ||
      (this.options.caching() && (sequential || piece.length === this.lengthOf(piece.index)))
  }

  /** Copies a piece of an object into `out` (a hole leaves `out`'s zeroes). */
  private readPiece(piece: Piece, out: Uint8Array, whole: boolean): Effect.Effect<void, S3Failure> {
    const copy = (data: Uint8Array | null) => {
      if (data !== null) out.set(data.subarray(piece.start, piece.start + piece.length), piece.done)
    }
    if (this.fromCache(piece, whole)) return Effect.map(this.load(piece.index), (entry) => copy(entry.data))
    if (this.exists(piece.index) === false) return Effect.void
    return this.downloadPermits.withPermits(1)(
      this.options.store.getRange(this.key(piece.index), piece.start, piece.length)
    ).pipe(Effect.map((found) => {
      // An object cached meanwhile (a write) is newer than what was fetched.
      const now = this.entries.get(piece.index)
      if (now !== undefined && now.loading === undefined) copy(now.data)
      else if (Option.isSome(found)) out.set(found.value.subarray(0, piece.length), piece.done)
    }))
  }

  /**
   * Reads `[offset, offset + length)`. A sequential read first starts fetching the
   * objects after it (read-ahead), so that they arrive while this one waits for its own.
   */
  read(offset: number, length: number): Effect.Effect<Uint8Array, S3Failure> {
    return Effect.suspend(() => {
      const sequential = offset === this.lastReadEnd
      this.lastReadEnd = offset + length
      const pieces = this.pieces(offset, length)
      const ahead = sequential && this.options.caching() ? this.readAhead(pieces[pieces.length - 1]!.index + 1) : Effect.void
      const only = pieces.length === 1 ? this.lendPiece(pieces[0]!, sequential) : undefined
      if (only !== undefined) return Effect.zipRight(ahead, only)
      const out = new Uint8Array(length)
      return Effect.zipRight(
        ahead,
        Effect.forEach(pieces, (piece) => this.readPiece(piece, out, sequential), {
          concurrency: this.options.downloads,
          discard: true
        })
      ).pipe(Effect.as(out))
    })
  }

  /**
   * A read within one object that is (or will be) cached: the cached bytes themselves,
   * without a copy (the entry is marked lent: a later change copies it first). Undefined
   * for a read that is not cached (a ranged GET).
   */
  private lendPiece(piece: Piece, sequential: boolean): Effect.Effect<Uint8Array, S3Failure> | undefined {
    if (!this.fromCache(piece, sequential)) return undefined
    return Effect.map(this.load(piece.index), (entry) => {
      if (entry.data === null) return new Uint8Array(piece.length)
      entry.lent = true
      return entry.data.subarray(piece.start, piece.start + piece.length)
    })
  }

  /** Starts fetching the objects from `first` on that are not cached (at most a quarter of the cache). */
  private readAhead(first: number): Effect.Effect<void> {
    const most = Math.max(1, Math.floor(this.options.capacity / 4 / this.objectSize))
    const last = Math.min(first + Math.min(this.options.readAhead, most), this.count)
    const indexes: Array<number> = []
    for (let index = first; index < last; index++) if (!this.entries.has(index)) indexes.push(index)
    return Effect.forEach(indexes, (index) => this.forkBackground(this.load(index)), { discard: true })
  }

  /** Fetches the objects of a range into the cache (NBD_CMD_CACHE), as far as the capacity allows. */
  prefetch(offset: number, length: number): Effect.Effect<void, S3Failure> {
    if (!this.options.caching()) return Effect.void
    const pieces = this.pieces(offset, length)
    const fits = Math.max(1, Math.floor(this.options.capacity / this.objectSize / 2))
    return Effect.forEach(pieces.slice(0, fits), (piece) => this.load(piece.index), {
      concurrency: this.options.downloads,
      discard: true
    })
  }

  /** Writes `data` at `offset`; with `fua`, returns once the objects touched are stored. */
  write(offset: number, data: Uint8Array, fua: boolean): Effect.Effect<void, S3Failure> {
    return Effect.forEach(this.pieces(offset, data.length), (piece) => {
      const bytes = data.subarray(piece.done, piece.done + piece.length)
      const whole = piece.length === this.lengthOf(piece.index)
      return this.resident(piece.index, whole, (entry) => {
        if (whole) {
          this.setData(entry, Uint8Array.prototype.slice.call(bytes))
          entry.shared = false
          this.changed(entry)
        } else {
          this.change(entry, (buffer) => buffer.set(bytes, piece.start))
        }
        if (fua) return this.persist(entry)
        return piece.start + piece.length === this.lengthOf(piece.index) ? this.forkBackground(this.persist(entry)) : Effect.void
      })
    }, { concurrency: this.options.downloads, discard: true })
  }

  /**
   * Zeroes `[offset, offset + length)`: whole objects become holes unless `keep`
   * (`NO_HOLE`), partial ones are zeroed in the cache. With `fua`, returns once stored.
   */
  zero(offset: number, length: number, keep: boolean, fua: boolean): Effect.Effect<void, S3Failure> {
    return Effect.gen(this, function*() {
      const pieces = this.pieces(offset, length)
      const whole = (p: Piece) => !keep && p.length === this.lengthOf(p.index)
      const partial = pieces.filter((p) => !whole(p))
      const wholes = pieces.filter(whole)
      const touched: Array<Entry> = []
      for (const piece of partial) {
        yield* this.resident(piece.index, false, (entry) => {
          if (entry.data !== null || keep) this.change(entry, (buffer) => buffer.fill(0, piece.start, piece.start + piece.length))
          touched.push(entry)
          return Effect.void
        })
      }
      const indexes = yield* this.holesToMake(wholes.map((p) => p.index))
      for (const index of indexes) {
        yield* this.resident(index, true, (entry) => {
          this.setData(entry, null)
          entry.shared = false
          this.changed(entry)
          touched.push(entry)
          return Effect.void
        })
      }
      if (fua) yield* Effect.forEach(touched, (entry) => this.persist(entry), { concurrency: "unbounded", discard: true })
    })
  }

  /**
   * Which of these consecutive whole objects must become holes: all of a few; of many,
   * those cached and those the store holds (one LIST per 1000), so that zeroing a
   * sparse terabyte costs a listing, not a million DELETEs.
   */
  private holesToMake(indexes: ReadonlyArray<number>): Effect.Effect<ReadonlyArray<number>, S3Failure> {
    if (indexes.length <= UNLISTED_ZEROES) return Effect.succeed(indexes)
    const first = indexes[0]!
    const last = indexes[indexes.length - 1]!
    const existing = this.existing
    if (existing !== undefined) {
      return Effect.succeed(indexes.filter((index) => existing.has(index) || this.entries.has(index)))
    }
    return Effect.gen(this, function*() {
      const found = new Set<number>()
      for (const index of this.entries.keys()) if (index >= first && index <= last) found.add(index)
      let after = first === 0 ? undefined : this.key(first - 1)
      for (;;) {
        const listed = yield* this.options.store.list(Objects.dataPrefix(this.options.location), after, 1000)
        let beyond = false
        for (const object of listed) {
          const index = Objects.indexOfKey(this.options.location, object.key)
          if (index === undefined) continue
          if (index > last) beyond = true
          else if (index >= first) found.add(index)
        }
        if (beyond || listed.length < 1000) break
        after = listed[listed.length - 1]!.key
      }
      return [...found].sort((a, b) => a - b)
    })
  }

  /**
   * Lists the export's objects and keeps the list up to date from then on (call after
   * taking the lease: from then on only this server changes the objects).
   */
  learn(): Effect.Effect<void, S3Failure> {
    return Effect.gen(this, function*() {
      this.existing = undefined
      const found = new Set<number>()
      let after: string | undefined
      for (;;) {
        const listed = yield* this.options.store.list(Objects.dataPrefix(this.options.location), after, 1000)
        for (const object of listed) {
          const index = Objects.indexOfKey(this.options.location, object.key)
          if (index !== undefined) found.add(index)
        }
        if (listed.length < 1000) break
        after = listed[listed.length - 1]!.key
      }
      this.existing = found
    })
  }

  /** Whether the store holds an object: true, false, or undefined when not known. */
  private exists(index: number): boolean | undefined {
    return this.existing === undefined ? undefined : this.existing.has(index)
  }

  /**
   * Forgets every object, dirty ones included (their changes are lost): for a server
   * that lost its lease, whose cache may be stale and whose unflushed writes may not be
   * stored any more. Uploads in flight finish or fail on their own.
   */
  discard(): void {
    this.existing = undefined
    for (const entry of [...this.entries.values()]) {
      entry.stored = entry.version
      this.remove(entry)
    }
  }

  /** Stores every dirty object (FLUSH); fails if any could not be stored. */
  flush(): Effect.Effect<void, S3Failure> {
    return Effect.suspend(() =>
      Effect.forEach([...this.entries.values()].filter(isDirty), (entry) => this.persist(entry), {
        concurrency: "unbounded",
        discard: true
      })
    )
  }

  /** Allocation of `[offset, offset + length)`: consecutive extents from `offset`. */
  blockStatus(offset: number, length: number): Effect.Effect<ReadonlyArray<Driver.Extent>, S3Failure> {
    return Effect.gen(this, function*() {
      const first = Math.floor(offset / this.objectSize)
      const wanted = Math.floor((offset + length - 1) / this.objectSize)
      const known = this.existing
      const last = Math.min(wanted, first + (known === undefined ? STATUS_OBJECTS : STATUS_KNOWN_OBJECTS) - 1)
      const after = first === 0 ? undefined : this.key(first - 1)
      const listed = known !== undefined
        ? []
        : yield* this.options.store.list(Objects.dataPrefix(this.options.location), after, last - first + 1)
      const existing = known ?? new Set<number>()
      let covered = last
      for (const object of listed) {
        const index = Objects.indexOfKey(this.options.location, object.key)
        if (index !== undefined && index >= first && index <= last) existing.add(index)
      }
      if (listed.length === last - first + 1) {
        const lastListed = Objects.indexOfKey(this.options.location, listed[listed.length - 1]!.key)
        if (lastListed !== undefined && lastListed < last) covered = lastListed
      }
      const extents: Array<{ length: number; flags: number }> = []
      const end = offset + length
      for (let index = first; index <= covered; index++) {
        const cached = this.entries.get(index)
        const data = cached !== undefined && cached.loading === undefined ? cached.data !== null : existing.has(index)
        const from = Math.max(offset, index * this.objectSize)
        const to = Math.min(end, (index + 1) * this.objectSize)
        const flags = data ? 0 : Driver.HOLE_ZERO
        const previous = extents[extents.length - 1]
        if (previous !== undefined && previous.flags === flags) previous.length += to - from
        else extents.push({ length: to - from, flags })
      }
      return extents
    })
  }

  /** Every `delay` ms, starts storing the dirty objects that did not change for that long. */
  writeBehind(): Effect.Effect<never> {
    const delay = this.options.writeBackDelay ?? 1000
    const round = Effect.suspend(() => {
      const now = Date.now()
      const ripe = [...this.entries.values()].filter((e) => isDirty(e) && e.upload === undefined && now - e.changed >= delay)
      return Effect.forEach(ripe, (entry) => this.forkBackground(this.persist(entry)), { discard: true })
    })
    return Effect.forever(Effect.zipRight(Effect.sleep(delay), round))
  }
}

/** Makes the cache of an export, with its write-behind loop, in the current scope. */
export const make = (options: CacheOptions): Effect.Effect<ObjectCache, never, Scope.Scope> =>
  Effect.gen(function*() {
    // A scope of its own, closed after the finalizers its owner adds later (a final flush).
    const scope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
    const cache = new ObjectCache(
      options,
      scope,
      yield* Effect.makeSemaphore(options.uploads),
      yield* Effect.makeSemaphore(options.downloads)
    )
    yield* Effect.forkIn(cache.writeBehind(), scope)
    return cache
  })
