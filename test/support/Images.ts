/**
 * Partitioned disk images for end-to-end tests: a sparse image file partitioned by
 * util-linux's `sfdisk` (MBR or GPT), each partition then filled with its own bytes at
 * the offsets `sfdisk` reports, so a test can compare what a client reads through the
 * `partition` filter with the partition's bytes in the file.
 */
import { execFileSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"

/** sfdisk works on 512-byte sectors for image files. */
export const SECTOR = 512

/** A partition to create: start and size in sectors. */
export interface PartitionRequest {
  readonly start: number
  readonly size: number
}

/** A partition as sfdisk reports it, in bytes, with the bytes written into it. */
export interface Partition {
  /** 1-based partition number (sfdisk's order, which is the `partition` filter's numbering here). */
  readonly number: number
  readonly offset: number
  readonly length: number
  readonly content: Buffer
}

interface SfdiskJson {
  readonly partitiontable: {
    readonly label: string
    readonly sectorsize?: number
    readonly partitions: ReadonlyArray<{ readonly node: string; readonly start: number; readonly size: number }>
  }
}

/** `sfdisk`, which Debian installs in /usr/sbin (not always on a user's PATH). */
export const sfdiskCommand = (): string => {
  for (const candidate of ["/usr/sbin/sfdisk", "/sbin/sfdisk"]) if (fs.existsSync(candidate)) return candidate
  return "sfdisk"
}

/**
 * Creates `file` (`size` bytes, sparse), writes an MBR (`dos`) or GPT partition table
 * with `partitions` by sfdisk, and fills every partition with random bytes. Returns the
 * partitions as sfdisk reads them back from the image.
 */
export const makePartitionedImage = (
  file: string,
  label: "dos" | "gpt",
  size: number,
  partitions: ReadonlyArray<PartitionRequest>
): Array<Partition> => {
  fs.writeFileSync(file, "")
  fs.truncateSync(file, size)
  const script = [
    `label: ${label}`,
    ...partitions.map((p) => `start=${p.start}, size=${p.size}${label === "dos" ? ", type=83" : ""}`)
  ].join("\n") + "\n"
  execFileSync(sfdiskCommand(), ["--quiet", "--no-reread", "--no-tell-kernel", file], { input: script, stdio: ["pipe", "ignore", "pipe"] })

  const table = (JSON.parse(execFileSync(sfdiskCommand(), ["--json", file], { encoding: "utf8" })) as SfdiskJson)
    .partitiontable
  if (table.label !== label) throw new Error(`sfdisk wrote a '${table.label}' table, not '${label}'`)
  const sector = table.sectorsize ?? SECTOR
  if (table.partitions.length !== partitions.length) {
    throw new Error(`sfdisk reports ${table.partitions.length} partitions, expected ${partitions.length}`)
  }

  const fd = fs.openSync(file, "r+")
  try {
    return table.partitions.map((p, i) => {
      const content = randomBytes(p.size * sector)
      const offset = p.start * sector
      fs.writeSync(fd, content, 0, content.length, offset)
      return { number: i + 1, offset, length: content.length, content }
    })
  } finally {
    fs.closeSync(fd)
  }
}
