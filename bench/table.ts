/**
 * The results table: one row per measured figure, one column per server, plus
 * the ratio effect-nbd / nbdkit memory, rendered as aligned markdown.
 */
import type { ServerId } from "./servers.ts"

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
}

const formatNumber = (value: number, decimals: number): string =>
  Number.isFinite(value)
    ? value.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals })
    : "n/a"

const formatCell = (cell: Cell, decimals: number): string =>
  cell === undefined ? "–" : "error" in cell ? "FAILED" : formatNumber(cell.value, decimals)

/** effect-nbd / nbdkit memory, e.g. `0.42×`; `–` when either is missing. */
export const ratio = (row: Row): string => {
  const ours = row.cells["effect-nbd"]
  const theirs = row.cells["nbdkit-memory"]
  if (ours === undefined || theirs === undefined || "error" in ours || "error" in theirs || theirs.value === 0) return "–"
  return `${formatNumber(ours.value / theirs.value, 2)}×`
}

/** Renders the rows as a markdown table with padded columns. */
export const renderTable = (rows: ReadonlyArray<Row>): string => {
  const header = ["Workload", "effect-nbd", "nbdkit memory", "nbdkit null", "effect-nbd / nbdkit memory"]
  const body = rows.map((row) => [
    row.label,
    formatCell(row.cells["effect-nbd"], row.decimals),
    formatCell(row.cells["nbdkit-memory"], row.decimals),
    formatCell(row.cells["nbdkit-null"], row.decimals),
    ratio(row)
  ])
  const widths = header.map((title, i) => Math.max(title.length, ...body.map((cells) => cells[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    `| ${cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join(" | ")} |`
  const rule = `| ${widths.map((w, i) => (i === 0 ? "-".repeat(w) : `${"-".repeat(w - 1)}:`)).join(" | ")} |`
  return [line(header), rule, ...body.map(line)].join("\n")
}

/** The footnote explaining how to read the ratio column. */
export const RATIO_NOTE =
  "Ratio = effect-nbd / nbdkit memory: for MiB/s and IOPS above 1 means effect-nbd is faster; " +
  "for latency and RSS below 1 means effect-nbd is better."
