// The harness's own ceiling: the same client against a minimal node:http
// server that answers every call with `{}`. If ontop's rates come close to
// these, the harness (or Node's HTTP stack) is the limit, not the driver.
import { spawn } from 'node:child_process';
import { tryConnect } from './daemon.js';
import { hammer, type LoadResult } from './load.js';

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

export async function echoCeiling(socketPath: string, ops: number, concurrency: number): Promise<{ seq: LoadResult; conc: LoadResult }> {
  const child = spawn(process.execPath, ['-e', SERVER], { env: { ...process.env, ECHO_SOCKET: socketPath }, stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
  try {
    const deadline = Date.now() + 10_000;
    while (!(await tryConnect(socketPath))) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error('echo server did not start');
      await new Promise((r) => setTimeout(r, 5));
    }
    const body = { Name: 'bench-00000' };
    await hammer(socketPath, 1, Math.min(2000, ops), 'VolumeDriver.Get', () => body); // warm-up
    const seq = await hammer(socketPath, 1, ops, 'VolumeDriver.Get', () => body);
    const conc = await hammer(socketPath, concurrency, Math.ceil(ops / concurrency), 'VolumeDriver.Get', () => body);
    return { seq, conc };
  } finally {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
  }
}
