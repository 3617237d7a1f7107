// volume.json: what a volume is (its layers, whether volatile, its upper's
// kind and size limit, when and how it was made), and the checks that tell a
// usable one from damage. store.ts reads and writes it.

/** Where a volume's changes live: a directory of the state root, a tmpfs of its own, or a btrfs subvolume. */
export type UpperKind = 'disk' | 'tmpfs' | 'btrfs-subvolume';
export const UPPER_KINDS: readonly UpperKind[] = ['disk', 'tmpfs', 'btrfs-subvolume'];

export interface VolumeMeta {
  version: 1;
  /** Real path on the host; the top layer of a stack. */
  base: string;
  /** Every layer, real host paths, top first (layers[0] === base); absent on volumes made before stacks. Read it through layersOf. */
  layers?: string[];
  volatile: boolean;
  /** Absent on volumes made before kinds: 'disk'. */
  upper?: UpperKind;
  /** The most bytes the changes may hold: the tmpfs size, or the subvolume's quota-group limit. */
  size?: number;
  /** RFC 3339. */
  createdAt: string;
  /** The options as the user gave them. */
  options: Record<string, string>;
}

/** A volume's layers, real host paths, top first: one function for every reader of volume.json. */
export function layersOf(meta: Pick<VolumeMeta, 'base' | 'layers'>): string[] {
  return meta.layers ?? [meta.base];
}

/** The kind of a volume's upper; 'disk' for volumes made before kinds. */
export function upperKindOf(meta: Pick<VolumeMeta, 'upper'>): UpperKind {
  return meta.upper ?? 'disk';
}

/** Problems with a parsed volume.json; empty when it is usable. */
export function checkMeta(value: unknown): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return ['volume.json does not hold an object'];
  const m = value as Partial<Record<keyof VolumeMeta, unknown>>;
  const problems: string[] = [];
  if (m.version !== 1) problems.push(`volume.json has version ${JSON.stringify(m.version)}; this ontop understands version 1`);
  if (typeof m.base !== 'string' || !m.base.startsWith('/')) problems.push('volume.json has no absolute "base"');
  if (typeof m.volatile !== 'boolean') problems.push('volume.json has no boolean "volatile"');
  if (typeof m.createdAt !== 'string' || Number.isNaN(Date.parse(m.createdAt))) problems.push('volume.json has no valid "createdAt"');
  if (typeof m.options !== 'object' || m.options === null) problems.push('volume.json has no "options"');
  if (m.layers !== undefined) {
    const l = m.layers;
    if (!Array.isArray(l) || l.length === 0 || l.some((x) => typeof x !== 'string' || !x.startsWith('/')) || l[0] !== m.base) {
      problems.push('volume.json has "layers" that are not absolute paths starting with "base"');
    }
  }
  if (m.upper !== undefined && !UPPER_KINDS.includes(m.upper as UpperKind)) problems.push(`volume.json has an unknown "upper" ${JSON.stringify(m.upper)}`);
  if (m.size !== undefined && !(Number.isSafeInteger(m.size) && (m.size as number) > 0)) problems.push('volume.json has a "size" that is no positive whole number');
  return problems;
}
