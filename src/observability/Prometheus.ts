/**
 * Effect metrics in Prometheus' text exposition format (version 0.0.4): {@link render}
 * writes metric pairs as Prometheus scrapes them (`PrometheusExporter` serves them over
 * HTTP).
 *
 * Counters and gauges are one sample per label set; histograms are cumulative
 * `_bucket{le=...}` samples (ending with `le="+Inf"`), `_sum` and `_count`; summaries are
 * `{quantile=...}` samples, `_sum` and `_count`; frequencies are counters with a `key`
 * label. Metric and label names are reduced to the characters Prometheus allows, label
 * values and help texts are escaped.
 *
 * @since 0.3.0
 */
import type * as MetricLabel from "effect/MetricLabel"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"

/** The content type of the text exposition format. */
export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

/** A metric or label name with only the characters Prometheus allows. */
const sanitize = (name: string, colons: boolean): string => {
  const cleaned = name.replace(colons ? /[^a-zA-Z0-9_:]/g : /[^a-zA-Z0-9_]/g, "_")
  return /^[0-9]/.test(cleaned) || cleaned === "" ? `_${cleaned}` : cleaned
}

/** Escapes a label value: backslash, double quote and line feed. */
export const escapeLabelValue = (value: string): string =>
  value.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")

/** Escapes a help text: backslash and line feed. */
const escapeHelp = (text: string): string => text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

/** A sample value as Prometheus writes it. */
export const formatValue = (value: number | bigint): string => {
  if (typeof value === "bigint") return value.toString()
  if (Number.isNaN(value)) return "NaN"
  if (value === Infinity) return "+Inf"
  if (value === -Infinity) return "-Inf"
  return String(value)
}

type Label = readonly [string, string]

const labelsText = (labels: ReadonlyArray<Label>): string =>
  labels.length === 0 ? "" : `{${labels.map(([key, value]) => `${key}="${escapeLabelValue(value)}"`).join(",")}}`

const sample = (name: string, labels: ReadonlyArray<Label>, value: number | bigint): string =>
  `${name}${labelsText(labels)} ${formatValue(value)}`

/** The samples of one metric's state. */
const samples = (name: string, labels: ReadonlyArray<Label>, state: MetricState.MetricState.Untyped): Array<string> => {
  if (MetricState.isCounterState(state)) return [sample(name, labels, state.count)]
  if (MetricState.isGaugeState(state)) return [sample(name, labels, state.value)]
  if (MetricState.isHistogramState(state)) {
    const buckets = state.buckets.filter(([bound]) => bound !== Infinity)
    return [
      ...buckets.map(([bound, count]) => sample(`${name}_bucket`, [...labels, ["le", formatValue(bound)]], count)),
      sample(`${name}_bucket`, [...labels, ["le", "+Inf"]], state.count),
      sample(`${name}_sum`, labels, state.sum),
      sample(`${name}_count`, labels, state.count)
    ]
  }
  if (MetricState.isSummaryState(state)) {
    return [
      ...state.quantiles.flatMap(([quantile, value]) =>
        Option.isSome(value) ? [sample(name, [...labels, ["quantile", formatValue(quantile)]], value.value)] : []
      ),
      sample(`${name}_sum`, labels, state.sum),
      sample(`${name}_count`, labels, state.count)
    ]
  }
  if (MetricState.isFrequencyState(state)) {
    return [...state.occurrences].map(([key, count]) => sample(name, [...labels, ["key", key]], count))
  }
  return []
}

const typeOf = (state: MetricState.MetricState.Untyped): string =>
  MetricState.isCounterState(state) || MetricState.isFrequencyState(state)
    ? "counter"
    : MetricState.isGaugeState(state)
    ? "gauge"
    : MetricState.isHistogramState(state)
    ? "histogram"
    : MetricState.isSummaryState(state)
    ? "summary"
    : "untyped"

const labelsOf = (tags: ReadonlyArray<MetricLabel.MetricLabel>): Array<Label> =>
  tags.map((tag) => [sanitize(tag.key, false), tag.value] as const)

/** Metric pairs in the text exposition format: one block per metric name (HELP, TYPE, samples), sorted by name and labels. */
export const render = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const families = new Map<string, { help: string | undefined; type: string; lines: Array<string> }>()
  const keyed = pairs.map((pair) => ({ pair, labels: labelsOf(pair.metricKey.tags) }))
  keyed.sort((a, b) => (labelsText(a.labels) < labelsText(b.labels) ? -1 : 1))
  for (const { labels, pair } of keyed) {
    const name = sanitize(pair.metricKey.name, true)
    let family = families.get(name)
    if (family === undefined) {
      family = { help: Option.getOrUndefined(pair.metricKey.description), type: typeOf(pair.metricState), lines: [] }
      families.set(name, family)
    }
    family.lines.push(...samples(name, labels, pair.metricState))
  }
  const out: Array<string> = []
  for (const name of [...families.keys()].sort()) {
    const family = families.get(name)!
    if (family.help !== undefined) out.push(`# HELP ${name} ${escapeHelp(family.help)}`)
    out.push(`# TYPE ${name} ${family.type}`, ...family.lines)
  }
  return out.length === 0 ? "" : `${out.join("\n")}\n`
}
