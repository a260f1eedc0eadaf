/**
 * Linux system calls that Node.js's `fs` module lacks, for the file driver: `fallocate`
 * (punching holes and zeroing ranges), `lseek` with `SEEK_DATA`/`SEEK_HOLE` (finding
 * holes), the block-device ioctls (size, sector size, discard, zero-out) and
 * `posix_fadvise`. They are bound to the C library through koffi (prebuilt binaries, no
 * compiler needed). Each function returns a negative errno on failure, never throws.
 *
 * Calls that may take long (`fallocate`, discard, zero-out) run on libuv's thread pool
 * and call back; calls that only read metadata (`lseek`, the size ioctls, `fadvise`)
 * are synchronous: a synchronous `lseek` costs a few microseconds, an asynchronous call
 * through the pool tens of them.
 *
 * {@link load} returns `undefined` where the binding is unavailable (not Linux, koffi
 * missing or failing to load, or `EFFECT_NBD_FILE_NATIVE=0` in the environment); the
 * file driver then works without them.
 *
 * @since 0.2.0
 */
import { createRequire } from "node:module"

/** `fallocate` modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01
/** Deallocates the range (always with {@link FALLOC_FL_KEEP_SIZE}). */
export const FALLOC_FL_PUNCH_HOLE = 0x02
/** Zeroes the range, leaving it allocated (unwritten extents where the file system has them). */
export const FALLOC_FL_ZERO_RANGE = 0x10

/** `posix_fadvise` advice values. */
export const Advice = { normal: 0, random: 1, sequential: 2, willneed: 3, dontneed: 4 } as const

/** Called with 0 on success or a negative errno. */
export type Done = (result: number) => void

/** The bound calls. */
export interface FileCalls {
  /** `fallocate(fd, mode, offset, length)` on the thread pool. */
  readonly fallocate: (fd: number, mode: number, offset: number, length: number, done: Done) => void
  /** The first offset at or after `offset` holding data; `-ENXIO` when there is none before the end. */
  readonly seekData: (fd: number, offset: number) => number
  /** The first offset at or after `offset` in a hole (the end of the file counts as one). */
  readonly seekHole: (fd: number, offset: number) => number
  /** Size in bytes of a block device (`BLKGETSIZE64`). */
  readonly deviceSize: (fd: number) => number
  /** Logical sector size of a block device (`BLKSSZGET`). */
  readonly sectorSize: (fd: number) => number
  /** Discards a range of a block device (`BLKDISCARD`), on the thread pool. */
  readonly discard: (fd: number, offset: number, length: number, done: Done) => void
  /** Zeroes a range of a block device (`BLKZEROOUT`), on the thread pool. */
  readonly zeroOut: (fd: number, offset: number, length: number, done: Done) => void
  /** `posix_fadvise(fd, offset, length, advice)` (it returns the error number itself). */
  readonly fadvise: (fd: number, offset: number, length: number, advice: number) => number
  /**
   * Reads into `buffer` at `offset` only as far as the page cache holds the data
   * (`preadv2` with `RWF_NOWAIT`): the bytes read (possibly fewer, 0 at the end of the
   * file), or a negative errno (`-EAGAIN` when nothing is cached, `-EOPNOTSUPP` where the
   * file system cannot tell).
   */
  readonly readCached: (fd: number, buffer: Uint8Array, offset: number) => number
  /** The address of a buffer's memory, for aligning `O_DIRECT` buffers. */
  readonly address: (buffer: ArrayBuffer | Uint8Array) => bigint
}

const SEEK_DATA = 3
const SEEK_HOLE = 4
const BLKGETSIZE64 = 0x80081272
const BLKSSZGET = 0x1268
const BLKDISCARD = 0x1277
const BLKZEROOUT = 0x127f
const RWF_NOWAIT = 0x08

type Koffi = typeof import("koffi")

/** What {@link load} found: the calls, or why they are unavailable. */
export type Loaded =
  | { readonly _tag: "Native"; readonly calls: FileCalls }
  | { readonly _tag: "Unavailable"; readonly reason: string }

const bind = (koffi: Koffi): FileCalls => {
  const libc = koffi.load("libc.so.6")
  const fallocate = libc.func("int fallocate(int fd, int mode, int64_t offset, int64_t len)")
  const lseek = libc.func("int64_t lseek(int fd, int64_t offset, int whence)")
  // ioctl is variadic; its third argument is passed as a pointer (same registers on Linux ABIs),
  // which lets the slow ones run asynchronously.
  const ioctl = libc.func("int ioctl(int fd, unsigned long request, void *arg)")
  const fadvise = libc.func("int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)")
  // The iovec is built by hand in a typed array (passed by address) pointing at the buffer's memory.
  const preadv2 = libc.func("int64_t preadv2(int fd, void *iov, int iovcnt, int64_t offset, int flags)")
  const iovec = new BigUint64Array(2)
  const errno = () => -koffi.errno()
  const async = (f: typeof ioctl, args: ReadonlyArray<unknown>, done: Done) =>
    f.async(...args, (error: unknown, result: number) => done(error ? -5 : result < 0 ? errno() : 0))
  const seek = (whence: number) => (fd: number, offset: number) => {
    const result = Number(lseek(fd, offset, whence))
    return result < 0 ? errno() : result
  }
  const range = (offset: number, length: number) => new BigUint64Array([BigInt(offset), BigInt(length)])
  return {
    fallocate: (fd, mode, offset, length, done) => async(fallocate, [fd, mode, offset, length], done),
    seekData: seek(SEEK_DATA),
    seekHole: seek(SEEK_HOLE),
    deviceSize: (fd) => {
      const out = new BigUint64Array(1)
      return ioctl(fd, BLKGETSIZE64, out) < 0 ? errno() : Number(out[0])
    },
    sectorSize: (fd) => {
      const out = new Int32Array(1)
      return ioctl(fd, BLKSSZGET, out) < 0 ? errno() : out[0]!
    },
    discard: (fd, offset, length, done) => async(ioctl, [fd, BLKDISCARD, range(offset, length)], done),
    zeroOut: (fd, offset, length, done) => async(ioctl, [fd, BLKZEROOUT, range(offset, length)], done),
    fadvise: (fd, offset, length, advice) => -fadvise(fd, offset, length, advice),
    readCached: (fd, buffer, offset) => {
      iovec[0] = koffi.address(buffer)
      iovec[1] = BigInt(buffer.length)
      const result = Number(preadv2(fd, iovec, 1, offset, RWF_NOWAIT))
      return result < 0 ? errno() : result
    },
    address: (buffer) => koffi.address(buffer)
  }
}

let loaded: Loaded | undefined

/** Binds the calls once (later calls return the same answer). */
export const load = (): Loaded => {
  if (loaded !== undefined) return loaded
  if (process.platform !== "linux") {
    loaded = { _tag: "Unavailable", reason: `not on Linux (${process.platform})` }
  } else if (process.env.EFFECT_NBD_FILE_NATIVE === "0") {
    loaded = { _tag: "Unavailable", reason: "EFFECT_NBD_FILE_NATIVE=0" }
  } else {
    try {
      const koffi = createRequire(import.meta.url)("koffi") as Koffi
      loaded = { _tag: "Native", calls: bind(koffi) }
    } catch (error) {
      loaded = { _tag: "Unavailable", reason: error instanceof Error ? error.message : String(error) }
    }
  }
  return loaded
}
