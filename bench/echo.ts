// The harness's own ceiling: the same client against a minimal node:http
// server that answers every call with `{}`. Run in blocks between the
// rounds of the phases read against it (Get; 8 clients on one volume), so
// both see the same machine. If ontop comes close, the harness (or Node's
// HTTP stack) is the limit, not the driver.
import { hammer } from './load.js';
import { ServerChild } from './server-child.js';
import { Samples } from './stats.js';

const SERVER = `
const http = require('node:http');
const server = http.createServer((req, res) => {
  req.on('data', () => {});
  req.on('end', () => {
    res.writeHead(200, { 'Content-Type': 'application/vnd.docker.plugins.v1.2+json' });
    res.end('{}\\n');
  });
});
server.keepAliveTimeout = 65000;
server.listen(process.env.ECHO_SOCKET);
process.on('SIGTERM', () => server.close(() => process.exit(0)) && server.closeAllConnections());
`;

const BODY = { Name: 'bench-00000' };

export class EchoServer {
  /** Calls timed so far with one client, and with several at once. */
  readonly seq = { samples: new Samples(4096), wallMs: 0 };
  readonly conc = { samples: new Samples(4096), wallMs: 0 };
  private readonly server: ServerChild;

  constructor(private readonly socketPath: string) {
    this.server = new ServerChild('echo server', SERVER, socketPath);
  }

  async start(): Promise<void> {
    await this.server.start({ ECHO_SOCKET: this.socketPath });
    await hammer(this.socketPath, 1, 2000, 'VolumeDriver.Get', () => BODY); // warm-up
  }

  /** `perClient` timed calls by each of `clients` clients, added to seq (one client) or conc. */
  async block(clients: number, perClient: number): Promise<void> {
    const r = await hammer(this.socketPath, clients, perClient, 'VolumeDriver.Get', () => BODY);
    const into = clients === 1 ? this.seq : this.conc;
    into.wallMs += r.wallMs;
    for (const v of r.samples.values()) into.samples.add(v);
  }

  stop(): Promise<void> {
    return this.server.stop();
  }
}
