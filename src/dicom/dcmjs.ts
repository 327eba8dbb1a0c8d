// A small typed facade over dcmjs-dimse, used for the `echo` command, the upstream readiness probe
// and the embedded demo archive. The relay never uses it: it has its own PDU layer (see DESIGN.md).
import dimse from 'dcmjs-dimse';
import { createWriteStream, mkdirSync, renameSync, statSync, type WriteStream } from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { encodeFileMeta } from './part10.js';

const { Client, Scp, Dataset } = dimse;
dimse.log.setLevel('error');
const { CEchoRequest, CStoreRequest } = dimse.requests;
const { CEchoResponse, CStoreResponse, CFindResponse, CMoveResponse } = dimse.responses;
const { Status, PresentationContextResult } = dimse.constants;

export { Dataset };
export type DimseDataset = InstanceType<typeof Dataset>;

export interface PeerTls {
  ca: Buffer | string;
  cert: Buffer | string;
  key: Buffer | string;
}

export interface EchoOptions {
  host: string;
  port: number;
  callingAeTitle: string;
  calledAeTitle: string;
  tls?: PeerTls;
  timeoutMs?: number;
}

export interface EchoResult {
  ok: boolean;
  status: number | null;
  error: string | null;
  durationMs: number;
}

/** C-ECHO (PS3.7 9.1.5) to any host, optionally over mutual TLS. Never throws. */
export function echo(opts: EchoOptions): Promise<EchoResult> {
  const started = performance.now();
  return new Promise((resolve) => {
    let done = false;
    const finish = (r: Omit<EchoResult, 'durationMs'>): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ ...r, durationMs: performance.now() - started });
    };
    const timeoutMs = opts.timeoutMs ?? 10000;
    const timer = setTimeout(
      () => finish({ ok: false, status: null, error: `no answer within ${timeoutMs} ms` }),
      timeoutMs,
    );
    const client = new Client();
    const request = new CEchoRequest();
    request.on('response', (response: { getStatus(): number }) => {
      const status = response.getStatus();
      finish({
        ok: status === Status.Success,
        status,
        error: status === Status.Success ? null : 'failure status',
      });
    });
    client.on('associationRejected', (e: { result: number; source: number; reason: number }) =>
      finish({ ok: false, status: null, error: `association rejected ${e.result}/${e.source}/${e.reason}` }),
    );
    client.on('associationAborted', (e: { source: number; reason: number }) =>
      finish({ ok: false, status: null, error: `association aborted ${e?.source}/${e?.reason}` }),
    );
    client.on('networkError', (e: Error) =>
      finish({ ok: false, status: null, error: `network error: ${e.message}` }),
    );
    client.on('closed', () =>
      finish({ ok: false, status: null, error: 'connection closed without a response' }),
    );
    client.addRequest(request);
    client.send(opts.host, opts.port, opts.callingAeTitle, opts.calledAeTitle, {
      connectTimeout: timeoutMs,
      associationTimeout: timeoutMs,
      pduTimeout: timeoutMs,
      ...(opts.tls
        ? { securityOptions: { ...opts.tls, rejectUnauthorized: true, minVersion: 'TLSv1.2' } }
        : {}),
    });
  });
}

export interface StoreOptions extends Omit<EchoOptions, 'tls'> {
  tls?: PeerTls;
  /** Part 10 files or datasets to send in one association. */
  instances: Array<string | DimseDataset>;
}

export interface StoreResult {
  statuses: Array<number | null>;
  error: string | null;
}

/** C-STORE (PS3.7 9.1.1) of several instances in one association. Never throws. */
export function store(opts: StoreOptions): Promise<StoreResult> {
  return new Promise((resolve) => {
    const statuses: Array<number | null> = opts.instances.map(() => null);
    let done = false;
    const finish = (error: string | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ statuses, error });
    };
    const timeoutMs = opts.timeoutMs ?? 60000;
    const timer = setTimeout(() => finish(`not finished within ${timeoutMs} ms`), timeoutMs);
    const client = new Client();
    opts.instances.forEach((instance, i) => {
      const request = new CStoreRequest(instance as never);
      request.on('response', (response: { getStatus(): number }) => {
        statuses[i] = response.getStatus();
      });
      client.addRequest(request);
    });
    client.on('associationRejected', (e: { result: number; source: number; reason: number }) =>
      finish(`association rejected ${e.result}/${e.source}/${e.reason}`),
    );
    client.on('associationAborted', () => finish('association aborted'));
    client.on('networkError', (e: Error) => finish(`network error: ${e.message}`));
    client.on('closed', () => {
      const missing = statuses.filter((st) => st === null).length;
      finish(missing > 0 ? `connection closed with ${missing} C-STORE response(s) missing` : null);
    });
    client.send(opts.host, opts.port, opts.callingAeTitle, opts.calledAeTitle, {
      connectTimeout: timeoutMs,
      associationTimeout: timeoutMs,
      pduTimeout: timeoutMs,
      ...(opts.tls
        ? { securityOptions: { ...opts.tls, rejectUnauthorized: true, minVersion: 'TLSv1.2' } }
        : {}),
    });
  });
}

export interface ReceivedInstance {
  file: string;
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
  callingAeTitle: string;
  bytes: number;
}

export interface ArchiveOptions {
  host?: string;
  port: number;
  aeTitle: string;
  storageDir: string;
  /** `ciphers`: an OpenSSL cipher string, e.g. with @SECLEVEL=0 to serve a key the default level refuses. */
  tls?: PeerTls & { requireClientCert: boolean; ciphers?: string };
  /** Status answered to C-STORE (default success). */
  storeStatus?: () => number;
  onStored?: (instance: ReceivedInstance) => void;
}

export interface ArchiveHandle {
  port: number;
  /** Every request the archive handled, by name (C-ECHO, C-FIND, C-STORE, C-MOVE), in order. */
  requests: string[];
  server: net.Server;
  received: ReceivedInstance[];
  close(): void;
}

/**
 * A minimal SCP archive: accepts every presentation context with the first proposed transfer syntax,
 * answers C-ECHO and C-FIND (no matches), and streams each C-STORE data set to a Part 10 file exactly
 * as received (meta header + the data set bytes, unchanged).
 */
export function startArchive(opts: ArchiveOptions): Promise<ArchiveHandle> {
  mkdirSync(opts.storageDir, { recursive: true });
  const received: ReceivedInstance[] = [];
  const requests: string[] = [];

  class ArchiveScp extends ScpBase {
    private callingAe = '';
    associationRequested(association: DimseAssociation): void {
      this.callingAe = association.getCallingAeTitle();
      for (const c of association.getPresentationContexts()) {
        const context = association.getPresentationContext(c.id);
        const ts = context.getTransferSyntaxUids()[0];
        if (ts) context.setResult(PresentationContextResult.Accept, ts);
        else context.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
      }
      this.sendAssociationAccept();
    }
    /** A-ABORT received (PS3.8 9.3.8): nothing to undo, the connection closes. */
    abort(): void {}
    associationReleaseRequested(): void {
      this.sendAssociationReleaseResponse();
    }
    cEchoRequest(request: never, callback: (r: unknown) => void): void {
      requests.push('C-ECHO');
      const response = CEchoResponse.fromRequest(request);
      response.setStatus(Status.Success);
      callback(response);
    }
    cFindRequest(request: never, callback: (r: unknown[]) => void): void {
      requests.push('C-FIND');
      const response = CFindResponse.fromRequest(request);
      response.setStatus(Status.Success);
      callback([response]);
    }
    cMoveRequest(request: never, callback: (r: unknown[]) => void): void {
      // The demo archive performs no retrieval: "unable to process" (PS3.4 C.4.2.1.5), never a success.
      requests.push('C-MOVE');
      const response = CMoveResponse.fromRequest(request);
      response.setStatus(0xc000);
      callback([response]);
    }
    createStoreWritableStream(context: DimseContext, request: DimseStoreRequest): WriteStream {
      const sopInstanceUid = request.getAffectedSopInstanceUid();
      const tmp = join(opts.storageDir, `.${sopInstanceUid}.${process.pid}.part`);
      const stream = createWriteStream(tmp);
      stream.write(
        encodeFileMeta({
          sopClassUid: request.getAffectedSopClassUid(),
          sopInstanceUid,
          transferSyntaxUid: context.getAcceptedTransferSyntaxUid(),
          sourceAeTitle: this.callingAe,
        }),
      );
      return stream;
    }
    createDatasetFromStoreWritableStream(
      writable: WriteStream,
      context: DimseContext,
      callback: (dataset: DimseDataset) => void,
    ): void {
      writable.end(() =>
        callback(
          new Dataset({ _tmp: String(writable.path) } as never, context.getAcceptedTransferSyntaxUid()),
        ),
      );
    }
    cStoreRequest(request: DimseStoreRequest, callback: (r: unknown) => void): void {
      requests.push('C-STORE');
      const tmp = String(request.getDataset().getElement('_tmp'));
      const sopInstanceUid = request.getAffectedSopInstanceUid();
      const file = join(opts.storageDir, `${sopInstanceUid}.dcm`);
      const status = opts.storeStatus ? opts.storeStatus() : Status.Success;
      let bytes = 0;
      try {
        renameSync(tmp, file);
        bytes = statSync(file).size;
      } catch {
        /* the file is missing: bytes stays 0 */
      }
      const response = CStoreResponse.fromRequest(request as never);
      response.setStatus(status);
      const instance: ReceivedInstance = {
        file,
        sopClassUid: request.getAffectedSopClassUid(),
        sopInstanceUid,
        transferSyntaxUid: request.getDataset().getTransferSyntaxUid(),
        callingAeTitle: this.callingAe,
        bytes,
      };
      received.push(instance);
      opts.onStored?.(instance);
      callback(response);
    }
  }

  const scpOptions = { associationTimeout: 30000, pduTimeout: 30000 };
  const onSocket = (socket: Socket | TLSSocket): void => {
    socket.setNoDelay(true);
    const scp = new ArchiveScp(socket, scpOptions);
    scp.on('networkError', () => socket.destroy());
  };
  const server: net.Server = opts.tls
    ? tls.createServer(
        {
          ca: opts.tls.ca,
          cert: opts.tls.cert,
          key: opts.tls.key,
          requestCert: opts.tls.requireClientCert,
          rejectUnauthorized: opts.tls.requireClientCert,
          minVersion: 'TLSv1.2',
          ...(opts.tls.ciphers ? { ciphers: opts.tls.ciphers } : {}),
        },
        onSocket,
      )
    : net.createServer(onSocket);
  server.on('tlsClientError', () => undefined);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: opts.host ?? '127.0.0.1', port: opts.port }, () => {
      server.removeListener('error', reject);
      const addr = server.address() as net.AddressInfo;
      resolve({ port: addr.port, received, requests, server, close: () => server.close() });
    });
  });
}

/** The part of dcmjs-dimse's Scp the archive uses (its typings declare the handlers too strictly). */
interface ScpInstance {
  sendAssociationAccept(): void;
  sendAssociationReleaseResponse(): void;
  on(event: string, listener: (...args: unknown[]) => void): void;
}
const ScpBase = Scp as unknown as new (socket: Socket | TLSSocket, opts: object) => ScpInstance;

interface DimseAssociation {
  getCallingAeTitle(): string;
  getPresentationContexts(): Array<{ id: number }>;
  getPresentationContext(id: number): DimseContext;
}
interface DimseContext {
  getTransferSyntaxUids(): string[];
  getAcceptedTransferSyntaxUid(): string;
  setResult(result: number, ts?: string): void;
}
interface DimseStoreRequest {
  getAffectedSopInstanceUid(): string;
  getAffectedSopClassUid(): string;
  getDataset(): DimseDataset;
}
