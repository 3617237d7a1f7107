// The in-memory volume table: one entry per volume, what the daemon knows of
// it between calls (its users, whether its overlay is mounted), volume.json
// loaded on first need and checked for staleness, and the Status that
// `docker volume inspect` shows. Reads the state root only through Store.
import { DriverError } from './errors.js';
import type { VolumeInfo } from './protocol.js';
import type { MetaRead, Store } from './store.js';
import { layersOf, upperKindOf } from './store.js';

export interface Volume {
  name: string;
  /** Mount ID → count; mirrors users/. Absent while no container uses the volume: idle volumes cost no Map. */
  users?: Map<string, number>;
  /** An overlay is mounted on merged/ (with users, or left over by an unmount that met EBUSY). */
  mounted: boolean;
  /**
   * volume.json, read on first need and then kept: the daemon is its only writer. Create does not fill it:
   * 10,000 volumes nobody has asked about since would hold their options in the heap for nothing.
   */
  loaded?: MetaRead;
  /** Entries of users/ found at start that are no valid record: Mount refuses until they are gone. */
  damaged?: string[];
  /**
   * "dev:ino" of merged/ as the daemon left it, bare (nothing mounted on it). Any mount on merged/, a bind
   * mount of another directory of the same filesystem included, changes it.
   */
  bareId?: string;
  /** "major:minor" of the overlay while mounted: finds it in other mount namespaces once it left ours. */
  device?: string;
}

export function userCount(v: Volume): number {
  let n = 0;
  for (const c of v.users?.values() ?? []) n += c;
  return n;
}

export class VolumeTable {
  private readonly byName = new Map<string, Volume>();

  constructor(private readonly store: Store) {}

  get size(): number {
    return this.byName.size;
  }

  all(): IterableIterator<Volume> {
    return this.byName.values();
  }

  find(name: string): Volume | undefined {
    return this.byName.get(name);
  }

  add(name: string): Volume {
    const vol: Volume = { name, mounted: false };
    this.byName.set(name, vol);
    return vol;
  }

  delete(name: string): void {
    this.byName.delete(name);
  }

  /** The volume, or a DriverError that says it does not exist. */
  known(name: string): Volume {
    const vol = this.byName.get(name);
    if (vol === undefined) throw new DriverError(`no such volume: ${name} (see docker volume ls)`);
    return vol;
  }

  /** volume.json as cached, or read now, with the upper layer checked. */
  load(vol: Volume): MetaRead {
    if (vol.loaded !== undefined) return vol.loaded;
    const loaded = this.store.readMeta(vol.name);
    if (loaded.meta !== undefined && !loaded.meta.volatile) {
      const problem = this.store.upperProblem(vol.name);
      if (problem !== undefined) loaded.problems.push(problem);
    }
    vol.loaded = loaded;
    return loaded;
  }

  /**
   * volume.json as it is on disk now, for a first Mount: the cached copy is
   * kept only while it is healthy, unchanged (its stamp) and, unless the
   * volume is volatile, its upper layer is still a directory.
   */
  reload(vol: Volume): MetaRead {
    const cached = vol.loaded;
    const healthy = cached?.meta !== undefined && cached.problems.length === 0 && cached.stamp !== undefined;
    if (!healthy || this.store.metaStamp(vol.name) !== cached.stamp || (!cached.meta!.volatile && this.store.upperProblem(vol.name) !== undefined)) {
      vol.loaded = undefined;
    }
    return this.load(vol);
  }

  /** What List shows: the Mountpoint only while the overlay is mounted. */
  info(vol: Volume): VolumeInfo {
    return vol.mounted ? { Name: vol.name, Mountpoint: this.store.paths(vol.name).merged } : { Name: vol.name };
  }

  /**
   * What Get shows; never fails for a volume that exists (dockerd would forget it). Built from memory but
   * for a volatile volume's last changes (one opendir) and a tmpfs's use (a statfs): dockerd calls Get often.
   */
  describe(vol: Volume): VolumeInfo {
    const { meta, problems } = this.load(vol);
    const p = this.store.paths(vol.name);
    const users = userCount(vol);
    const kind = meta === undefined ? undefined : upperKindOf(meta);
    const status: Record<string, unknown> = {
      base: meta?.base,
      layers: meta === undefined ? undefined : layersOf(meta),
      volatile: meta?.volatile,
      mounted: vol.mounted,
      users,
      upper: kind === 'tmpfs' ? `${p.scratch}/upper` : p.upper,
      upperKind: kind,
    };
    if (meta?.size !== undefined) status.size = meta.size;
    // A volatile volume's last changes stay until its next first Mount: say where, when there are any.
    if (meta?.volatile && users === 0 && !vol.mounted && this.store.hasEntries(p.upper)) status.lastChanges = p.upper;
    if (problems.length > 0 || vol.damaged !== undefined) status.problems = [...problems, ...(vol.damaged ?? [])];
    if (kind === 'tmpfs') {
      const used = this.store.tmpfsUsed(vol.name);
      if (used !== undefined) status.used = used;
    }
    const volume = this.info(vol);
    // Made RFC 3339 when volume.json was read (Store.readMeta).
    if (meta !== undefined) volume.CreatedAt = meta.createdAt;
    volume.Status = status;
    return volume;
  }

  /**
   * Adds Status.used for a btrfs subvolume with a limit: its quota group's
   * count, read through the thread pool; undefined (nothing to wait for) for
   * any other volume. A tmpfs's comes with describe; a disk upper elsewhere
   * would need a walk of every file, too slow for Get: left out. Never fails.
   */
  addQuotaUse(vol: Volume, volume: VolumeInfo): Promise<void> | undefined {
    const meta = vol.loaded?.meta;
    if (meta === undefined || upperKindOf(meta) !== 'btrfs-subvolume' || meta.size === undefined) return undefined;
    return this.store.subvolumeUsed(vol.name).then((used) => {
      if (used !== undefined) (volume.Status as Record<string, unknown>).used = used;
    });
  }
}
