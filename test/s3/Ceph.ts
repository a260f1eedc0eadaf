/**
 * A throw-away single-node Ceph cluster with S3 gateways, for tests of the s3 driver:
 * one monitor, one OSD on `memstore` (data in memory), authentication off, pools of one
 * replica, fast paxos, and radosgw gateways (beast on 127.0.0.1, `tcp_nodelay=1`), all
 * in a temporary directory. The daemons run in the foreground as children of the test
 * process and are killed (SIGKILL: nothing on disk is worth keeping) when it stops.
 *
 * On a machine without the Ceph packages the tests are skipped with the install
 * command; in CI (`CI=true`) a missing package fails the run.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { freePort } from "../support/Ports.ts"

/** The Debian packages the cluster needs. */
export const INSTALL = "apt-get install -y radosgw ceph-mon ceph-osd ceph-common"

const BINARIES = ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph"]

/** The S3 user every test uses. */
export const ACCESS_KEY = "effect-nbd-test"
export const SECRET_KEY = "effect-nbd-test-secret"
export const REGION = "us-east-1"

/** How long the cluster may take to answer S3 requests. */
const START_TIMEOUT = 60_000

const onPath = (binary: string): boolean =>
  (process.env.PATH ?? "").split(path.delimiter).some((dir) => dir !== "" && fs.existsSync(path.join(dir, binary)))

/** Whether the Ceph daemons are installed; warns (or, in CI, throws) naming the install command. */
export const available = (): boolean => {
  const missing = BINARIES.filter((binary) => !onPath(binary))
  if (missing.length === 0) return true
  const message = `missing Ceph programs: ${missing.join(", ")}; install them with: ${INSTALL}`
  if (process.env.CI === "true") throw new Error(message)
  console.warn(`skipping S3 tests: ${message}`)
  return false
}

const exec = (command: string, args: ReadonlyArray<string>, timeout = 30_000): Promise<string> =>
  new Promise((resolve, reject) => {
    execFile(command, [...args], { encoding: "utf8", timeout, killSignal: "SIGKILL" }, (error, stdout, stderr) => {
      if (error === null) resolve(stdout)
      else reject(new Error(`${command} ${args.join(" ")} failed: ${error.message}\n${stderr}`))
    })
  })

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/** Every daemon started by this module, killed when the test process exits whatever happened. */
const everyDaemon = new Set<ChildProcess>()
process.once("exit", () => {
  for (const child of everyDaemon) child.kill("SIGKILL")
})

const configuration = (dir: string, fsid: string, monPort: number): string =>
  `[global]
fsid = ${fsid}
mon_host = v2:127.0.0.1:${monPort}
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
auth_supported = none
auth_allow_insecure_global_id_reclaim = true
ms_mon_client_mode = crc
ms_client_mode = crc
client_mount_timeout = 30
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_objectstore = memstore
memstore_device_bytes = 4294967296
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
run_dir = ${dir}/run
admin_socket = ${dir}/run/$name.asok
log_file = ${dir}/log/$name.log
mon_cluster_log_file = ${dir}/log/cluster.log
crash_dir = ${dir}/crash
mon_data = ${dir}/mon/$id
osd_data = ${dir}/osd/$id
rgw_data = ${dir}/rgw/$id
rgw_thread_pool_size = 64
rgw_enable_gc_threads = false
rgw_enable_lc_threads = false
rgw_dynamic_resharding = false
`

/** A running cluster. */
export interface Ceph {
  /** The temporary directory holding configuration, logs and sockets. */
  readonly dir: string
  /** The first gateway's S3 endpoint (`http://127.0.0.1:PORT`). */
  readonly endpoint: string
  /** The AWS environment variables that reach the first gateway as the test user. */
  readonly env: Readonly<Record<string, string>>
  /** Starts one more gateway on the same cluster; resolves to its endpoint once it answers. */
  readonly startGateway: () => Promise<string>
  /** Kills every daemon and removes the directory. */
  readonly stop: () => Promise<void>
}

/** The AWS environment for an endpoint, as the SDK and the CLI read it. */
export const awsEnv = (endpoint: string): Record<string, string> => ({
  AWS_ACCESS_KEY_ID: ACCESS_KEY,
  AWS_SECRET_ACCESS_KEY: SECRET_KEY,
  AWS_REGION: REGION,
  AWS_ENDPOINT_URL: endpoint,
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true"
})

/** Resolves once an HTTP server answers at `endpoint`. */
const answering = async (endpoint: string, daemon: ChildProcess, what: string): Promise<void> => {
  const started = Date.now()
  for (;;) {
    if (daemon.exitCode !== null || daemon.signalCode !== null) throw new Error(`${what} exited at start-up`)
    try {
      await fetch(endpoint, { signal: AbortSignal.timeout(1000) })
      return
    } catch {
      if (Date.now() - started > START_TIMEOUT) throw new Error(`${what} did not answer at ${endpoint}`)
      await sleep(50)
    }
  }
}

/**
 * Starts a cluster with one gateway and the test user (about 3 s here). Call `stop` in
 * `afterAll`; a failed start stops what it started before rejecting.
 */
export const start = async (): Promise<Ceph> => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-ceph-"))
  for (const sub of ["run", "log", "crash", "mon/a", "osd/0", "rgw"]) fs.mkdirSync(path.join(dir, sub), { recursive: true })
  const conf = path.join(dir, "ceph.conf")
  const daemons: Array<ChildProcess> = []
  const daemon = (command: string, args: ReadonlyArray<string>): ChildProcess => {
    const child = spawn(command, ["-f", "-c", conf, ...args], { stdio: "ignore", cwd: dir })
    child.on("error", () => undefined)
    daemons.push(child)
    everyDaemon.add(child)
    child.once("exit", () => everyDaemon.delete(child))
    return child
  }
  const stop = async () => {
    await Promise.all(daemons.map((child) =>
      child.exitCode !== null || child.signalCode !== null
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
          child.once("exit", () => resolve())
          child.kill("SIGKILL")
        })
    ))
    fs.rmSync(dir, { recursive: true, force: true })
  }
  let gateways = 0
  const startGateway = async () => {
    const port = await freePort()
    const endpoint = `http://127.0.0.1:${port}`
    const name = `client.rgw${gateways++}`
    fs.mkdirSync(path.join(dir, "rgw", name.slice("client.".length)), { recursive: true })
    const child = daemon("radosgw", ["-n", name, "--rgw-frontends", `beast endpoint=127.0.0.1:${port} tcp_nodelay=1`])
    await answering(endpoint, child, `radosgw ${name}`)
    return endpoint
  }
  try {
    const fsid = randomUUID()
    const monPort = await freePort()
    fs.writeFileSync(conf, configuration(dir, fsid, monPort))
    const monmap = path.join(dir, "monmap")
    await exec("monmaptool", ["--create", "--addv", "a", `v2:127.0.0.1:${monPort}`, "--fsid", fsid, monmap])
    await exec("ceph-mon", ["-c", conf, "--mkfs", "-i", "a", "--monmap", monmap])
    daemon("ceph-mon", ["-i", "a"])
    await Promise.all([
      exec("ceph", ["-c", conf, "--connect-timeout", "30", "osd", "create"]),
      exec("ceph-osd", ["-c", conf, "-i", "0", "--mkfs"])
    ])
    daemon("ceph-osd", ["-i", "0"])
    const endpoint = await startGateway()
    await exec("radosgw-admin", [
      "-c",
      conf,
      "user",
      "create",
      "--uid=effect-nbd-test",
      "--display-name=effect-nbd tests",
      `--access-key=${ACCESS_KEY}`,
      `--secret=${SECRET_KEY}`
    ])
    return { dir, endpoint, env: awsEnv(endpoint), startGateway, stop }
  } catch (error) {
    const log = (name: string) => {
      const file = path.join(dir, "log", `${name}.log`)
      return fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").slice(-15).join("\n") : ""
    }
    const detail = ["mon.a", "osd.0", "client.rgw0"].map((name) => `--- ${name}\n${log(name)}`).join("\n")
    await stop()
    throw new Error(`${(error as Error).message}\n${detail}`)
  }
}
