// End to end, through a real dockerd and the real `ontop` commands (run as
// child processes): a container makes every kind of change; `ontop diff`
// lists exactly those; a clone (ontop clone, and -o from=) shows the same
// view as its source; `ontop reset` brings back the pristine base; `ontop
// commit` makes the base equal, byte for byte and in metadata, to what the
// container saw. Bad input changes nothing. With the daemon stopped, the
// commands work on the state root themselves.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { lgetxattr, lsetxattr } from '../../lib/native.js';
import { MAIN, setupE2E } from '../helpers/daemon.js';
import { docker, dockerOk, liveMountpoint, REPO, RUN_ID, Scope, scratchDir, snapshot, uniq, waitFor, writeTree } from '../helpers/docker.js';

const d = await setupE2E(t);

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `node dist/main.js ARGS` as a child, like a user would run `ontop ARGS`. */
function ontop(args: string[]): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [MAIN, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    p.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

if (d) {
  const on = ['--name', d.name];
  const BASE: Record<string, string> = {
    'keep.txt': 'keep\n',
    'content.txt': 'old\n',
    'mode.txt': 'mode\n',
    'delete.txt': 'bye\n',
    'deldir/a.txt': 'a\n',
    'deldir/sub/b.txt': 'b\n',
    'replace/old.txt': 'old\n',
    'ren/r.txt': 'r\n',
    'xattr.txt': 'x\n',
  };
  // Every kind of change a container makes (an xattr is set from the host: busybox has no setfattr).
  const SCRIPT = [
    'set -e',
    'cd /d',
    'echo new > content.txt',
    'chmod 600 mode.txt',
    'rm delete.txt',
    'rm -r deldir',
    'rm -r replace; mkdir replace; echo fresh > replace/new.txt',
    'mv ren renamed',
    'ln -s keep.txt link',
    'echo h > hl1; ln hl1 hl2',
    'echo s > "with space.txt"',
    'printf n > "$(printf "new\\nline")"',
    'mkdir newdir; echo f > newdir/f',
    'touch /tmp/done',
    'exec sleep 600',
  ].join('\n');
  const EXPECTED = [
    'C /content.txt',
    'C /mode.txt',
    'D /delete.txt',
    'D /deldir',
    'C /replace',
    'A /replace/new.txt',
    'D /replace/old.txt',
    'D /ren',
    'A /renamed',
    'A /renamed/r.txt',
    'A /link',
    'A /hl1',
    'A /hl2',
    'A /with space.txt',
    'A /new\nline',
    'A /newdir',
    'A /newdir/f',
    'C /xattr.txt',
  ];

  /** Runs a container on `volume` until removed; returns its name and the view's path on the host. */
  async function hold(s: Scope, volume: string, script = 'touch /tmp/done; exec sleep 600'): Promise<{ name: string; view: string }> {
    const name = await s.start([`${volume}:/d`], script);
    const ready = await waitFor(async () => (await docker(['exec', name, 'test', '-e', '/tmp/done'])).code === 0, 60_000, 100);
    if (!ready) throw new Error(`container ${name} did not get ready: ${(await docker(['logs', name])).stderr}`);
    return { name, view: await liveMountpoint(volume) };
  }

  /**
   * A name for a volume that must not come to exist, kept out of the Scope until it does: its cleanup would
   * ask dockerd to remove it, which for a name dockerd does not know means asking every plugin it ever used.
   */
  const unborn = (prefix: string): string => uniq(`oe${RUN_ID}-${prefix}`);

  async function release(s: Scope, name: string): Promise<void> {
    await dockerOk(['rm', '-f', name]);
    s.containers.delete(name);
  }

  /** What a view holds, xattrs and hard links included. */
  async function look(dir: string): Promise<{ tree: Record<string, string>; xattr: string; sameInode: boolean }> {
    const [a, b] = await Promise.all([fsp.lstat(path.join(dir, 'hl1')), fsp.lstat(path.join(dir, 'hl2'))]);
    return {
      tree: await snapshot(dir),
      xattr: (await lgetxattr(path.join(dir, 'xattr.txt'), 'user.ontop-test')).toString(),
      sameInode: a.ino === b.ino,
    };
  }

  t.test('diff lists every kind of change; clones show the same view; reset restores the base; commit makes the base what the container saw', async (t) => {
    const base = await scratchDir(t, 'base');
    const other = await scratchDir(t, 'other');
    const s = new Scope(t);
    await writeTree(base, BASE);
    await fsp.chmod(path.join(base, 'mode.txt'), 0o644);
    const pristine = await snapshot(base);
    const v = await s.createVolume(d.name, { base });

    const c = await hold(s, v, SCRIPT);
    await lsetxattr(path.join(c.view, 'xattr.txt'), 'user.ontop-test', Buffer.from('on the view'));
    const seen = await look(c.view);
    t.equal(seen.xattr, 'on the view');
    t.ok(seen.sameInode, 'the container made a hard link');

    // In use: diff and ls work, reset and commit are refused; nothing changes.
    const diffLive = await ontop(['diff', ...on, v]);
    t.equal(diffLive.code, 0, 'diff works while the volume is in use', { stderr: diffLive.stderr });
    for (const cmd of ['reset', 'commit']) {
      const r = await ontop([cmd, ...on, v]);
      t.equal(r.code, 1, `${cmd} is refused while in use`);
      t.equal(r.stderr, `ontop: volume ${v} is in use by 1 mount; stop its containers first\n`);
    }
    const busy = unborn('busy');
    const clonedLive = await ontop(['clone', ...on, v, busy]);
    if (clonedLive.code === 0) s.volumes.add(busy);
    t.equal(clonedLive.code, 1, 'clone of a volume in use is refused');
    const ls = await ontop(['ls', ...on, '--json']);
    t.equal(ls.code, 0, 'ls works', { stderr: ls.stderr });
    t.match(JSON.parse(ls.stdout).volumes, [{ name: v, base, volatile: false, users: 1, mounted: true, size: { files: Number } }]);
    await release(s, c.name);
    t.same(await snapshot(base), pristine, 'the base is untouched');

    const json = await ontop(['diff', ...on, '--json', v]);
    t.equal(json.code, 0, 'diff --json', { stderr: json.stderr });
    const changes = (JSON.parse(json.stdout).changes as Array<{ kind: string; path: string }>).map((x) => `${x.kind} ${x.path}`);
    t.same([...changes].sort(), [...EXPECTED].sort(), 'diff lists exactly the changes the container made');
    const text = await ontop(['diff', ...on, v]);
    t.equal(text.stdout.split('\n').length - 1, EXPECTED.length, 'one line per change');
    t.ok(text.stdout.split('\n').includes('A "/new\\nline"'), 'a newline in a name is printed unambiguously', { stdout: text.stdout });
    t.ok(text.stdout.split('\n').includes('A /with space.txt'));

    // Clones: ontop clone and -o from= show the same view as their source.
    const v2 = s.volume('clone');
    const cloned = await ontop(['clone', ...on, v, v2]);
    t.equal(cloned.code, 0, 'ontop clone', { stderr: cloned.stderr });
    t.equal(cloned.stdout, `${v2}\n`);
    // dockerd learns of a volume it did not create when asked with the driver named: it asks that driver
    // (Get) and creates nothing. A bare -v NAME would ask every plugin dockerd ever used.
    await dockerOk(['volume', 'create', '-d', d.name, v2]);
    const v3 = await s.createVolume(d.name, { from: v });
    for (const clone of [v2, v3]) {
      const h = await hold(s, clone);
      t.same(await look(h.view), seen, `${clone === v2 ? 'ontop clone' : 'from='} shows the same view as its source`);
      await release(s, h.name);
    }

    // from= refusals: itself, a missing volume, another base. Nothing is made.
    const self = unborn('self');
    for (const [name, opts, msg] of [
      [self, ['-o', `from=${self}`], /names the volume being created/],
      [unborn('bad'), ['-o', 'from=nope-missing'], /no such volume: nope-missing/],
      [unborn('bad'), ['-o', `from=${v}`, '-o', `base=${other}`], /is another: leave base out/],
    ] as const) {
      const r = await docker(['volume', 'create', '-d', d.name, ...opts, name]);
      if (r.code === 0) s.volumes.add(name);
      t.not(r.code, 0, opts.join(' '));
      t.match(r.stderr, msg);
    }
    const vols = (await dockerOk(['volume', 'ls', '-q', '--filter', `driver=${d.name}`])).split('\n').sort();
    t.same(vols, [v, v2, v3].sort(), 'no volume was made by a refused create');

    // Reset brings back the pristine base.
    const reset = await ontop(['reset', ...on, v2]);
    t.equal(reset.code, 0, 'reset', { stderr: reset.stderr });
    t.equal(reset.stdout, '');
    const r = await hold(s, v2);
    const { './': _root, ...view } = await snapshot(r.view);
    const { './': _baseRoot, ...pristineEntries } = pristine;
    t.same(view, pristineEntries, 'after reset the view is the pristine base');
    await release(s, r.name);
    const emptied = await ontop(['diff', ...on, v2]);
    t.equal(emptied.stdout, '', 'no changes after reset');

    // Commit: a dry run prints the plan and writes nothing; then the base becomes what the container saw.
    const dry = await ontop(['commit', ...on, '--dry-run', v]);
    t.equal(dry.code, 0, 'dry run', { stderr: dry.stderr });
    t.same(dry.stdout.split('\n').filter(Boolean).sort(), text.stdout.split('\n').filter(Boolean).sort(), 'the plan is the diff');
    t.same(await snapshot(base), pristine, 'a dry run writes nothing');
    const commit = await ontop(['commit', ...on, v]);
    t.equal(commit.code, 0, 'commit', { stderr: commit.stderr });
    t.same(await look(base), seen, 'the base is now, byte for byte and in metadata, what the container saw');
    const after = await ontop(['diff', ...on, v]);
    t.equal(after.stdout, '', 'the volume has no changes left');
    const again = await hold(s, v);
    t.same(await look(again.view), seen, 'and its view is the same as before');
    await release(s, again.name);
  });

  t.test('bad input to the commands changes nothing: unknown or invalid names, bad usage', async (t) => {
    const before = fs.readdirSync(path.join(d.root, 'volumes')).sort();
    for (const [args, code, msg] of [
      [['diff', ...on, 'nope-missing'], 1, /^ontop: no such volume: nope-missing/],
      [['reset', ...on, '../etc'], 1, /^ontop: volume name "..\/etc" is not allowed/],
      [['commit', ...on, 'a', 'b'], 2, /^ontop: commit takes VOLUME, got "a" "b"/],
      [['clone', ...on, 'nope-missing', 'x'], 1, /^ontop: no such volume: nope-missing/],
      [['frob'], 2, /^ontop: unknown command "frob"/],
    ] as const) {
      const r = await ontop([...args]);
      t.equal(r.code, code, args.join(' '));
      t.match(r.stderr, msg);
      t.equal(r.stderr.split('\n').length, 2, 'one line');
    }
    t.same(fs.readdirSync(path.join(d.root, 'volumes')).sort(), before);
  });

  t.test('with the daemon stopped, a command works on the state root itself; the daemon starts again after it', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'a.txt': 'a\n' });
    const v = await s.createVolume(d.name, { base });
    const w = await s.run([`${v}:/d`], 'echo b > /d/b.txt');
    t.equal(w.code, 0, 'container', { stderr: w.stderr });
    await d.stop();
    const off = await ontop(['diff', ...on, '--root', d.root, v]);
    t.equal(off.code, 0, 'diff offline', { stderr: off.stderr });
    t.equal(off.stdout, 'A /b.txt\n');
    const noRoot = await ontop(['ls', ...on, '--root', path.join(d.root, 'nope')]);
    t.equal(noRoot.code, 1);
    t.match(noRoot.stderr, /no daemon answers on .*there is no state root at/);
    await d.restart();
    const on2 = await ontop(['ls', ...on, '--root', d.root]);
    t.equal(on2.code, 0, 'and through the daemon again', { stderr: on2.stderr });
    const wrong = await ontop(['ls', ...on, '--root', base]);
    t.equal(wrong.code, 1);
    t.match(wrong.stderr, /serves the state root .*, not /);
  });
}
