// dcmjs-dimse peers for Storage Commitment Push Model tests (PS3.4 J): a mutual-TLS archive that stores
// C-STOREs in memory, answers N-ACTION (commitment request) and reports the result on a NEW association
// (N-EVENT-REPORT) to a configurable place; a plaintext modality listener that records the
// N-EVENT-REPORTs it receives; and SCU helpers (the modality's stores + N-ACTION, a lone N-EVENT-REPORT).
// Everything binds 127.0.0.1 on port 0 and every network operation is bounded in time.
import dimse from 'dcmjs-dimse';
import { Writable } from 'node:stream';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';

const { Client, Scp, Dataset } = dimse;
dimse.log.setLevel('error');
const { CStoreRequest, NActionRequest, NEventReportRequest } = dimse.requests;
const { CEchoResponse, CStoreResponse, NActionResponse, NEventReportResponse } = dimse.responses;
const { Status, PresentationContextResult } = dimse.constants;

export type DimseDataset = InstanceType<typeof Dataset>;

/** Storage Commitment Push Model SOP Class and its well-known instance (PS3.4 J.3, PS3.6 A-1). */
export const COMMITMENT = '1.2.840.10008.1.20.1';
export const COMMITMENT_INSTANCE = '1.2.840.10008.1.20.1.1';
/** Failure Reason "Processing failure" (PS3.3 C.14.1.1). */
export const PROCESSING_FAILURE = 0x0110;

export interface PeerTls {
  ca: string;
  cert: string;
  key: string;
}

/** One item of a Referenced / Failed SOP Sequence, as dcmjs naturalizes it. */
export interface SopItem {
  ReferencedSOPClassUID: string;
  ReferencedSOPInstanceUID: string;
  FailureReason?: number;
}

/** The parts of an N-EVENT-REPORT-RQ a test looks at. */
export interface ReceivedReport {
  callingAeTitle: string;
  calledAeTitle: string;
  affectedSopClassUid: string;
  affectedSopInstanceUid: string;
  eventTypeId: number;
  elements: Record<string, unknown>;
}

// ---- the parts of dcmjs-dimse's Scp used here (its typings declare the handlers too strictly) ----

interface ScpInstance {
  sendAssociationAccept(): void;
  sendAssociationReleaseResponse(): void;
  on(event: string, listener: (...args: unknown[]) => void): void;
}
const ScpBase = Scp as unknown as new (socket: Socket | TLSSocket, opts: object) => ScpInstance;

interface DimseAssociation {
  getCallingAeTitle(): string;
  getCalledAeTitle(): string;
  getPresentationContexts(): Array<{ id: number }>;
  getPresentationContext(id: number): {
    getTransferSyntaxUids(): string[];
    setResult(result: number, ts?: string): void;
  };
}
interface DimseRequest {
  getAffectedSopClassUid(): string;
  getAffectedSopInstanceUid(): string;
  getDataset(): DimseDataset | undefined;
}
interface DimseEventReportRequest extends DimseRequest {
  getEventTypeId(): number;
}

/** Accept every proposed presentation context with its first transfer syntax. */
function acceptEverything(association: DimseAssociation): void {
  for (const c of association.getPresentationContexts()) {
    const context = association.getPresentationContext(c.id);
    const ts = context.getTransferSyntaxUids()[0];
    if (ts) context.setResult(PresentationContextResult.Accept, ts);
    else context.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
  }
}

interface Listening {
  port: number;
  close(): Promise<void>;
}

/** Listen on 127.0.0.1:0 with one Scp per connection; close() also destroys the live connections. */
async function listen(server: net.Server, onSocket: (socket: Socket) => void): Promise<Listening> {
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on(server instanceof tls.Server ? 'secureConnection' : 'connection', (socket: Socket) => {
    socket.on('error', () => undefined);
    onSocket(socket);
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------------
// The modality's own listener (the proxy's `receiver` for it): records N-EVENT-REPORTs.

export interface ModalityScp {
  port: number;
  reports: ReceivedReport[];
  /** Every request it handled, by name, in order. */
  requests: string[];
  close(): Promise<void>;
}

export async function startModalityScp(): Promise<ModalityScp> {
  const reports: ReceivedReport[] = [];
  const requests: string[] = [];
  class ReceiverScp extends ScpBase {
    private calling = '';
    private called = '';
    associationRequested(association: DimseAssociation): void {
      this.calling = association.getCallingAeTitle();
      this.called = association.getCalledAeTitle();
      acceptEverything(association);
      this.sendAssociationAccept();
    }
    associationReleaseRequested(): void {
      this.sendAssociationReleaseResponse();
    }
    abort(): void {}
    cEchoRequest(request: never, callback: (r: unknown) => void): void {
      requests.push('C-ECHO');
      const response = CEchoResponse.fromRequest(request);
      response.setStatus(Status.Success);
      callback(response);
    }
    nEventReportRequest(request: DimseEventReportRequest, callback: (r: unknown) => void): void {
      requests.push('N-EVENT-REPORT');
      reports.push({
        callingAeTitle: this.calling,
        calledAeTitle: this.called,
        affectedSopClassUid: request.getAffectedSopClassUid(),
        affectedSopInstanceUid: request.getAffectedSopInstanceUid(),
        eventTypeId: request.getEventTypeId(),
        elements: request.getDataset()?.getElements() ?? {},
      });
      const response = NEventReportResponse.fromRequest(request as never);
      response.setStatus(Status.Success);
      callback(response);
    }
  }
  const listening = await listen(net.createServer(), (socket) => {
    socket.setNoDelay(true);
    const scp = new ReceiverScp(socket, { associationTimeout: 10_000, pduTimeout: 10_000 });
    scp.on('networkError', () => socket.destroy());
  });
  return { ...listening, reports, requests };
}

// ---------------------------------------------------------------------------------------------------
// The archive: mutual TLS, C-STORE in memory, N-ACTION answered, result reported on a new association.

export interface StoredInstance {
  sopClassUid: string;
  sopInstanceUid: string;
  callingAeTitle: string;
  /** The data set bytes exactly as received (not parsed). */
  dataSet: Buffer;
}

/** Collects a C-STORE data set's bytes as they arrive. */
class Collector extends Writable {
  readonly chunks: Buffer[] = [];
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.chunks.push(Buffer.from(chunk));
    callback();
  }
}

export interface ReportPlan {
  host: string;
  port: number;
  callingAeTitle: string;
  /** The called AE title: the AE title of the modality that asked (PS3.4 J.3.3). */
  calledAeTitle: string;
  tls: PeerTls;
  /** Which requested instance the archive reports as failed (the others: committed). */
  failIndex: number;
}

export interface CommitmentArchive {
  port: number;
  stored: StoredInstance[];
  /** The N-ACTION data sets received (naturalized). */
  actions: Array<Record<string, unknown>>;
  /** How each N-EVENT-REPORT the archive sent ended. */
  reportResults: EventReportResult[];
  close(): Promise<void>;
}

export async function startCommitmentArchive(
  material: PeerTls,
  plan: () => ReportPlan,
): Promise<CommitmentArchive> {
  const stored: StoredInstance[] = [];
  const actions: Array<Record<string, unknown>> = [];
  const reportResults: EventReportResult[] = [];
  class ArchiveScp extends ScpBase {
    private calling = '';
    associationRequested(association: DimseAssociation): void {
      this.calling = association.getCallingAeTitle();
      acceptEverything(association);
      this.sendAssociationAccept();
    }
    associationReleaseRequested(): void {
      this.sendAssociationReleaseResponse();
    }
    abort(): void {}
    cEchoRequest(request: never, callback: (r: unknown) => void): void {
      const response = CEchoResponse.fromRequest(request);
      response.setStatus(Status.Success);
      callback(response);
    }
    createStoreWritableStream(): Writable {
      return new Collector();
    }
    createDatasetFromStoreWritableStream(
      writable: Collector,
      context: { getAcceptedTransferSyntaxUid(): string },
      callback: (dataset: DimseDataset) => void,
    ): void {
      writable.end(() =>
        callback(
          new Dataset({ _bytes: Buffer.concat(writable.chunks) }, context.getAcceptedTransferSyntaxUid()),
        ),
      );
    }
    cStoreRequest(request: DimseRequest, callback: (r: unknown) => void): void {
      const elements = request.getDataset()?.getElements() ?? {};
      stored.push({
        sopClassUid: request.getAffectedSopClassUid(),
        sopInstanceUid: request.getAffectedSopInstanceUid(),
        callingAeTitle: this.calling,
        dataSet: Buffer.isBuffer(elements._bytes) ? elements._bytes : Buffer.alloc(0),
      });
      const response = CStoreResponse.fromRequest(request as never);
      response.setStatus(Status.Success);
      callback(response);
    }
    nActionRequest(request: DimseRequest, callback: (r: unknown) => void): void {
      const elements = request.getDataset()?.getElements() ?? {};
      actions.push(elements);
      const response = NActionResponse.fromRequest(request as never);
      response.setStatus(Status.Success);
      callback(response);
      // PS3.4 J.3.3: the result comes later, here on an association the archive opens itself.
      const p = plan();
      const requested = (elements.ReferencedSOPSequence as SopItem[] | undefined) ?? [];
      const committed: SopItem[] = [];
      const failed: SopItem[] = [];
      requested.forEach((item, i) => {
        const known = stored.some((s) => s.sopInstanceUid === item.ReferencedSOPInstanceUID);
        const ref = {
          ReferencedSOPClassUID: item.ReferencedSOPClassUID,
          ReferencedSOPInstanceUID: item.ReferencedSOPInstanceUID,
        };
        if (known && i !== p.failIndex) committed.push(ref);
        else failed.push({ ...ref, FailureReason: PROCESSING_FAILURE });
      });
      setTimeout(() => {
        void sendEventReport({
          host: p.host,
          port: p.port,
          callingAeTitle: p.callingAeTitle,
          calledAeTitle: p.calledAeTitle,
          tls: p.tls,
          eventTypeId: failed.length > 0 ? 2 : 1,
          elements: {
            TransactionUID: elements.TransactionUID,
            ReferencedSOPSequence: committed,
            ...(failed.length > 0 ? { FailedSOPSequence: failed } : {}),
          },
        }).then((r) => reportResults.push(r));
      }, 10);
    }
  }
  const server = tls.createServer({
    ca: material.ca,
    cert: material.cert,
    key: material.key,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
  });
  const listening = await listen(server, (socket) => {
    socket.setNoDelay(true);
    const scp = new ArchiveScp(socket, { associationTimeout: 10_000, pduTimeout: 10_000 });
    scp.on('networkError', () => socket.destroy());
  });
  return { ...listening, stored, actions, reportResults };
}

// ---------------------------------------------------------------------------------------------------
// SCUs.

interface ClientOutcome {
  /** null when the association ended normally (released). */
  error: string | null;
}

/** Run a dcmjs-dimse Client with its requests already added; resolves when it closed (or timed out). */
function runClient(
  client: InstanceType<typeof Client>,
  o: { host: string; port: number; callingAeTitle: string; calledAeTitle: string; tls?: PeerTls },
  timeoutMs: number,
): Promise<ClientOutcome> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (error: string | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ error });
    };
    const timer = setTimeout(() => finish(`not finished within ${timeoutMs} ms`), timeoutMs);
    client.on('associationRejected', (e: { result: number; source: number; reason: number }) =>
      finish(`association rejected ${e.result}/${e.source}/${e.reason}`),
    );
    client.on('associationAborted', () => finish('association aborted'));
    client.on('networkError', (e: Error) => finish(`network error: ${e.message}`));
    client.on('closed', () => finish(null));
    client.send(o.host, o.port, o.callingAeTitle, o.calledAeTitle, {
      connectTimeout: timeoutMs,
      associationTimeout: timeoutMs,
      pduTimeout: timeoutMs,
      associationLingerTimeout: 0,
      ...(o.tls ? { securityOptions: { ...o.tls, rejectUnauthorized: true, minVersion: 'TLSv1.2' } } : {}),
    });
  });
}

export interface EventReportResult extends ClientOutcome {
  status: number | null;
}

/** One Storage Commitment N-EVENT-REPORT-RQ on its own association. Never throws. */
export async function sendEventReport(o: {
  host: string;
  port: number;
  callingAeTitle: string;
  calledAeTitle: string;
  tls?: PeerTls;
  eventTypeId: number;
  elements: Record<string, unknown>;
  timeoutMs?: number;
}): Promise<EventReportResult> {
  const client = new Client();
  const request = new NEventReportRequest(COMMITMENT, COMMITMENT_INSTANCE, o.eventTypeId);
  request.setDataset(new Dataset(o.elements));
  let status: number | null = null;
  request.on('response', (response: { getStatus(): number }) => {
    status = response.getStatus();
  });
  client.addRequest(request);
  const outcome = await runClient(client, o, o.timeoutMs ?? 10_000);
  return { ...outcome, status };
}

export interface ModalityRunResult extends ClientOutcome {
  storeStatuses: Array<number | null>;
  actionStatus: number | null;
}

/** The modality: C-STOREs, then an N-ACTION asking to commit them (Action Type 1), on one association. */
export async function storeAndRequestCommitment(o: {
  host: string;
  port: number;
  callingAeTitle: string;
  calledAeTitle: string;
  instances: DimseDataset[];
  transactionUid: string;
  timeoutMs?: number;
}): Promise<ModalityRunResult> {
  const client = new Client();
  const storeStatuses: Array<number | null> = o.instances.map(() => null);
  o.instances.forEach((instance, i) => {
    const request = new CStoreRequest(instance);
    request.on('response', (response: { getStatus(): number }) => {
      storeStatuses[i] = response.getStatus();
    });
    client.addRequest(request);
  });
  const action = new NActionRequest(COMMITMENT, COMMITMENT_INSTANCE, 1);
  action.setDataset(
    new Dataset({
      TransactionUID: o.transactionUid,
      ReferencedSOPSequence: o.instances.map((d) => ({
        ReferencedSOPClassUID: d.getElement('SOPClassUID'),
        ReferencedSOPInstanceUID: d.getElement('SOPInstanceUID'),
      })),
    }),
  );
  let actionStatus: number | null = null;
  action.on('response', (response: { getStatus(): number }) => {
    actionStatus = response.getStatus();
  });
  client.addRequest(action);
  const outcome = await runClient(client, o, o.timeoutMs ?? 20_000);
  return { ...outcome, storeStatuses, actionStatus };
}
