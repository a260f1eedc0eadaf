import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import { CHUNK, PageTable } from "../../src/drivers/PageTable.ts"

/** The chunks a table holds (private state, read to check that empty chunks go away). */
const chunkCount = (table: PageTable<unknown>): number => (table as unknown as { chunks: Map<number, unknown> }).chunks.size

describe("page table", () => {
  it("agrees with a map under random sets, deletes and range walks across chunks", () => {
    const span = 4 * CHUNK
    FastCheck.assert(
      FastCheck.property(
        FastCheck.array(
          FastCheck.tuple(
            FastCheck.constantFrom("set", "delete", "get", "range"),
            FastCheck.integer({ min: 0, max: span - 1 }),
            FastCheck.integer({ min: 0, max: 2 * CHUNK })
          ),
          { maxLength: 200 }
        ),
        (operations) => {
          const table = new PageTable<number>()
          const model = new Map<number, number>()
          for (const [op, index, extra] of operations) {
            if (op === "set") {
              table.set(index, extra)
              model.set(index, extra)
            } else if (op === "delete") {
              expect(table.delete(index)).toBe(model.delete(index))
            } else if (op === "get") {
              expect(table.get(index)).toBe(model.get(index))
              expect(table.has(index)).toBe(model.has(index))
            } else {
              const expected = [...model.keys()].filter((key) => key >= index && key < index + extra).sort((a, b) => a - b)
              expect(table.keysIn(index, index + extra)).toEqual(expected)
            }
            expect(table.size).toBe(model.size)
          }
          const all = [...model.keys()].sort((a, b) => a - b)
          expect(table.keysIn(0, span)).toEqual(all)
          expect(chunkCount(table)).toBe(new Set(all.map((key) => Math.floor(key / CHUNK))).size)
        }
      )
    )
  })

  it("drops a chunk with its last page, and a cleared table is empty", () => {
    const table = new PageTable<string>()
    table.set(5, "a")
    table.set(CHUNK + 5, "b")
    expect(chunkCount(table)).toBe(2)
    expect(table.delete(5)).toBe(true)
    expect(table.delete(5)).toBe(false)
    expect(chunkCount(table)).toBe(1)
    expect(table.get(5)).toBeUndefined()
    table.set(5, "c")
    expect(table.get(5)).toBe("c")
    table.clear()
    expect(table.size).toBe(0)
    expect(table.get(CHUNK + 5)).toBeUndefined()
    expect(table.keysIn(0, 10 * CHUNK)).toEqual([])
  })

  it("walks a sparse range of 2^40 pages at once, at indexes beyond 32 bits", () => {
    const table = new PageTable<number>()
    const far = 2 ** 38 + 7
    table.set(3, 1)
    table.set(far, 2)
    expect(table.get(far)).toBe(2)
    expect(table.keysIn(0, 2 ** 40)).toEqual([3, far])
    expect(table.keysIn(4, far)).toEqual([])
    expect(table.keysIn(far, far + 1)).toEqual([far])
  })
})
