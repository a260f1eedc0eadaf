/**
 * Shorthands of the tests over the public in-process testing module: a session on one end
 * of a pipe, a registry of one driver layer, one-off filters.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import type { Duplex } from "node:stream"
import * as Testing from "../../src/testing/InProcess.ts"
import * as Driver from "../../src/Driver.ts"
import { type DriverHandle, type HandleOverrides, NbdDriver, type NbdDriverShape } from "../../src/Driver.ts"
import * as Export from "../../src/Export.ts"
import * as ServerConfig from "../../src/server/ServerConfig.ts"
import * as Shutdown from "../../src/server/Shutdown.ts"

/** Two connected in-memory streams. */
export const duplexPair = Testing.duplexPair

/**
 * Runs a server session on one end of a pair (in a scoped fiber) and returns the other
 * end for a client. The exports come from the `ExportRegistry` in context.
 */
export const serverStream = (
  config: Partial<ServerConfig.ServerConfig> = {},
  shutdown: Shutdown.Shutdown = Shutdown.never
): Effect.Effect<Duplex, never, Scope.Scope | Export.ExportRegistry> => Testing.serve({ server: config, shutdown })

/** A registry of one export backed by the `NbdDriver` layer given. */
export const exportsOf = (
  driver: Layer.Layer<NbdDriver>,
  options: Export.ExportOptions = {}
): Layer.Layer<Export.ExportRegistry> => Testing.exportDriver(driver, options)

/** A driver layer from a shape. */
export const driverLayer = (driver: NbdDriverShape): Layer.Layer<NbdDriver> => Layer.succeed(NbdDriver, driver)

/** A driver whose handles are those of `driver` with some operations replaced (a one-off filter). */
export const adjusted = (
  driver: NbdDriverShape,
  overrides: (below: DriverHandle) => HandleOverrides
): NbdDriverShape => Driver.filter(driver, { name: "test", open: (below) => overrides(below) })
