/** A temporary directory for the life of a scope, for tests of filters that write files. */
import * as Effect from "effect/Effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

/** Creates a fresh directory, removed with everything in it when the scope closes. */
export const tempDir = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-filter-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

/** The lines of a text file, without the final newline. */
export const lines = (file: string): Array<string> => fs.readFileSync(file, "utf8").replace(/\n$/, "").split("\n")
