import { describe, expect, it } from "@effect/vitest"
import type { ServerInfo } from "../../bench/servers.ts"
import { median, type RatioColumn, renderRoundsTable, roundRatiosOf, type Row } from "../../bench/table.ts"

const servers: ReadonlyArray<ServerInfo> = [
  { id: "effect-nbd", label: "effect-nbd" },
  { id: "nbdkit-memory", label: "nbdkit memory" }
]
const ratios: ReadonlyArray<RatioColumn> = [{ label: "ratio", ours: "effect-nbd", theirs: "nbdkit-memory" }]

const row = (label: string, ours: ReadonlyArray<number | undefined>, theirs: ReadonlyArray<number | undefined>): Row => ({
  label,
  decimals: 1,
  lowerIsBetter: false,
  cells: {},
  rounds: { "effect-nbd": ours, "nbdkit-memory": theirs }
})

describe("bench table", () => {
  it("takes the middle value, or the mean of the middle two", () => {
    expect(median([3, 1, 2])).toBe(2)
    expect(median([4, 1, 3, 2])).toBe(2.5)
  })

  it("compares servers round by round, skipping a round where either has no figure", () => {
    const r = row("copy", [100, undefined, 90, 80], [50, 60, 0])
    expect(roundRatiosOf(r, "effect-nbd", "nbdkit-memory")).toEqual([2, undefined, undefined, undefined])
  })

  it("shows every round's figures and ratios in round order, and leaves out rows without rounds", () => {
    const rows: ReadonlyArray<Row> = [
      row("copy in (MiB/s)", [1231.1, 1040, 984.6], [1412.1, 1240.7, 1032.7]),
      { label: "no rounds", decimals: 0, lowerIsBetter: false, cells: {} }
    ]
    const lines = renderRoundsTable(rows, servers, ratios).split("\n")
    expect(lines).toHaveLength(3)
    expect(lines[0]).toMatch(/^\| Workload, per round +\| +effect-nbd \| +nbdkit memory \| +ratio \|$/)
    expect(lines[2]).toContain("| 1,231.1 / 1,040.0 / 984.6 |")
    expect(lines[2]).toContain("| 1,412.1 / 1,240.7 / 1,032.7 |")
    expect(lines[2]).toContain("| 0.87× / 0.84× / 0.95× |")
  })

  it("marks a round without a figure", () => {
    const text = renderRoundsTable([row("x", [1, undefined], [2, 2])], servers, ratios)
    expect(text).toMatch(/\| +1\.0 \/ – \|/)
    expect(text).toMatch(/\| +0\.50× \/ – \|/)
  })
})
