/**
 * The `readonly` filter: the export refuses writes, trims, zeroing and resizing with
 * EPERM, whatever the driver below could do. Reads, flushes, block status and the
 * synchronous read path pass through.
 *
 * Parameters: none.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Driver from "../Driver.ts"
import { protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"

const refused = () => Effect.fail(protocolError("EPERM", "the export is read-only"))

/** Makes a driver read-only. */
export const apply = (below: Driver.NbdDriverShape): Driver.NbdDriverShape =>
  Driver.filter(below, {
    name: "readonly",
    open: (handle) => ({
      capabilities: (caps) => ({ ...caps, readOnly: true, trim: false, zero: false, fastZero: false, resize: false }),
      write: refused,
      trim: refused,
      writeZeroes: refused,
      resize: refused,
      // Reads keep the fast path; a write never reaches it (the server refuses writes on a read-only export).
      sync: handle.sync === undefined ? undefined : {
        ...handle.sync,
        write: () => {
          throw new Error("write on a read-only export")
        }
      }
    })
  })

/** The filter, for {@link Driver.stack}. */
export const filter: Driver.Filter = (below) => Effect.succeed(apply(below))

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = Driver.filterLayer(filter)

/** The filter by name, for the command line: `--filter readonly`. */
export const plugin: FilterPlugin = {
  name: "readonly",
  summary: "refuses writes, trims, zeroing and resizing (EPERM)",
  parameters: [],
  make: (pairs) => Either.map(Params.decode("readonly", pairs, [], () => undefined), () => filter)
}
