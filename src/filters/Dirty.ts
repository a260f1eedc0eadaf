/**
 * The `dirty` filter: changed-block tracking for any driver, answered to clients as
 * `qemu:dirty-bitmap:NAME` meta contexts (as qemu-nbd's `-B`), for incremental backups.
 *
 * - Every write, trim, zeroing and resize marks the blocks it touches (at `granularity`)
 *   in the active bitmap, before the request goes below: an acknowledged change is
 *   always marked (a failed one may stay marked: over-reporting is allowed,
 *   under-reporting never). The bitmaps are shared by every connection of the stack.
 * - Each bitmap is offered as the meta context `qemu:dirty-bitmap:NAME`; its extents have
 *   flags 1 for dirty and 0 for clean (qemu's definition), runs merged, whole blocks
 *   clipped to the asked range. The contexts of the driver below pass through.
 * - {@link DirtyControl.checkpoint} freezes the active bitmap under a name and starts an
 *   empty one, atomically with respect to in-flight writes (see `DirtyTracker.ts` for the
 *   reasoning); a handle's contexts are fixed when it is opened, so a checkpoint is seen
 *   by connections opened after it. The control is the {@link DirtyBitmaps} service of
 *   {@link layer}, or the `control` of {@link make}.
 * - With `state=PATH` the bitmaps persist in that file (format in `DirtyState.ts`): marked
 *   `in-use` when the stack starts, `clean` when it closes; after an unclean stop every
 *   stored bitmap reports everything dirty. FLUSH also writes the file. A bitmap loaded
 *   from the file keeps its granularity (a new active bitmap takes `granularity`); one that
 *   was active under another name than `bitmap` is kept as a frozen checkpoint. One stack
 *   at a time may use a state file (nothing locks it).
 * - Reads, block status and the synchronous fast path pass through (its writes marked).
 *
 * Parameters:
 * - granularity=SIZE (default 64K): bytes per bit, a power of two from 512 to 32M.
 * - bitmap=NAME (default active): name of the active bitmap.
 * - state=PATH (default none): file the bitmaps persist in across restarts.
 * - control=PATH (default none): Unix socket of an HTTP admin endpoint: `GET /bitmaps`,
 *   `POST /bitmaps/NAME` (checkpoint), `DELETE /bitmaps/NAME` (see `DirtyAdmin.ts`).
 *
 * @since 0.2.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import { type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import { DirtyError } from "./DirtyState.ts"
import {
  DEFAULT_BITMAP,
  DEFAULT_GRANULARITY,
  type DirtyControl,
  type DirtyOptions,
  makeTracker,
  optionsProblem,
  type Tracker
} from "./DirtyTracker.ts"

/** The tracker of a new stack, with its admin endpoint when `control` names one. */
const track = (options: DirtyOptions) =>
  Effect.tap(
    makeTracker(options),
    (tracker) => {
      const path = options.control
      if (path === undefined) return Effect.void
      // Loaded only when asked for: the HTTP server's modules cost the process about 20 MiB.
      return Effect.flatMap(Effect.promise(() => import("./DirtyAdmin.ts")), (admin) => admin.serve(tracker.control, path))
    }
  )

export { DirtyBitmap } from "./DirtyBitmap.ts"
export { DirtyError } from "./DirtyState.ts"
export {
  type BitmapInfo,
  DEFAULT_BITMAP,
  DEFAULT_GRANULARITY,
  type DirtyControl,
  type DirtyOptions,
  makeTracker,
  Tracker
} from "./DirtyTracker.ts"

/** Prefix of the meta contexts of dirty bitmaps. */
export const CONTEXT_PREFIX = "qemu:dirty-bitmap:"

/** The control of a dirty filter's bitmaps, as a service (provided by {@link layer}). */
export class DirtyBitmaps extends Context.Tag("effect-nbd/DirtyBitmaps")<DirtyBitmaps, DirtyControl>() {}

/** Marks a range, then runs the change below (failing EIO if the stack is closed). */
const marked = <A>(
  tracker: Tracker,
  offset: number,
  length: number,
  change: () => Effect.Effect<A, ProtocolError>
): Effect.Effect<A, ProtocolError> =>
  Effect.suspend(() => {
    if (tracker.closed) return Effect.fail(protocolError("EIO", "dirty: the stack is closed"))
    tracker.mark(offset, length)
    return change()
  })

/** The meta context of one bitmap, looked up by name at each query (the active one follows checkpoints). */
const context = (tracker: Tracker, name: string): Driver.MetaContextSource => ({
  name: CONTEXT_PREFIX + name,
  blockStatus: (offset, length) =>
    Effect.suspend(() => {
      const bitmap = tracker.lookup(name)
      return bitmap === undefined
        ? Effect.fail(protocolError("EINVAL", `dirty: bitmap '${name}' was removed`))
        : Effect.succeed(bitmap.extents(offset, length))
    })
})

/** The handle the dirty filter presents over the handle below. */
const overrides = (tracker: Tracker, below: Driver.DriverHandle): Driver.HandleOverrides => {
  const mine = tracker.names().map((name) => context(tracker, name))
  const fast = below.sync
  return {
    write: (offset, data, options) => marked(tracker, offset, data.length, () => below.write(offset, data, options)),
    writeCopies: below.writeCopies, // the data goes below as it is
    trim: (offset, length, options) => marked(tracker, offset, length, () => below.trim(offset, length, options)),
    writeZeroes: (offset, length, options) =>
      marked(tracker, offset, length, () => below.writeZeroes(offset, length, options)),
    resize: (size) =>
      Effect.flatMap(below.size, (old) =>
        marked(tracker, Math.min(old, size), Math.abs(size - old), () => below.resize(size))),
    flush: Effect.zipRight(below.flush, Effect.mapError(tracker.persist("in-use"), (e) => protocolError("EIO", e.message))),
    contexts: [
      ...(below.contexts ?? []).filter((c) => !mine.some((m) => m.name === c.name)),
      ...mine
    ],
    // Same semantics synchronously: mark, then write below (a throw is answered EIO).
    sync: fast === undefined ? undefined : {
      size: fast.size,
      read: fast.read,
      readInto: fast.readInto,
      write: (offset, data) => {
        tracker.mark(offset, data.length)
        fast.write(offset, data)
      }
    }
  }
}

/** Puts a dirty filter with the given tracker (shared by every connection) over a driver. */
export const apply = (below: Driver.NbdDriverShape, tracker: Tracker): Driver.NbdDriverShape =>
  Driver.filter(below, { name: "dirty", open: (handle) => overrides(tracker, handle) })

/** The filter with a tracker of its own per stack, and no control from outside (as the command line builds it). */
export const filter = (options: DirtyOptions = {}): Driver.Filter<DirtyError> => (below) =>
  Effect.map(track(options), (tracker) => apply(below, tracker))

const notStarted = Effect.fail(new DirtyError({ reason: "NotStarted", message: "dirty: the stack is not open" }))

/**
 * The filter and the control of its bitmaps, for use without layers. The control acts on
 * the stack the filter was applied to while it is open (`NotStarted` otherwise); the
 * filter can back one open stack at a time (`InUse` otherwise).
 */
export const make = (options: DirtyOptions = {}): {
  readonly filter: Driver.Filter<DirtyError>
  readonly control: DirtyControl
} => {
  let current: DirtyControl | undefined
  const filter: Driver.Filter<DirtyError> = (below) =>
    Effect.gen(function*() {
      if (current !== undefined) {
        return yield* Effect.fail(new DirtyError({ reason: "InUse", message: "dirty: the filter backs an open stack" }))
      }
      const tracker = yield* track(options)
      current = tracker.control
      yield* Effect.addFinalizer(() => Effect.sync(() => (current = undefined)))
      return apply(below, tracker)
    })
  const control: DirtyControl = {
    checkpoint: (name) => Effect.suspend(() => current === undefined ? notStarted : current.checkpoint(name)),
    remove: (name) => Effect.suspend(() => current === undefined ? notStarted : current.remove(name)),
    list: Effect.suspend(() => current === undefined ? notStarted : current.list)
  }
  return { filter, control }
}

/** The filter as a layer over the `NbdDriver` in context, with the {@link DirtyBitmaps} control. */
export const layer = (
  options: DirtyOptions = {}
): Layer.Layer<Driver.NbdDriver | DirtyBitmaps, DirtyError, Driver.NbdDriver> =>
  Layer.scopedContext(Effect.gen(function*() {
    const below = yield* Driver.NbdDriver
    const tracker = yield* track(options)
    return Context.make(Driver.NbdDriver, apply(below, tracker)).pipe(Context.add(DirtyBitmaps, tracker.control))
  }))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "granularity", default: "64K", description: "bytes per bit of the bitmaps (a power of two from 512 to 32M)" },
  { name: "bitmap", default: DEFAULT_BITMAP, description: "name of the active bitmap (qemu:dirty-bitmap:NAME)" },
  { name: "state", description: "file the bitmaps persist in across restarts (default: none, in memory)" },
  { name: "control", description: "Unix socket of an HTTP admin endpoint: GET /bitmaps, POST or DELETE /bitmaps/NAME (default: none)" }
]

/** The dirty filter by name (`--filter dirty:granularity=4K,state=/var/lib/disk.dirty`). */
export const plugin: FilterPlugin = {
  name: "dirty",
  summary: "changed-block tracking, offered as qemu:dirty-bitmap:NAME meta contexts",
  parameters,
  make: (pairs) =>
    Either.map(
      Params.decode("dirty", pairs, parameters, (reader) => {
        const options: DirtyOptions = {
          granularity: reader.size("granularity", DEFAULT_GRANULARITY),
          bitmap: reader.string("bitmap", DEFAULT_BITMAP),
          state: reader.text("state"),
          control: reader.text("control")
        }
        const problem = optionsProblem(options)
        if (problem !== undefined) throw new Params.ParameterError({ message: `dirty: ${problem}` })
        return options
      }),
      filter
    )
}
