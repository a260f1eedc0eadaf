/**
 * Opening drivers outside a server: an in-process client identity and a scoped handle,
 * for tests of drivers and filters that need no connection at all.
 *
 * @since 0.2.0
 */
import type * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type { ClientInfo, DriverHandle, NbdDriverShape, OpenRequest } from "../Driver.ts"
import type { OptionReplyError } from "../Errors.ts"

/** A client connected in process (no socket, no TLS). */
export const inProcessClient = (connectionId = 1): ClientInfo => ({
  connectionId,
  transport: { _tag: "InProcess" },
  tls: Option.none()
})

/** An open request from {@link inProcessClient} (or the client given). */
export const openRequest = (exportName = "", client: ClientInfo = inProcessClient()): OpenRequest => ({
  exportName,
  client
})

/** Opens a driver as a client would; the handle lives as long as the scope. */
export const open = (
  driver: NbdDriverShape,
  request: OpenRequest = openRequest()
): Effect.Effect<DriverHandle, OptionReplyError, Scope.Scope> => driver.open(request)
