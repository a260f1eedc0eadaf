/**
 * A TCP port for a test server or daemon: free on 127.0.0.1 when asked (the kernel picks
 * it), to be bound soon after.
 */
import * as net from "node:net"

/** A TCP port free a moment ago on 127.0.0.1. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))))
    })
  })
