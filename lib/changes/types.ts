// The shapes the changes engine hands out: one change (its kind and raw
// path), and files and bytes (what changes hold, or how far a commit or a
// copy has come).

export type ChangeKind = 'A' | 'C' | 'D';

/** One changed path: raw bytes relative to the volume's root, starting with '/'. */
export interface Change {
  kind: ChangeKind;
  path: Buffer;
}

/** Files and bytes: what changes hold, or how far a commit or a copy has come. */
export interface Progress {
  files: number;
  bytes: number;
}
