/**
 * The `partition` filter: the export is one partition of a partitioned disk. When a
 * client opens the export, the partition table is read through the driver below
 * (MBR with logical partitions in an extended partition, or GPT behind a protective
 * MBR; 512-byte sectors; numbering as in {@link PartitionTable}), and the export then
 * behaves as the `offset` filter over the partition's byte range: requests shifted,
 * size = the partition's size, RESIZE not offered, the synchronous fast path kept.
 *
 * A client is refused at open with `NBD_REP_ERR_UNKNOWN` when partition N does not
 * exist or is unused, and with `NBD_REP_ERR_INVALID` when the disk has no partition
 * table, the table is malformed, it cannot be read, or the partition does not fit the
 * driver below (including a start that is not a multiple of the minimum block size below).
 *
 * Parameters:
 * - `partition=N` (required): partition number, 1-based (5 and up: logical MBR partitions)
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import { optionReplyError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import { readBelow } from "./Blocks.ts"
import * as Offset from "./Offset.ts"
import * as PartitionTable from "./PartitionTable.ts"

/** Which partition to serve. */
export interface PartitionOptions {
  /** Partition number, 1-based. */
  readonly partition: number
}

/** Finds the partition through the handle below and opens the window over it. */
const open = (below: Driver.DriverHandle, n: number) =>
  Effect.gen(function*() {
    const size = yield* below.size
    const partition = yield* PartitionTable.find(n, size, (offset, length) => readBelow(below, offset, length))
    return yield* Offset.open(below, { offset: partition.offset, range: partition.length }, `partition ${n}`)
  }).pipe(
    Effect.catchTags({
      PartitionTableError: (e) =>
        Effect.fail(optionReplyError(e.reason === "NotFound" ? "UNKNOWN" : "INVALID", `partition: ${e.message}`)),
      ProtocolError: (e) =>
        Effect.fail(optionReplyError("INVALID", `partition: cannot read the partition table: ${e.message}`))
    })
  )

/** Wraps a driver so that the export is one of its partitions. */
export const apply = (below: Driver.NbdDriverShape, options: PartitionOptions): Driver.NbdDriverShape =>
  Driver.filter(below, { name: "partition", open: (handle) => open(handle, options.partition) })

/** The filter, for {@link Driver.stack}. */
export const make = (options: PartitionOptions): Driver.Filter => (below) => Effect.succeed(apply(below, options))

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: PartitionOptions): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "partition", description: "partition number, 1-based (5 and up: logical MBR partitions)" }
]

/** The filter by name: `partition:partition=N`. */
export const plugin: FilterPlugin = {
  name: "partition",
  summary: "serves one partition of an MBR or GPT partitioned disk",
  parameters,
  make: (pairs) =>
    Params.decode("partition", pairs, parameters, (read) =>
      make({ partition: read.integer("partition", undefined, { min: 1 }) }))
}
