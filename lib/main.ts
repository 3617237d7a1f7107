#!/usr/bin/env node
// ontop's program (`node dist/main.js`, the npm bin `ontop`) and the module
// that exports the daemon (daemon.ts). Run as a program, it loads the
// daemon's modules with V8's compilers (TurboFan, Sparkplug) off, and turns
// them on again before the daemon starts: resolving some forty modules makes
// node's own loader hot, and compiling the loader would page the compilers'
// code in for a daemon that may then sit idle. The static imports here are
// node's only, so that nothing of ontop is resolved before the flags are set.
import fs from 'node:fs';
import { pathToFileURL } from 'node:url';
import v8 from 'node:v8';

/** True when this file is the program node was asked to run (also through the npm bin symlink). */
export function isEntryPoint(moduleUrl: string, scriptPath: string | undefined): boolean {
  if (!scriptPath) return false;
  try {
    return moduleUrl === pathToFileURL(fs.realpathSync(scriptPath)).href;
  } catch {
    return false;
  }
}

const COMPILER_FLAG = /--(no[-_])?(opt|turbofan|sparkplug|max[-_]opt|jitless)\b/;

/** Whether the modules may be loaded with the compilers off: not when the operator gave node a flag about them. */
export function loadUnoptimized(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return !execArgv.some((a) => COMPILER_FLAG.test(a)) && !COMPILER_FLAG.test(nodeOptions ?? '');
}

const entry = isEntryPoint(import.meta.url, process.argv[1]);
const argv = process.argv.slice(2);
const quiet = entry && loadUnoptimized(process.execArgv, process.env.NODE_OPTIONS);
if (quiet) v8.setFlagsFromString('--no-turbofan --no-sparkplug');
const daemon = await import('./daemon.js');
// The driver too, which the daemon would load at its start (a command loads what it needs later).
if (quiet && !daemon.isCommand(argv)) await import('./driver.js');
if (quiet) v8.setFlagsFromString('--turbofan --sparkplug');

export const { DRAIN_SHARE, STOP_BOUND_MS, defaultDeps, isCommand, limitYoungGeneration, run, start } = daemon;
export type { Daemon, MainDeps, OpenDriver } from './daemon.js';

if (entry) await run(argv, process.env);
