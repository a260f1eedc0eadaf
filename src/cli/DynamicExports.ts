/**
 * The exports of a driver whose exports may appear while the server runs (`s3-bucket`),
 * as the command line serves them: each named as a `serve` spec names it (`NAME/EXPORT`,
 * or `EXPORT` when the spec's name is empty), with the spec's filters stacked on it once,
 * when it is first seen, in the command's scope.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Driver from "../Driver.ts"
import * as Export from "../Export.ts"
import type { DriverSource, NamedDriver } from "../Plugin.ts"

/** How the exports of a source are served. */
export interface Served {
  /** The spec's name ("" for none): exports are named `NAME/EXPORT`. */
  readonly name: string
  readonly description: string | undefined
  readonly readOnly: boolean
  readonly filters: ReadonlyArray<Driver.Filter<unknown>>
}

/** An export source over a driver source: filters stacked once per export, in `scope`. */
export const make = (source: DriverSource, served: Served, scope: Scope.Scope): Export.ExportSource => {
  const stacked = new Map<string, Export.NbdExport>()
  const outer = (name: string) => (served.name === "" ? name : `${served.name}/${name}`)
  const exportOf = ({ driver, name }: NamedDriver): Effect.Effect<Option.Option<Export.NbdExport>> =>
    Effect.suspend(() => {
      const known = stacked.get(name)
      if (known !== undefined) return Effect.succeed(Option.some(known))
      return Driver.stack(driver, served.filters).pipe(
        Scope.extend(scope),
        Effect.map((top) => {
          // Another fiber may have stacked it meanwhile: keep the first.
          const exp = stacked.get(name) ??
            Export.make(top, { name: outer(name), description: served.description, readOnly: served.readOnly })
          stacked.set(name, exp)
          return Option.some(exp)
        }),
        Effect.catchAllCause((cause) =>
          Effect.as(Effect.logWarning(`export '${outer(name)}': its filters failed`, cause), Option.none())
        )
      )
    })
  return {
    list: Effect.flatMap(source.list, (drivers) =>
      Effect.map(Effect.forEach(drivers, exportOf), (found) => found.flatMap(Option.toArray))),
    find: (name) => {
      const inner = served.name === "" ? name : name.startsWith(`${served.name}/`) ? name.slice(served.name.length + 1) : undefined
      if (inner === undefined || inner === "") return Effect.succeed(Option.none())
      return Effect.flatMap(source.find(inner), Option.match({ onNone: () => Effect.succeed(Option.none()), onSome: exportOf }))
    }
  }
}
