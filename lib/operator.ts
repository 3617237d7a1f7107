// The operator's endpoints (`POST /Ontop.*` on the plugin socket, beside
// Docker's): every request and result shape, written once. The daemon
// implements Operator in its driver; the `ontop` commands call it through
// the socket (client.ts) or, with no daemon answering, on the state root
// directly. Keys are lowercase: these are ontop's own, not Docker's.
//
// On the wire a reply is JSON lines (application/x-ndjson), so long work can
// report as it goes: any number of {"progress":{"files","bytes"}}, then
// exactly one {"result":...} or {"Err":"..."}.
import type { UpperKind } from './meta.js';

export const OPERATOR_CONTENT_TYPE = 'application/x-ndjson';

export interface Progress {
  files: number;
  bytes: number;
}

export type OnProgress = (p: Progress) => void;

/** One changed path, as `docker diff` kinds it; `path` is exact when `pathBase64` is absent. */
export interface ChangeJson {
  kind: 'A' | 'C' | 'D';
  path: string;
  /** The path's bytes, when they are not valid UTF-8. */
  pathBase64?: string;
}

export interface InfoResult {
  /** The driver name (`-d NAME`). */
  name: string;
  /** The state root, a real path. */
  root: string;
  pid: number;
  version: string;
}

export interface LsRow {
  name: string;
  base?: string;
  volatile?: boolean;
  users: number;
  mounted: boolean;
  /** RFC 3339. */
  created?: string;
  /** Every layer, top first, when the base is a stack. */
  layers?: string[];
  /** Where the changes live: disk, tmpfs or btrfs-subvolume. */
  upper?: UpperKind;
  /** The most bytes the changes may hold, when limited (size=). */
  limit?: number;
  /** What the upper layer holds; absent when it cannot be read. */
  size?: Progress;
  /** What is wrong with the volume, when anything is. */
  problems?: string[];
}

export interface LsResult {
  volumes: LsRow[];
}

export interface NameArgs {
  name: string;
}

export interface DiffResult {
  changes: ChangeJson[];
}

export interface ResetResult {
  name: string;
}

export interface CommitArgs {
  name: string;
  dryRun?: boolean;
}

export interface CommitResult {
  name: string;
  base: string;
  dryRun: boolean;
  changes: ChangeJson[];
  progress: Progress;
}

export interface CloneArgs {
  source: string;
  name: string;
  /** "true"/"false" (as the volatile option); the source's when absent. */
  volatile?: string;
}

export interface CloneResult {
  name: string;
  source: string;
  base: string;
  volatile: boolean;
  progress: Progress;
}

/** The operator's verbs; knows nothing of HTTP. */
export interface Operator {
  info(): Promise<InfoResult>;
  ls(): Promise<LsResult>;
  diff(args: NameArgs): Promise<DiffResult>;
  reset(args: NameArgs): Promise<ResetResult>;
  commit(args: CommitArgs, onProgress?: OnProgress): Promise<CommitResult>;
  clone(args: CloneArgs, onProgress?: OnProgress): Promise<CloneResult>;
}

/** Endpoint path → Operator method. */
export const OPERATOR_PATHS = {
  '/Ontop.Info': 'info',
  '/Ontop.Ls': 'ls',
  '/Ontop.Diff': 'diff',
  '/Ontop.Reset': 'reset',
  '/Ontop.Commit': 'commit',
  '/Ontop.Clone': 'clone',
} as const satisfies Record<string, keyof Operator>;
