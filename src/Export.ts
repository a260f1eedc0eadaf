/**
 * Exports: named block devices a server offers, each backed by a driver.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { NbdDriver, type NbdDriverShape } from "./Driver.ts"
import { type OptionReplyError, optionReplyError } from "./Errors.ts"
import * as ReadOnly from "./filters/ReadOnly.ts"

/** One export: a name clients ask for and the driver stack behind it. */
export interface NbdExport {
  /** Name clients select; the default export answers the empty name too. */
  readonly name: string
  /** Description for LIST and NBD_INFO_DESCRIPTION; the driver's own when absent. */
  readonly description: Option.Option<string>
  /** The driver, with its filters; what it can do (read-only included) comes from the handles it opens. */
  readonly driver: NbdDriverShape
}

/** Options of an export besides its driver. */
export interface ExportOptions {
  readonly name?: string | undefined
  readonly description?: string | undefined
  /** Stack the `readonly` filter on the driver. */
  readonly readOnly?: boolean | undefined
}

/** Makes an export from a driver. */
export const make = (driver: NbdDriverShape, options: ExportOptions = {}): NbdExport => ({
  name: options.name ?? "",
  description: Option.orElse(Option.fromNullable(options.description), () => driver.description),
  driver: options.readOnly === true ? ReadOnly.apply(driver) : driver
})

/**
 * Exports that may appear while the server runs (those of a bucket): asked again for
 * LIST and for a name the registry does not know.
 */
export interface ExportSource {
  /** The exports now. */
  readonly list: Effect.Effect<ReadonlyArray<NbdExport>>
  /** The export of that name, looked for if it is new; none if there is none. */
  readonly find: (name: string) => Effect.Effect<Option.Option<NbdExport>>
}

/** The exports a server offers. */
export class ExportRegistry extends Context.Tag("effect-nbd/ExportRegistry")<ExportRegistry, {
  /** Every export, the default first. */
  readonly list: Effect.Effect<ReadonlyArray<NbdExport>>
  /** The export of that name; the empty name is the default export. */
  readonly get: (name: string) => Effect.Effect<NbdExport, OptionReplyError>
}>() {
  /** A registry over a fixed list of exports; the first is the default. */
  static fromExports(exports: ReadonlyArray<NbdExport>): ExportRegistry["Type"] {
    const byName = new Map(exports.map((e) => [e.name, e] as const))
    const fallback = exports[0]
    return ExportRegistry.of({
      list: Effect.succeed(exports),
      get: (name) => {
        const found = byName.get(name) ?? (name === "" ? fallback : undefined)
        return found === undefined
          ? Effect.fail(optionReplyError("UNKNOWN", `no export named '${name}'`))
          : Effect.succeed(found)
      }
    })
  }

  /**
   * A registry of fixed exports and of sources whose exports may change: a name not
   * among the fixed ones is looked for in each source in turn; LIST shows the fixed
   * exports, then each source's. The default export is the first fixed one, else the
   * first a source lists.
   */
  static withSources(exports: ReadonlyArray<NbdExport>, sources: ReadonlyArray<ExportSource>): ExportRegistry["Type"] {
    if (sources.length === 0) return ExportRegistry.fromExports(exports)
    const fixed = ExportRegistry.fromExports(exports)
    const list = Effect.map(Effect.forEach(sources, (source) => source.list), (found) => {
      const seen = new Set(exports.map((e) => e.name))
      return [...exports, ...found.flat().filter((e) => !seen.has(e.name) && seen.add(e.name))]
    })
    const find = (name: string): Effect.Effect<NbdExport, OptionReplyError> =>
      Effect.flatMap(Effect.forEach(sources, (source) => source.find(name)), (found) => {
        const first = found.find(Option.isSome)
        return first === undefined
          ? Effect.fail(optionReplyError("UNKNOWN", `no export named '${name}'`))
          : Effect.succeed(first.value)
      })
    return ExportRegistry.of({
      list,
      get: (name) =>
        Effect.catchAll(fixed.get(name), (e) =>
          name === "" && exports.length === 0
            ? Effect.flatMap(list, (all) => all.length === 0 ? Effect.fail(e) : Effect.succeed(all[0]!))
            : name === "" ? Effect.fail(e) : find(name))
    })
  }

  /** A registry of the given exports. */
  static layer(exports: ReadonlyArray<NbdExport>): Layer.Layer<ExportRegistry> {
    return Layer.succeed(ExportRegistry, ExportRegistry.fromExports(exports))
  }

  /**
   * A registry of exports whose drivers are layers: each driver layer is built in the
   * registry's scope (a file driver's file is closed with it). The first is the default.
   */
  static layerFromDrivers<E, R>(
    exports: ReadonlyArray<ExportOptions & { readonly driver: Layer.Layer<NbdDriver, E, R> }>
  ): Layer.Layer<ExportRegistry, E, Exclude<R, Scope.Scope>> {
    return Layer.scoped(
      ExportRegistry,
      Effect.map(
        Effect.forEach(exports, ({ driver, ...options }) =>
          Effect.map(Layer.build(driver), (context) => make(Context.get(context, NbdDriver), options))),
        ExportRegistry.fromExports
      )
    )
  }

  /** A registry of one export backed by the `NbdDriver` in context. */
  static layerDriver(options: ExportOptions = {}): Layer.Layer<ExportRegistry, never, NbdDriver> {
    return Layer.effect(
      ExportRegistry,
      Effect.map(NbdDriver, (driver) => ExportRegistry.fromExports([make(driver, options)]))
    )
  }
}
