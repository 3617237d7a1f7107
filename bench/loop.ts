// A short loop of one verb against a daemon that is already running, for
// tracing it from outside (strace -p, perf): Mount+Unmount cycles of one
// volume, timed Creates, or Creates then timed Removes, optionally with
// other volumes mounted meanwhile. Everything it makes it removes again.
//
//   node dist-bench/bench/loop.js --socket S --base B --verb cycle|create|remove [--n 200] [--mounted 1000]
//
// With --pause, it waits for a line on stdin before and after the traced
// loop, so a tracer can attach around exactly that loop.
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import { mountId, PluginClient } from './client.js';

async function waitForEnter(what: string): Promise<void> {
  process.stderr.write(`${what}: press Enter\n`);
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => rl.once('line', () => resolve()));
  rl.close();
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      socket: { type: 'string' },
      base: { type: 'string' },
      verb: { type: 'string' },
      n: { type: 'string' },
      mounted: { type: 'string' },
      pause: { type: 'boolean' },
    },
  });
  if (!values.socket || !values.base || !['cycle', 'create', 'remove'].includes(values.verb ?? '')) {
    throw new Error('usage: loop.js --socket S --base B --verb cycle|create|remove [--n N] [--mounted M] [--pause]');
  }
  const n = Number(values.n ?? 200);
  const mounted = Number(values.mounted ?? 0);
  const c = new PluginClient(values.socket);
  const Opts = { base: values.base };
  const held: { Name: string; ID: string }[] = [];
  for (let i = 0; i < mounted; i++) {
    const req = { Name: `loop-held-${i}`, ID: mountId() };
    await c.ok('VolumeDriver.Create', { Name: req.Name, Opts });
    await c.ok('VolumeDriver.Mount', req);
    held.push(req);
  }
  const victims = values.verb === 'cycle' ? [] : Array.from({ length: n }, (_, i) => `loop-rm-${i}`);
  if (values.verb === 'remove') for (const Name of victims) await c.ok('VolumeDriver.Create', { Name, Opts });
  if (values.verb === 'cycle') await c.ok('VolumeDriver.Create', { Name: 'loop-cycle', Opts });

  if (values.pause) await waitForEnter('ready');
  const t0 = process.hrtime.bigint();
  if (values.verb === 'cycle') {
    for (let i = 0; i < n; i++) {
      const req = { Name: 'loop-cycle', ID: mountId() };
      await c.ok('VolumeDriver.Mount', req);
      await c.ok('VolumeDriver.Unmount', req);
    }
  } else if (values.verb === 'create') {
    for (const Name of victims) await c.ok('VolumeDriver.Create', { Name, Opts });
  } else {
    for (const Name of victims) await c.ok('VolumeDriver.Remove', { Name });
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  process.stdout.write(`${JSON.stringify({ verb: values.verb, n, mounted, ops_s: n / s })}\n`);
  if (values.pause) await waitForEnter('done');

  if (values.verb === 'cycle') await c.ok('VolumeDriver.Remove', { Name: 'loop-cycle' });
  if (values.verb === 'create') for (const Name of victims) await c.ok('VolumeDriver.Remove', { Name });
  for (const req of held) {
    await c.ok('VolumeDriver.Unmount', req);
    await c.ok('VolumeDriver.Remove', { Name: req.Name });
  }
  c.close();
}

main().catch((err: unknown) => {
  process.stderr.write(`loop: ${(err as Error).message}\n`);
  process.exit(1);
});
