/**
 * Transparent huge pages for the C heap, for stores that allocate much memory in pieces
 * (the memory driver's 2 MiB slabs of 32 KiB pages). The first write of an export is bound by
 * the kernel's first touch of new memory: a page fault and a zeroed page at a time. Where
 * the kernel offers transparent huge pages on request (`madvise` mode, the usual default), a
 * fault can map and zero 2 MiB at once; whether that is faster depends on the machine
 * (measured: three times as fast on one virtual machine, a sixth as fast on another whose
 * host takes freed memory back), so {@link HugePagePolicy} tries both and takes the faster.
 * `EFFECT_NBD_HUGE_PAGES=1` asks for huge pages always, `EFFECT_NBD_HUGE_PAGES=0` never (and
 * leaves the C heap's settings alone).
 *
 * How: glibc is told to grow its heap by at least 64 MiB at a time (`M_TOP_PAD`) and to
 * serve allocations below 4 MiB from it (`M_MMAP_THRESHOLD`). {@link HugePages.allocate}
 * times each allocation (glibc's `calloc` zeroes memory it takes from the heap's top, which
 * is the first touch of it), and when the heap has grown it compares the heap's end
 * (`sbrk(0)`) with the end already seen and advises what is new `MADV_HUGEPAGE`, or not, as
 * the policy says. Node.js allocates the buffers of the main thread on that heap, and glibc
 * leaves memory it has just taken from the system untouched (it is zero already), so the
 * advice comes before the first touch.
 *
 * {@link load} returns `undefined` (and stores allocate as any buffer) where this cannot be
 * done: not Linux with glibc, transparent huge pages off (`never`), koffi missing, or
 * `EFFECT_NBD_HUGE_PAGES=0` in the environment.
 *
 * @since 0.2.0
 */
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { HugePagePolicy } from "./HugePagePolicy.ts"

/** Allocation of a store's memory on the advised heap. */
export interface HugePages {
  /** A zeroed buffer of `bytes` (below 4 MiB), on memory advised as the policy says. */
  readonly allocate: (bytes: number) => Uint8Array
  /** The decision, or `undefined` when huge pages are asked for always. */
  readonly policy: HugePagePolicy | undefined
}

const MADV_HUGEPAGE = 14
const M_TOP_PAD = -2
const M_MMAP_THRESHOLD = -3
/** Allocations below this size come from the heap (the memory driver's 2 MiB slabs among them), not from a mapping of their own. */
const MMAP_THRESHOLD = 4 * 1024 * 1024
/** How much glibc grows the heap by at a time (and keeps at its top). */
const TOP_PAD = 64 * 1024 * 1024
const PAGE_MASK = ~4095n

/** Whether the kernel gives transparent huge pages to memory that asks for them. */
const kernelOffers = (): boolean => {
  try {
    return !readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8").includes("[never]")
  } catch {
    return false
  }
}

const bind = (policy: HugePagePolicy | undefined): HugePages => {
  const koffi = createRequire(import.meta.url)("koffi") as typeof import("koffi")
  const libc = koffi.load("libc.so.6")
  const madvise = libc.func("int madvise(uintptr_t addr, size_t length, int advice)")
  const sbrk = libc.func("uintptr_t sbrk(intptr_t increment)")
  const mallopt = libc.func("int mallopt(int param, int value)")
  if (mallopt(M_TOP_PAD, TOP_PAD) !== 1) throw new Error("mallopt(M_TOP_PAD) refused")
  if (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) !== 1) throw new Error("mallopt(M_MMAP_THRESHOLD) refused")
  let seen = BigInt(sbrk(0))
  return {
    policy,
    allocate: (bytes) => {
      const began = performance.now()
      const memory = new Uint8Array(bytes)
      const took = performance.now() - began
      const end = BigInt(sbrk(0))
      // Taken from the heap as it was: zeroed by calloc, so first touched, in the extent's way.
      if (end <= seen) {
        policy?.record(bytes, took * 1e6)
        return memory
      }
      // The heap grew (this allocation was partly fresh memory, not touched yet: not timed).
      if ((policy?.next() ?? "huge") === "huge") {
        const start = seen & PAGE_MASK
        madvise(start, end - start, MADV_HUGEPAGE)
      }
      seen = end
      return memory
    }
  }
}

let loaded: HugePages | null | undefined

/** The heap advice, bound once per process; `undefined` where unavailable (see the module's description). */
export const load = (): HugePages | undefined => {
  if (loaded !== undefined) return loaded ?? undefined
  loaded = null
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
    ?.glibcVersionRuntime
  if (process.platform !== "linux" || glibc === undefined || process.env.EFFECT_NBD_HUGE_PAGES === "0" || !kernelOffers()) {
    return undefined
  }
  try {
    loaded = bind(process.env.EFFECT_NBD_HUGE_PAGES === "1" ? undefined : new HugePagePolicy())
  } catch {
    loaded = null
  }
  return loaded ?? undefined
}
