/**
 * The huge-page policy: each way is tried, the faster per byte is taken, the slower is tried
 * again every `retryEvery` extents, and a change of conditions changes the choice.
 */
import { describe, expect, it } from "@effect/vitest"
import { HugePagePolicy, MIN_MEASURED } from "../../src/drivers/HugePagePolicy.ts"

/** Measures one extent of the way in use at `nsPerByte`, then starts the next one. */
const extent = (policy: HugePagePolicy, nsPerByte: number) => {
  policy.record(MIN_MEASURED, MIN_MEASURED * nsPerByte)
  return policy.next()
}

describe("HugePagePolicy", () => {
  it("tries huge pages first, then small ones, then takes the faster", () => {
    const slowHuge = new HugePagePolicy()
    expect(slowHuge.choice).toBe("huge")
    expect(extent(slowHuge, 2)).toBe("small")
    expect(extent(slowHuge, 0.4)).toBe("small")
    expect([slowHuge.rate("huge"), slowHuge.rate("small")]).toEqual([2, 0.4])

    const fastHuge = new HugePagePolicy()
    extent(fastHuge, 0.5)
    expect(extent(fastHuge, 1.5)).toBe("huge")
    expect(extent(fastHuge, 0.5)).toBe("huge")
  })

  it("goes on measuring an extent that saw too little", () => {
    const policy = new HugePagePolicy()
    policy.record(MIN_MEASURED / 2, 1)
    expect(policy.next()).toBe("huge")
    expect(policy.rate("huge")).toBeNaN()
    policy.record(MIN_MEASURED / 2, 1)
    expect(policy.next()).toBe("small")
    expect(policy.rate("huge")).toBe(2 / MIN_MEASURED)
  })

  it("tries the slower way again every retryEvery extents, and follows a change", () => {
    const policy = new HugePagePolicy(4)
    const choices: Array<string> = []
    // Small pages are faster until their cost rises (a guest's small free blocks run out).
    const cost = { huge: 2, small: 0.4 }
    for (let i = 0; i < 12; i++) {
      if (i === 6) cost.small = 3
      choices.push(extent(policy, cost[policy.choice]))
    }
    expect(choices).toEqual([
      "small", // after the 1st extent (huge): try small
      "small",
      "small",
      "huge", // after the 4th: retry huge
      "small",
      "small",
      "huge", // the 7th (small) got slow: huge is faster now
      "small", // after the 8th: retry small, still slow
      "huge",
      "huge",
      "huge",
      "small" // after the 12th: retry
    ])
  })
})
