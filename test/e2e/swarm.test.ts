// End to end, through a real dockerd in swarm mode: a service whose mount names
// the driver and its options creates the volume on the node and runs to
// completion. The test makes the swarm itself and always leaves it; it never
// touches an engine that is already part of a swarm.
import t from 'tap';
import { setupE2E } from '../helpers/daemon.js';
import { docker, dockerOk, IMAGE, inspectVolume, mountsUnder, REQUIRED, RUN_ID, Scope, scratchDir, sleep, snapshot, uniq, writeTree } from '../helpers/docker.js';

const d = await setupE2E(t);

if (d) {
  t.test('a swarm service mounting a volume of the driver with volume-opt=base runs to completion and sees the base', async (t) => {
    const state = (await dockerOk(['info', '--format', '{{.Swarm.LocalNodeState}}'])).trim();
    if (state !== 'inactive') {
      const why = `the engine is already in swarm state "${state}"; this test only uses an engine it can put in and out of a swarm`;
      if (REQUIRED) t.fail(why);
      else t.plan(0, why);
      return;
    }

    // Swarm creates docker_gwbridge, a Linux bridge on the host. Name the
    // bridge after the run so it can never clash with another engine's.
    let madeGwbridge = false;
    if ((await docker(['network', 'inspect', 'docker_gwbridge'])).code !== 0) {
      await dockerOk([
        'network', 'create', '--driver', 'bridge',
        '-o', `com.docker.network.bridge.name=oegw${RUN_ID}`,
        '-o', 'com.docker.network.bridge.enable_icc=false',
        '-o', 'com.docker.network.bridge.enable_ip_masquerade=false',
        'docker_gwbridge',
      ]);
      madeGwbridge = true;
    }
    const base = await scratchDir(t, 'base');
    await writeTree(base, { 'base.txt': 'from the base\n' });
    const before = await snapshot(base);
    const s = new Scope(t);
    const svc = uniq(`ontop-e2e-${RUN_ID}-svc`);
    let inSwarm = false;
    // Registered before the Scope's own teardown runs: the service goes first
    // (its task holds the volume), then the swarm, then the bridge network.
    t.teardown(async () => {
      if (inSwarm) {
        await docker(['service', 'rm', svc]);
        for (let i = 0; i < 60; i++) {
          const ps = await docker(['ps', '-aq', '--filter', `label=com.docker.swarm.service.name=${svc}`]);
          if (ps.stdout.trim() === '') break;
          await sleep(500);
        }
        const left = await docker(['swarm', 'leave', '--force']);
        if (left.code !== 0) process.stderr.write(`# docker swarm leave --force: ${left.stderr}\n`);
      }
      if (madeGwbridge) {
        for (let i = 0; i < 20; i++) {
          const r = await docker(['network', 'rm', 'docker_gwbridge']);
          if (r.code === 0 || /not found|no such/i.test(r.stderr)) break;
          await sleep(500);
        }
      }
    });

    // The scheduler only places tasks on nodes that report the plugin, and a
    // node reports an unmanaged plugin only once dockerd has used it. (Not
    // `docker volume ls`: it also calls every plugin dockerd ever used, and a
    // gone one costs 15 s of retries.)
    const warm = await s.createVolume(d.name, { base });
    await dockerOk(['volume', 'rm', warm]);
    s.volumes.delete(warm);
    const init = await docker(['swarm', 'init', '--advertise-addr', '127.0.0.1']);
    t.equal(init.code, 0, 'docker swarm init', { stderr: init.stderr });
    if (init.code !== 0) return;
    inSwarm = true;

    const v = s.volume('svc');
    const created = await docker([
      'service', 'create', '--detach', '--name', svc, '--restart-condition', 'none',
      '--mount', `type=volume,source=${v},target=/d,volume-driver=${d.name},volume-opt=base=${base}`,
      IMAGE, 'sh', '-c', 'cat /d/base.txt > /d/seen && echo task-wrote > /d/task && cat /d/seen',
    ]);
    t.equal(created.code, 0, 'docker service create', { stderr: created.stderr });

    let last = '';
    const end = Date.now() + 120_000;
    while (Date.now() < end) {
      const ps = await docker(['service', 'ps', svc, '--no-trunc', '--format', '{{.CurrentState}}|{{.Error}}']);
      last = ps.stdout.trim() || ps.stderr.trim();
      if (/^(Complete|Failed|Rejected|Shutdown|Orphaned)/m.test(last)) break;
      await sleep(500);
    }
    t.match(last, /^Complete/, `the task completes (docker service ps: ${last})`);

    const info = await inspectVolume(v);
    t.equal(info.Driver, d.name, 'the node created the volume with the driver');
    t.same(info.Options, { base }, 'with the options from the service’s mount');
    const r = await s.run([`${v}:/d`], 'cat /d/seen /d/task');
    t.equal(r.stdout, 'from the base\ntask-wrote\n', 'the task read the base and its writes are in the volume');
    t.same(await snapshot(base), before, 'the base is unchanged');
    t.same(mountsUnder(d.root), [], 'nothing stays mounted once the task is done');
  });
}
