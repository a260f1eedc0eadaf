/**
 * Transparent huge pages for the C heap, for stores that allocate much memory in small
 * pieces (the memory driver's 2 MiB slabs of 32 KiB pages). The first write of an export is bound by
 * the kernel's first touch of new memory: one page fault and one zeroed 4 KiB page at a
 * time. Where the kernel offers transparent huge pages on request (`madvise` mode, the
 * usual default), the heap's new memory is advised `MADV_HUGEPAGE` before anything
 * touches it, so that a fault maps and zeroes 2 MiB at once (measured on one machine: 1 GiB
 * allocated and written in 32 KiB pieces at about 650 MiB/s instead of 200, for the same
 * resident memory). On a freshly started virtual machine whose host backs guest memory only
 * as it is first touched, the huge pages come from memory not used since boot and cost more
 * than 4 KiB pages, which are recycled first (measured: about half the speed); set
 * `EFFECT_NBD_HUGE_PAGES=0` there.
 *
 * How: glibc is told to grow its heap by at least 64 MiB at a time (`M_TOP_PAD`) and to
 * serve allocations below 4 MiB from it (`M_MMAP_THRESHOLD`), and after each allocation of
 * a store's memory, {@link HugePages.advise} compares the heap's end
 * (`sbrk(0)`) with the end already advised and advises what is new. Node.js allocates
 * buffers of the main thread on that heap, and glibc leaves fresh heap memory untouched
 * (it is zero already), so the advice comes before the first touch.
 *
 * {@link load} returns `undefined` (and the store works as before) where this cannot be
 * done: not Linux with glibc, transparent huge pages off (`never`), koffi missing, or
 * `EFFECT_NBD_HUGE_PAGES=0` in the environment.
 *
 * @since 0.2.0
 */
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"

/** Advises the heap's new memory. */
export interface HugePages {
  /** Call after allocating a store page and before writing into it. */
  readonly advise: () => void
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

const bind = (): HugePages => {
  const koffi = createRequire(import.meta.url)("koffi") as typeof import("koffi")
  const libc = koffi.load("libc.so.6")
  const madvise = libc.func("int madvise(uintptr_t addr, size_t length, int advice)")
  const sbrk = libc.func("uintptr_t sbrk(intptr_t increment)")
  const mallopt = libc.func("int mallopt(int param, int value)")
  if (mallopt(M_TOP_PAD, TOP_PAD) !== 1) throw new Error("mallopt(M_TOP_PAD) refused")
  if (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) !== 1) throw new Error("mallopt(M_MMAP_THRESHOLD) refused")
  let advised = BigInt(sbrk(0))
  return {
    advise: () => {
      const end = BigInt(sbrk(0))
      if (end <= advised) return
      const start = advised & PAGE_MASK
      madvise(start, end - start, MADV_HUGEPAGE)
      advised = end
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
    loaded = bind()
  } catch {
    loaded = null
  }
  return loaded ?? undefined
}
