#!/usr/bin/env node
// Builds the managed (v2) Docker plugin: a directory holding config.json and
// rootfs/, ready for `docker plugin create ontop <dir>` (driver name ontop:latest).
//
//   node scripts/package-plugin.mjs [--out DIR] [--dist DIR] [--node PATH] [--build] [--no-check]
//
// rootfs/ gets the node binary, exactly the shared libraries it and the addon
// need (read from `ldd`, dynamic loader included, at the paths ldd reports),
// the compiled dist/, the addon, a trimmed package.json, and the few files
// and directories the daemon uses at run time. No image is pulled.
//
// This is a build tool, not the product: it may run child processes (ldd,
// ldconfig, chroot for the smoke test, tsc with --build).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { builtinModules } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Where things live inside the plugin's root filesystem. */
export const LAYOUT = {
  node: '/usr/local/bin/node',
  app: '/opt/ontop',
  stateRoot: '/var/lib/ontop', // propagatedMount: volumes survive disable/upgrade
  hostRoot: '/host', // the host's / (rbind, read-only, rslave)
  socket: 'ontop.sock', // /run/docker/plugins/ontop.sock inside
};

const USAGE = `Usage: node scripts/package-plugin.mjs [options]

Builds the managed Docker plugin directory (config.json + rootfs/).
  --out DIR     output directory, replaced if it exists; default <repo>/plugin
  --dist DIR    compiled JavaScript to ship; default <repo>/dist
  --node PATH   node binary to ship; default the one running this script
  --build       run tsc -p tsconfig.json first (the addon must be built already)
  --no-check    skip the smoke test (chroot into rootfs, load the addon)
  -h, --help    show this help

Then:  docker plugin create ontop DIR && docker plugin enable ontop
(the plugin's name, here ontop:latest, is the driver name volumes keep: keep it stable)
`;

function fail(msg) {
  process.stderr.write(`package-plugin: ${msg}\n`);
  process.exit(1);
}

function log(msg) {
  process.stdout.write(`${msg}\n`);
}

/** package.json's homepage or repository, else a pointer to the README. */
function docsUrl(pkg) {
  const repo = typeof pkg.repository === 'string' ? pkg.repository : pkg.repository?.url;
  return pkg.homepage || repo || 'docs/managed-plugin.md';
}

/** The plugin's config.json (plugin config version 1 of plugin v2). */
export function pluginConfig(pkg) {
  return {
    description: `ontop ${pkg.version}: copy-on-write views of host directories (overlayfs volumes)`,
    documentation: docsUrl(pkg),
    entrypoint: [LAYOUT.node, `${LAYOUT.app}/dist/main.js`],
    workdir: LAYOUT.app,
    interface: {
      types: ['docker.volumedriver/1.0'],
      socket: LAYOUT.socket,
    },
    // The protocol runs over a unix socket: the plugin needs no network.
    // "none" keeps it in its own empty network namespace.
    network: { type: 'none' },
    // Volumes (state, upper layers, the overlay mountpoints) live here; dockerd
    // keeps it at <data-root>/plugins/<id>/propagated-mount, shared, so the
    // overlays the plugin mounts are visible to containers, and the data
    // survives disable/enable and `docker plugin upgrade`.
    propagatedMount: LAYOUT.stateRoot,
    mounts: [
      {
        name: 'host',
        description: "The host's filesystem, read-only, where volume bases come from",
        source: '/',
        destination: LAYOUT.hostRoot,
        type: 'bind',
        options: ['rbind', 'ro', 'rslave'],
      },
    ],
    env: [
      {
        name: 'ONTOP_LOG_LEVEL',
        description: 'log level: error, warn, info, debug',
        settable: ['value'],
        value: 'info',
      },
      {
        name: 'ONTOP_ALLOW_BASE',
        description: 'colon-separated host directories that bases must lie under; empty: no restriction',
        settable: ['value'],
        value: '',
      },
      { name: 'ONTOP_ROOT', description: 'state root (the propagated mount)', value: LAYOUT.stateRoot },
      { name: 'ONTOP_SOCKET', description: 'plugin socket', value: `/run/docker/plugins/${LAYOUT.socket}` },
      { name: 'ONTOP_HOST_ROOT', description: "where the host's / is bound", value: LAYOUT.hostRoot },
    ],
    // The driver scans /proc/*/mountinfo to see whether a volume is still in
    // use in another mount namespace before it removes it; in a private PID
    // namespace it would see only itself.
    pidHost: true,
    ipcHost: false,
    linux: {
      capabilities: ['CAP_SYS_ADMIN'],
      allowAllDevices: false,
      devices: null,
    },
  };
}

/** Parses `ldd FILE` into the absolute paths of the objects it loads (the loader included, the vdso not). */
export function lddDeps(file) {
  let out;
  try {
    out = execFileSync('ldd', [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const text = `${err.stdout ?? ''}${err.stderr ?? ''}`;
    if (/not a dynamic executable|statically linked/.test(text)) return [];
    fail(`ldd ${file} failed: ${text.trim() || err.message}`);
  }
  const deps = [];
  for (const raw of out.split('\n')) {
    const line = raw.trim();
    if (!line || /statically linked/.test(line)) continue;
    let m;
    if ((m = /^(\S+) => not found$/.exec(line))) fail(`${file} needs ${m[1]}, which ldd cannot find`);
    if ((m = /^\S+ => (\/\S+) \(0x[0-9a-f]+\)$/.exec(line))) deps.push(m[1]);
    else if ((m = /^(\/\S+) \(0x[0-9a-f]+\)$/.exec(line))) deps.push(m[1]); // the dynamic loader
    else if (/^\S+ \(0x[0-9a-f]+\)$/.test(line)) continue; // linux-vdso.so.1 and friends: in the kernel
    else fail(`cannot parse ldd output for ${file}: ${JSON.stringify(line)}`);
  }
  return deps;
}

function copyFile(src, dest, mode) {
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  fs.copyFileSync(src, dest); // follows symlinks: the real bytes land at the path the loader asks for
  fs.chmodSync(dest, mode ?? fs.statSync(src).mode & 0o7777);
}

function copyTree(src, dest, filter = () => true) {
  fs.cpSync(src, dest, { recursive: true, dereference: true, filter: (s) => filter(s) });
}

/** Bare specifiers (not node: builtins, not relative) that a compiled module imports. */
function bareImports(code) {
  const specs = new Set();
  const re = /(?:\bimport\s*(?:[\w*{}\s,]+\s*from\s*)?|\bexport\s*[\w*{}\s,]+\s*from\s*|\bimport\s*\(\s*)['"]([^'"]+)['"]/g;
  for (const m of code.matchAll(re)) specs.add(m[1]);
  const builtins = new Set(builtinModules);
  return [...specs].filter((s) => !s.startsWith('.') && !s.startsWith('/') && !s.startsWith('node:') && !builtins.has(s));
}

function walk(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}

function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        out: { type: 'string' },
        dist: { type: 'string' },
        node: { type: 'string' },
        build: { type: 'boolean' },
        'no-check': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    fail(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const out = path.resolve(values.out ?? path.join(REPO, 'plugin'));
  const nodeBin = fs.realpathSync(values.node ?? process.execPath);
  if (out === '/' || out === REPO || REPO.startsWith(out + '/')) fail(`refusing to replace ${out}`);
  if (fs.existsSync(out)) {
    const foreign = fs.readdirSync(out).filter((e) => e !== 'config.json' && e !== 'rootfs');
    if (foreign.length) fail(`refusing to replace ${out}: it holds more than a plugin directory (${foreign.slice(0, 5).join(', ')})`);
  }

  if (values.build) {
    log('tsc -p tsconfig.json');
    execFileSync(path.join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', path.join(REPO, 'tsconfig.json')], { stdio: 'inherit' });
  }

  const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8'));
  const dist = path.resolve(values.dist ?? path.join(REPO, 'dist'));
  const addon = path.join(REPO, 'build', 'Release', 'ontop_native.node');
  if (!fs.existsSync(path.join(dist, 'main.js'))) fail(`${dist}/main.js is missing: build first (npm run build, or pass --build)`);
  if (!fs.existsSync(addon)) fail(`${addon} is missing: build the addon first (npm run build)`);

  // Refuse to ship code that needs node_modules we do not copy.
  for (const f of walk(dist).filter((f) => f.endsWith('.js'))) {
    const bare = bareImports(fs.readFileSync(f, 'utf8'));
    if (bare.length) fail(`${path.relative(REPO, f)} imports ${bare.join(', ')}: the packager ships no node_modules; teach it to`);
  }

  fs.rmSync(out, { recursive: true, force: true });
  const rootfs = path.join(out, 'rootfs');
  const at = (p) => path.join(rootfs, p);
  fs.mkdirSync(rootfs, { recursive: true });

  // The app: dist/, the addon where dist/native.js looks for it (../build/Release), package.json.
  const app = at(LAYOUT.app);
  copyTree(dist, path.join(app, 'dist'), (s) => !s.endsWith('.map'));
  copyFile(addon, path.join(app, 'build', 'Release', 'ontop_native.node'), 0o755);
  const slim = { name: pkg.name, version: pkg.version, description: pkg.description, license: pkg.license, type: pkg.type };
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify(slim, null, 2) + '\n');

  // node, and the shared objects it and the addon load.
  copyFile(nodeBin, at(LAYOUT.node), 0o755);
  const libs = new Set([...lddDeps(nodeBin), ...lddDeps(addon)]);
  // Each at the path ldd reports: that is where the loader looks (PT_INTERP names
  // the loader's path exactly; the others are found by soname in these directories).
  for (const lib of libs) copyFile(lib, at(lib));
  // A loader cache for the directories we used, so the libraries are found
  // whatever this distribution's built-in search path is.
  const libDirs = [...new Set([...libs].map((l) => path.dirname(l)))];
  fs.mkdirSync(at('/etc'), { recursive: true });
  fs.writeFileSync(at('/etc/ld.so.conf'), libDirs.join('\n') + '\n');
  try {
    execFileSync('ldconfig', ['-r', rootfs], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    log(`note: ldconfig -r failed (${String(err.stderr || err.message).trim()}); relying on the loader's default paths`);
  }

  // What the daemon needs at run time. dockerd adds /proc, /sys, /dev, /etc/hosts…
  // itself (its init layer), and binds /run/docker/plugins and the propagated mount.
  for (const d of ['/proc', '/sys', '/dev', '/run/docker/plugins', LAYOUT.stateRoot, LAYOUT.hostRoot, '/root']) {
    fs.mkdirSync(at(d), { recursive: true });
  }
  fs.mkdirSync(at('/tmp'), { recursive: true });
  fs.chmodSync(at('/tmp'), 0o1777);
  fs.writeFileSync(at('/etc/passwd'), 'root:x:0:0:root:/root:/sbin/nologin\n');
  fs.writeFileSync(at('/etc/group'), 'root:x:0:\n');
  fs.writeFileSync(at('/etc/nsswitch.conf'), 'passwd: files\ngroup: files\nhosts: files\n');

  const config = pluginConfig(pkg);
  fs.writeFileSync(path.join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');

  if (!values['no-check']) check(rootfs);

  const size = walk(rootfs).reduce((n, f) => n + fs.lstatSync(f).size, 0);
  log(`plugin directory: ${out} (rootfs ${(size / 1048576).toFixed(1)} MiB)`);
  log(`  node ${nodeBin} -> ${LAYOUT.node}`);
  for (const l of libs) log(`  ${l}`);
  log(`next: docker plugin create ontop ${out} && docker plugin enable ontop`);
}

/** Smoke test as root: chroot into rootfs, start node and load the addon the way dist/native.js does. */
function check(rootfs) {
  if (process.getuid?.() !== 0) {
    log('note: not root, skipping the chroot smoke test');
    return;
  }
  const script =
    `const m = await import('${LAYOUT.app}/dist/native.js');` +
    `if (typeof m.mount !== 'function') throw new Error('no mount() in native.js');` +
    `console.log('smoke test: node ' + process.version + ', addon loaded')`;
  try {
    // env -i: nothing of ours (NODE_OPTIONS, loaders a test runner injects) reaches the chrooted node.
    const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
    const out = execFileSync('env', ['-i', `PATH=${PATH}`, 'chroot', rootfs, LAYOUT.node, '--input-type=module', '-e', script], {
      encoding: 'utf8',
      env: { PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    log(out.trim());
  } catch (err) {
    fail(`smoke test in the rootfs failed: ${String(err.stderr || err.message).trim()}`);
  }
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) main();
