/**
 * The storage driver: the service an export reads from and writes to.
 *
 * A driver is an `NbdDriver` service. Build one with {@link make}, which fills every
 * optional operation with a sensible default, so that a minimal driver is `size`,
 * `read` and (for a writable one) `write`. I/O methods fail with {@link ProtocolError}
 * (its errno goes back to the client); {@link NbdDriverShape.open}, asked during
 * negotiation, fails with {@link OptionReplyError}.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { type OptionReplyError, type ProtocolError, protocolError } from "./Errors.ts"
import { AllocationState, DefaultBlockSize } from "./protocol/Constants.ts"

/** Block-size constraints of an export, in bytes. */
export interface BlockSize {
  /** Power of two, 1 to 65536: offsets and lengths are multiples of it. */
  readonly minimum: number
  /** Power of two, at least max(minimum, 512): the size clients should prefer. */
  readonly preferred: number
  /** Largest payload of a single READ or WRITE. */
  readonly maximum: number
}

/** One run of blocks of the same `base:allocation` state. */
export interface Extent {
  readonly length: number
  /** Bits of {@link AllocationState}: HOLE (not allocated), ZERO (reads as zeroes). */
  readonly flags: number
}

/** Options of a write. */
export interface WriteOptions {
  /** Forced unit access: the data is durable when the effect succeeds. */
  readonly fua: boolean
}

/** Options of a zeroing write. */
export interface ZeroOptions extends WriteOptions {
  /** The range must stay allocated (no hole may be punched). */
  readonly noHole: boolean
  /** Fail at once with ENOTSUP unless zeroing is faster than writing zeroes. */
  readonly fastZero: boolean
}

/** What a driver can do; the server advertises transmission flags from it. */
export interface Features {
  /** `flush` makes earlier writes durable (SEND_FLUSH). */
  readonly flush: boolean
  /** Writes honour `fua` themselves; otherwise the server follows a FUA write with a flush. */
  readonly fua: boolean
  /** `trim` may discard data (SEND_TRIM). */
  readonly trim: boolean
  /** `writeZeroes` is implemented natively (not by writing zero buffers). */
  readonly zero: boolean
  /** `writeZeroes` with `fastZero` can succeed (SEND_FAST_ZERO is always offered with zeroing). */
  readonly fastZero: boolean
  /** `cache` is offered (SEND_CACHE). */
  readonly cache: boolean
  /** `resize` is offered (SEND_RESIZE). */
  readonly resize: boolean
  /** State is shared by every connection and `flush` covers all of them (CAN_MULTI_CONN). */
  readonly multiConn: boolean
  /** The medium is rotational (a scheduling hint). */
  readonly rotational: boolean
  /** `blockStatus` reports real allocation (otherwise it reports everything as data). */
  readonly blockStatus: boolean
}

/** What a client asked for when it selected an export. */
export interface OpenRequest {
  readonly exportName: string
  readonly readOnly: boolean
}

/**
 * Synchronous versions of the hottest operations, for drivers whose storage is in
 * memory and cannot fail once a request passed the server's checks. The server uses
 * them for READ and WRITE instead of starting a fiber per request; they must behave
 * exactly like the Effect operations. A throw is a defect, answered EIO.
 *
 * `read` returns the bytes as pieces that may be views of the driver's storage (no
 * copy): they are queued for sending at once, and the spec leaves the result of a
 * write that overlaps an unanswered read undefined. A number stands for that many
 * zero bytes (a hole), which structured replies send as OFFSET_HOLE chunks. `write`
 * may be called once per received piece of a payload (never concatenated).
 */
export interface SyncOperations {
  readonly size: () => number
  readonly read: (offset: number, length: number) => ReadonlyArray<Uint8Array | number>
  readonly write: (offset: number, data: Uint8Array) => void
}

/** The operations of a storage driver. Offsets and lengths are byte counts. */
export interface NbdDriverShape {
  /** Name of the driver, for logs. */
  readonly name: string
  /** The driver cannot write: the export is read-only whatever the server is told. */
  readonly readOnly: boolean
  readonly blockSize: BlockSize
  readonly features: Features
  /** Canonical export name, sent as NBD_INFO_NAME when asked. */
  readonly canonicalName: Option.Option<string>
  /** Human-readable description, sent in LIST and NBD_INFO_DESCRIPTION. */
  readonly description: Option.Option<string>
  /** Asked when a client selects the export (INFO, GO, EXPORT_NAME); fail to refuse it. */
  readonly open: (request: OpenRequest) => Effect.Effect<void, OptionReplyError>
  /** Current size in bytes. */
  readonly size: Effect.Effect<number, ProtocolError>
  readonly read: (offset: number, length: number) => Effect.Effect<Uint8Array, ProtocolError>
  readonly write: (offset: number, data: Uint8Array, options: WriteOptions) => Effect.Effect<void, ProtocolError>
  readonly flush: Effect.Effect<void, ProtocolError>
  readonly trim: (offset: number, length: number, options: WriteOptions) => Effect.Effect<void, ProtocolError>
  readonly writeZeroes: (offset: number, length: number, options: ZeroOptions) => Effect.Effect<void, ProtocolError>
  readonly cache: (offset: number, length: number) => Effect.Effect<void, ProtocolError>
  /** Allocation of `[offset, offset + length)`: consecutive extents from `offset`, at least one. */
  readonly blockStatus: (offset: number, length: number) => Effect.Effect<ReadonlyArray<Extent>, ProtocolError>
  readonly resize: (size: number) => Effect.Effect<void, ProtocolError>
  /** Called when a client's session on the export ends. */
  readonly disconnect: Effect.Effect<void>
  /** Optional synchronous fast path (see {@link SyncOperations}). */
  readonly sync?: SyncOperations | undefined
}

/** The storage driver service. */
export class NbdDriver extends Context.Tag("effect-nbd/NbdDriver")<NbdDriver, NbdDriverShape>() {}

/** What {@link make} needs: `size` and `read`; everything else is optional. */
export type DriverOptions =
  & Pick<NbdDriverShape, "size" | "read">
  & Partial<Omit<NbdDriverShape, "size" | "read" | "features" | "blockSize">>
  & {
    readonly features?: Partial<Features> | undefined
    readonly blockSize?: Partial<BlockSize> | undefined
  }

const ZERO_CHUNK = 1024 * 1024

/**
 * Builds a driver, filling in what is left out:
 * - no `write`: read-only;
 * - no `flush`: FLUSH not offered, FUA not offered;
 * - no `trim`: TRIM not offered;
 * - no `writeZeroes`: zeroing done by writing zero buffers (never "fast");
 * - no `cache`: CACHE offered as a no-op hint;
 * - no `blockStatus`: the whole range reported as allocated data;
 * - no `resize`: RESIZE not offered.
 */
export const make = (options: DriverOptions): NbdDriverShape => {
  const write = options.write
  const readOnly = options.readOnly ?? write === undefined
  const writeOrFail: NbdDriverShape["write"] = write ??
    (() => Effect.fail(protocolError("EPERM", "the export is read-only")))
  const writeZeroes: NbdDriverShape["writeZeroes"] = options.writeZeroes ??
    ((offset, length, zeroOptions) =>
      zeroOptions.fastZero
        ? Effect.fail(protocolError("ENOTSUP", "zeroing is not faster than writing"))
        : Effect.gen(function*() {
          const zeroes = new Uint8Array(Math.min(length, ZERO_CHUNK))
          for (let done = 0; done < length; done += zeroes.length) {
            const n = Math.min(zeroes.length, length - done)
            yield* writeOrFail(offset + done, zeroes.subarray(0, n), zeroOptions)
          }
        }))
  const features: Features = {
    flush: options.flush !== undefined,
    fua: false,
    trim: options.trim !== undefined,
    zero: options.writeZeroes !== undefined,
    fastZero: false,
    cache: true,
    resize: options.resize !== undefined,
    multiConn: false,
    rotational: false,
    blockStatus: options.blockStatus !== undefined,
    ...options.features
  }
  return {
    name: options.name ?? "custom",
    readOnly,
    blockSize: { ...DefaultBlockSize, ...options.blockSize },
    features,
    canonicalName: options.canonicalName ?? Option.none(),
    description: options.description ?? Option.none(),
    open: options.open ?? (() => Effect.void),
    size: options.size,
    read: options.read,
    write: writeOrFail,
    flush: options.flush ?? Effect.fail(protocolError("EINVAL", "flush is not supported")),
    trim: options.trim ?? (() => Effect.fail(protocolError("EINVAL", "trim is not supported"))),
    writeZeroes,
    cache: options.cache ?? (() => Effect.void),
    blockStatus: options.blockStatus ?? ((_, length) => Effect.succeed([{ length, flags: 0 }])),
    resize: options.resize ?? (() => Effect.fail(protocolError("EINVAL", "resize is not supported"))),
    disconnect: options.disconnect ?? Effect.void,
    sync: options.sync
  }
}

/** `AllocationState` flags of a range that is unallocated and reads as zeroes. */
export const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO
