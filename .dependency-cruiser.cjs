// The layer rules of src/ (README "Layers"), checked by `npm run deps` (part of `npm run check`) and by
// test/layers.test.ts, which runs this file on fixture trees so the rules themselves cannot stop working.
//
// LAYERS is the one place the order is written: bottom first. A module may import its own layer and any
// layer before it in the list, never one after it; the entry modules directly in src/ (cli.ts) sit above
// every folder. Type-only imports count (tsPreCompilationDeps), and no module may take part in a cycle.

/** Folders of src/, from the bottom (imported by anything above) to the top. */
const LAYERS = [
  'util',
  'vocabulary',
  'pdu',
  'dimse',
  'dicom',
  'config',
  'tls',
  'policy',
  'integrity',
  'observe',
  'runtime',
  'relay',
  'cluster',
  'demo',
  'cli',
];

const folder = (names) => `^src/(${names.join('|')})/`;
/** Modules directly in src/ (the command-line entry). */
const ENTRY = '^src/[^/]+$';

const upward = LAYERS.map((layer, i) => {
  const above = LAYERS.slice(i + 1);
  return {
    name: `no-upward-from-${layer}`,
    comment:
      `src/${layer}/ may import only ${LAYERS.slice(0, i + 1).join(', ')} ` +
      `(layer order in .dependency-cruiser.cjs and README "Layers": imports point downward only)`,
    severity: 'error',
    from: { path: folder([layer]) },
    to: above.length > 0 ? { path: [folder(above), ENTRY] } : { path: ENTRY },
  };
});

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'Modules of src/ must not import each other in a cycle (also through type-only imports).',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    ...upward,
    {
      name: 'no-unlisted-layer',
      comment: 'Every folder of src/ is a layer: add a new one to LAYERS in .dependency-cruiser.cjs.',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^src/[^/]+/', pathNot: folder(LAYERS) },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'An import that resolves to no file.',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      extensions: ['.ts', '.js', '.cjs', '.mjs', '.json', '.d.ts'],
    },
  },
};
