/**
 * `npm run fuzz -- [--seconds N | --cases C] [--seed S] [--only I] [--tcp-every K] [--shrink-seconds T] [--hang-ms M]`
 *
 * Fuzzes the server's negotiation and transmission parsers for N seconds (default 60, or
 * exactly C cases),
 * in process and over TCP interleaved (every K-th case over TCP, default 8), then checks
 * that a fresh client still reads the TCP server's read-only export. Prints the cases
 * run, the findings by kind (crashes, hangs, defects, resource, data changes, memory)
 * and the seed; exits non-zero on any finding, printing each failing case's bytes (hex)
 * and how to replay it (`--seed S --only I` runs that one case; `--seed S` alone replays
 * the whole sequence). The first finding of each kind is shrunk by fast-check for up to T
 * seconds (default 60; 0 turns it off). A case that blocks the event loop for 10 s is
 * caught by a watchdog thread, which prints it and kills the process. Earlier findings
 * are kept as cases in Regressions.test.ts.
 */
import { describeCase, bytesOf } from "./Generators.ts"
import * as Harness from "./Harness.ts"
import { formatReport, generate, kindOf, makeRunner, percentile } from "./Runner.ts"

const usage =
  "usage: npm run fuzz -- [--seconds N | --cases C] [--seed S] [--only I] [--tcp-every K] [--shrink-seconds T] [--hang-ms M]"

const parseArgs = (argv: ReadonlyArray<string>) => {
  const options = {
    seconds: 60,
    cases: undefined as number | undefined,
    seed: (Math.random() * 0x7fffffff) | 0,
    only: undefined as number | undefined,
    tcpEvery: 8,
    shrinkSeconds: 60,
    hangMillis: 2000
  }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    const value = argv[i + 1]
    const number = () => {
      const n = Number(value)
      if (value === undefined || !Number.isFinite(n)) throw new Error(`${flag} needs a number\n${usage}`)
      i++
      return n
    }
    switch (flag) {
      case "--seconds":
        options.seconds = number()
        break
      case "--cases":
        options.cases = number()
        break
      case "--seed":
        options.seed = number() | 0
        break
      case "--only":
        options.only = number()
        break
      case "--tcp-every":
        options.tcpEvery = number()
        break
      case "--shrink-seconds":
        options.shrinkSeconds = number()
        break
      case "--hang-ms":
        options.hangMillis = number()
        break
      case "--help":
        console.log(usage)
        process.exit(0)
      // falls through
      default:
        throw new Error(`unknown argument ${flag}\n${usage}`)
    }
  }
  return options
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`

const main = async () => {
  const options = parseArgs(process.argv.slice(2))
  const { seed } = options
  const watchdog = Harness.startWatchdog(Math.max(10_000, options.hangMillis * 5))
  const runner = await makeRunner({
    seed,
    tcpEvery: options.tcpEvery,
    hangMillis: options.hangMillis,
    shrinkMillis: options.shrinkSeconds * 1000,
    watchdog,
    onReport: (report) => console.log(`\n${formatReport(report)}\n`)
  })
  const { stats } = runner
  console.log(`fuzzing effect-nbd's negotiation and transmission parsers: seed ${seed}` +
    (options.only !== undefined ? `, case ${options.only} only` : options.cases !== undefined ? `, ${options.cases} cases` : `, ${options.seconds} s`) +
    `, every ${options.tcpEvery}th case over TCP`)
  const started = performance.now()
  let index = 0
  let lastProgress = started
  if (options.only !== undefined) {
    const c = generate(seed, options.only)
    console.log(`case ${options.only} (${kindOf(options.only, options.tcpEvery)}):\n${describeCase(c)}\nbytes (hex): ${Buffer.from(bytesOf(c)).toString("hex")}`)
    await runner.run(options.only)
  } else {
    const deadline = options.cases === undefined ? started + options.seconds * 1000 : Infinity
    const cases = options.cases ?? Infinity
    runner.checkMemory(0)
    while (performance.now() < deadline && index < cases) {
      await runner.run(index)
      index++
      if (index % 200 === 0) runner.checkMemory(index)
      if (performance.now() - lastProgress > 10_000) {
        lastProgress = performance.now()
        const f = stats.findings
        console.log(
          `  ${((lastProgress - started) / 1000).toFixed(0)} s: ${stats.inProcess} in process + ${stats.tcp} TCP cases, ` +
            `findings: ${f.crash} crashes, ${f.hang} hangs, ${f.defect} defects, ${f.resource} resource, ${f.data} data, ${f.memory} memory, ${f.reply} reply`
        )
      }
    }
    runner.checkMemory(index)
  }
  const problem = await runner.checkTcpServer()
  if (problem !== undefined) console.log(`\n=== DATA (tcp) after the run: ${problem}`)
  const elapsed = (performance.now() - started) / 1000
  await runner.close()
  await watchdog.stop()
  const f = stats.findings
  const total = stats.inProcess + stats.tcp
  const findings = Object.values(f).reduce((a, b) => a + b, 0)
  console.log([
    "",
    `seed:       ${seed}`,
    `cases:      ${total} (${stats.inProcess} in process, ${stats.tcp} over TCP) in ${elapsed.toFixed(1)} s, ${(total / elapsed).toFixed(0)} cases/s`,
    `case time:  p50 ${percentile(stats.millis, 50).toFixed(1)} ms, p99 ${percentile(stats.millis, 99).toFixed(1)} ms, max ${percentile(stats.millis, 100).toFixed(1)} ms`,
    `traffic:    ${mib(stats.bytesSent)} sent, ${mib(stats.bytesReceived)} received`,
    `memory:     ${mib(stats.memoryBaseline)} live at the start, peak ${mib(stats.memoryPeak)} (after collection), ` +
    `${mib(stats.memoryAfterCase)} largest right after a case (garbage included)`,
    `crashes:    ${f.crash}`,
    `hangs:      ${f.hang}`,
    `defects:    ${f.defect}`,
    `resource:   ${f.resource}`,
    `data:       ${f.data}`,
    `memory:     ${f.memory}`,
    `reply:      ${f.reply} (malformed or unexpected replies to predictable cases)`,
    `fresh client after the run: ${problem ?? "reads the read-only export correctly, writes and reads back the writable one"}`
  ].join("\n"))
  process.exitCode = findings > 0 ? 1 : 0
}

main().catch((error) => {
  console.error(error)
  process.exit(2)
})
