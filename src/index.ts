/**
 * effect-nbd: a Network Block Device (NBD) server framework on Effect.
 *
 * Provide an `NbdDriver` (or an `ExportRegistry` of several exports), add
 * `NbdServer.layer({ port })`, and launch it. The client is exported too.
 *
 * @since 0.1.0
 */
export * as NbdClient from "./client/NbdClient.ts"
export * as Driver from "./Driver.ts"
export { NbdDriver } from "./Driver.ts"
export type {
  BlockSize,
  Capabilities,
  ClientInfo,
  DriverHandle,
  Extent,
  Filter,
  NbdDriverShape,
  OpenRequest,
  SyncOperations,
  TlsIdentity,
  Transport,
  WriteOptions,
  ZeroOptions
} from "./Driver.ts"
export * as FileDriver from "./drivers/File.ts"
export * as MemoryDriver from "./drivers/Memory.ts"
export * from "./Errors.ts"
export * as Export from "./Export.ts"
export { ExportRegistry } from "./Export.ts"
export * as Binary from "./protocol/Binary.ts"
export * as Constants from "./protocol/Constants.ts"
export * as Handshake from "./protocol/Handshake.ts"
export * as OptionData from "./protocol/OptionData.ts"
export * as Transmission from "./protocol/Transmission.ts"
export * as Metrics from "./server/Metrics.ts"
export * as NbdServer from "./server/Server.ts"
export * as ServerConfig from "./server/ServerConfig.ts"
export * as Session from "./server/Session.ts"
export * as Shutdown from "./server/Shutdown.ts"
export * as Tls from "./server/Tls.ts"
