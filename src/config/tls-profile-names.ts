// The TLS profile names the configuration accepts. A leaf: types.ts (which imports the admin and audit
// sections) re-exports them, and primitives.ts and audit.ts import them from here, so no module of
// config/ imports itself back through types.ts.

/** DICOM PS3.15 B.12 "BCP 195 TLS Secure Transport Connection Profile" (default) and B.13 "Modified BCP 195". */
export type TlsProfileName = 'bcp195' | 'modified-bcp195';

export const TLS_PROFILE_NAMES: readonly TlsProfileName[] = Object.freeze([
  'bcp195',
  'modified-bcp195',
] as const);
