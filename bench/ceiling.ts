// The Node ceiling: what the C floor's syscalls cost behind node:http, with
// nothing else. A minimal node:http server (spawned like the echo server)
// answers Create, Remove, Mount and Unmount by making exactly the syscalls of
// the matching floor.c mode: synchronous calls on the state directory, as
// ontop may make them, and mount(2)/umount2(2) through ontop's own addon on
// its threads, as ontop must (a hung base may hold only a thread). It keeps
// no records, checks nothing and logs nothing. Its blocks run between the
// rounds of the phase they describe, beside the C floor's, so the table can
// say how much of a gap to the floor is Node and HTTP and how much is ontop.
import fs from 'node:fs';
import path from 'node:path';
import { mountId } from './client.js';
import { withClients } from './load.js';
import { ServerChild } from './server-child.js';
import { Samples } from './stats.js';

const SERVER = `
const http = require('node:http');
const fs = require('node:fs');
const addon = require(process.env.CEILING_ADDON);
const root = process.env.CEILING_ROOT, base = process.env.CEILING_BASE;
const volumes = root + '/volumes', trash = root + '/trash';
fs.mkdirSync(volumes, { recursive: true });
fs.mkdirSync(trash, { recursive: true });
const volumesFd = fs.openSync(volumes, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
const cyc = root + '/cycle', upper = cyc + '/upper', work = cyc + '/work', merged = cyc + '/merged';
fs.mkdirSync(upper, { recursive: true });
const data = 'lowerdir=' + base + ',upperdir=' + upper + ',workdir=' + work + ',index=off,metacopy=off,redirect_dir=off,xino=off';
let k = 0;
const verbs = {
  // floor.c create: mkdir volume and upper, volume.json written + fdatasync, fsync volumes/.
  Create(b) {
    const dir = volumes + '/' + b.Name;
    fs.mkdirSync(dir, 0o700);
    fs.mkdirSync(dir + '/upper', 0o755);
    const fd = fs.openSync(dir + '/volume.json', 'wx', 0o600);
    fs.writeSync(fd, JSON.stringify({ base, volatile: false }) + '\\n');
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
    fs.fsyncSync(volumesFd);
    return {};
  },
  // floor.c remove: rename into trash/ + fsync volumes/.
  Remove(b) {
    fs.renameSync(volumes + '/' + b.Name, trash + '/' + b.Name + '.' + k++);
    fs.fsyncSync(volumesFd);
    return {};
  },
  // floor.c cycle, split where dockerd splits it: mkdir ×2 and mount; umount2 and rmdir ×3.
  async Mount() {
    fs.mkdirSync(work, 0o700);
    fs.mkdirSync(merged, 0o755);
    await addon.mount('ontop-ceiling', merged, 'overlay', 0, data);
    return { Mountpoint: merged };
  },
  async Unmount() {
    await addon.umount2(merged, 0);
    fs.rmdirSync(merged);
    fs.rmdirSync(work + '/work');
    fs.rmdirSync(work);
    return {};
  },
  // withClients connects each client with one Capabilities call.
  Capabilities() {
    return { Capabilities: { Scope: 'local' } };
  },
};
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    let body;
    try {
      const b = JSON.parse(Buffer.concat(chunks).toString() || '{}');
      body = JSON.stringify(await verbs[req.url.slice('/VolumeDriver.'.length)](b));
    } catch (err) {
      body = JSON.stringify({ Err: String(err && err.message || err || 'error') });
    }
    res.writeHead(200, { 'Content-Type': 'application/vnd.docker.plugins.v1.2+json' });
    res.end(body + '\\n');
  });
});
server.keepAliveTimeout = 65000;
server.listen(process.env.CEILING_SOCKET);
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => {
    try { addon.umount2(merged, 2).catch(() => {}); } catch {}
    process.exit(0);
  });
});
`;

export type CeilingMode = 'create' | 'remove' | 'cycle';

/** Calls timed so far per mode (a cycle is one sample: Mount then Unmount). */
interface Tally {
  samples: Samples;
  wallMs: number;
}

export class NodeCeiling {
  readonly tally: Record<CeilingMode, Tally> = {
    create: { samples: new Samples(4096), wallMs: 0 },
    remove: { samples: new Samples(4096), wallMs: 0 },
    cycle: { samples: new Samples(4096), wallMs: 0 },
  };
  private readonly server: ServerChild;
  private next = 0;

  /** `root` must be on the state root's filesystem; `addon` is the built ontop_native.node. */
  constructor(
    private readonly socketPath: string,
    private readonly root: string,
    private readonly base: string,
    private readonly addon: string,
  ) {
    this.server = new ServerChild('Node ceiling server', SERVER, socketPath);
  }

  async start(): Promise<void> {
    if (!fs.existsSync(this.addon)) throw new Error(`${this.addon} does not exist (npm run build)`);
    await this.server.start({ CEILING_SOCKET: this.socketPath, CEILING_ROOT: this.root, CEILING_BASE: this.base, CEILING_ADDON: this.addon });
    await this.block('cycle', 20, false);
    await this.block('create', 20, false);
  }

  /** `n` timed operations of `mode` by one client (Creates for a remove block are made first, untimed). */
  async block(mode: CeilingMode, n: number, counted = true): Promise<void> {
    if (n <= 0) return;
    const names = Array.from({ length: n }, () => `c${this.next++}`);
    if (mode === 'remove') await withClients(this.socketPath, 1, 0, async (c) => {
      for (const Name of names) await c.ok('VolumeDriver.Create', { Name });
    });
    const r = await withClients(this.socketPath, 1, n, async (c, _i, samples) => {
      for (const Name of names) {
        const t0 = process.hrtime.bigint();
        if (mode === 'cycle') {
          const req = { Name: 'cycle', ID: mountId() };
          await c.ok('VolumeDriver.Mount', req);
          await c.ok('VolumeDriver.Unmount', req);
        } else {
          await c.ok(mode === 'create' ? 'VolumeDriver.Create' : 'VolumeDriver.Remove', { Name });
        }
        samples.addSpan(t0, process.hrtime.bigint());
      }
    });
    // Untimed: what the block made goes, so blocks stay alike.
    for (const dir of ['volumes', 'trash']) {
      for (const e of fs.readdirSync(path.join(this.root, dir))) fs.rmSync(path.join(this.root, dir, e), { recursive: true, force: true });
    }
    if (!counted) return;
    const t = this.tally[mode];
    t.wallMs += r.wallMs;
    for (const v of r.samples.values()) t.samples.add(v);
  }

  stop(): Promise<void> {
    return this.server.stop();
  }
}
