/**
 * The results table: one row per measured figure, one column per server, plus
 * the ratio effect-nbd / nbdkit memory, rendered as aligned markdown. With filter
 * stacks among the servers (`--filters`), one more ratio column per stack: the
 * stack against plain effect-nbd (e.g. `+1 filter / effect-nbd`). A run may name its
 * own ratio columns instead (`--tls`: each server against nbdkit X.509).
 */
import { type ServerId, type ServerInfo, SERVERS } from "./servers.ts"

/** The median of some numbers (the mean of the middle two for an even count). */
export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/** A measured value, a failure, or nothing (not run). */
export type Cell = { readonly value: number } | { readonly error: string } | undefined

/** One row of the table. */
export interface Row {
  readonly label: string
  /** Digits after the decimal point. */
  readonly decimals: number
  /** Whether smaller is better (latency, memory), which decides how the ratio reads. */
  readonly lowerIsBetter: boolean
  readonly cells: Partial<Record<ServerId, Cell>>
  /** Each round's figure per server, in round order (`undefined` where that round failed or did not run). */
  readonly rounds?: Partial<Record<ServerId, ReadonlyArray<number | undefined>>>
}

const formatNumber = (value: number, decimals: number): string =>
  Number.isFinite(value)
    ? value.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals })
    : "n/a"

const formatCell = (cell: Cell, decimals: number): string =>
  cell === undefined ? "–" : "error" in cell ? "FAILED" : formatNumber(cell.value, decimals)

/** `ours / theirs` of a row, e.g. `0.42×`; `–` when either is missing. */
export const ratioOf = (row: Row, ours: ServerId, theirs: ServerId): string => {
  const a = row.cells[ours]
  const b = row.cells[theirs]
  if (a === undefined || b === undefined || "error" in a || "error" in b || b.value === 0) return "–"
  return `${formatNumber(a.value / b.value, 2)}×`
}

/** effect-nbd / nbdkit memory, e.g. `0.42×`; `–` when either is missing. */
export const ratio = (row: Row): string => ratioOf(row, "effect-nbd", "nbdkit-memory")

/** A ratio column: `ours / theirs` of every row, under `label`. */
export interface RatioColumn {
  readonly label: string
  readonly ours: ServerId
  readonly theirs: ServerId
}

/** effect-nbd / nbdkit memory, then each filter stack among the servers / plain effect-nbd. */
export const defaultRatios = (servers: ReadonlyArray<ServerInfo>): ReadonlyArray<RatioColumn> => [
  { label: "effect-nbd / nbdkit memory", ours: "effect-nbd", theirs: "nbdkit-memory" },
  ...servers
    .filter((server) => server.filterLabel !== undefined)
    .map((stack) => ({ label: `${stack.filterLabel} / effect-nbd`, ours: stack.id, theirs: "effect-nbd" as const }))
]

/**
 * Renders the rows as a markdown table with padded columns: a column per server in
 * the given order, then the ratio columns (by default effect-nbd / nbdkit memory, then
 * a ratio to plain effect-nbd per filter stack).
 */
export const renderTable = (
  rows: ReadonlyArray<Row>,
  servers: ReadonlyArray<ServerInfo> = SERVERS,
  ratios: ReadonlyArray<RatioColumn> = defaultRatios(servers)
): string => {
  const header = ["Workload", ...servers.map((server) => server.label), ...ratios.map((column) => column.label)]
  const body = rows.map((row) => [
    row.label,
    ...servers.map((server) => formatCell(row.cells[server.id], row.decimals)),
    ...ratios.map((column) => ratioOf(row, column.ours, column.theirs))
  ])
  return renderMarkdown(header, body)
}

/** A markdown table with padded columns: the first left-aligned, the others right-aligned. */
const renderMarkdown = (header: ReadonlyArray<string>, body: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((title, i) => Math.max(title.length, ...body.map((cells) => cells[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    `| ${cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join(" | ")} |`
  const rule = `| ${widths.map((w, i) => (i === 0 ? "-".repeat(w) : `${"-".repeat(w - 1)}:`)).join(" | ")} |`
  return [line(header), rule, ...body.map(line)].join("\n")
}

/** `a / b / c`: one figure per round, `–` where a round has none. */
const formatRounds = (values: ReadonlyArray<number | undefined>, format: (value: number) => string): string =>
  values.map((value) => (value === undefined ? "–" : format(value))).join(" / ")

/** `ours / theirs` of each round in which both were measured, as {@link formatRounds} shows them. */
export const roundRatiosOf = (row: Row, ours: ServerId, theirs: ServerId): ReadonlyArray<number | undefined> => {
  const a = row.rounds?.[ours] ?? []
  const b = row.rounds?.[theirs] ?? []
  return Array.from({ length: Math.max(a.length, b.length) }, (_, i) => {
    const x = a[i]
    const y = b[i]
    return x === undefined || y === undefined || y === 0 ? undefined : x / y
  })
}

/**
 * Renders each round's figures of the rows that have them: per server the figures of the
 * rounds in order, then per ratio column the ratio within each round (both servers measured
 * minutes apart, in the same round), which shows how far a median's ratio moves between rounds.
 */
export const renderRoundsTable = (
  rows: ReadonlyArray<Row>,
  servers: ReadonlyArray<ServerInfo> = SERVERS,
  ratios: ReadonlyArray<RatioColumn> = defaultRatios(servers)
): string => {
  const withRounds = rows.filter((row) => row.rounds !== undefined)
  const header = ["Workload, per round", ...servers.map((server) => server.label), ...ratios.map((column) => column.label)]
  const body = withRounds.map((row) => [
    row.label,
    ...servers.map((server) => formatRounds(row.rounds?.[server.id] ?? [], (value) => formatNumber(value, row.decimals))),
    ...ratios.map((column) =>
      formatRounds(roundRatiosOf(row, column.ours, column.theirs), (value) => `${formatNumber(value, 2)}×`)
    )
  ])
  return renderMarkdown(header, body)
}

/** The footnote of the per-round table. */
export const ROUNDS_NOTE =
  "Per round: the figures of each round in the order run (the medians above are taken from them); " +
  "a ratio per round compares two servers measured one after the other in that round."

/** The footnote explaining how to read the ratio column. */
export const RATIO_NOTE =
  "Ratio = effect-nbd / nbdkit memory: for MiB/s and IOPS above 1 means effect-nbd is faster; " +
  "for latency and RSS below 1 means effect-nbd is better; for CPU per GiB below 1 means less processor time " +
  "(the server's own, or nbdcopy's when copying to and from effect-nbd)."

/** The footnote explaining the filter-stack ratio columns (`--filters`). */
export const FILTER_RATIO_NOTE =
  "Filter ratios = effect-nbd behind the filter stack / plain effect-nbd (same memory export): " +
  "for MiB/s and IOPS below 1, and for latency and RSS above 1, is what the stack costs. " +
  "+1 filter and +3 filters stack error:rate=0, which intercepts every request and forwards it (the Effect path); " +
  "+stats and +dirty (changed-block tracking) keep the memory driver's synchronous fast path."

/** The ratio columns of `--tls`: every TLS server against nbdkit X.509, and effect-nbd PSK against nbdkit PSK. */
export const TLS_RATIOS: ReadonlyArray<RatioColumn> = [
  { label: "effect-nbd X.509 / nbdkit X.509", ours: "effect-nbd-x509", theirs: "nbdkit-x509" },
  { label: "effect-nbd PSK / nbdkit X.509", ours: "effect-nbd-psk", theirs: "nbdkit-x509" },
  { label: "nbdkit PSK / nbdkit X.509", ours: "nbdkit-psk", theirs: "nbdkit-x509" },
  { label: "effect-nbd PSK / nbdkit PSK", ours: "effect-nbd-psk", theirs: "nbdkit-psk" }
]

/** The footnote explaining the ratio columns of `--tls`. */
export const TLS_RATIO_NOTE =
  "Ratios = server / nbdkit X.509 (and effect-nbd PSK / nbdkit PSK), all memory exports with --tls require: " +
  "for MiB/s above 1 means faster; for CPU per GiB (server's or nbdcopy's) and RSS below 1 means cheaper."
