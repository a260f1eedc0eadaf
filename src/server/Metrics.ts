/**
 * Metrics of one server: connections, and per export and command the requests, bytes,
 * errors by errno, requests in flight and latency histograms.
 *
 * Each server has its own {@link ServerMetrics}, kept in an Effect `MetricRegistry` of
 * its own (two servers in one process never share a counter); `NbdServer` exposes it,
 * the Prometheus exporter serves it, and {@link ServerMetrics.snapshot} reads it as
 * Effect `MetricPair`s. Sessions run outside a server (in process) count into the
 * {@link ServerMetrics} in context, a process-wide instance by default.
 *
 * The request path is plain code: a session resolves its export's metric hooks once
 * ({@link ServerMetrics.forExport}), after which a request costs a few hook updates.
 *
 * Metrics (labels in braces):
 * - `nbd_connections_total` (counter): connections accepted.
 * - `nbd_sessions_active` (gauge): connections open now.
 * - `nbd_requests_total{export,command}` (counter): requests received.
 * - `nbd_request_errors_total{export,command,errno}` (counter): requests answered with an error.
 * - `nbd_read_bytes_total{export}`, `nbd_written_bytes_total{export}` (counters): payload bytes
 *   sent in READ replies and received in WRITE requests that succeeded.
 * - `nbd_requests_in_flight{export}` (gauge): requests being served now.
 * - `nbd_request_duration_seconds{export,command}` (histogram): from reading a request to
 *   queueing its reply, buckets {@link LATENCY_BUCKETS} (10 µs to 10 s); requests refused by
 *   the checks are not timed.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as MetricBoundaries from "effect/MetricBoundaries"
import type * as MetricHook from "effect/MetricHook"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import type * as MetricPair from "effect/MetricPair"
import * as MetricRegistry from "effect/MetricRegistry"
import type { ErrnoName } from "../Errors.ts"
import { Command } from "../protocol/Constants.ts"

/** Upper bounds of the latency buckets, in seconds: 1, 2.5 and 5 per decade from 10 µs to 10 s. */
export const LATENCY_BUCKETS: ReadonlyArray<number> = [
  0.00001, 0.000025, 0.00005,
  0.0001, 0.00025, 0.0005,
  0.001, 0.0025, 0.005,
  0.01, 0.025, 0.05,
  0.1, 0.25, 0.5,
  1, 2.5, 5,
  10
]

/** The metric keys without labels (names, kinds and descriptions). */
export const keys = {
  connections: MetricKey.counter("nbd_connections_total", { description: "NBD connections accepted" }),
  activeSessions: MetricKey.gauge("nbd_sessions_active", { description: "NBD connections open" }),
  requests: MetricKey.counter("nbd_requests_total", { description: "NBD requests received" }),
  errors: MetricKey.counter("nbd_request_errors_total", { description: "NBD requests answered with an error" }),
  bytesRead: MetricKey.counter("nbd_read_bytes_total", { description: "bytes sent in READ replies" }),
  bytesWritten: MetricKey.counter("nbd_written_bytes_total", { description: "bytes received in successful WRITE requests" }),
  inFlight: MetricKey.gauge("nbd_requests_in_flight", { description: "NBD requests being served" }),
  latency: MetricKey.histogram(
    "nbd_request_duration_seconds",
    MetricBoundaries.fromIterable(LATENCY_BUCKETS),
    "time from reading an NBD request to queueing its reply"
  )
} as const

/** The `command` label values, indexed by command type; unknown types share the last one. */
const COMMANDS: ReadonlyArray<string> = [
  ...Object.entries(Command).sort(([, a], [, b]) => a - b).map(([name]) => name),
  "UNKNOWN"
]
const UNKNOWN = COMMANDS.length - 1
const slotOf = (type: number): number => (type >= 0 && type < UNKNOWN && Number.isInteger(type) ? type : UNKNOWN)

/** The hooks of one export, for the request path (every method is synchronous and cheap). */
export interface ExportMetrics {
  /** The export's name (the `export` label). */
  readonly name: string
  /** Counts a request received. */
  readonly request: (type: number) => void
  /** Records how long a request took, in seconds. */
  readonly latency: (type: number, seconds: number) => void
  /** Counts an error reply. */
  readonly error: (type: number, errno: ErrnoName) => void
  /** Counts bytes sent in a READ reply. */
  readonly read: (bytes: number) => void
  /** Counts bytes received in a successful WRITE. */
  readonly written: (bytes: number) => void
  /** Moves the in-flight gauge by `delta` (+1 when a request starts, -1 when it ends). */
  readonly inFlight: (delta: number) => void
}

/** The metrics of one server. */
export interface ServerMetrics {
  /** Where the metrics are kept (read it with `snapshot()`). */
  readonly registry: MetricRegistry.MetricRegistry
  /** The metrics as Effect metric pairs. */
  readonly snapshot: Effect.Effect<ReadonlyArray<MetricPair.MetricPair.Untyped>>
  /** A connection was accepted (`open` connections are open now). */
  readonly connectionAccepted: (open: number) => void
  /** A connection ended (`open` connections are left). */
  readonly connectionClosed: (open: number) => void
  /** The hooks of an export, resolved once and shared by its sessions. */
  readonly forExport: (name: string) => ExportMetrics
}

/** Options of {@link make}. */
export interface MetricsOptions {
  /** The registry to count into; a new one when absent (`Metric.globalMetricRegistry` shares Effect's). */
  readonly registry?: MetricRegistry.MetricRegistry | undefined
  /** Labels added to every metric (e.g. `server`, to tell instances apart in a shared registry). */
  readonly labels?: Readonly<Record<string, string>> | undefined
}

/** The metrics of a new server. */
export const make = (options: MetricsOptions = {}): ServerMetrics => {
  const registry = options.registry ?? MetricRegistry.make()
  const base = Object.entries(options.labels ?? {}).map(([key, value]) => MetricLabel.make(key, value))
  const labelled = <K extends MetricKey.MetricKey.Untyped>(key: K, labels: Record<string, string>): K =>
    MetricKey.taggedWithLabels(key, [...base, ...Object.entries(labels).map(([k, v]) => MetricLabel.make(k, v))]) as K
  const connections = registry.getCounter(labelled(keys.connections, {}))
  const active = registry.getGauge(labelled(keys.activeSessions, {}))
  const exports = new Map<string, ExportMetrics>()

  const makeExport = (name: string): ExportMetrics => {
    const perCommand = <H>(resolve: (command: string) => H): ReadonlyArray<H> => COMMANDS.map(resolve)
    const requests = perCommand((command) => registry.getCounter(labelled(keys.requests, { export: name, command })))
    const latency = perCommand((command) => registry.getHistogram(labelled(keys.latency, { export: name, command })))
    const bytesRead = registry.getCounter(labelled(keys.bytesRead, { export: name }))
    const bytesWritten = registry.getCounter(labelled(keys.bytesWritten, { export: name }))
    const inFlight = registry.getGauge(labelled(keys.inFlight, { export: name }))
    // Errors are resolved on first use: few (command, errno) pairs ever occur.
    const errors = COMMANDS.map(() => new Map<ErrnoName, MetricHook.MetricHook.Counter<number>>())
    return {
      name,
      request: (type) => requests[slotOf(type)]!.update(1),
      latency: (type, seconds) => latency[slotOf(type)]!.update(seconds),
      error: (type, errno) => {
        const slot = slotOf(type)
        let hook = errors[slot]!.get(errno)
        if (hook === undefined) {
          hook = registry.getCounter(labelled(keys.errors, { export: name, command: COMMANDS[slot]!, errno }))
          errors[slot]!.set(errno, hook)
        }
        hook.update(1)
      },
      read: (bytes) => bytesRead.update(bytes),
      written: (bytes) => bytesWritten.update(bytes),
      inFlight: (delta) => inFlight.modify(delta)
    }
  }

  return {
    registry,
    snapshot: Effect.sync(() => registry.snapshot()),
    connectionAccepted: (open) => {
      connections.update(1)
      active.update(open)
    },
    connectionClosed: (open) => active.update(open),
    forExport: (name) => {
      let metrics = exports.get(name)
      if (metrics === undefined) {
        metrics = makeExport(name)
        exports.set(name, metrics)
      }
      return metrics
    }
  }
}

/**
 * The metrics sessions count into: a server provides its own; elsewhere (sessions run in
 * process) a process-wide instance.
 */
export class CurrentMetrics extends Context.Reference<CurrentMetrics>()("effect-nbd/Metrics/CurrentMetrics", {
  defaultValue: (): ServerMetrics => make()
}) {}

/** The state of a metric in a snapshot, by name and labels (all given labels must match). */
export const find = (
  snapshot: ReadonlyArray<MetricPair.MetricPair.Untyped>,
  name: string,
  labels: Readonly<Record<string, string>> = {}
): MetricPair.MetricPair.Untyped["metricState"] | undefined =>
  snapshot.find((pair) =>
    pair.metricKey.name === name &&
    Object.entries(labels).every(([key, value]) =>
      pair.metricKey.tags.some((tag) => tag.key === key && tag.value === value)
    )
  )?.metricState
