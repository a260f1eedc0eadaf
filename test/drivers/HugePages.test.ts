/**
 * Transparent huge pages behind the memory driver's pages: where the kernel offers them and
 * they are asked for always, writing a fresh store maps its memory in huge pages, and the
 * data reads back whole; with the policy, the data reads back whole whichever way it takes.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as HugePages from "../../src/drivers/HugePages.ts"
import { SparseMemory } from "../../src/drivers/Memory.ts"

const MiB = 1024 * 1024

// Huge pages asked for always (unless turned off), so that the store's memory is in huge pages
// whichever way the policy would find faster on this machine (HugePagePolicy.test.ts tests it).
process.env.EFFECT_NBD_HUGE_PAGES ??= "1"

/** Bytes of this process's anonymous memory mapped in huge pages. */
const anonHugeBytes = (): number => {
  const match = /AnonHugePages:\s+(\d+) kB/.exec(fs.readFileSync("/proc/self/smaps_rollup", "utf8"))
  return Number(match?.[1] ?? 0) * 1024
}

const thpMode = (): string => {
  try {
    return /\[(\w+)\]/.exec(fs.readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8"))?.[1] ?? "absent"
  } catch {
    return "absent"
  }
}

describe("huge pages for the memory driver", () => {
  it("is offered where the kernel has transparent huge pages, unless turned off", () => {
    const mode = thpMode()
    const expected = process.platform === "linux" && mode !== "never" && mode !== "absent" &&
      process.env.EFFECT_NBD_HUGE_PAGES !== "0"
    expect(HugePages.load() !== undefined, `transparent huge pages: ${mode}`).toBe(expected)
  })

  it.skipIf(HugePages.load() === undefined)("backs a freshly written store with huge pages", () => {
    const before = anonHugeBytes()
    const store = new SparseMemory(256 * MiB)
    const piece = Buffer.alloc(MiB)
    for (let i = 0; i < 128; i++) {
      piece.fill(i + 1)
      store.write(i * MiB, piece)
    }
    const gained = anonHugeBytes() - before
    // Most of the 128 MiB (the kernel may lack a free huge page now and then).
    expect(gained, `huge-page bytes gained: ${gained}`).toBeGreaterThanOrEqual(64 * MiB)
    for (let i = 0; i < 128; i++) {
      const read = store.read(i * MiB, MiB)
      expect(read.every((byte) => byte === i + 1), `MiB ${i}`).toBe(true)
    }
    expect(store.read(128 * MiB, MiB).every((byte) => byte === 0)).toBe(true)
  })
})
