// The entry point with a command: `ontop ls` (any first argument that is no
// flag) is a client (cli.ts), not the daemon; its exit code is the process's.
import t from 'tap';
import path from 'node:path';
import { isCommand, run, type MainDeps } from '../lib/main.js';
import { scratch } from './helpers/fake-driver.js';

function deps(over: Partial<MainDeps> = {}): { deps: MainDeps; exits: number[]; tuned: number[] } {
  const exits: number[] = [];
  const tuned: number[] = [];
  return {
    exits,
    tuned,
    deps: {
      stdout: () => {},
      stderr: () => {},
      getuid: () => 0,
      readFile: () => '',
      openDriver: async () => Promise.reject(new Error('the daemon must not start')),
      proc: { on: () => undefined },
      exit: (code) => void exits.push(code),
      tuneHeap: () => void tuned.push(1),
      ...over,
    },
  };
}

t.test('isCommand: a first argument that is no flag', async (t) => {
  t.equal(isCommand([]), false);
  t.equal(isCommand(['--name', 'x']), false);
  t.equal(isCommand(['ls']), true);
  t.equal(isCommand(['frob', '--json']), true);
});

t.test('a command runs instead of the daemon, and its code is the exit code', async (t) => {
  const got: Array<[string[], NodeJS.ProcessEnv]> = [];
  const h = deps({ runCommand: async (argv, env) => (got.push([argv, env]), 3) });
  t.equal(await run(['diff', 'web'], { ONTOP_NAME: 'x' }, h.deps), undefined);
  t.same(got, [[['diff', 'web'], { ONTOP_NAME: 'x' }]]);
  t.same(h.exits, [3]);
  t.same(h.tuned, [], 'no daemon tuning for a command');
});

t.test('without an injected runner, the real commands run: bad usage exits 2, no daemon and no state root exits 1', async (t) => {
  const usage = deps();
  await run(['ls', 'extra'], {}, usage.deps);
  t.same(usage.exits, [2]);
  const dir = await scratch(t);
  const missing = deps();
  await run(['ls', '--socket', path.join(dir, 'none.sock'), '--root', path.join(dir, 'none')], {}, missing.deps);
  t.same(missing.exits, [1]);
});
