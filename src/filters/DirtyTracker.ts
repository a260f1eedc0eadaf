/**
 * The shared state of a `dirty` filter stack: the active bitmap that writes mark, the
 * frozen checkpoints, their persistence in a state file, and the control API
 * ({@link DirtyControl}: checkpoint, remove, list).
 *
 * Checkpoints are atomic with respect to in-flight writes because marking is synchronous
 * and happens before a write is passed below: a write that marked the old active bitmap
 * is counted in the bitmap frozen from it even if it completes after the checkpoint; a
 * write that marks after the checkpoint is in the new active bitmap. So every
 * acknowledged write is in the bitmap that was active when it marked, which is either
 * still active or frozen after the mark, never lost.
 *
 * Durability: when the stack starts, the state file is rewritten with status `in-use`
 * (fdatasync'd) before any write is served, and with status `clean` when the stack's
 * scope closes. A file found `in-use` at start means the stack stopped uncleanly: every
 * bitmap in it is loaded as inconsistent and reports everything dirty, so a mark can
 * never be lost, whatever was acknowledged before the crash. Checkpoints, removals and
 * FLUSH also write the file (still `in-use`): that keeps the bitmap names across a
 * crash, but their content is reported all-dirty after one.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { blockSizeProblem } from "./Blocks.ts"
import { DirtyBitmap } from "./DirtyBitmap.ts"
import { DirtyError, load, save, type StoredBitmap } from "./DirtyState.ts"

/** Default granularity of the bitmaps. */
export const DEFAULT_GRANULARITY = 64 * 1024

/** Default name of the active bitmap. */
export const DEFAULT_BITMAP = "active"

/** Options of the dirty filter. */
export interface DirtyOptions {
  /** Bytes per bit, a power of two from 512 to 32M (default {@link DEFAULT_GRANULARITY}). */
  readonly granularity?: number | undefined
  /** Name of the active bitmap (default {@link DEFAULT_BITMAP}). */
  readonly bitmap?: string | undefined
  /** File the bitmaps persist in; none: they live as long as the stack. */
  readonly state?: string | undefined
  /** Unix socket of the admin endpoint (see `DirtyAdmin.ts`); none: control only in process. */
  readonly control?: string | undefined
}

/** A bitmap as {@link DirtyControl.list} describes it. */
export interface BitmapInfo {
  readonly name: string
  /** The bitmap writes mark now (the others are frozen checkpoints). */
  readonly active: boolean
  readonly granularity: number
  /** Dirty blocks times the granularity (the last block may reach past the export's end). */
  readonly dirtyBytes: number
  /** Its changes are unknown (unclean stop): it reports everything dirty. */
  readonly inconsistent: boolean
}

/** Control of the bitmaps of a dirty filter stack. */
export interface DirtyControl {
  /**
   * Freezes the active bitmap under `name` and starts a new, empty active bitmap
   * (atomically with respect to writes). Connections opened before do not see `name`:
   * a handle's meta contexts are fixed when it is opened.
   */
  readonly checkpoint: (name: string) => Effect.Effect<BitmapInfo, DirtyError>
  /** Drops a frozen bitmap (the active one cannot be removed). */
  readonly remove: (name: string) => Effect.Effect<void, DirtyError>
  /** Every bitmap, the active one first. */
  readonly list: Effect.Effect<ReadonlyArray<BitmapInfo>, DirtyError>
}

const NAME = /^[\x21-\x7e]{1,255}$/

/** Why a bitmap name is refused (printable ASCII without spaces, 1 to 255 characters), or `undefined`. */
export const nameProblem = (name: string): string | undefined =>
  NAME.test(name) ? undefined : `bitmap name '${name}' must be 1 to 255 printable ASCII characters without spaces`

/** Why options are refused, or `undefined`. */
export const optionsProblem = (options: DirtyOptions): string | undefined => {
  const granularity = options.granularity ?? DEFAULT_GRANULARITY
  if (blockSizeProblem(granularity) !== undefined) {
    return `granularity ${granularity} must be a power of two from 512 to 32M`
  }
  return nameProblem(options.bitmap ?? DEFAULT_BITMAP)
}

const fail = (reason: DirtyError["reason"], message: string) => Effect.fail(new DirtyError({ reason, message }))

/** The bitmaps of one stack. */
export class Tracker {
  /** The stack closed: writes are refused. */
  closed = false
  private readonly frozen = new Map<string, DirtyBitmap>()
  private readonly saving = Effect.unsafeMakeSemaphore(1)

  constructor(
    readonly granularity: number,
    readonly activeName: string,
    private active: DirtyBitmap,
    readonly file: string | undefined
  ) {}

  /** Marks a range in the active bitmap (synchronously: call it before the write starts). */
  mark(offset: number, length: number): void {
    if (this.closed) throw new Error("dirty: the stack is closed")
    this.active.mark(offset, length)
  }

  /** Adds a frozen bitmap (at load). */
  addFrozen(name: string, bitmap: DirtyBitmap): void {
    this.frozen.set(name, bitmap)
  }

  /** The bitmap of a name, if there is one. */
  lookup(name: string): DirtyBitmap | undefined {
    return name === this.activeName ? this.active : this.frozen.get(name)
  }

  /** Names of every bitmap, the active one first. */
  names(): Array<string> {
    return [this.activeName, ...this.frozen.keys()]
  }

  private info(name: string): BitmapInfo {
    const bitmap = this.lookup(name)!
    return {
      name,
      active: name === this.activeName,
      granularity: bitmap.granularity,
      dirtyBytes: bitmap.dirtyBlocks() * bitmap.granularity,
      inconsistent: bitmap.inconsistent
    }
  }

  /** Writes the state file (if any) with the bitmaps as they are when the write starts. */
  persist(status: "clean" | "in-use"): Effect.Effect<void, DirtyError> {
    const file = this.file
    if (file === undefined) return Effect.void
    return this.saving.withPermits(1)(Effect.suspend(() => {
      const bitmaps: Array<StoredBitmap> = this.names().map((name) => {
        const bitmap = this.lookup(name)!
        return {
          name,
          active: name === this.activeName,
          granularity: bitmap.granularity,
          inconsistent: bitmap.inconsistent,
          runs: bitmap.runs()
        }
      })
      return save(file, { status, bitmaps })
    }))
  }

  /** The control API over this tracker. */
  readonly control: DirtyControl = {
    checkpoint: (name) =>
      Effect.suspend(() => {
        const problem = nameProblem(name)
        if (problem !== undefined) return fail("InvalidName", `dirty: ${problem}`)
        if (this.closed) return fail("Closed", "dirty: the stack is closed")
        if (this.lookup(name) !== undefined) return fail("Exists", `dirty: bitmap '${name}' exists`)
        // Synchronous, so no write marks in between: marks made so far are in the frozen bitmap.
        this.frozen.set(name, this.active)
        this.active = new DirtyBitmap(this.granularity)
        return Effect.as(this.persist("in-use"), this.info(name))
      }),
    remove: (name) =>
      Effect.suspend(() => {
        if (name === this.activeName) return fail("Active", `dirty: '${name}' is the active bitmap`)
        if (!this.frozen.delete(name)) return fail("NotFound", `dirty: no bitmap '${name}'`)
        return this.closed ? Effect.void : this.persist("in-use")
      }),
    list: Effect.sync(() => this.names().map((name) => this.info(name)))
  }
}

/**
 * Creates the tracker of a stack: loads the state file (if any), marks it `in-use`
 * durably before returning, and writes it `clean` when the scope closes.
 */
export const makeTracker = (options: DirtyOptions): Effect.Effect<Tracker, DirtyError, Scope.Scope> =>
  Effect.gen(function*() {
    const problem = optionsProblem(options)
    if (problem !== undefined) return yield* fail("InvalidName", `dirty: ${problem}`)
    const granularity = options.granularity ?? DEFAULT_GRANULARITY
    const activeName = options.bitmap ?? DEFAULT_BITMAP
    const file = options.state
    const stored = file === undefined ? undefined : yield* load(file)
    const unclean = stored?.status === "in-use"
    const loaded = (stored?.bitmaps ?? []).map((b) => ({
      ...b,
      bitmap: DirtyBitmap.fromRuns(b.granularity, b.runs, b.inconsistent || unclean)
    }))
    const active = loaded.find((b) => b.name === activeName)
    if (active !== undefined && !active.active) {
      return yield* fail("Exists", `dirty: '${activeName}' is a frozen bitmap in ${file}`)
    }
    const tracker = new Tracker(granularity, activeName, active?.bitmap ?? new DirtyBitmap(granularity), file)
    // A bitmap that was active under another name stops tracking: it is kept as a checkpoint.
    for (const b of loaded) if (b.name !== activeName) tracker.addFrozen(b.name, b.bitmap)
    yield* tracker.persist("in-use")
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        tracker.closed = true
        return tracker.persist("clean")
      }).pipe(Effect.catchAll((e) => Effect.logError(e.message)))
    )
    return tracker
  })
