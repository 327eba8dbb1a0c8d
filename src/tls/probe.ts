// The readiness probe: a real C-ECHO (PS3.7 9.1.5) to an upstream archive over exactly the TLS path the
// relay uses (connectUpstream: profile, client certificate, CA, server name and hostname check), with the
// proxy's own PDU codec. Certificate files are read afresh for every probe, so a rotation shows at once.
import * as net from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { UpstreamConfig } from '../config/types.js';
import { DICOM_APPLICATION_CONTEXT, PduType, PresentationContextResult } from '../pdu/constants.js';
import { aeTitleField, decodePdu, encodePdu, presentationContextsAc } from '../pdu/codec.js';
import { PduFramer } from '../pdu/framer.js';
import type { AssociatePdu, PDataPdu } from '../pdu/types.js';
import { CommandField, decodeCommand, encodeCommand, Status } from '../dimse/command.js';
import {
  buildUpstreamTlsContext,
  connectUpstream,
  UpstreamConnectError,
  type UpstreamTlsSettings,
} from './upstream.js';

const VERIFICATION = '1.2.840.10008.1.1';
/** How long the A-RELEASE-RP is waited for once the C-ECHO-RSP's status is known. */
const RELEASE_WAIT_MS = 2000;
const IMPLICIT_LE = '1.2.840.10008.1.2';
/** The proxy's implementation class UID (registered under the project's root, as in Part 10 files). */
const IMPLEMENTATION_CLASS_UID = '1.2.826.0.1.3680043.10.1461.1';

export interface ProbeResult {
  ok: boolean;
  /** The C-ECHO-RSP status, or null when none came. */
  status: number | null;
  error: string | null;
  durationMs: number;
}

/** What a C-ECHO to any node learnt (the `echo` command). */
export interface EchoResult extends ProbeResult {
  /** The A-ASSOCIATE-RJ, when the node rejected the association. */
  rejection: { result: number; source: number; reason: number } | null;
  /** The TLS session, when over TLS and the handshake completed. */
  tls: {
    protocol: string | null;
    cipher: string;
    peerCertificate: {
      subject: string;
      issuer: string;
      subjectAltName: string | null;
      validFrom: string;
      validTo: string;
      fingerprint256: string;
    } | null;
  } | null;
}

export interface EchoOptions {
  host: string;
  port: number;
  callingAeTitle: string;
  calledAeTitle: string;
  timeoutMs: number;
  /** Mutual TLS with the relay's own TLS path (profile, server name and hostname check). */
  tls?: UpstreamTlsSettings | null;
}

/** The association was rejected (PS3.8 9.3.4): result, source and reason as received. */
export class AssociationRejectedError extends Error {
  constructor(readonly rejection: { result: number; source: number; reason: number }) {
    super(`association rejected ${rejection.result}/${rejection.source}/${rejection.reason}`);
    this.name = 'AssociationRejectedError';
  }
}

function sessionOf(socket: TLSSocket): NonNullable<EchoResult['tls']> {
  const cert = socket.getPeerX509Certificate();
  return {
    protocol: socket.getProtocol(),
    cipher: socket.getCipher().standardName,
    peerCertificate: cert
      ? {
          subject: cert.subject.replace(/\n/g, ', '),
          issuer: cert.issuer.replace(/\n/g, ', '),
          subjectAltName: cert.subjectAltName ?? null,
          validFrom: cert.validFromDate.toISOString(),
          validTo: cert.validToDate.toISOString(),
          fingerprint256: cert.fingerprint256,
        }
      : null,
  };
}

/** C-ECHO any DICOM node, in plaintext or over the relay's TLS path, with the proxy's codec; never throws. */
export async function echoNode(opts: EchoOptions): Promise<EchoResult> {
  const started = performance.now();
  let session: EchoResult['tls'] = null;
  const done = (
    ok: boolean,
    status: number | null,
    error: string | null,
    rejection: EchoResult['rejection'] = null,
  ): EchoResult => ({ ok, status, error, rejection, tls: session, durationMs: performance.now() - started });
  let socket: net.Socket;
  try {
    if (opts.tls) {
      const tlsSocket = await connectUpstream({
        host: opts.host,
        port: opts.port,
        timeoutMs: opts.timeoutMs,
        tls: buildUpstreamTlsContext(opts.tls),
      });
      session = sessionOf(tlsSocket);
      socket = tlsSocket;
    } else {
      socket = await connectPlain(opts.host, opts.port, opts.timeoutMs);
    }
  } catch (err) {
    const reason = err instanceof UpstreamConnectError ? `${err.reason}: ` : '';
    return done(false, null, `${reason}${(err as Error).message}`);
  }
  try {
    const status = await converse(
      socket,
      opts.calledAeTitle,
      opts.callingAeTitle,
      opts.timeoutMs - (performance.now() - started),
    );
    return done(status === Status.Success, status, status === Status.Success ? null : 'failure status');
  } catch (err) {
    return done(
      false,
      null,
      (err as Error).message,
      err instanceof AssociationRejectedError ? err.rejection : null,
    );
  } finally {
    socket.destroy();
  }
}

function connectPlain(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no TCP connection within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** C-ECHO the upstream; never throws. */
export async function echoUpstream(
  upstream: UpstreamConfig,
  timeoutMs: number,
  callingAeTitle = 'DIMSE_PROXY',
): Promise<ProbeResult> {
  const r = await echoNode({
    host: upstream.host,
    port: upstream.port,
    callingAeTitle: upstream.callingAeTitle ?? callingAeTitle,
    calledAeTitle: upstream.aeTitle,
    timeoutMs,
    tls: upstream.tls,
  });
  return { ok: r.ok, status: r.status, error: r.error, durationMs: r.durationMs };
}

function converse(
  socket: net.Socket,
  calledAeTitle: string,
  callingAeTitle: string,
  budgetMs: number,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const framer = new PduFramer({ maxPDataLength: 65536, maxOtherLength: 65536 });
    let timer = setTimeout(
      () => fail(new Error(`no C-ECHO response within the probe timeout`)),
      Math.max(budgetMs, 1),
    );
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(err);
    };
    const succeed = (status: number): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(status);
    };
    let status: number | null = null;
    socket.on('error', fail);
    socket.on('close', () => (status === null ? fail(new Error('connection closed')) : succeed(status)));
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const raw of framer.push(chunk)) {
          const type = raw[0];
          if (type === PduType.AssociateAc) {
            const ac = decodePdu(raw) as AssociatePdu;
            const pc = presentationContextsAc(ac).find((c) => c.id === 1);
            if (pc?.result !== PresentationContextResult.Acceptance) {
              throw new Error(
                `the archive did not accept the Verification context (result ${pc?.result ?? 'none'})`,
              );
            }
            const rq = encodeCommand({
              commandField: CommandField.CEchoRq,
              messageId: 1,
              affectedSopClassUid: VERIFICATION,
              commandDataSetType: 0x0101,
            });
            socket.write(
              encodePdu({
                type: PduType.PDataTf,
                pdvs: [{ contextId: 1, command: true, last: true, value: rq }],
              }),
            );
          } else if (type === PduType.AssociateRj) {
            const rj = decodePdu(raw);
            if (rj.type !== PduType.AssociateRj) throw new Error('malformed A-ASSOCIATE-RJ');
            throw new AssociationRejectedError({ result: rj.result, source: rj.source, reason: rj.reason });
          } else if (type === PduType.PDataTf) {
            const pdu = decodePdu(raw) as PDataPdu;
            const pdv = pdu.pdvs.find((p) => p.command && p.last);
            if (!pdv) continue;
            const cmd = decodeCommand(pdv.value);
            status = cmd.status ?? null;
            if (status === null) continue;
            // PS3.8 7.2: release the association, and wait (briefly: the status is known) for the
            // A-RELEASE-RP, so that the called node sees a released association, not a dropped one.
            socket.write(encodePdu({ type: PduType.ReleaseRq }));
            const known = status;
            clearTimeout(timer);
            timer = setTimeout(() => succeed(known), RELEASE_WAIT_MS);
          } else if (type === PduType.Abort) {
            if (status !== null) succeed(status);
            else throw new Error('association aborted by the called node (A-ABORT)');
          } else if (type === PduType.ReleaseRp) {
            socket.end();
            if (status !== null) succeed(status);
          }
        }
      } catch (err) {
        fail(err as Error);
      }
    });
    const rq: AssociatePdu = {
      type: PduType.AssociateRq,
      protocolVersion: 1,
      calledAeTitle: aeTitleField(calledAeTitle),
      callingAeTitle: aeTitleField(callingAeTitle),
      reserved: Buffer.alloc(32),
      items: [
        { kind: 'application-context', name: DICOM_APPLICATION_CONTEXT },
        {
          kind: 'presentation-context-rq',
          context: { id: 1, abstractSyntax: VERIFICATION, transferSyntaxes: [IMPLICIT_LE] },
        },
        {
          kind: 'user-information',
          subItems: [
            { kind: 'max-length', maxLength: 65536 },
            { kind: 'implementation-class-uid', uid: IMPLEMENTATION_CLASS_UID },
          ],
        },
      ],
    };
    socket.write(encodePdu(rq));
  });
}
