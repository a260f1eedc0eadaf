/**
 * READ payloads of the file driver sent straight from the page cache to the client's
 * socket with `sendfile`: the kernel hands the cached pages to the socket, so the bytes
 * are not copied into the process and out again (the server's `DirectRead`).
 *
 * For a file held in memory (tmpfs, ramfs) every read can go this way. For a file on a
 * disk, `sendfile` would wait for the disk where a page is not cached, on the event loop;
 * so a range is sent only when `cachestat` finds all of its pages in the page cache
 * (`ready`, asked before the reply's header goes out), and the server reads the others
 * as before (`preadv2` with `RWF_NOWAIT`, then the thread pool). Between that check and
 * the send a page may be evicted, and that one read then waits for the disk on the event
 * loop: a narrow race, taken for the copy saved on every other read. Without `cachestat` (Linux before 6.5) a file on a disk gets no direct reads.
 *
 * What the socket does not take at once (its buffer is full) is read into a buffer
 * synchronously and queued (`readRest`).
 *
 * @since 0.2.0
 */
import type { DirectRead } from "../Driver.ts"
import type { FileCalls } from "./FileCalls.ts"
import { readNowInto } from "./FileIo.ts"

/**
 * Direct reads of `fd`: every range (`inMemory`), or only ranges the page cache holds
 * whole; `undefined` where the kernel cannot tell the latter.
 */
export const make = (calls: FileCalls, fd: number, inMemory: boolean): DirectRead | undefined => {
  const readRest = (offset: number, target: Uint8Array) => readNowInto(fd, offset, target)
  if (inMemory) return { sendTo: (socket, offset, length) => calls.sendFile(socket, fd, offset, length), readRest }
  const page = calls.pageSize
  if (!(page > 0) || calls.cachedPages(fd, 0, page) < 0) return undefined
  return {
    sendTo: (socket, offset, length) => calls.sendFile(socket, fd, offset, length),
    readRest,
    ready: (offset, length) =>
      calls.cachedPages(fd, offset, length) >= Math.ceil((offset + length) / page) - Math.floor(offset / page)
  }
}
