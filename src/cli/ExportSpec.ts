/**
 * Export specifications on the command line:
 * `NAME=DRIVER:ARGUMENT[,read-only][,description=TEXT]`, for example
 * `disk=file:/srv/disk.img`, `scratch=memory:1T`, `iso=file:/srv/debian.iso,read-only`,
 * `=memory:1G,description=the default export` (an empty name is the default export).
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"
import { parseSize } from "../Size.ts"

/** A parsed export specification. */
export type ExportSpec = {
  readonly name: string
  readonly readOnly: boolean
  readonly description: string | undefined
} & (
  | { readonly driver: "memory"; readonly size: number }
  | { readonly driver: "file"; readonly path: string }
)

/** Parses one specification. */
export const parseExportSpec = (text: string): Either.Either<ExportSpec, string> => {
  const equals = text.indexOf("=")
  const colon = text.indexOf(":", equals + 1)
  if (equals < 0 || colon < 0) {
    return Either.left(`'${text}' is not NAME=DRIVER:ARGUMENT (e.g. disk=memory:1G or disk=file:/path/disk.img)`)
  }
  const name = text.slice(0, equals)
  const driver = text.slice(equals + 1, colon)
  let rest = text.slice(colon + 1)
  let description: string | undefined
  const at = rest.indexOf(",description=")
  if (at >= 0) {
    description = rest.slice(at + ",description=".length)
    rest = rest.slice(0, at)
  }
  const [argument = "", ...flags] = rest.split(",")
  let readOnly = false
  for (const flag of flags) {
    if (flag === "read-only" || flag === "ro") readOnly = true
    else return Either.left(`unknown export option '${flag}' in '${text}' (known: read-only, description=TEXT)`)
  }
  switch (driver) {
    case "memory":
      return Either.map(parseSize(argument), (size) => ({ name, driver, size, readOnly, description }))
    case "file":
      return argument === ""
        ? Either.left(`'${text}' names no file`)
        : Either.right({ name, driver, path: argument, readOnly, description })
    default:
      return Either.left(`unknown driver '${driver}' in '${text}' (known: memory, file)`)
  }
}
