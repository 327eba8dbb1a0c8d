// DICOM Upper Layer PDU codec and framer, PS3.8 9.3.
export * from './constants.js';
export * from './errors.js';
export type * from './types.js';
export * from './codec.js';
export * from './framer.js';
