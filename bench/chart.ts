/**
 * The results as a picture: a horizontal bar per workload showing how effect-nbd
 * compares with the reference server of a ratio column, written as a standalone SVG
 * beside the markdown report. Every bar reads the same way, "above 1× is better":
 * throughput rows show ours / theirs, latency and memory rows theirs / ours.
 */
import type { RatioColumn, Row } from "./table.ts"

/** One bar: a workload and its "higher is better" ratio. */
export interface Bar {
  readonly label: string
  readonly ratio: number
}

/** The bars of one ratio column; rows where either server has no value are left out. */
export const barsOf = (rows: ReadonlyArray<Row>, column: RatioColumn): ReadonlyArray<Bar> =>
  rows.flatMap((row) => {
    const ours = row.cells[column.ours]
    const theirs = row.cells[column.theirs]
    if (ours === undefined || theirs === undefined || "error" in ours || "error" in theirs) return []
    if (ours.value <= 0 || theirs.value <= 0) return []
    const ratio = row.lowerIsBetter ? theirs.value / ours.value : ours.value / theirs.value
    return [{ label: row.label, ratio }]
  })

const LABEL_WIDTH = 430
const BAR_AREA = 380
const ROW_HEIGHT = 24
const TOP = 52
const FONT = "font-family=\"sans-serif\" font-size=\"12\""

const escape = (text: string): string =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")

/** The x coordinate of a ratio on the chart's linear axis from 0 to `max`. */
const xOf = (ratio: number, max: number): number => LABEL_WIDTH + (Math.min(ratio, max) / max) * BAR_AREA

/** Axis ticks every 0.5× (every 1× past 4×), with the 1× parity line drawn darker. */
const axis = (max: number, bottom: number): ReadonlyArray<string> => {
  const step = max > 4 ? 1 : 0.5
  const ticks: Array<string> = []
  for (let tick = 0; tick <= max + 1e-9; tick += step) {
    const x = xOf(tick, max).toFixed(1)
    const parity = Math.abs(tick - 1) < 1e-9
    ticks.push(
      `<line x1="${x}" y1="${TOP - 6}" x2="${x}" y2="${bottom}" stroke="${parity ? "#333" : "#ddd"}" stroke-width="${parity ? 1.5 : 1}"/>`,
      `<text x="${x}" y="${bottom + 16}" text-anchor="middle" ${FONT}>${tick}×</text>`
    )
  }
  return ticks
}

/** One bar with its label and value; green at or above parity, orange below. */
const bar = (entry: Bar, index: number, max: number): ReadonlyArray<string> => {
  const y = TOP + index * ROW_HEIGHT
  const end = xOf(entry.ratio, max)
  const colour = entry.ratio >= 1 ? "#3a8f4b" : "#d9822b"
  return [
    `<text x="${LABEL_WIDTH - 8}" y="${y + 15}" text-anchor="end" ${FONT}>${escape(entry.label)}</text>`,
    `<rect x="${LABEL_WIDTH}" y="${y + 4}" width="${(end - LABEL_WIDTH).toFixed(1)}" height="${ROW_HEIGHT - 8}" fill="${colour}"/>`,
    `<text x="${(end + 4).toFixed(1)}" y="${y + 15}" ${FONT}>${entry.ratio.toFixed(2)}×</text>`
  ]
}

/** A standalone SVG bar chart of the bars under a title; "above 1× is better" is stated on it. */
export const renderChart = (title: string, bars: ReadonlyArray<Bar>): string => {
  const max = Math.max(2, Math.ceil(Math.max(0, ...bars.map((entry) => entry.ratio)) * 2) / 2)
  const bottom = TOP + bars.length * ROW_HEIGHT
  const width = LABEL_WIDTH + BAR_AREA + 60
  const height = bottom + 30
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="20" font-family="sans-serif" font-size="14" font-weight="bold">${escape(title)}</text>`,
    `<text x="10" y="38" ${FONT} fill="#555">above 1× is better (throughput: ours / theirs; latency and memory: theirs / ours)</text>`,
    ...axis(max, bottom),
    ...bars.flatMap((entry, index) => bar(entry, index, max)),
    "</svg>",
    ""
  ].join("\n")
}
