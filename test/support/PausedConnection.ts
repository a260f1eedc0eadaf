/**
 * A loopback TCP connection whose accepted side is held paused, as the server accepts
 * connections before adopting them into an owned receive buffer.
 */
import * as net from "node:net"

/** A server accepting paused, a client connected to it, and the accepted socket. */
export const connected = async () => {
  let accept: (socket: net.Socket) => void = () => {}
  const accepted = new Promise<net.Socket>((resolve) => (accept = resolve))
  const server = net.createServer({ pauseOnConnect: true }, accept)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1")
  client.on("error", () => {})
  const socket = await accepted
  return { server, client, socket }
}
