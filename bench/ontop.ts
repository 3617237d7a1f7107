// The phases that drive ontop itself: Create, Get, List, Remove (with and
// without other volumes mounted), Mount and Unmount in three shapes, a large
// Remove, restart time and memory. One daemon on a scratch state root and
// socket, fed as dockerd would feed it; the floors it is read against run
// between its timed rounds (see Interleave).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { PluginClient, mountId } from './client.js';
import { isMounted, mountsUnder } from './cleanup.js';
import { bareNodeMemory, Daemon, type DaemonOptions } from './daemon.js';
import { withClients } from './load.js';
import { loopRow, type Report, type Row } from './report.js';
import { TARGET_FILES, TARGET_VOLUMES, type Sizes } from './sizes.js';
import { Samples, median, msSince } from './stats.js';
import type { MountpointResponse } from '../lib/protocol.js';

const MiB = 1024;

/** CPU time in ms, user and system. */
class Cpu {
  constructor(
    readonly user: number,
    readonly sys: number,
  ) {}
  minus(o: Cpu): Cpu {
    return new Cpu(this.user - o.user, this.sys - o.sys);
  }
  plus(o: Cpu): Cpu {
    return new Cpu(this.user + o.user, this.sys + o.sys);
  }
}

/** Work to run between rounds of a timed loop. */
export interface Interleave {
  rounds: number;
  between: () => Promise<void>;
}

export class OntopBench {
  readonly daemon: Daemon;
  private client: PluginClient | undefined;
  /** Volumes that exist, in creation order. */
  readonly names: string[] = [];
  private nextIndex = 0;
  private readonly createSamples = new Samples(1024);
  private createWallMs = 0;
  private createCpuMs = new Cpu(0, 0);
  /** Mount IDs the bench holds, so cleanup can hand them back (name → IDs). */
  private readonly held = new Map<string, string[]>();

  constructor(
    private readonly report: Report,
    private readonly sizes: Sizes,
    private readonly base: string,
    opts: DaemonOptions,
  ) {
    this.daemon = new Daemon(opts);
  }

  get root(): string {
    return this.daemon.opts.root;
  }

  get socket(): string {
    return this.daemon.opts.socket;
  }

  /** The daemon's CPU time so far (all its threads), user and system, in ms (10 ms resolution). */
  private cpuMs(): Cpu {
    if (!this.daemon.alive()) return new Cpu(NaN, NaN);
    const { user, sys } = this.daemon.cpuSplit();
    return new Cpu(user * 10, sys * 10);
  }

  /** Daemon CPU per operation, in µs, from the difference of two cpuMs() readings. */
  private static perOp(cpu: Cpu, n: number): { daemonCpuUsPerOp?: number; daemonSysUsPerOp?: number } {
    const total = cpu.user + cpu.sys;
    return Number.isFinite(total) && total >= 0 && n > 0 ? { daemonCpuUsPerOp: (total * 1000) / n, daemonSysUsPerOp: (cpu.sys * 1000) / n } : {};
  }

  private get c(): PluginClient {
    if (!this.client) throw new Error('daemon not started');
    return this.client;
  }

  async start(): Promise<{ connectMs: number; readyMs: number }> {
    this.client?.close();
    const timing = await this.daemon.start();
    this.client = new PluginClient(this.socket);
    return timing;
  }

  async stop(): Promise<void> {
    this.client?.close();
    this.client = undefined;
    await this.daemon.stop();
    // The daemon should remove its own socket; a leftover one is noted, then removed.
    if (fs.existsSync(this.socket)) {
      this.report.info.socketLeftOnExit = true;
      await fsp.rm(this.socket, { force: true });
    }
  }

  /** Restarts a daemon that died (after a failed phase), so later phases still run. */
  async reviveIfDead(): Promise<boolean> {
    if (this.daemon.alive()) return false;
    await this.stop();
    await this.start();
    return true;
  }

  private volumeName(i: number): string {
    return `bench-${String(i).padStart(5, '0')}`;
  }

  /**
   * Creates volumes until `n` exist; every Create is timed into the Create
   * phase. With `interleave`, its `between` runs (untimed here) after every
   * `every` creates, so a floor measured there sees the same machine.
   */
  async createUpTo(n: number, interleave?: { every: number; between: () => Promise<void> }): Promise<void> {
    const opts = { base: this.base };
    let start = process.hrtime.bigint();
    let cpu0 = this.cpuMs();
    while (this.names.length < n) {
      const Name = this.volumeName(this.nextIndex++);
      const reply = await this.c.ok('VolumeDriver.Create', { Name, Opts: opts });
      this.createSamples.add(Number(reply.ns) / 1e6);
      this.names.push(Name);
      if (interleave && this.names.length % interleave.every === 0) {
        this.createWallMs += msSince(start);
        this.createCpuMs = this.createCpuMs.plus(this.cpuMs().minus(cpu0));
        await interleave.between();
        start = process.hrtime.bigint();
        cpu0 = this.cpuMs();
      }
    }
    this.createWallMs += msSince(start);
    this.createCpuMs = this.createCpuMs.plus(this.cpuMs().minus(cpu0));
  }

  /**
   * The daemon's RssAnon + RssFile beside a bare `node -e` measured just
   * before; `limitMiB` is the goal for the difference.
   */
  async memoryRow(id: string, name: string, limitMiB?: number, applies = true): Promise<void> {
    const bare = await bareNodeMemory();
    const bareMiB = (bare.anonKiB + bare.fileKiB) / MiB;
    this.report.add({
      id: `${id}-bare`,
      name: `Bare node -e, RssAnon + RssFile (beside ${id})`,
      value: bareMiB,
      unit: 'MiB',
      note: `RssAnon ${(bare.anonKiB / MiB).toFixed(1)} MiB, RssFile ${(bare.fileKiB / MiB).toFixed(1)} MiB`,
    });
    const m = this.daemon.memory();
    const mib = (m.anonKiB + m.fileKiB) / MiB;
    this.report.add(
      {
        id,
        name,
        value: mib,
        unit: 'MiB',
        ref: 'bare node',
        overMiB: mib - bareMiB,
        note: `RssAnon ${(m.anonKiB / MiB).toFixed(1)} MiB (bare node ${(bare.anonKiB / MiB).toFixed(1)}), RssFile ${(m.fileKiB / MiB).toFixed(1)} MiB (bare node ${(bare.fileKiB / MiB).toFixed(1)}); VmHWM (peak) ${(m.hwmKiB / MiB).toFixed(1)} MiB`,
        ...(limitMiB !== undefined ? { target: { text: `≤ bare + ${limitMiB} MiB`, metric: 'overMiB', cmp: '<=', threshold: limitMiB } } : {}),
      },
      applies,
    );
  }

  async rssIdle(): Promise<void> {
    await sleep(500);
    await this.memoryRow('rss-idle', 'RSS idle (0 volumes)', 8);
  }

  async rssLoaded(): Promise<void> {
    await sleep(1000);
    const n = this.names.length;
    await this.memoryRow('rss-loaded', `RSS after ${n.toLocaleString('en-US')} volumes`, 16, n >= TARGET_VOLUMES);
  }

  createRow(): void {
    if (this.createSamples.count === 0) return;
    this.report.add(
      loopRow('create', 'Create (sequential)', this.createSamples, this.createWallMs, {
        ...OntopBench.perOp(this.createCpuMs, this.createSamples.count),
        target: { text: '≥ 0.8×', metric: 'ratio', cmp: '>=', threshold: 0.8 },
      }),
    );
  }

  /** List with the current number of volumes; checks once that all of them are listed. */
  async list(): Promise<void> {
    const count = this.names.length;
    const first = JSON.parse((await this.c.ok('VolumeDriver.List', {})).text) as { Volumes?: unknown[] };
    const note = Array.isArray(first.Volumes) && first.Volumes.length === count ? undefined : `expected ${count} volumes, List returned ${Array.isArray(first.Volumes) ? first.Volumes.length : 'no Volumes array'}`;
    for (let i = 0; i < 5; i++) await this.c.ok('VolumeDriver.List', {});
    const calls = this.sizes.listCalls(count);
    const samples = new Samples(calls);
    const cpu0 = this.cpuMs();
    const start = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) samples.add(Number((await this.c.ok('VolumeDriver.List', {})).ns) / 1e6);
    const wallMs = msSince(start);
    const cpu = OntopBench.perOp(this.cpuMs().minus(cpu0), calls);
    const isTarget = count === Math.max(...this.sizes.listAt);
    this.report.add(
      loopRow(`list-${count}`, `List (${count.toLocaleString('en-US')} volume${count === 1 ? '' : 's'})`, samples, wallMs, {
        ...cpu,
        ...(isTarget ? { target: { text: '≤ 20 ms p50', metric: 'p50Ms', cmp: '<=', threshold: 20 } } : {}),
        ...(note ? { note } : {}),
      }),
      count >= TARGET_VOLUMES,
    );
  }

  /**
   * Get of random existing volumes, sequential then with `clients` clients,
   * in rounds; `beside(clients, calls)` runs between the rounds (the echo
   * ceiling, so both see the same machine).
   */
  async get(beside?: (clients: number, calls: number) => Promise<void>, rounds = 10): Promise<void> {
    const names = this.names;
    if (names.length === 0) throw new Error('no volumes to Get');
    const { getCalls, clients } = this.sizes;
    // Requests built up front: the clock should see the daemon, not Math.random.
    const bodies = Array.from({ length: getCalls }, () => ({ Name: names[Math.floor(Math.random() * names.length)]! }));
    const check = JSON.parse((await this.c.ok('VolumeDriver.Get', bodies[0])).text) as { Volume?: { Name?: string } };
    if (check.Volume?.Name !== bodies[0]!.Name) throw new Error(`Get did not echo the volume name: ${JSON.stringify(check)}`);
    for (let i = 0; i < 500; i++) await this.c.ok('VolumeDriver.Get', bodies[i % bodies.length]);

    for (const n of [1, clients]) {
      const per = Math.ceil(getCalls / n / rounds);
      const samples = new Samples(per * n * rounds);
      let wallMs = 0;
      let cpu = new Cpu(0, 0);
      for (let r = 0; r < rounds; r++) {
        await beside?.(n, per * n);
        const cpu0 = this.cpuMs();
        const part = await withClients(this.socket, n, 0, async (client, i) => {
          for (let k = 0; k < per; k++) samples.add(Number((await client.ok('VolumeDriver.Get', bodies[(r * per * n + i * per + k) % bodies.length])).ns) / 1e6);
        });
        wallMs += part.wallMs;
        cpu = cpu.plus(this.cpuMs().minus(cpu0));
      }
      const extra = n === 1 ? { target: { text: '≥ 0.8×', metric: 'ratio', cmp: '>=', threshold: 0.8 } as const } : {};
      this.report.add(loopRow(n === 1 ? 'get-seq' : 'get-conc', n === 1 ? 'Get (sequential)' : `Get (${n} clients)`, samples, wallMs, { ...OntopBench.perOp(cpu, samples.count), ...extra }));
    }
  }

  private hold(name: string, id: string): void {
    const ids = this.held.get(name);
    if (ids) ids.push(id);
    else this.held.set(name, [id]);
  }

  private release(name: string, id: string): void {
    const ids = this.held.get(name);
    const i = ids?.indexOf(id) ?? -1;
    if (i >= 0) ids!.splice(i, 1);
    if (ids?.length === 0) this.held.delete(name);
  }

  /** Hands back every mount the bench still holds (after a failed phase), through the daemon. */
  async unmountHeld(): Promise<void> {
    if (!this.daemon.alive() || !this.client) return;
    for (const [Name, ids] of [...this.held]) {
      for (const ID of [...ids]) {
        await this.c.ok('VolumeDriver.Unmount', { Name, ID }).catch(() => undefined);
        this.release(Name, ID);
      }
    }
  }

  /**
   * Mount, then Unmount, then the Mount+Unmount cycle, with `clients`
   * clients; `volumeFor(client, k)` picks the volume of the k-th mount.
   */
  async mountShape(shape: 'seq' | 'distinct' | 'one', interleave?: Interleave): Promise<void> {
    const S = this.sizes;
    const clients = shape === 'seq' ? 1 : S.clients;
    const per = shape === 'seq' ? S.mountsSeq : S.mountsPerClient;
    const cycles = shape === 'seq' ? S.cyclesSeq : S.cyclesPerClient;
    const label = shape === 'seq' ? 'sequential' : shape === 'distinct' ? `${clients} clients, distinct volumes` : `${clients} clients, one volume`;
    const need = shape === 'one' ? 1 : clients * per;
    await this.createUpTo(need);
    const names = this.names;
    const volumeFor = (client: number, k: number): string => (shape === 'one' ? names[0]! : names[client * per + k]!);
    const cycleVolume = (client: number): string => (shape === 'one' ? names[0]! : names[client]!);
    const before = mountsUnder(this.root).length;
    const notes: string[] = [];

    // Mount: each client takes `per` fresh IDs.
    const taken: { Name: string; ID: string }[][] = Array.from({ length: clients }, () => []);
    let mountpoint = '';
    let cpu0 = this.cpuMs();
    const mounted = await withClients(this.socket, clients, clients * per, async (client, i, samples) => {
      for (let k = 0; k < per; k++) {
        const req = { Name: volumeFor(i, k), ID: mountId() };
        const reply = await client.ok('VolumeDriver.Mount', req);
        samples.add(Number(reply.ns) / 1e6);
        this.hold(req.Name, req.ID);
        taken[i]!.push(req);
        if (!mountpoint) mountpoint = (JSON.parse(reply.text) as MountpointResponse).Mountpoint;
      }
    });
    const mountCpu = OntopBench.perOp(this.cpuMs().minus(cpu0), clients * per);
    const overlays = mountsUnder(this.root).length - before;
    const expected = shape === 'one' ? 1 : clients * per;
    if (!path.isAbsolute(mountpoint) || !isMounted(mountpoint)) notes.push(`Mountpoint ${JSON.stringify(mountpoint)} is not a mount point`);
    if (overlays !== expected) notes.push(`${overlays} new mounts under the root, expected ${expected}`);
    // One volume, 8 clients: all but the first Mount only add a record, so the HTTP ceiling is the bar.
    const oneGoal = shape === 'one' ? { target: { text: '≥ 0.7×', metric: 'ratio', cmp: '>=', threshold: 0.7 } as const } : {};
    this.report.add(loopRow(`mount-${shape}`, `Mount (${label})`, mounted.samples, mounted.wallMs, { ...mountCpu, ...oneGoal, ...(notes.length ? { note: notes.join('; ') } : {}) }));
    notes.length = 0;

    cpu0 = this.cpuMs();
    const unmounted = await withClients(this.socket, clients, clients * per, async (client, i, samples) => {
      for (const req of taken[i]!) {
        samples.add(Number((await client.ok('VolumeDriver.Unmount', req)).ns) / 1e6);
        this.release(req.Name, req.ID);
      }
    });
    const unmountCpu = OntopBench.perOp(this.cpuMs().minus(cpu0), clients * per);
    const left = mountsUnder(this.root).length - before;
    if (left !== 0) notes.push(`${left} mounts left under the root after the last Unmount`);
    this.report.add(loopRow(`unmount-${shape}`, `Unmount (${label})`, unmounted.samples, unmounted.wallMs, { ...unmountCpu, ...oneGoal, ...(notes.length ? { note: notes.join('; ') } : {}) }));
    notes.length = 0;

    // The cycle: a container's life as the driver sees it (fresh ID, Mount, Unmount).
    const cycle = async (client: PluginClient, Name: string, samples?: Samples): Promise<void> => {
      const req = { Name, ID: mountId() };
      const t0 = process.hrtime.bigint();
      await client.ok('VolumeDriver.Mount', req);
      this.hold(Name, req.ID);
      await client.ok('VolumeDriver.Unmount', req);
      samples?.addSpan(t0, process.hrtime.bigint());
      this.release(Name, req.ID);
    };
    await withClients(this.socket, clients, 0, async (client, i) => {
      for (let k = 0; k < 20; k++) await cycle(client, cycleVolume(i));
    });
    // With `interleave`, the cycles run in rounds with other work (the floor) between them, so
    // noise from the rest of the machine falls on both alike; only ontop's rounds are timed here.
    const rounds = interleave?.rounds ?? 1;
    const cycled = { samples: new Samples(clients * cycles), wallMs: 0, cpuMs: new Cpu(0, 0) };
    for (let r = 0; r < rounds; r++) {
      await interleave?.between();
      const n = Math.floor(cycles / rounds) + (r < cycles % rounds ? 1 : 0);
      cpu0 = this.cpuMs();
      const part = await withClients(this.socket, clients, 0, async (client, i) => {
        for (let k = 0; k < n; k++) await cycle(client, cycleVolume(i), cycled.samples);
      });
      cycled.wallMs += part.wallMs;
      cycled.cpuMs = cycled.cpuMs.plus(this.cpuMs().minus(cpu0));
    }
    const after = mountsUnder(this.root).length - before;
    if (after !== 0) notes.push(`${after} mounts left under the root after the cycles`);
    this.report.add(
      loopRow(`cycle-${shape}`, `Mount+Unmount cycle (${label})`, cycled.samples, cycled.wallMs, {
        ...OntopBench.perOp(cycled.cpuMs, cycled.samples.count),
        ...(shape === 'seq' ? { target: { text: '≥ 0.5×', metric: 'ratio', cmp: '>=', threshold: 0.5 } as const } : oneGoal),
        ...(notes.length ? { note: notes.join('; ') } : {}),
      }),
    );
  }

  /** Stops and restarts the daemon on the same root; times spawn → connectable → first reply, and the first List. */
  async startup(): Promise<void> {
    const n = this.names.length;
    const connect: number[] = [];
    const ready: number[] = [];
    const firstList: number[] = [];
    for (let r = 0; r < this.sizes.restarts; r++) {
      await this.stop();
      const t = await this.start();
      connect.push(t.connectMs);
      ready.push(t.readyMs);
      const listed = await this.c.ok('VolumeDriver.List', {});
      firstList.push(Number(listed.ns) / 1e6);
    }
    const label = `${n.toLocaleString('en-US')} volumes`;
    const applies = n >= TARGET_VOLUMES;
    const row = (id: string, name: string, values: number[], extra: object = {}) => {
      const s = new Samples(values.length);
      for (const v of values) s.add(v);
      const sum = s.summary();
      return { id, name, n: values.length, p50Ms: sum.p50Ms, p99Ms: sum.p99Ms, meanMs: sum.meanMs, maxMs: sum.maxMs, ...extra };
    };
    this.report.add(row('start-connect', `Start → socket accepts (${label})`, connect));
    this.report.add(
      row('start-ready', `Start → first reply (${label})`, ready, {
        target: { text: '≤ 1,000 ms p50', metric: 'p50Ms', cmp: '<=', threshold: 1000 },
        note: `node's own start-up is included; median first List after start ${median(firstList).toFixed(1)} ms`,
      }),
      applies,
    );
    await this.memoryRow('rss-restarted', `RSS after restart (${label})`);
  }

  /**
   * Removes the newest `count` volumes (never mounted), one after another,
   * in rounds with `interleave` between them; `keep` volumes at the front are
   * never removed (they may be mounted).
   */
  async remove(id: string, label: string, count: number, keep: number, interleave?: Interleave, extra: Partial<Row> = {}): Promise<Row> {
    count = Math.min(count, Math.max(0, this.names.length - Math.max(1, keep)));
    const victims = this.names.slice(this.names.length - count);
    const samples = new Samples(count);
    // Remove's cost grows with the mount table, whoever's mounts fill it: the figure is kept beside the rate.
    const mountEntries = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).length;
    const rounds = interleave?.rounds ?? 1;
    let wallMs = 0;
    let cpu = new Cpu(0, 0);
    let next = 0;
    for (let r = 0; r < rounds; r++) {
      await interleave?.between();
      const n = Math.floor(count / rounds) + (r < count % rounds ? 1 : 0);
      const cpu0 = this.cpuMs();
      const start = process.hrtime.bigint();
      for (const Name of victims.slice(next, next + n)) samples.add(Number((await this.c.ok('VolumeDriver.Remove', { Name })).ns) / 1e6);
      wallMs += msSince(start);
      cpu = cpu.plus(this.cpuMs().minus(cpu0));
      next += n;
    }
    this.names.length -= count;
    const gone = await this.c.request('VolumeDriver.Get', { Name: victims[0] });
    const notes = [`${mountEntries} entries in the mount table when it began (every mount of the namespace, not only ontop's)`];
    if (gone.status === 200 && !gone.text.includes('"Err"')) notes.push(`Get still finds ${victims[0]} after Remove`);
    const note = notes.join('; ');
    return this.report.add(loopRow(id, label, samples, wallMs, { ...OntopBench.perOp(cpu, count), ...extra, ...(note ? { note } : {}) }));
  }

  /** Mounts the first `n` volumes (one ID each, `clients` at once) and holds them; returns a function that unmounts them. */
  async mountMany(n: number, clients: number): Promise<() => Promise<void>> {
    await this.createUpTo(n + 1);
    const names = this.names.slice(0, n);
    const reqs = names.map((Name) => ({ Name, ID: mountId() }));
    const per = Math.ceil(n / clients);
    await withClients(this.socket, clients, 0, async (client, i) => {
      for (const req of reqs.slice(i * per, (i + 1) * per)) {
        await client.ok('VolumeDriver.Mount', req);
        this.hold(req.Name, req.ID);
      }
    });
    return async () => {
      await withClients(this.socket, clients, 0, async (client, i) => {
        for (const req of reqs.slice(i * per, (i + 1) * per)) {
          await client.ok('VolumeDriver.Unmount', req);
          this.release(req.Name, req.ID);
        }
      });
    };
  }

  /** Remove of a volume whose upper layer holds `bigFiles` files: must return well inside dockerd's deadline. */
  async removeBig(): Promise<void> {
    const files = this.sizes.bigFiles;
    const Name = `bench-big-${this.nextIndex++}`;
    await this.c.ok('VolumeDriver.Create', { Name, Opts: { base: this.base } });
    const upper = path.join(this.root, 'volumes', Name, 'upper');
    let where: string;
    let via: string;
    let ID: string | undefined;
    if (fs.existsSync(upper)) {
      where = upper;
      via = 'written straight into <root>/volumes/<name>/upper';
    } else {
      ID = mountId();
      where = (await this.c.json<MountpointResponse>('VolumeDriver.Mount', { Name, ID })).Mountpoint;
      this.hold(Name, ID);
      via = 'written through a Mount';
    }
    const fillStart = process.hrtime.bigint();
    const perDir = 1000;
    for (let d = 0; d * perDir < files; d++) {
      const dir = path.join(where, `d${d}`);
      fs.mkdirSync(dir);
      for (let f = 0; f < perDir && d * perDir + f < files; f++) fs.closeSync(fs.openSync(path.join(dir, `f${f}`), 'w'));
    }
    const fillMs = msSince(fillStart);
    if (ID) {
      await this.c.ok('VolumeDriver.Unmount', { Name, ID });
      this.release(Name, ID);
    }
    const reply = await this.c.ok('VolumeDriver.Remove', { Name });
    const ms = Number(reply.ns) / 1e6;
    const busyMs = await this.daemon.waitIdle(120_000);
    const gone = await this.c.request('VolumeDriver.Get', { Name });
    const stillThere = gone.status === 200 && !gone.text.includes('"Err"');
    this.report.add(
      {
        id: 'remove-big',
        name: `Remove (${files.toLocaleString('en-US')}-file upper)`,
        n: 1,
        p50Ms: ms,
        p99Ms: ms,
        target: { text: '≤ 100 ms', metric: 'p50Ms', cmp: '<=', threshold: 100 },
        note: `files ${via} in ${(fillMs / 1000).toFixed(1)} s; daemon busy ${(busyMs / 1000).toFixed(1)} s more after the reply${stillThere ? '; Get still finds the volume' : ''}`,
      },
      files >= TARGET_FILES,
    );
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

