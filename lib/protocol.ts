// Docker's volume plugin protocol: every request and response shape, written
// once. The server parses into these; the driver implements VolumeDriver.
// dockerd's bodies come from Go's JSON encoder, with exact casing (`Name`,
// `Opts`, `ID`). Any failure of Get means "no such volume" to dockerd, which
// then forgets the volume's labels and options: Get fails only for a volume
// that does not exist.

export const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1.2+json';

export interface CreateRequest {
  Name: string;
  /** dockerd sends null when no -o was given. */
  Opts: Record<string, string> | null;
}
export interface NameRequest {
  Name: string;
}
export interface MountRequest {
  Name: string;
  /** 64 hex characters, one per use; the same ID may arrive twice. */
  ID: string;
}

export interface MountpointResponse {
  Mountpoint: string;
}
export interface VolumeInfo {
  Name: string;
  /** Absent when the volume is not mounted. */
  Mountpoint?: string;
  /** RFC 3339, or absent; never "". */
  CreatedAt?: string;
  Status?: Record<string, unknown>;
}
export interface GetResponse {
  Volume: VolumeInfo;
}
export interface ListResponse {
  Volumes: VolumeInfo[];
}
export interface CapabilitiesResponse {
  Capabilities: { Scope: 'local' | 'global' };
}
export interface ActivateResponse {
  Implements: string[];
}
export type Empty = Record<string, never>;

/** One async method per verb; knows nothing of HTTP. */
export interface VolumeDriver {
  create(req: CreateRequest): Promise<Empty>;
  remove(req: NameRequest): Promise<Empty>;
  mount(req: MountRequest): Promise<MountpointResponse>;
  unmount(req: MountRequest): Promise<Empty>;
  path(req: NameRequest): Promise<MountpointResponse>;
  get(req: NameRequest): Promise<GetResponse>;
  list(): Promise<ListResponse>;
  capabilities(): Promise<CapabilitiesResponse>;
}
