/**
 * effect-nbd: a Network Block Device (NBD) server framework on Effect.
 *
 * Provide an `NbdDriver` (or an `ExportRegistry` of several exports), stack filters on it
 * (`CowFilter.layer()`, `DelayFilter.layer(...)`, ... with `Layer.provide`), add
 * `NbdServer.layer({ port })`, and launch it. The client and the testing helpers are
 * exported too.
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
  FilterOptions,
  HandleOverrides,
  NbdDriverShape,
  OpenRequest,
  SyncOperations,
  TlsIdentity,
  Transport,
  WriteOptions,
  ZeroOptions
} from "./Driver.ts"
export * as Catalog from "./Catalog.ts"
export * as DirDriver from "./drivers/Dir.ts"
export * as FileDriver from "./drivers/File.ts"
export * as MemoryDriver from "./drivers/Memory.ts"
export * as NbdProxyDriver from "./drivers/Nbd.ts"
export * as NullDriver from "./drivers/Null.ts"
export * as PatternDriver from "./drivers/Pattern.ts"
export * as S3Driver from "./drivers/S3.ts"
export * as S3BucketDriver from "./drivers/S3Bucket.ts"
export * as BlockSizeFilter from "./filters/BlockSize.ts"
export * as CacheFilter from "./filters/Cache.ts"
export * as CowFilter from "./filters/Cow.ts"
export * as DelayFilter from "./filters/Delay.ts"
export * as DirtyFilter from "./filters/Dirty.ts"
export * as ErrorFilter from "./filters/Error.ts"
export * as IpFilter from "./filters/Ip.ts"
export * as LogFilter from "./filters/Log.ts"
export * as OffsetFilter from "./filters/Offset.ts"
export * as PartitionFilter from "./filters/Partition.ts"
export * as RateFilter from "./filters/Rate.ts"
export * as ReadOnlyFilter from "./filters/ReadOnly.ts"
export * as RetryFilter from "./filters/Retry.ts"
export * as StatsFilter from "./filters/Stats.ts"
export * as Params from "./Params.ts"
export type { DriverPlugin, DriverPluginOptions, FilterPlugin, NamedDriver } from "./Plugin.ts"
export * as Testing from "./testing/Testing.ts"
export * from "./Errors.ts"
export * as Export from "./Export.ts"
export { ExportRegistry } from "./Export.ts"
export * as Binary from "./protocol/Binary.ts"
export * as Constants from "./protocol/Constants.ts"
export * as Handshake from "./protocol/Handshake.ts"
export * as OptionData from "./protocol/OptionData.ts"
export * as Transmission from "./protocol/Transmission.ts"
export * as Metrics from "./server/Metrics.ts"
export * as LogFormat from "./observability/LogFormat.ts"
export * as Prometheus from "./observability/Prometheus.ts"
export * as PrometheusExporter from "./observability/PrometheusExporter.ts"
export * as Tracing from "./observability/Tracing.ts"
export * as NbdServer from "./server/Server.ts"
export * as ServerConfig from "./server/ServerConfig.ts"
export * as Session from "./server/Session.ts"
export * as Shutdown from "./server/Shutdown.ts"
export * as Tls from "./server/Tls.ts"
