/**
 * A WRITE payload taken as it arrives: each received piece goes to the driver at once,
 * instead of waiting for the whole payload (which, when it spans several reads of the
 * socket, means copying it into a buffer of its own first).
 *
 * @since 0.2.0
 */

/** The unit in which a streamed payload reaches the driver: the largest common sector size. */
export const BLOCK = 4096

/** Where the pieces of one streamed payload go, and how its request is answered. */
export interface PayloadSink {
  /** The next piece of the payload, in order: a view valid only until this returns. */
  readonly take: (piece: Uint8Array) => void
  /** The whole payload was taken: answer the request. */
  readonly end: () => void
}
