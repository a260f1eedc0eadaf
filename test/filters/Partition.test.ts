import { afterAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { protocolError } from "../../src/Errors.ts"
import * as Partition from "../../src/filters/Partition.ts"
import * as PartitionTable from "../../src/filters/PartitionTable.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

const SECTOR = PartitionTable.SECTOR_SIZE

// ---- hand-built tables ------------------------------------------------------------

/** Fills MBR entry `i` (0-3) of the sector at byte `at` of `disk`, and signs the sector. */
const mbrEntry = (disk: Uint8Array, at: number, i: number, type: number, start: number, sectors: number) => {
  const view = new DataView(disk.buffer, disk.byteOffset + at)
  const entry = 0x1be + 16 * i
  disk[at + entry + 4] = type
  view.setUint32(entry + 8, start, true)
  view.setUint32(entry + 12, sectors, true)
  disk[at + 510] = 0x55
  disk[at + 511] = 0xaa
}

/**
 * A 4 MiB MBR disk: 1 = Linux at 64 (100 sectors), 2 = extended at 1000 (4000 sectors),
 * 3 unused, 4 = NTFS at 6000 (2000 sectors); logical 5 at 1010 (50), 6 at 1520 (200).
 */
const mbrDisk = () => {
  const disk = new Uint8Array(8192 * SECTOR)
  mbrEntry(disk, 0, 0, 0x83, 64, 100)
  mbrEntry(disk, 0, 1, 0x05, 1000, 4000)
  mbrEntry(disk, 0, 3, 0x07, 6000, 2000)
  mbrEntry(disk, 1000 * SECTOR, 0, 0x83, 10, 50) // relative to its EBR
  mbrEntry(disk, 1000 * SECTOR, 1, 0x05, 500, 300) // next EBR, relative to the extended partition
  mbrEntry(disk, 1500 * SECTOR, 0, 0x83, 20, 200)
  return disk
}

/** A GUID-sized run of bytes, all `b`. */
const guid = (b: number) => new Uint8Array(16).fill(b)

/**
 * A 1 MiB GPT disk with `count` entries of `entrySize` bytes at LBA 2: entry 1 = sectors
 * 34-133, entry 2 unused, entry 3 = 200-299, entry 4 = 300-5000 (beyond the disk).
 */
const gptDisk = (entrySize = 128, count = 4) => {
  const disk = new Uint8Array(2048 * SECTOR)
  mbrEntry(disk, 0, 0, PartitionTable.GPT_PROTECTIVE, 1, 2047)
  const header = new DataView(disk.buffer, SECTOR, SECTOR)
  disk.set(new TextEncoder().encode("EFI PART"), SECTOR)
  header.setUint32(8, 0x00010000, true)
  header.setUint32(12, 92, true)
  header.setBigUint64(24, 1n, true)
  header.setBigUint64(72, 2n, true)
  header.setUint32(80, count, true)
  header.setUint32(84, entrySize, true)
  const entry = (n: number, first: number, last: number) => {
    const at = 2 * SECTOR + (n - 1) * entrySize
    disk.set(guid(0xaf), at)
    disk.set(guid(n), at + 16)
    const view = new DataView(disk.buffer, at)
    view.setBigUint64(32, BigInt(first), true)
    view.setBigUint64(40, BigInt(last), true)
  }
  entry(1, 34, 133)
  entry(3, 200, 299)
  entry(4, 300, 5000)
  return disk
}

const found = (disk: Uint8Array, n: number) => Either.getOrThrow(PartitionTable.findIn(disk, n))

/** The reason and message of a failed lookup. */
const failure = (disk: Uint8Array, n: number) => {
  const result = PartitionTable.findIn(disk, n)
  if (Either.isRight(result)) return expect.fail(`partition ${n} was found at ${JSON.stringify(result.right)}`)
  return { reason: result.left.reason, message: result.left.message }
}

describe("partition tables", () => {
  it("parses the four MBR entries and needs the boot signature", () => {
    const disk = mbrDisk()
    expect(Either.getOrThrow(PartitionTable.parseMbr(disk.subarray(0, SECTOR)))).toEqual([
      { type: 0x83, start: 64, sectors: 100 },
      { type: 0x05, start: 1000, sectors: 4000 },
      { type: 0, start: 0, sectors: 0 },
      { type: 0x07, start: 6000, sectors: 2000 }
    ])
    expect(PartitionTable.parseMbr(new Uint8Array(SECTOR)).pipe(Either.isLeft)).toBe(true)
  })

  it("finds primary and logical MBR partitions", () => {
    const disk = mbrDisk()
    expect(found(disk, 1)).toEqual({ offset: 64 * SECTOR, length: 100 * SECTOR })
    expect(found(disk, 4)).toEqual({ offset: 6000 * SECTOR, length: 2000 * SECTOR })
    expect(found(disk, 5)).toEqual({ offset: 1010 * SECTOR, length: 50 * SECTOR })
    expect(found(disk, 6)).toEqual({ offset: 1520 * SECTOR, length: 200 * SECTOR })
  })

  it("reports MBR partitions that are unused, extended or absent", () => {
    const disk = mbrDisk()
    expect(failure(disk, 2)).toEqual({ reason: "NotFound", message: expect.stringContaining("extended partition") })
    expect(failure(disk, 3)).toEqual({ reason: "NotFound", message: "partition 3 is unused" })
    expect(failure(disk, 7)).toEqual({ reason: "NotFound", message: expect.stringContaining("2 logical partitions") })
    expect(failure(disk, 0).reason).toBe("NotFound")
    const noExtended = mbrDisk()
    noExtended.fill(0, 0x1be + 16, 0x1be + 32)
    expect(failure(noExtended, 5).message).toContain("no extended partition")
  })

  it("refuses blank disks, looping or unsigned EBR chains and partitions beyond the disk", () => {
    expect(failure(new Uint8Array(8192), 1).reason).toBe("NoTable")
    expect(failure(new Uint8Array(100), 1).reason).toBe("NoTable")
    const looping = mbrDisk()
    mbrEntry(looping, 1500 * SECTOR, 1, 0x05, 0, 300) // back to the first EBR
    expect(failure(looping, 7)).toEqual({ reason: "Malformed", message: expect.stringContaining("goes back") })
    const unsigned = mbrDisk()
    unsigned[1500 * SECTOR + 511] = 0
    expect(failure(unsigned, 6)).toEqual({ reason: "Malformed", message: expect.stringContaining("EBR at sector 1500") })
    expect(found(unsigned, 5).offset).toBe(1010 * SECTOR) // the chain is read only as far as needed
    const tooLong = mbrDisk()
    mbrEntry(tooLong, 0, 0, 0x83, 64, 9000)
    expect(failure(tooLong, 1)).toEqual({ reason: "Malformed", message: expect.stringContaining("beyond the end") })
  })

  it("parses a GPT header and entries", () => {
    const disk = gptDisk()
    expect(Either.getOrThrow(PartitionTable.parseGptHeader(disk.subarray(SECTOR, 2 * SECTOR)))).toEqual({
      entriesLba: 2,
      entryCount: 4,
      entrySize: 128
    })
    expect(Either.getOrThrow(PartitionTable.parseGptEntry(disk.subarray(2 * SECTOR, 2 * SECTOR + 128)))).toEqual({
      firstLba: 34,
      lastLba: 133
    })
    expect(Either.getOrThrow(PartitionTable.parseGptEntry(disk.subarray(2 * SECTOR + 128, 2 * SECTOR + 256)))).toBe(
      undefined
    )
  })

  it("finds GPT partition N as entry N; unused, absent and out-of-disk entries fail", () => {
    for (const entrySize of [128, 256]) {
      const disk = gptDisk(entrySize)
      expect(found(disk, 1)).toEqual({ offset: 34 * SECTOR, length: 100 * SECTOR })
      expect(found(disk, 3)).toEqual({ offset: 200 * SECTOR, length: 100 * SECTOR })
      expect(failure(disk, 2)).toEqual({ reason: "NotFound", message: expect.stringContaining("unused") })
      expect(failure(disk, 4)).toEqual({ reason: "Malformed", message: expect.stringContaining("beyond the end") })
      expect(failure(disk, 5)).toEqual({ reason: "NotFound", message: expect.stringContaining("4 entries") })
    }
  })

  it("refuses a protective MBR without a valid GPT header", () => {
    const unsigned = gptDisk()
    unsigned[SECTOR] = 0x65
    expect(failure(unsigned, 1)).toEqual({ reason: "Malformed", message: expect.stringContaining("EFI PART") })
    const badEntrySize = gptDisk(100)
    expect(failure(badEntrySize, 1)).toEqual({ reason: "Malformed", message: "GPT entry size 100" })
    const inverted = gptDisk()
    new DataView(inverted.buffer).setBigUint64(2 * SECTOR + 40, 10n, true) // last before first
    expect(failure(inverted, 1).message).toContain("invalid sector range")
  })
})

// ---- the filter ---------------------------------------------------------------------

/** A memory driver holding `image`. */
const memoryWith = (image: Uint8Array) => {
  const store = new MemoryDriver.SparseMemory(image.length)
  store.write(0, image)
  return { store, driver: MemoryDriver.fromStore(store) }
}

/** A driver below that accepts only 4096-aligned requests of at most 64K; misaligned ones are recorded and fail. */
const strict4k = (below: Driver.NbdDriverShape, violations: Array<string>) =>
  Driver.filter(below, {
    name: "strict4k",
    open: (handle) => ({
      capabilities: (caps) => ({ ...caps, blockSize: { minimum: 4096, preferred: 4096, maximum: 65536 } }),
      read: (offset, length) => {
        if (offset % 4096 !== 0 || length % 4096 !== 0 || length > 65536) {
          violations.push(`read ${offset}+${length}`)
          return Effect.fail(protocolError("EINVAL", "misaligned"))
        }
        return handle.read(offset, length)
      }
    })
  })

const openPartition = (driver: Driver.NbdDriverShape, partition: number) =>
  Effect.flatMap(Partition.make({ partition })(driver), (d) => Testing.open(d))

/** Writes through the partition and checks the bytes land at its offset below, and read back. */
const checkWindow = (image: Uint8Array, n: number, expected: PartitionTable.Partition) =>
  Effect.gen(function*() {
    const { driver, store } = memoryWith(image)
    const handle = yield* openPartition(driver, n)
    expect(yield* handle.size).toBe(expected.length)
    const data = pattern(3000, n)
    yield* handle.write(expected.length - 3000, data, { fua: false })
    yield* handle.write(0, data, { fua: false })
    expectBytes(store.read(expected.offset, 3000), data, "start of the partition below")
    expectBytes(store.read(expected.offset + expected.length - 3000, 3000), data, "end of the partition below")
    expectBytes(yield* handle.read(expected.length - 3000, 3000), data, "read back")
    expect(handle.sync).toBeDefined()
    expect(handle.capabilities.resize).toBe(false)
  })

describe("partition filter over hand-built tables", () => {
  it.scoped("serves primary, logical and GPT partitions at their offsets", () =>
    Effect.gen(function*() {
      yield* checkWindow(mbrDisk(), 1, { offset: 64 * SECTOR, length: 100 * SECTOR })
      yield* checkWindow(mbrDisk(), 6, { offset: 1520 * SECTOR, length: 200 * SECTOR })
      yield* checkWindow(gptDisk(), 3, { offset: 200 * SECTOR, length: 100 * SECTOR })
    }))

  it.scoped("refuses absent partitions with UNKNOWN and unreadable tables with INVALID", () =>
    Effect.gen(function*() {
      const unused = yield* Effect.flip(openPartition(memoryWith(mbrDisk()).driver, 3))
      expect([unused.reply, unused.message]).toEqual(["UNKNOWN", "partition: partition 3 is unused"])
      const gpt2 = yield* Effect.flip(openPartition(memoryWith(gptDisk()).driver, 2))
      expect(gpt2.reply).toBe("UNKNOWN")
      const blank = yield* Effect.flip(openPartition(memoryWith(new Uint8Array(65536)).driver, 1))
      expect(blank.reply).toBe("INVALID")
      expect(blank.message).toContain("no MBR boot signature")
      const failing = Driver.make({ size: Effect.succeed(1 << 20), read: () => Effect.fail(protocolError("EIO", "dead disk")) })
      const unreadable = yield* Effect.flip(openPartition(failing, 1))
      expect([unreadable.reply, unreadable.message]).toEqual(["INVALID", "partition: cannot read the partition table: dead disk"])
    }))

  it.scoped("reads the table in requests aligned to the block size below, and refuses misaligned partitions", () =>
    Effect.gen(function*() {
      const violations: Array<string> = []
      const disk = mbrDisk()
      mbrEntry(disk, 0, 0, 0x83, 4096 / SECTOR * 2, 16) // partition 1 at 8 KiB: aligned
      const handle = yield* openPartition(strict4k(memoryWith(disk).driver, violations), 1)
      expect(yield* handle.size).toBe(16 * SECTOR)
      const logical = yield* Effect.flip(openPartition(strict4k(memoryWith(disk).driver, violations), 5))
      expect(logical.reply).toBe("INVALID") // sector 1010 is not 4 KiB-aligned
      expect(logical.message).toContain("multiple of the minimum block size 4096")
      expect(violations).toEqual([])
    }))
})

// ---- images made by sfdisk ----------------------------------------------------------

const sfdisk = ["/usr/sbin/sfdisk", "/sbin/sfdisk", ...(process.env.PATH ?? "").split(":").map((dir) => path.join(dir, "sfdisk"))]
  .find((candidate) => fs.existsSync(candidate))
if (sfdisk === undefined) {
  const message = "sfdisk not found (apt-get install fdisk)"
  if (process.env.CI) throw new Error(message)
  console.warn(`skipping sfdisk partition tests: ${message}`)
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-partition-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** An 8 MiB image partitioned by sfdisk from `script` (lines may name partition N as `DEV N :`). */
const sfdiskImage = (name: string, script: (device: string) => string): Uint8Array => {
  const file = path.join(dir, name)
  fs.writeFileSync(file, Buffer.alloc(0))
  fs.truncateSync(file, 8 * 1024 * 1024)
  execFileSync(sfdisk!, ["-q", "--no-reread", "--no-tell-kernel", file], { input: script(file), stdio: ["pipe", "ignore", "pipe"] })
  return new Uint8Array(fs.readFileSync(file))
}

const MiB = 1024 * 1024

describe.skipIf(sfdisk === undefined)("partition filter over sfdisk images", () => {
  it.scoped("MBR: a primary and two logical partitions; the extended one and absent ones are refused", () =>
    Effect.gen(function*() {
      const image = sfdiskImage("mbr.img", () =>
        [
          "label: dos",
          "start=2048, size=2048, type=83",
          "start=4096, size=8192, type=5",
          "start=6144, size=2048, type=83",
          "start=10240, size=1024, type=83"
        ].join("\n"))
      yield* checkWindow(image, 1, { offset: 1 * MiB, length: 1 * MiB })
      yield* checkWindow(image, 5, { offset: 3 * MiB, length: 1 * MiB })
      yield* checkWindow(image, 6, { offset: 5 * MiB, length: MiB / 2 })
      for (const n of [2, 3, 7]) {
        const refused = yield* Effect.flip(openPartition(memoryWith(image).driver, n))
        expect(refused.reply).toBe("UNKNOWN")
      }
      // The pure lookup agrees, and logical partitions also open over a 4K-only driver.
      expect(found(image, 5)).toEqual({ offset: 3 * MiB, length: 1 * MiB })
      const violations: Array<string> = []
      const handle = yield* openPartition(strict4k(memoryWith(image).driver, violations), 6)
      expect(yield* handle.size).toBe(MiB / 2)
      expect(violations).toEqual([])
    }))

  it.scoped("GPT: entries 1 and 3 used, entry 2 unused", () =>
    Effect.gen(function*() {
      const image = sfdiskImage("gpt.img", (device) =>
        [
          "label: gpt",
          `${device}1 : start=2048, size=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4`,
          `${device}3 : start=8192, size=1024, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4`
        ].join("\n"))
      yield* checkWindow(image, 1, { offset: 1 * MiB, length: 1 * MiB })
      yield* checkWindow(image, 3, { offset: 4 * MiB, length: MiB / 2 })
      const unused = yield* Effect.flip(openPartition(memoryWith(image).driver, 2))
      expect([unused.reply, unused.message]).toEqual(["UNKNOWN", "partition: partition 2 is unused (GPT entry 2 is empty)"])
      const absent = yield* Effect.flip(openPartition(memoryWith(image).driver, 129))
      expect(absent.message).toContain("the GPT has 128 entries")
    }))
})

describe("partition plugin", () => {
  it.scoped("parses partition=N", () =>
    Effect.gen(function*() {
      const filter = Either.getOrThrow(Partition.plugin.make(new Map([["partition", "6"]])))
      const driver = yield* filter(memoryWith(mbrDisk()).driver)
      expect(driver.name).toBe("partition+memory")
      expect(yield* (yield* Testing.open(driver)).size).toBe(200 * SECTOR)
    }))

  it("requires partition, a whole number from 1, and refuses unknown parameters naming the accepted ones", () => {
    const message = (pairs: ReadonlyArray<[string, string]>) => {
      const result = Partition.plugin.make(new Map(pairs))
      return Either.isLeft(result) ? `${result.left._tag}: ${result.left.message}` : "accepted"
    }
    expect(message([])).toBe("ParameterError: partition: parameter 'partition' is required")
    expect(message([["partition", "0"]])).toContain("at least 1")
    expect(message([["partition", "1.5"]])).toContain("whole number")
    expect(message([["partition", "1"], ["part", "2"]])).toBe(
      "ParameterError: partition: unknown parameter 'part' (accepted: partition)"
    )
  })
})
