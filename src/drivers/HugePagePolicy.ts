/**
 * Whether new memory is to be asked for in huge pages, decided from what touching it first
 * has cost in each way.
 *
 * Which is faster depends on the machine, and on a virtual machine on the state of its
 * host. Measured on two virtual machines of the same kind: on one, 1 GiB of first writes
 * ran at about 650 MiB/s in huge pages and 200 MiB/s without. On the other, which hands
 * memory it frees back to its host (virtio-balloon free page reporting, in blocks of 2 MiB
 * and more), a huge page comes from such a block and the host backs it again 4 KiB at a time
 * on its first touch: 470 MiB/s in huge pages and 3,100 MiB/s in 4 KiB pages, which come
 * from smaller free blocks the guest kept. So each way is tried and timed, and the faster is
 * taken, and tried again now and then.
 *
 * Memory is decided in extents (the stretches the heap grows by). The first extent is
 * advised huge, the next one not, and each later one takes the way that cost fewer
 * nanoseconds per byte in the last extent measured with it; every `retryEvery`th extent
 * takes the other way, so that a change of conditions is seen (a guest's small free blocks
 * run out as it fills, for one).
 *
 * @since 0.2.0
 */

/** The two ways: memory advised to be backed by huge pages, or left in 4 KiB pages. */
export type Choice = "huge" | "small"

/** Bytes an extent must have measured before its rate counts (less, and it goes on measuring). */
export const MIN_MEASURED = 8 * 1024 * 1024

/**
 * The decision, extent by extent. Pure: the caller allocates, times and advises.
 *
 * @since 0.2.0
 * @category models
 */
export class HugePagePolicy {
  /** Nanoseconds per byte in the last extent measured each way (NaN: not yet). */
  private readonly rates: Record<Choice, number> = { huge: Number.NaN, small: Number.NaN }
  private current: Choice = "huge"
  private bytes = 0
  private nanos = 0
  private extents = 0

  /** @param retryEvery every how many extents the slower way is tried again */
  constructor(readonly retryEvery: number = 16) {}

  /** The way of the extent in use. */
  get choice(): Choice {
    return this.current
  }

  /** The last rate measured for `choice`, in nanoseconds per byte (NaN: not yet). */
  rate(choice: Choice): number {
    return this.rates[choice]
  }

  /** Records that allocating (and first touching) `bytes` of the extent in use took `nanos`. */
  record(bytes: number, nanos: number): void {
    this.bytes += bytes
    this.nanos += nanos
  }

  /** A new extent begins: closes the measurement of the one before and returns the new one's way. */
  next(): Choice {
    if (this.bytes < MIN_MEASURED) return this.current // too little seen: the new extent goes on the same way
    this.rates[this.current] = this.nanos / this.bytes
    this.bytes = 0
    this.nanos = 0
    this.extents++
    const { huge, small } = this.rates
    if (Number.isNaN(small)) this.current = "small"
    else if (Number.isNaN(huge)) this.current = "huge"
    else {
      const faster: Choice = huge <= small ? "huge" : "small"
      const retry = this.extents % this.retryEvery === 0
      this.current = retry ? (faster === "huge" ? "small" : "huge") : faster
    }
    return this.current
  }
}
