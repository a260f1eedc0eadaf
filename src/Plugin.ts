/**
 * Drivers and filters known by name: their documentation, and how each is built from
 * text parameters (the command line's `effect-nbd DRIVER ARG` and `--filter NAME:K=V,...`).
 *
 * @since 0.2.0
 */
import type * as Effect from "effect/Effect"
import type * as Either from "effect/Either"
import type * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type { Filter, NbdDriverShape } from "./Driver.ts"
import type { ParameterDoc, ParameterError } from "./Params.ts"

/** A filter by name. */
export interface FilterPlugin {
  readonly name: string
  /** One line: what the filter does. */
  readonly summary: string
  readonly parameters: ReadonlyArray<ParameterDoc>
  /** Builds the filter from its parameters (refused ones fail with a message naming what is accepted). */
  readonly make: (parameters: ReadonlyMap<string, string>) => Either.Either<Filter<unknown>, ParameterError>
}

/** A driver by name. */
export interface DriverPlugin {
  readonly name: string
  /** One line: what the driver serves. */
  readonly summary: string
  /** The positional argument (`SIZE`, `PATH`, `URI`), if the driver takes one. */
  readonly argument?: { readonly name: string; readonly description: string } | undefined
  readonly parameters: ReadonlyArray<ParameterDoc>
  /** Builds the driver, in the scope of the server, from its argument and parameters. */
  readonly make: (
    argument: string,
    parameters: ReadonlyMap<string, string>,
    options?: DriverPluginOptions | undefined
  ) => Either.Either<Effect.Effect<NbdDriverShape, unknown, Scope.Scope>, ParameterError>
  /**
   * For a driver that serves several exports (`dir`: one per file): builds them, each
   * named. The command line uses it instead of `make` and stacks the filters on each.
   */
  readonly exports?: (
    argument: string,
    parameters: ReadonlyMap<string, string>,
    options?: DriverPluginOptions | undefined
  ) => Either.Either<Effect.Effect<ReadonlyArray<NamedDriver>, unknown, Scope.Scope>, ParameterError>
  /**
   * For a driver whose exports may appear while the server runs (`s3-bucket`): builds
   * them as a source asked again for LIST and for unknown names. The command line uses
   * it instead of `exports`, stacking the filters on each export once, when first seen.
   */
  readonly exportSource?: (
    argument: string,
    parameters: ReadonlyMap<string, string>,
    options?: DriverPluginOptions | undefined
  ) => Either.Either<Effect.Effect<DriverSource, unknown, Scope.Scope>, ParameterError>
}

/** Named drivers that may appear while the server runs. */
export interface DriverSource {
  /** The drivers now, in the order LIST shows them (the exports found at start first). */
  readonly list: Effect.Effect<ReadonlyArray<NamedDriver>>
  /** The driver of that name, looked for if it is new; none if there is none. */
  readonly find: (name: string) => Effect.Effect<Option.Option<NamedDriver>>
}

/** A driver with the export name it is served under. */
export interface NamedDriver {
  readonly name: string
  readonly driver: NbdDriverShape
}

/** What every driver is told besides its own parameters. */
export interface DriverPluginOptions {
  /** The export will be read-only: a driver may open its storage read-only. */
  readonly readOnly: boolean
}
