// The addon facade the bench's clean-up detaches leftover mounts with. It
// loads the compiled dist/native.js, the same module the daemon under test
// runs, so the bench needs no copy of lib/ and the addon is found where npm
// ci built it.
import type * as Native from '../lib/native.js';

const facade = (await import(new URL('../../dist/native.js', import.meta.url).href)) as typeof Native;

export const { constants, umount2 } = facade;
