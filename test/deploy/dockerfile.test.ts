// The Dockerfile, reviewed by a test: the hadolint rules that apply to it (DL3000 absolute WORKDIR, DL3002
// last USER not root, DL3003 no cd in RUN, DL3006/DL3007 every base image tagged and not `latest` — here
// an exact release, DL3020 COPY not ADD, DL3025 JSON form for CMD/ENTRYPOINT, DL4000 no MAINTAINER,
// DL4006 pipefail before a pipe), checked by the small reader below since hadolint itself is not
// packaged for Debian; and the image's agreement with the daemon and CI: the Node major, every
// default listening port exposed, the state directory a volume, a HEALTHCHECK on /healthz, SIGTERM as
// stop signal, a .dockerignore that keeps node_modules, .git and certificates out of the context.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULTS } from '../../src/config/defaults.js';
import { ADMIN_DEFAULTS } from '../../src/config/admin.js';

const ROOT = join(import.meta.dirname, '..', '..');
const DOCKERFILE = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');

interface Instruction {
  line: number;
  op: string;
  args: string;
}

/** Instructions with continuation lines joined; comments and blank lines dropped. */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let l = lines[i] ?? '';
    if (/^\s*(#|$)/.test(l)) continue;
    while (l.endsWith('\\') && i + 1 < lines.length) l = `${l.slice(0, -1)} ${lines[++i] ?? ''}`;
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(l);
    if (m) out.push({ line: start + 1, op: (m[1] as string).toUpperCase(), args: (m[2] as string).trim() });
  }
  return out;
}

function isJsonArray(s: string): boolean {
  try {
    const v: unknown = JSON.parse(s);
    return Array.isArray(v) && v.every((x) => typeof x === 'string');
  } catch {
    return false;
  }
}

/** The findings of the rules above, as `DLxxxx line: message`. */
function lint(text: string): string[] {
  const ins = instructions(text);
  const args = new Map<string, string>();
  const findings: string[] = [];
  let pipefail = false;
  for (const i of ins) {
    if (i.op === 'ARG') {
      const [k, v] = i.args.split('=');
      if (k && v !== undefined) args.set(k, v);
    }
    if (i.op === 'FROM') {
      const image = (i.args.split(/\s+/)[0] ?? '').replace(
        /\$\{(\w+)\}/g,
        (_, k: string) => args.get(k) ?? '',
      );
      const tag = image.includes(':') ? image.slice(image.lastIndexOf(':') + 1) : '';
      if (tag === '') findings.push(`DL3006 ${i.line}: image ${image} has no tag`);
      else if (tag === 'latest') findings.push(`DL3007 ${i.line}: image ${image} uses latest`);
      else if (!/^\d+\.\d+\.\d+-/.test(tag))
        findings.push(`DL3006 ${i.line}: image ${image} not pinned to a release`);
    }
    if (i.op === 'WORKDIR' && !i.args.startsWith('/')) findings.push(`DL3000 ${i.line}: relative WORKDIR`);
    if (i.op === 'ADD') findings.push(`DL3020 ${i.line}: ADD instead of COPY`);
    if (i.op === 'MAINTAINER') findings.push(`DL4000 ${i.line}: MAINTAINER is deprecated`);
    if ((i.op === 'CMD' || i.op === 'ENTRYPOINT') && !isJsonArray(i.args)) {
      findings.push(`DL3025 ${i.line}: ${i.op} not in JSON form`);
    }
    if (i.op === 'SHELL' && /pipefail/.test(i.args)) pipefail = true;
    if (i.op === 'RUN') {
      if (/(^|&&|;)\s*cd\s/.test(i.args)) findings.push(`DL3003 ${i.line}: cd in RUN (use WORKDIR)`);
      if (/[^|]\|[^|]/.test(i.args) && !pipefail) findings.push(`DL4006 ${i.line}: pipe without pipefail`);
    }
  }
  const users = ins.filter((i) => i.op === 'USER');
  const last = users.at(-1)?.args;
  if (last === undefined || last === 'root' || last === '0') findings.push('DL3002: the last USER is root');
  return findings;
}

describe('Dockerfile', () => {
  test('passes the hadolint rules that apply; a bad Dockerfile is caught by each', () => {
    assert.deepEqual(lint(DOCKERFILE), []);
    const bad = [
      'FROM node:latest',
      'FROM node AS b',
      'WORKDIR app',
      'ADD . /app',
      'MAINTAINER someone',
      'RUN cd /app && npm ci',
      'RUN curl -s x | sh',
      'USER root',
      'CMD node dist/cli.js start',
    ].join('\n');
    const codes = lint(bad).map((f) => f.split(' ')[0]);
    for (const code of [
      'DL3007',
      'DL3006',
      'DL3000',
      'DL3020',
      'DL4000',
      'DL3003',
      'DL4006',
      'DL3002:',
      'DL3025',
    ]) {
      assert.ok(codes.includes(code), `${code} not found in ${JSON.stringify(lint(bad))}`);
    }
  });

  test('agrees with the daemon and CI: Node major, ports, volume, HEALTHCHECK, stop signal', () => {
    const ins = instructions(DOCKERFILE);
    const nodeVersion = /^ARG NODE_VERSION=(\d+)\./m.exec(DOCKERFILE)?.[1];
    const ciMajor = /^NODE_LTS_MAJOR=(\d+)$/m.exec(readFileSync(join(ROOT, '.ci', 'run'), 'utf8'))?.[1];
    assert.ok(nodeVersion && nodeVersion === ciMajor, `Dockerfile Node ${nodeVersion}, .ci/run ${ciMajor}`);
    const exposed = ins.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/).map(Number));
    for (const port of [DEFAULTS.listen.port, DEFAULTS.returnListener.port, ADMIN_DEFAULTS.port]) {
      assert.ok(exposed.includes(port), `port ${port} not exposed`);
    }
    const volumes = ins.filter((i) => i.op === 'VOLUME').flatMap((i) => JSON.parse(i.args) as string[]);
    assert.deepEqual(volumes, ['/var/lib/dimse-tls-proxy']);
    const health = ins.find((i) => i.op === 'HEALTHCHECK');
    assert.ok(health, 'HEALTHCHECK');
    const cmd = /CMD\s+(\[.*\])$/.exec(health.args)?.[1] ?? '';
    assert.ok(isJsonArray(cmd), 'HEALTHCHECK CMD in JSON form');
    assert.deepEqual((JSON.parse(cmd) as string[]).slice(1, 4), ['/app/dist/cli.js', 'status', '--live']);
    assert.equal(ins.find((i) => i.op === 'STOPSIGNAL')?.args, 'SIGTERM');
    assert.equal(ins.filter((i) => i.op === 'USER').at(-1)?.args, 'node');
  });

  test('.dockerignore keeps dependencies, history and secrets out of the build context', () => {
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    for (const entry of ['.git', 'node_modules', 'certs', 'dist', '**/*.key']) {
      assert.ok(ignored.includes(entry), `${entry} not in .dockerignore`);
    }
  });
});
