/**
 * The `SIZE` argument of drivers that serve generated content (`null 1G`, `pattern 64M`).
 *
 * @since 0.2.0
 */
import * as Either from "effect/Either"
import { ParameterError } from "../Params.ts"
import { parseSize } from "../Size.ts"

const refused = (owner: string, message: string) => Either.left(new ParameterError({ message: `${owner}: ${message}` }))

/** Parses a size argument (`1048576`, `512K`, `1G`) of at most `maximum` bytes; `owner` names the driver in messages. */
export const parseSizeArgument = (
  owner: string,
  argument: string,
  maximum: number
): Either.Either<number, ParameterError> => {
  if (argument.trim() === "") return refused(owner, "a SIZE is required (e.g. 1G)")
  return Either.match(parseSize(argument), {
    onLeft: (message) => refused(owner, message),
    onRight: (size) => (size <= maximum ? Either.right(size) : refused(owner, `size ${size} exceeds the maximum ${maximum}`))
  })
}
