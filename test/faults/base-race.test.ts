// --allow-base against a racing process: the checked directory is the one
// the kernel mounts. A second process swaps the base with a symlink to a
// directory outside the allowed tree (renameat2 RENAME_EXCHANGE in a tight
// loop) while Create and Mount/Unmount run; no mount may ever show the
// outside directory, with the host seen at / and through --host-root.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DriverError } from '../../lib/errors.js';
import { env } from '../helpers/tmp.js';

const CYCLES = Number(process.env.ONTOP_RACE_CYCLES ?? 750);
const CREATES = 100;

/** Swaps two paths atomically, over and over, until killed. */
const SWAPPER = `
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
sys.stdout.write('go\\n'); sys.stdout.flush()
while True:
    if libc.renameat2(-100, a, -100, b, 2) != 0:
        sys.exit(ctypes.get_errno())
`;

for (const viaHostRoot of [false, true]) {
  t.test(`a base swapped for a symlink to outside the allowed tree never gets mounted${viaHostRoot ? ' (through --host-root)' : ''}`, async (t) => {
    const e = await env(t);
    const host = path.join(e.dir, 'host');
    const allowed = path.join(host, 'A');
    fs.mkdirSync(path.join(allowed, 'd'), { recursive: true });
    fs.writeFileSync(path.join(allowed, 'd', 'inside'), '');
    fs.mkdirSync(path.join(host, 'O'));
    fs.writeFileSync(path.join(host, 'O', 'outside'), '');
    // The link is relative, so it names O through either view of the host.
    fs.symlinkSync('../O', path.join(allowed, 'link'));
    const asHost = (p: string): string => (viaHostRoot ? '/' + path.relative(host, p) : p);
    const d = await e.open(viaHostRoot ? { hostRoot: host, allowBases: ['/A'] } : { allowBases: [allowed] });
    const base = asHost(path.join(allowed, 'd'));
    t.same(await d.create({ Name: 'v', Opts: { base } }), {});

    const swapper = spawn('python3', ['-c', SWAPPER, path.join(allowed, 'd'), path.join(allowed, 'link')], { stdio: ['ignore', 'pipe', 'inherit'] });
    e.children.push(swapper);
    await new Promise((r) => swapper.stdout!.once('data', r));

    let refused = 0;
    let mounted = 0;
    let escapes = 0;
    for (let i = 0; i < CYCLES; i++) {
      const id = `m${i}`;
      let mountpoint: string;
      try {
        mountpoint = (await d.mount({ Name: 'v', ID: id })).Mountpoint;
      } catch (err) {
        if (!(err instanceof DriverError) || !/now resolves to|outside the allowed/.test(err.message)) throw err;
        refused++;
        continue;
      }
      mounted++;
      if (fs.readdirSync(mountpoint).includes('outside')) escapes++;
      await d.unmount({ Name: 'v', ID: id });
    }
    let created = 0;
    for (let i = 0; i < CREATES; i++) {
      try {
        await d.create({ Name: `c${i}`, Opts: { base } });
        created++;
      } catch (err) {
        if (!(err instanceof DriverError) || !/outside the allowed/.test(err.message)) throw err;
      }
    }
    swapper.kill('SIGKILL');
    await new Promise((r) => swapper.once('exit', r));
    t.comment(`${mounted} mounts, ${refused} refused while swapped; ${created} of ${CREATES} creates accepted`);
    t.equal(escapes, 0, 'no mount ever showed the directory outside the allowed tree');
    t.ok(mounted > 0 && refused > 0, 'the race was real: some Mounts met the swapped path, some the directory');
    // The directory is recorded under the name it had when it was checked: d, or link while swapped.
    const names = new Set([base, asHost(path.join(allowed, 'link'))]);
    for (const { Name } of (await d.list()).Volumes) {
      const status = (await d.get({ Name })).Volume.Status as { base: string };
      t.ok(names.has(status.base), `${Name} recorded the allowed directory (${status.base})`);
    }
  });
}
