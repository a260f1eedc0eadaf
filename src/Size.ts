/**
 * Human sizes on the command line: `1048576`, `512K`, `64M`, `1G`, `1T`, `2P`
 * (binary multiples, as nbdkit and qemu-img read them; `KiB`/`MB`-style suffixes too).
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"

const UNITS: Record<string, number> = { "": 0, B: 0, K: 10, M: 20, G: 30, T: 40, P: 50, E: 60 }

/** Parses a size into bytes; fails on anything that is not a whole, safe number of bytes. */
export const parseSize = (text: string): Either.Either<number, string> => {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgtpeb]?)(?:i?b)?\s*$/i.exec(text)
  if (match === null) return Either.left(`'${text}' is not a size (examples: 1048576, 512K, 64M, 1G, 1T)`)
  const value = Number(match[1]) * 2 ** UNITS[match[2]!.toUpperCase()]!
  if (!Number.isSafeInteger(value)) return Either.left(`'${text}' is not a whole number of bytes below 2^53`)
  return Either.right(value)
}

/** Formats a byte count with the largest binary unit that divides it. */
export const formatSize = (bytes: number): string => {
  for (const [unit, shift] of [["P", 50], ["T", 40], ["G", 30], ["M", 20], ["K", 10]] as const) {
    if (bytes >= 2 ** shift && bytes % 2 ** shift === 0) return `${bytes / 2 ** shift}${unit}`
  }
  return `${bytes}`
}
