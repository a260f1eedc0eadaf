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
