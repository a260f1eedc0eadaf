/**
 * The state file of the `dirty` filter: its bitmaps and whether the stack that wrote it
 * stopped cleanly. JSON, one object:
 *
 * ```json
 * { "format": "effect-nbd-dirty", "version": 1, "status": "clean" | "in-use",
 *   "bitmaps": [{ "name": "active", "active": true, "granularity": 65536,
 *                 "inconsistent": false, "runs": [[firstBlock, count], ...] }] }
 * ```
 *
 * `runs` are the dirty blocks, ascending. A file is replaced whole: written to a
 * temporary file beside it, fdatasync'd, renamed over it, then the directory fsync'd, so
 * a crash leaves either the old file or the new one.
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as fs from "node:fs"
import * as path from "node:path"
import type { Runs } from "./DirtyBitmap.ts"

/** What went wrong with the dirty filter's state or control. */
export class DirtyError extends Data.TaggedError("DirtyError")<{
  readonly reason:
    | "StateFile"
    | "InvalidName"
    | "Exists"
    | "NotFound"
    | "Active"
    | "NotStarted"
    | "InUse"
    | "Closed"
    | "Control"
  readonly message: string
}> {}

/** Identifies the file format. */
export const FORMAT = "effect-nbd-dirty"

/** Version of the file format. */
export const VERSION = 1

/** One bitmap as stored. */
export interface StoredBitmap {
  readonly name: string
  readonly active: boolean
  readonly granularity: number
  readonly inconsistent: boolean
  readonly runs: Runs
}

/** The content of a state file. */
export interface StoredState {
  /** `in-use` while a stack has it open: found at start, the stack did not stop cleanly. */
  readonly status: "clean" | "in-use"
  readonly bitmaps: ReadonlyArray<StoredBitmap>
}

const stateError = (file: string, what: string) => (cause: unknown) =>
  new DirtyError({ reason: "StateFile", message: `dirty: ${what} ${file}: ${String(cause)}` })

const isRuns = (value: unknown): value is Runs =>
  Array.isArray(value) &&
  value.every((run) => Array.isArray(run) && run.length === 2 && run.every((n) => Number.isSafeInteger(n) && n >= 0))

/** Checks a parsed file; the message says what is wrong. */
const validate = (value: any): StoredState => {
  if (value?.format !== FORMAT) throw new Error(`not a ${FORMAT} state file`)
  if (value.version !== VERSION) throw new Error(`unsupported version ${value.version} (expected ${VERSION})`)
  if (value.status !== "clean" && value.status !== "in-use") throw new Error(`bad status ${value.status}`)
  if (!Array.isArray(value.bitmaps)) throw new Error("no bitmaps")
  for (const b of value.bitmaps) {
    const ok = typeof b?.name === "string" && typeof b.active === "boolean" && typeof b.inconsistent === "boolean" &&
      Number.isSafeInteger(b.granularity) && b.granularity >= 512 && (b.granularity & (b.granularity - 1)) === 0 &&
      isRuns(b.runs)
    if (!ok) throw new Error(`bad bitmap ${JSON.stringify(b?.name)}`)
  }
  return { status: value.status, bitmaps: value.bitmaps }
}

/** Reads a state file: `undefined` when there is none. */
export const load = (file: string): Effect.Effect<StoredState | undefined, DirtyError> =>
  Effect.tryPromise({
    try: async () => {
      let text: string
      try {
        text = await fs.promises.readFile(file, "utf8")
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined
        throw error
      }
      return validate(JSON.parse(text))
    },
    catch: stateError(file, "cannot read state file")
  })

let temporaries = 0

/** Replaces a state file atomically and durably (temporary file, fdatasync, rename, fsync of the directory). */
export const save = (file: string, state: StoredState): Effect.Effect<void, DirtyError> =>
  Effect.tryPromise({
    try: async () => {
      const text = JSON.stringify({ format: FORMAT, version: VERSION, ...state })
      const temporary = `${file}.${process.pid}.${++temporaries}.tmp`
      const handle = await fs.promises.open(temporary, "w", 0o600)
      try {
        await handle.writeFile(text)
        await handle.datasync()
      } finally {
        await handle.close()
      }
      await fs.promises.rename(temporary, file)
      const dir = await fs.promises.open(path.dirname(path.resolve(file)), "r")
      try {
        await dir.sync()
      } finally {
        await dir.close()
      }
    },
    catch: stateError(file, "cannot write state file")
  })
