/**
 * The human-readable summary of the `stats` filter: elapsed time, one line per command
 * used (`read: 1234 ops, 12.3 MiB, 5.6 MiB/s`), errors by errno, and a latency table
 * (min, mean, max and the log2 histogram, one column per command).
 *
 * @since 0.2.0
 */
import { type Command, Commands } from "./Instrument.ts"
import { bucketStart, ByteCommands, type CommandStatistics, type Statistics } from "./StatsCollector.ts"

const LABEL: Record<Command, string> = {
  READ: "read",
  WRITE: "write",
  FLUSH: "flush",
  TRIM: "trim",
  WRITE_ZEROES: "zero",
  CACHE: "cache",
  BLOCK_STATUS: "block status",
  RESIZE: "resize"
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] as const

/** A byte count with a binary unit and one decimal: `512 B`, `12.3 MiB`. */
export const formatBytes = (bytes: number): string => {
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${UNITS[unit]}`
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`

const commandLine = (command: Command, stats: CommandStatistics, elapsedSeconds: number): string => {
  const parts = [plural(stats.ops, "op")]
  if (ByteCommands.has(command)) {
    parts.push(formatBytes(stats.bytes))
    if (elapsedSeconds > 0) parts.push(`${formatBytes(stats.bytesPerSecond)}/s`)
  }
  if (stats.errors > 0) parts.push(plural(stats.errors, "error"))
  return `${LABEL[command]}: ${parts.join(", ")}`
}

/** Lays out rows in columns: the first left-aligned, the others right-aligned. */
const table = (rows: ReadonlyArray<ReadonlyArray<string>>): Array<string> => {
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)))
  return rows.map((row) =>
    row.map((cell, column) => column === 0 ? cell.padEnd(widths[0]!) : cell.padStart(widths[column]!)).join("  ")
      .trimEnd()
  )
}

const bucketLabel = (i: number, last: boolean): string =>
  last ? `>= ${bucketStart(i)}` : `${bucketStart(i)}-${i === 0 ? 1 : bucketStart(i) * 2}`

const latencyTable = (stats: Statistics, used: ReadonlyArray<Command>): Array<string> => {
  const columns = used.map((c) => stats.commands[c].latency)
  const rows: Array<Array<string>> = [
    ["latency (µs)", ...used.map((c) => LABEL[c])],
    ["min", ...columns.map((l) => l.minMicros.toFixed(0))],
    ["mean", ...columns.map((l) => l.meanMicros.toFixed(1))],
    ["max", ...columns.map((l) => l.maxMicros.toFixed(0))]
  ]
  const filled = (i: number) => columns.some((l) => l.buckets[i]! > 0)
  const buckets = columns[0]!.buckets.length
  const first = [...Array(buckets).keys()].find(filled) ?? 0
  const last = [...Array(buckets).keys()].reverse().find(filled) ?? 0
  for (let i = first; i <= last; i++) {
    rows.push([bucketLabel(i, i === buckets - 1), ...columns.map((l) => String(l.buckets[i]))])
  }
  return table(rows)
}

/** The summary as text, one line per fact, ending with a newline. */
export const format = (stats: Statistics): string => {
  const lines = [`elapsed time: ${stats.elapsedSeconds.toFixed(3)} s`]
  const used = Commands.filter((c) => stats.commands[c].ops > 0)
  if (used.length === 0) return [...lines, "no requests"].join("\n") + "\n"
  for (const c of used) lines.push(commandLine(c, stats.commands[c], stats.elapsedSeconds))
  const errors = Object.entries(stats.errors).map(([errno, n]) => `${errno} ${n}`)
  if (errors.length > 0) lines.push(`errors: ${errors.join(", ")}`)
  lines.push(...latencyTable(stats, used))
  return lines.join("\n") + "\n"
}
