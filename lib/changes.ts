// A volume's changes, read and written from its upper layer: what they are
// against the bases (diff), how much they hold (size), writing them into the
// base (commit, the only code that ever writes a base), copying them into
// another upper (clone) and dropping them (reset). Works on directories given
// as paths; knows nothing of volumes, the store or the daemon.
//
// With redirect_dir and metacopy off (overlay.ts), the upper layer alone says
// what changed: a whiteout (a 0:0 character device, or a file with the xattr
// trusted.overlay.whiteout) deletes, an opaque directory (trusted.overlay.
// opaque=y) hides the lower one whole, anything else is new or changed whole.
//
// Names are bytes, not strings: every path here is a Buffer, so a name that
// is not UTF-8 is read, compared and written exactly.
//
// Anything that touches a base runs on fs.promises (libuv's pool) and the
// addon's threads, never on the event loop.
//
// This file only re-exports; each idea has its module in changes/: types.ts,
// paths.ts (printing paths), files.ts (the low-level file work), diff.ts
// (diff, size), commit.ts (commit), journal.ts (its journal, recovery) and
// copy.ts (copy, clear).
export type { Change, ChangeKind, Progress } from './changes/types.js';
export { formatPath, jsonPath } from './changes/paths.js';
export { diffChanges, sizeOfChanges } from './changes/diff.js';
export { commitChanges } from './changes/commit.js';
export { recoverCommit } from './changes/journal.js';
export { clearChanges, copyChanges } from './changes/copy.js';
