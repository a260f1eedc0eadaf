import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import { Slabs } from "../../src/drivers/Slabs.ts"

const PAGE = 16

/** A slot's bytes (a view of its slab). */
const bytesAt = (slabs: Slabs, slot: number): Uint8Array =>
  slabs.bytesOf(slot).subarray(slabs.offsetOf(slot), slabs.offsetOf(slot) + PAGE)

describe("slabs", () => {
  it("takes zeroed slots in order, side by side in one slab, then from a new slab", () => {
    const slabs = new Slabs(PAGE, 4)
    const slots = [0, 1, 2, 3, 4].map((owner) => slabs.take(owner))
    expect(slots).toEqual([0, 1, 2, 3, 4])
    expect(slabs.bytesOf(1)).toBe(slabs.bytesOf(0))
    expect(slabs.offsetOf(1) - slabs.offsetOf(0)).toBe(PAGE)
    expect(slabs.bytesOf(4)).not.toBe(slabs.bytesOf(3))
    for (const slot of slots) expect(bytesAt(slabs, slot)).toEqual(new Uint8Array(PAGE))
    expect(slabs.size).toBe(2)
    expect(slabs.heldBytes).toBe(2 * 4 * PAGE)
  })

  it("drops a slab with its last slot and never hands out the memory of a freed slot", () => {
    const slabs = new Slabs(PAGE, 4)
    const first = [0, 1, 2, 3].map((owner) => slabs.take(owner))
    const memory = slabs.bytesOf(first[0]!)
    bytesAt(slabs, first[2]!).fill(7)
    for (const slot of first) slabs.release(slot)
    expect(slabs.size).toBe(0)
    const again = [0, 1, 2, 3, 4].map((owner) => slabs.take(owner))
    for (const slot of again) {
      expect(slabs.bytesOf(slot)).not.toBe(memory)
      expect(bytesAt(slabs, slot)).toEqual(new Uint8Array(PAGE))
    }
    expect(memory.subarray(2 * PAGE, 3 * PAGE)).toEqual(new Uint8Array(PAGE).fill(7))
  })

  it("compacts a slab left at most half used: its pages move with their bytes, the old memory is untouched", () => {
    const slabs = new Slabs(PAGE, 4)
    const slots = new Map([0, 1, 2, 3, 4].map((owner) => [owner, slabs.take(owner)]))
    for (const [owner, slot] of slots) bytesAt(slabs, slot).fill(owner + 1)
    const old = slabs.bytesOf(slots.get(0)!)
    slabs.release(slots.get(0)!)
    slabs.release(slots.get(1)!)
    const moves: Array<[number, number]> = []
    slabs.compact((owner, slot) => moves.push([owner, slot]))
    expect(moves.map(([owner]) => owner)).toEqual([2, 3])
    for (const [owner, slot] of moves) {
      expect(slabs.bytesOf(slot)).not.toBe(old)
      expect(bytesAt(slabs, slot)).toEqual(new Uint8Array(PAGE).fill(owner + 1))
      bytesAt(slabs, slot).fill(0xff)
    }
    expect(old.subarray(2 * PAGE, 4 * PAGE)).toEqual(new Uint8Array([...new Uint8Array(PAGE).fill(3), ...new Uint8Array(PAGE).fill(4)]))
    expect(slabs.size).toBe(1) // the slab of page 4, now holding the moved pages too
  })

  it("holds at most twice the live pages plus two slabs, whatever is freed", () => {
    FastCheck.assert(
      FastCheck.property(
        FastCheck.array(FastCheck.tuple(FastCheck.boolean(), FastCheck.nat(200)), { maxLength: 400 }),
        (operations) => {
          const slabs = new Slabs(PAGE, 8)
          const live = new Map<number, number>()
          let next = 0
          for (const [take, pick] of operations) {
            if (take || live.size === 0) {
              const owner = next++
              const slot = slabs.take(owner)
              bytesAt(slabs, slot).fill(owner % 251)
              live.set(owner, slot)
            } else {
              const owner = [...live.keys()][pick % live.size]!
              slabs.release(live.get(owner)!)
              live.delete(owner)
              slabs.compact((moved, slot) => live.set(moved, slot))
            }
            expect(slabs.heldBytes).toBeLessThanOrEqual(2 * live.size * PAGE + 2 * 8 * PAGE)
          }
          for (const [owner, slot] of live) expect(bytesAt(slabs, slot)).toEqual(new Uint8Array(PAGE).fill(owner % 251))
        }
      )
    )
  })
})
