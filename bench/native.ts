// The addon facade the bench measures the kernel floor with. It loads the
// compiled dist/native.js, the same module the daemon under test runs, so the
// bench needs no copy of lib/ and the addon is found where npm ci built it.
import type * as Native from '../lib/native.js';

const facade = (await import(new URL('../../dist/native.js', import.meta.url).href)) as typeof Native;

export const { constants, mount, umount2 } = facade;
