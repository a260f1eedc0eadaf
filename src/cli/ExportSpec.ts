/**
 * Export specifications of `effect-nbd serve`:
 * `NAME=DRIVER:ARGUMENT[,read-only][,KEY=VALUE...][,filter=FILTER...][,description=TEXT]`,
 * for example `disk=file:/srv/disk.img,filter=cow`, `scratch=memory:1T`,
 * `iso=file:/srv/debian.iso,read-only`, `slow=memory:1G,filter=delay:read=10ms;write=20ms`,
 * `=memory:1G,description=the default export` (an empty name is the default export).
 *
 * `KEY=VALUE` items are the driver's parameters; in a `filter=` item the filter's own
 * parameters are separated by `;` (the spec's items are separated by commas). Filters
 * are listed nearest the client first. `description=` takes the rest of the text.
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"

/** A parsed export specification (the driver and filters are looked up when the export is built). */
export interface ExportSpec {
  readonly name: string
  readonly driver: string
  readonly argument: string
  /** The driver's `KEY=VALUE` parameters. */
  readonly parameters: ReadonlyMap<string, string>
  /** Filter specifications as `--filter` takes them (`NAME:KEY=VALUE,...`), nearest the client first. */
  readonly filters: ReadonlyArray<string>
  readonly readOnly: boolean
  readonly description: string | undefined
}

const KNOWN = "read-only, KEY=VALUE (driver parameters), filter=NAME[:KEY=VALUE;...], description=TEXT"

/** Parses one specification. */
export const parseExportSpec = (text: string): Either.Either<ExportSpec, string> => {
  const equals = text.indexOf("=")
  const colon = text.indexOf(":", equals + 1)
  if (equals < 0 || colon < 0) {
    return Either.left(`'${text}' is not NAME=DRIVER:ARGUMENT (e.g. disk=memory:1G or disk=file:/path/disk.img)`)
  }
  let rest = text.slice(colon + 1)
  let description: string | undefined
  const at = rest.indexOf(",description=")
  if (at >= 0) {
    description = rest.slice(at + ",description=".length)
    rest = rest.slice(0, at)
  }
  const [argument = "", ...items] = rest.split(",")
  const parameters = new Map<string, string>()
  const filters: Array<string> = []
  let readOnly = false
  for (const item of items) {
    const eq = item.indexOf("=")
    if (item === "read-only" || item === "ro") readOnly = true
    else if (item.startsWith("filter=")) filters.push(item.slice("filter=".length).replaceAll(";", ","))
    else if (eq > 0) parameters.set(item.slice(0, eq), item.slice(eq + 1))
    else return Either.left(`unknown export option '${item}' in '${text}' (known: ${KNOWN})`)
  }
  return Either.right({
    name: text.slice(0, equals),
    driver: text.slice(equals + 1, colon),
    argument,
    parameters,
    filters,
    readOnly,
    description
  })
}
