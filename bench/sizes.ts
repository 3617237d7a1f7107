// How much work each phase does: the full run (a few minutes on 2 cores)
// and --quick (a smoke run under 30 s). Targets that name a count (10,000
// volumes, 100,000 files) are judged only when the run uses that count.

export interface Sizes {
  /** Volumes created in all (Create is measured over all of them). */
  volumes: number;
  /** List is measured when this many volumes exist. */
  listAt: number[];
  /** List calls per measurement, by volume count. */
  listCalls(count: number): number;
  getCalls: number;
  /** Mounts (then Unmounts) by the one sequential client. */
  mountsSeq: number;
  /** Mounts (then Unmounts) by each of the concurrent clients. */
  mountsPerClient: number;
  cyclesSeq: number;
  cyclesPerClient: number;
  clients: number;
  /** C floor (floor.c) operations, run in blocks between the rounds of the phase they judge. */
  floorCycles: number;
  /** C floor cycles by each of the `clients` parallel floor processes. */
  floorPerWorker: number;
  createFloor: number;
  removeFloor: number;
  removes: number;
  /** Removes of idle volumes while `mountedForRemove` other volumes are mounted. */
  removesMounted: number;
  mountedForRemove: number;
  bigFiles: number;
  restarts: number;
  dockerPairs: number;
  echoCalls: number;
}

export const FULL: Sizes = {
  volumes: 10_000,
  listAt: [1, 1_000, 10_000],
  listCalls: (n) => (n <= 1 ? 2_000 : n <= 1_000 ? 300 : 100),
  getCalls: 20_000,
  mountsSeq: 1_000,
  mountsPerClient: 125,
  cyclesSeq: 2_000,
  cyclesPerClient: 500,
  clients: 8,
  floorCycles: 2_000,
  floorPerWorker: 500,
  createFloor: 1_000,
  removeFloor: 1_000,
  removes: 1_000,
  removesMounted: 300,
  mountedForRemove: 1_000,
  bigFiles: 100_000,
  restarts: 3,
  dockerPairs: 20,
  echoCalls: 20_000,
};

export const QUICK: Sizes = {
  volumes: 300,
  listAt: [1, 100, 300],
  listCalls: (n) => (n <= 1 ? 200 : 50),
  getCalls: 2_000,
  mountsSeq: 100,
  mountsPerClient: 20,
  cyclesSeq: 200,
  cyclesPerClient: 40,
  clients: 8,
  floorCycles: 200,
  floorPerWorker: 40,
  createFloor: 100,
  removeFloor: 100,
  removes: 50,
  removesMounted: 30,
  mountedForRemove: 100,
  bigFiles: 5_000,
  restarts: 1,
  dockerPairs: 2,
  echoCalls: 2_000,
};

/** The counts the targets are stated for. */
export const TARGET_VOLUMES = 10_000;
export const TARGET_FILES = 100_000;
