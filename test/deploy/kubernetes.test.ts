// The Kubernetes base (deploy/kubernetes): every manifest validated against the Kubernetes API schemas
// (kubernetes-models, and its Prometheus Operator and cert-manager packages), then checked against the
// policy it ships and the image: container ports = the policy's listeners and admin endpoint, probes on
// /healthz and /readyz of the admin port, the policy mounted as a directory (no subPath) at the path the
// args name, certificates from the Secret at the paths the policy names, a writable state volume for the
// ledger path under a read-only root filesystem, a grace period longer than the drain, the alert rules
// equal to config/monitoring/alerts.yaml.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';
import { ConfigMap, Service } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import {
  PrometheusRule,
  ServiceMonitor,
} from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { Certificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1';
import { parseConfig } from '../../src/config/load.js';

const DIR = join(import.meta.dirname, '..', '..', 'deploy', 'kubernetes');

type Manifest = { apiVersion: string; kind: string; metadata: { name: string } } & Record<string, unknown>;

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
  'cert-manager.io/v1/Certificate': Certificate,
};

function load(file: string): Manifest[] {
  return parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
    assert.equal(d.errors.length, 0, `${file}: ${d.errors.join('; ')}`);
    return d.toJS() as Manifest;
  });
}

const kustomization = parse(readFileSync(join(DIR, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
const base = kustomization.resources.flatMap((f) => load(join(DIR, f)));
const examples = readdirSync(join(DIR, 'examples')).flatMap((f) => load(join(DIR, 'examples', f)));

function one<T>(kind: string, name?: string): T {
  const found = base.filter((m) => m.kind === kind && (name === undefined || m.metadata.name === name));
  assert.equal(found.length, 1, `${kind} ${name ?? ''}`);
  return found[0] as T;
}

describe('Kubernetes manifests', () => {
  test('every manifest validates against its API schema; an invalid one does not', () => {
    for (const m of [...base, ...examples]) {
      const Model = MODELS[`${m.apiVersion}/${m.kind}`];
      assert.ok(Model, `no schema for ${m.apiVersion} ${m.kind}`);
      assert.doesNotThrow(() => new Model(m as never).validate(), `${m.kind} ${m.metadata.name}`);
    }
    const broken = structuredClone(one<Manifest>('Deployment'));
    (broken as unknown as { spec: { replicas: unknown } }).spec.replicas = 'two';
    assert.throws(() => new Deployment(broken as never).validate());
  });

  test('the Deployment agrees with the policy it mounts and the image', () => {
    const cm = one<{ data: Record<string, string> }>('ConfigMap');
    const policyText = cm.data['proxy.yaml'];
    assert.ok(policyText);
    const policy = parseConfig(policyText, null);
    interface Container {
      args: string[];
      ports: Array<{ name: string; containerPort: number }>;
      readinessProbe: { httpGet: { path: string; port: string } };
      livenessProbe: { httpGet: { path: string; port: string } };
      volumeMounts: Array<{ name: string; mountPath: string; subPath?: string; readOnly?: boolean }>;
      securityContext: { readOnlyRootFilesystem: boolean; allowPrivilegeEscalation: boolean };
    }
    const d = one<{
      spec: {
        template: {
          spec: {
            terminationGracePeriodSeconds: number;
            containers: Container[];
            volumes: Array<{ name: string; configMap?: { name: string }; secret?: { secretName: string } }>;
          };
        };
      };
    }>('Deployment');
    const pod = d.spec.template.spec;
    const c = pod.containers[0] as Container;
    // Ports: the forward listener (and the return listener when configured) and the admin endpoint.
    const ports = Object.fromEntries(c.ports.map((p) => [p.name, p.containerPort]));
    assert.equal(ports['dicom'], policy.listen.port);
    assert.equal(ports['admin'], policy.admin?.port);
    assert.equal(policy.admin?.host, '0.0.0.0', 'the kubelet and Prometheus reach the admin endpoint');
    if (policy.returnListener) assert.equal(ports['dicom-return'], policy.returnListener.port);
    else assert.equal(ports['dicom-return'], undefined);
    assert.deepEqual([c.readinessProbe.httpGet.path, c.readinessProbe.httpGet.port], ['/readyz', 'admin']);
    assert.deepEqual([c.livenessProbe.httpGet.path, c.livenessProbe.httpGet.port], ['/healthz', 'admin']);
    // Mounts: the policy directory the args name, from the ConfigMap, never subPath.
    const policyPath = c.args[c.args.indexOf('--config') + 1] ?? '';
    const mountOf = (path: string) =>
      c.volumeMounts.find((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`));
    for (const m of c.volumeMounts) assert.equal(m.subPath, undefined, `${m.name} mounted with subPath`);
    const policyMount = mountOf(policyPath);
    assert.equal(dirname(policyPath), policyMount?.mountPath);
    const volume = (name: string | undefined) => pod.volumes.find((v) => v.name === name);
    assert.equal(volume(policyMount?.name)?.configMap?.name, (cm as unknown as Manifest).metadata.name);
    // Certificates and keys the policy names come from the Secret; the ledger path is on the state volume.
    const upstream = Object.values(policy.upstreams)[0];
    assert.ok(upstream);
    for (const f of [upstream.tls.ca, upstream.tls.cert, upstream.tls.key]) {
      assert.ok(volume(mountOf(f)?.name)?.secret, `${f} is not on the certificate Secret's mount`);
    }
    assert.ok(c.securityContext.readOnlyRootFilesystem);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    const ledgerMount = mountOf(policy.ledger.path ?? '');
    assert.ok(ledgerMount && ledgerMount.readOnly !== true, 'the ledger path is on a writable volume');
    // SIGTERM drains for limits.drainTimeout: the grace period (with the preStop pause) must cover it.
    assert.ok(pod.terminationGracePeriodSeconds * 1000 >= policy.limits.drainTimeoutMs + 10_000);
    // The Secret the cert-manager example writes is the one mounted.
    const cert = examples.find((m) => m.kind === 'Certificate') as
      { spec: { secretName: string } } | undefined;
    assert.equal(volume(mountOf(upstream.tls.cert)?.name)?.secret?.secretName, cert?.spec.secretName);
  });

  test('the Services and the ServiceMonitor select the pods and their ports; the alert rules are the shipped ones', () => {
    const labels = { 'app.kubernetes.io/name': 'dimse-tls-proxy' };
    const services = base.filter((m) => m.kind === 'Service') as unknown as Array<{
      metadata: { name: string; labels?: Record<string, string> };
      spec: {
        selector: Record<string, string>;
        externalTrafficPolicy?: string;
        ports: Array<{ name: string; targetPort: string }>;
      };
    }>;
    const front = services.find((s) => s.metadata.name === 'dimse-tls-proxy');
    assert.equal(front?.spec.externalTrafficPolicy, 'Local', 'keeps the modality source address');
    for (const s of services) assert.deepEqual(s.spec.selector, labels);
    const sm = one<{
      spec: {
        selector: { matchLabels: Record<string, string> };
        endpoints: Array<{ port: string; path: string }>;
      };
    }>('ServiceMonitor');
    const scraped = services.filter((s) =>
      Object.entries(sm.spec.selector.matchLabels).every(
        ([k, v]) => ({ ...labels, ...s.metadata.labels })[k] === v,
      ),
    );
    assert.equal(scraped.length, 1);
    assert.deepEqual(
      sm.spec.endpoints.map((e) => [e.port, e.path]),
      [['admin', '/metrics']],
    );
    assert.ok(scraped[0]?.spec.ports.some((p) => p.name === 'admin'));
    const rules = one<{ spec: unknown }>('PrometheusRule').spec;
    const shipped = parse(readFileSync(join(DIR, '..', '..', 'config', 'monitoring', 'alerts.yaml'), 'utf8'));
    assert.deepEqual(rules, shipped);
  });
});
