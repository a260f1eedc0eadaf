/**
 * MBR and GPT partition tables, read the way the `partition` filter numbers partitions
 * (512-byte sectors):
 * - MBR: partitions 1-4 are the primary entries; 5 and up are the logical partitions
 *   of the extended partition, in the order of its chain of extended boot records
 *   (an EBR whose first entry is empty holds no partition and gets no number).
 * - GPT (the MBR holds a protective entry of type 0xEE): partition N is entry N of the
 *   partition entry array; an unused entry (type GUID all zeroes) is not a partition.
 *
 * The parsers are pure functions over the bytes of one sector or entry; {@link find}
 * walks a disk through a reader so the filter reads only the sectors it needs.
 * CRCs of the GPT header and entries are not checked (as nbdkit).
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"

/** Bytes in a sector. */
export const SECTOR_SIZE = 512

/** Partition-type bytes of MBR entries that hold an extended partition (CHS, LBA, Linux). */
export const EXTENDED_TYPES: ReadonlyArray<number> = [0x05, 0x0f, 0x85]

/** Partition-type byte of the protective MBR entry of a GPT disk. */
export const GPT_PROTECTIVE = 0xee

/** Most EBRs followed in a chain (guards against a looping chain). */
const MAX_LOGICAL = 1024

/** A partition as a byte range of the disk. */
export interface Partition {
  readonly offset: number
  readonly length: number
}

/** One 16-byte MBR (or EBR) entry; `start` and `sectors` count sectors. */
export interface MbrEntry {
  readonly type: number
  readonly start: number
  readonly sectors: number
}

/** The GPT header fields the lookup needs. */
export interface GptHeader {
  /** First sector of the partition entry array. */
  readonly entriesLba: number
  readonly entryCount: number
  readonly entrySize: number
}

/** A used GPT entry; sectors are inclusive at both ends. */
export interface GptEntry {
  readonly firstLba: number
  readonly lastLba: number
}

/** Why a partition could not be found. */
export class PartitionTableError extends Data.TaggedError("PartitionTableError")<{
  readonly reason: "NoTable" | "Malformed" | "NotFound"
  readonly message: string
}> {}

const error = (reason: PartitionTableError["reason"], message: string) => new PartitionTableError({ reason, message })

const view = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/** A little-endian 64-bit sector number, if it is a safe byte offset once multiplied by the sector size. */
const lba64 = (bytes: Uint8Array, at: number): number | undefined => {
  const value = view(bytes).getBigUint64(at, true)
  return value <= BigInt(Math.floor(Number.MAX_SAFE_INTEGER / SECTOR_SIZE)) ? Number(value) : undefined
}

/** The sector ends with the boot signature 0x55 0xAA. */
export const hasBootSignature = (sector: Uint8Array): boolean =>
  sector.length >= SECTOR_SIZE && sector[510] === 0x55 && sector[511] === 0xaa

/** The four entries of an MBR or EBR sector (empty ones included, type 0). */
export const parseMbr = (sector: Uint8Array): Either.Either<ReadonlyArray<MbrEntry>, PartitionTableError> => {
  if (!hasBootSignature(sector)) return Either.left(error("NoTable", "no MBR boot signature (0x55AA)"))
  const data = view(sector)
  const entries: Array<MbrEntry> = []
  for (let i = 0; i < 4; i++) {
    const at = 0x1be + 16 * i
    entries.push({ type: sector[at + 4]!, start: data.getUint32(at + 8, true), sectors: data.getUint32(at + 12, true) })
  }
  return Either.right(entries)
}

/** The entry is empty. */
export const isUnused = (entry: MbrEntry): boolean => entry.type === 0 || entry.sectors === 0

/** The entry holds an extended partition. */
export const isExtended = (entry: MbrEntry): boolean => EXTENDED_TYPES.includes(entry.type)

/** The MBR protects a GPT. */
export const isProtective = (entries: ReadonlyArray<MbrEntry>): boolean =>
  entries.some((entry) => entry.type === GPT_PROTECTIVE)

/** Parses the GPT header sector (LBA 1). */
export const parseGptHeader = (sector: Uint8Array): Either.Either<GptHeader, PartitionTableError> => {
  if (sector.length < 92 || new TextDecoder().decode(sector.subarray(0, 8)) !== "EFI PART") {
    return Either.left(error("Malformed", "protective MBR but no GPT header signature 'EFI PART' at LBA 1"))
  }
  const data = view(sector)
  const headerSize = data.getUint32(12, true)
  const entriesLba = lba64(sector, 72)
  const entryCount = data.getUint32(80, true)
  const entrySize = data.getUint32(84, true)
  if (headerSize < 92 || headerSize > SECTOR_SIZE) return Either.left(error("Malformed", `GPT header size ${headerSize}`))
  if (entriesLba === undefined || entriesLba < 2) return Either.left(error("Malformed", "GPT entry array LBA out of range"))
  if (entrySize < 128 || entrySize % 8 !== 0) return Either.left(error("Malformed", `GPT entry size ${entrySize}`))
  return Either.right({ entriesLba, entryCount, entrySize })
}

/** Parses one GPT entry: `undefined` when the entry is unused (type GUID all zeroes). */
export const parseGptEntry = (bytes: Uint8Array): Either.Either<GptEntry | undefined, PartitionTableError> => {
  if (bytes.length < 128) return Either.left(error("Malformed", "GPT entry shorter than 128 bytes"))
  if (bytes.subarray(0, 16).every((b) => b === 0)) return Either.right(undefined)
  const firstLba = lba64(bytes, 32)
  const lastLba = lba64(bytes, 40)
  if (firstLba === undefined || lastLba === undefined || lastLba < firstLba) {
    return Either.left(error("Malformed", "GPT entry with an invalid sector range"))
  }
  return Either.right({ firstLba, lastLba })
}

/** Reads `length` bytes at `offset` of the disk. */
export type Reader<E> = (offset: number, length: number) => Effect.Effect<Uint8Array, E>

/** The partition as bytes, checked to lie within the disk. */
const within = (n: number, startLba: number, sectors: number, diskSize: number) => {
  const offset = startLba * SECTOR_SIZE
  const length = sectors * SECTOR_SIZE
  return offset + length > diskSize
    ? Effect.fail(error("Malformed", `partition ${n} ends beyond the end of the disk (${diskSize} bytes)`))
    : Effect.succeed<Partition>({ offset, length })
}

/** Reads `length` bytes at `offset`, failing as malformed when they lie beyond the disk. */
const readIn = <E>(
  read: Reader<E>,
  diskSize: number,
  offset: number,
  length: number,
  what: string
): Effect.Effect<Uint8Array, E | PartitionTableError> =>
  offset + length > diskSize
    ? Effect.fail(error("Malformed", `${what} lies beyond the end of the disk`))
    : read(offset, length)

/** Partition `n` of a GPT disk. */
const findGpt = <E>(n: number, diskSize: number, read: Reader<E>) =>
  Effect.gen(function*() {
    const header = yield* Effect.flatMap(readIn(read, diskSize, SECTOR_SIZE, SECTOR_SIZE, "the GPT header"), parseGptHeader)
    if (n > header.entryCount) {
      return yield* error("NotFound", `partition ${n} does not exist (the GPT has ${header.entryCount} entries)`)
    }
    const at = header.entriesLba * SECTOR_SIZE + (n - 1) * header.entrySize
    const entry = yield* Effect.flatMap(readIn(read, diskSize, at, 128, `GPT entry ${n}`), parseGptEntry)
    if (entry === undefined) return yield* error("NotFound", `partition ${n} is unused (GPT entry ${n} is empty)`)
    return yield* within(n, entry.firstLba, entry.lastLba - entry.firstLba + 1, diskSize)
  })

/** Logical partition `n` (5 and up) in the EBR chain of `extended`. */
const findLogical = <E>(n: number, extended: MbrEntry, diskSize: number, read: Reader<E>) =>
  Effect.gen(function*() {
    let ebr = extended.start
    let number = 4
    for (let step = 0; step < MAX_LOGICAL; step++) {
      const sector = yield* readIn(read, diskSize, ebr * SECTOR_SIZE, SECTOR_SIZE, `the EBR at sector ${ebr}`)
      const [data, link] = yield* Either.mapLeft(
        parseMbr(sector),
        () => error("Malformed", `no boot signature in the EBR at sector ${ebr}`)
      )
      if (!isUnused(data!)) {
        number++
        if (number === n) return yield* within(n, ebr + data!.start, data!.sectors, diskSize)
      }
      if (isUnused(link!)) break
      const next = extended.start + link!.start
      if (next <= ebr) return yield* error("Malformed", `the EBR chain goes back from sector ${ebr} to ${next}`)
      ebr = next
    }
    return yield* error("NotFound", `partition ${n} does not exist (the disk has ${number - 4} logical partitions)`)
  })

/** Partition `n` of an MBR disk with primary entries `entries`. */
const findMbr = <E>(n: number, entries: ReadonlyArray<MbrEntry>, diskSize: number, read: Reader<E>) => {
  if (n > 4) {
    const extended = entries.find(isExtended)
    return extended === undefined
      ? Effect.fail(error("NotFound", `partition ${n} does not exist (the MBR has no extended partition)`))
      : findLogical(n, extended, diskSize, read)
  }
  const entry = entries[n - 1]!
  if (isUnused(entry)) return Effect.fail(error("NotFound", `partition ${n} is unused`))
  if (isExtended(entry)) {
    return Effect.fail(error("NotFound", `partition ${n} is the extended partition (its logical ones are 5 and up)`))
  }
  return within(n, entry.start, entry.sectors, diskSize)
}

/** Finds partition `n` (1-based) of a disk of `diskSize` bytes read through `read`. */
export const find = <E>(
  n: number,
  diskSize: number,
  read: Reader<E>
): Effect.Effect<Partition, PartitionTableError | E> =>
  Effect.gen(function*() {
    if (!Number.isSafeInteger(n) || n < 1) return yield* error("NotFound", `partition ${n}: numbers start at 1`)
    if (diskSize < SECTOR_SIZE) return yield* error("NoTable", `the disk (${diskSize} bytes) is smaller than a sector`)
    const entries = yield* Effect.flatMap(read(0, SECTOR_SIZE), parseMbr)
    return yield* isProtective(entries) ? findGpt(n, diskSize, read) : findMbr(n, entries, diskSize, read)
  })

/** Finds partition `n` of a whole disk image held in memory. */
export const findIn = (disk: Uint8Array, n: number): Either.Either<Partition, PartitionTableError> =>
  Effect.runSync(Effect.either(find(n, disk.length, (offset, length) => Effect.succeed(disk.subarray(offset, offset + length)))))
