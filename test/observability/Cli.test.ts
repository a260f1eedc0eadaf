/**
 * Observability of the command line: Prometheus metrics after a copy with nbdcopy,
 * JSON log lines, spans sent over OTLP/HTTP when the environment asks, and the stats
 * filter's summary when the process is stopped.
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest"
import { killAll, startCli } from "../support/Cli.ts"
import { freePort } from "../support/Ports.ts"
import { available, run } from "../support/Tools.ts"

const MiB = 1024 * 1024

/** The value of the sample line starting with `series` (name and labels as rendered). */
const sample = (text: string, series: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

const haveTools = available(["nbdcopy", "nbdinfo"])

describe.skipIf(!haveTools)("observability of the command line", () => {
  let dir: string
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-observability-"))
  })
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))
  afterAll(killAll)

  it("--metrics: bytes written by nbdcopy and WRITE latencies; --log-format json lines carry the connection", async () => {
    const image = path.join(dir, "in.img")
    fs.writeFileSync(image, randomBytes(64 * MiB))
    const port = await freePort()
    const { cli, served } = await startCli([
      "memory", "64M", "--port", "0", "--export-name", "disk",
      "--metrics", `127.0.0.1:${port}`, "--log-format", "json", "--verbose"
    ])
    try {
      await run("nbdcopy", [image, served[0]!.uri])
      const response = await fetch(`http://127.0.0.1:${port}/metrics`)
      const text = await response.text()
      expect(response.status).toBe(200)
      expect(sample(text, `nbd_written_bytes_total{export="disk"}`)).toBe(64 * MiB)
      expect(text).toContain("# TYPE nbd_request_duration_seconds histogram")
      const requests = sample(text, `nbd_requests_total{export="disk",command="WRITE"}`)!
      expect(requests).toBeGreaterThan(0)
      expect(sample(text, `nbd_request_duration_seconds_count{export="disk",command="WRITE"}`)).toBe(requests)
      expect(sample(text, `nbd_request_duration_seconds_bucket{export="disk",command="WRITE",le="+Inf"}`)).toBe(requests)
      expect(sample(text, `nbd_request_duration_seconds_bucket{export="disk",command="WRITE",le="10"}`)).toBeDefined()
      expect(sample(text, "nbd_connections_total")).toBeGreaterThan(0)
    } finally {
      await cli.stop()
    }
    const lines = cli.stderr().split("\n").filter((line) => line !== "")
    const records = lines.map((line) => JSON.parse(line) as Record<string, unknown>)
    for (const record of records) {
      expect(typeof record.message).toBe("string")
      expect(typeof record.level).toBe("string")
      expect(Number.isNaN(Date.parse(String(record.timestamp)))).toBe(false)
    }
    const selected = records.filter((record) => String(record.message).startsWith("client selected export"))
    expect(selected.length).toBeGreaterThan(0)
    for (const record of selected) {
      expect(record.connection).toEqual(expect.any(Number))
      expect(record.remote).toMatch(/^127\.0\.0\.1:\d+$/)
      expect(record.export).toBe("disk")
    }
  })

  it("the stats filter writes its summary when the process is stopped", async () => {
    const summary = path.join(dir, "stats.txt")
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      fs.rmSync(summary, { force: true })
      const { cli, served } = await startCli(["memory", "1M", "--port", "0", "--filter", `stats:file=${summary}`])
      try {
        await run("nbdinfo", [served[0]!.uri])
      } finally {
        await cli.stop(signal)
      }
      expect(fs.readFileSync(summary, "utf8"), signal).toMatch(/^elapsed time: /)
    }
  })

  it("OTEL_EXPORTER_OTLP_ENDPOINT: spans are sent over OTLP/HTTP", async () => {
    const posts: Array<{ readonly url: string; readonly bytes: number }> = []
    const collector = http.createServer((request, response) => {
      let bytes = 0
      request.on("data", (chunk: Buffer) => (bytes += chunk.length))
      request.on("end", () => {
        posts.push({ url: request.url ?? "", bytes })
        response.writeHead(200, { "content-type": "application/json" }).end("{}")
      })
    })
    await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve))
    const address = collector.address() as net.AddressInfo
    // The child inherits the environment at spawn time.
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${address.port}`
    let started: Awaited<ReturnType<typeof startCli>>
    try {
      started = await startCli(["memory", "1M", "--port", "0"])
    } finally {
      delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT
    }
    try {
      await run("nbdinfo", [started.served[0]!.uri])
      // Spans leave in batches, and at the latest when the process stops.
      await started.cli.stop()
      expect(posts.filter((post) => post.url === "/v1/traces" && post.bytes > 0).length).toBeGreaterThan(0)
    } finally {
      await started.cli.kill()
      await new Promise((resolve) => collector.close(resolve))
    }
  })
})
