/**
 * Every driver and filter effect-nbd ships, by name: what the command line offers, and
 * what an application can offer its own users the same way.
 *
 * @since 0.2.0
 */
import * as Either from "effect/Either"
import type { Filter } from "./Driver.ts"
import * as DirDriver from "./drivers/Dir.ts"
import * as FileDriver from "./drivers/File.ts"
import * as MemoryDriver from "./drivers/Memory.ts"
import * as NbdDriver from "./drivers/Nbd.ts"
import * as NullDriver from "./drivers/Null.ts"
import * as PatternDriver from "./drivers/Pattern.ts"
import * as S3Driver from "./drivers/S3.ts"
import * as S3BucketDriver from "./drivers/S3Bucket.ts"
import * as BlockSize from "./filters/BlockSize.ts"
import * as Cache from "./filters/Cache.ts"
import * as Cow from "./filters/Cow.ts"
import * as Delay from "./filters/Delay.ts"
import * as Dirty from "./filters/Dirty.ts"
import * as ErrorFilter from "./filters/Error.ts"
import * as Ip from "./filters/Ip.ts"
import * as Log from "./filters/Log.ts"
import * as Offset from "./filters/Offset.ts"
import * as Partition from "./filters/Partition.ts"
import * as Rate from "./filters/Rate.ts"
import * as ReadOnly from "./filters/ReadOnly.ts"
import * as Retry from "./filters/Retry.ts"
import * as Stats from "./filters/Stats.ts"
import { ParameterError, parsePairs } from "./Params.ts"
import type { DriverPlugin, FilterPlugin } from "./Plugin.ts"

/** The drivers, by name. */
export const drivers: ReadonlyArray<DriverPlugin> = [
  MemoryDriver.plugin,
  FileDriver.plugin,
  DirDriver.plugin,
  NullDriver.plugin,
  PatternDriver.plugin,
  NbdDriver.plugin,
  S3Driver.plugin,
  S3BucketDriver.plugin
]

/** The filters, by name. */
export const filters: ReadonlyArray<FilterPlugin> = [
  ReadOnly.plugin,
  Offset.plugin,
  Partition.plugin,
  Cow.plugin,
  Dirty.plugin,
  Cache.plugin,
  BlockSize.plugin,
  Delay.plugin,
  ErrorFilter.plugin,
  Rate.plugin,
  Retry.plugin,
  Log.plugin,
  Stats.plugin,
  Ip.plugin
]

const refused = (message: string) => Either.left(new ParameterError({ message }))

/** Finds a driver by name; the error lists the known ones. */
export const driver = (name: string): Either.Either<DriverPlugin, ParameterError> => {
  const found = drivers.find((plugin) => plugin.name === name)
  return found === undefined
    ? refused(`unknown driver '${name}' (known: ${drivers.map((plugin) => plugin.name).join(", ")})`)
    : Either.right(found)
}

/**
 * Builds a filter from `NAME` or `NAME:KEY=VALUE,...` (the command line's `--filter`);
 * the error names what is accepted.
 */
export const filter = (spec: string): Either.Either<Filter<unknown>, ParameterError> => {
  const colon = spec.indexOf(":")
  const name = colon < 0 ? spec : spec.slice(0, colon)
  const plugin = filters.find((candidate) => candidate.name === name)
  if (plugin === undefined) {
    return refused(`unknown filter '${name}' (known: ${filters.map((candidate) => candidate.name).join(", ")})`)
  }
  return Either.flatMap(
    Either.mapLeft(parsePairs(colon < 0 ? "" : spec.slice(colon + 1)), (message) => new ParameterError({ message: `${name}: ${message}` })),
    plugin.make
  )
}
