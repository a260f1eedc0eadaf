import { describe, expect, it } from "@effect/vitest"
import { barsOf, renderChart } from "../../bench/chart.ts"
import type { RatioColumn, Row } from "../../bench/table.ts"

const column: RatioColumn = { label: "effect-nbd / nbdkit memory", ours: "effect-nbd", theirs: "nbdkit-memory" }

const row = (label: string, ours: number, theirs: number, lowerIsBetter = false): Row => ({
  label,
  decimals: 1,
  lowerIsBetter,
  cells: { "effect-nbd": { value: ours }, "nbdkit-memory": { value: theirs } }
})

describe("bench chart", () => {
  it("reads every bar as higher is better: latency and memory rows are inverted", () => {
    const bars = barsOf([row("seq read (MiB/s)", 300, 200), row("QD1 mean clat (µs)", 50, 40, true)], column)
    expect(bars).toEqual([
      { label: "seq read (MiB/s)", ratio: 1.5 },
      { label: "QD1 mean clat (µs)", ratio: 0.8 }
    ])
  })

  it("leaves out rows where a server failed or was not run", () => {
    const failed: Row = { ...row("x", 1, 1), cells: { "effect-nbd": { error: "boom" }, "nbdkit-memory": { value: 1 } } }
    const missing: Row = { ...row("y", 1, 1), cells: { "effect-nbd": { value: 1 } } }
    expect(barsOf([failed, missing], column)).toEqual([])
  })

  it("renders well-formed SVG with one bar per workload, coloured by parity, labels escaped", () => {
    const svg = renderChart("a <title> & more", [
      { label: "fast & good", ratio: 1.25 },
      { label: "slow", ratio: 0.5 }
    ])
    expect(svg.startsWith("<svg xmlns=\"http://www.w3.org/2000/svg\"")).toBe(true)
    expect(svg).toContain("a &lt;title&gt; &amp; more")
    expect(svg).toContain(">fast &amp; good</text>")
    expect(svg).toContain(">1.25×</text>")
    expect(svg).toContain(">0.50×</text>")
    expect(svg.match(/fill="#3a8f4b"/g)).toHaveLength(1)
    expect(svg.match(/fill="#d9822b"/g)).toHaveLength(1)
    expect(svg.trim().endsWith("</svg>")).toBe(true)
  })
})
