// The readiness probe: a real C-ECHO (PS3.7 9.1.5) to an upstream archive over exactly the TLS path the
// relay uses (connectUpstream: profile, client certificate, CA, server name and hostname check), with the
// proxy's own PDU codec. Certificate files are read afresh for every probe, so a rotation shows at once.
import type { TLSSocket } from 'node:tls';
import type { UpstreamConfig } from '../config/types.js';
import { DICOM_APPLICATION_CONTEXT, PduType, PresentationContextResult } from '../pdu/constants.js';
import { aeTitleField, decodePdu, encodePdu, presentationContextsAc } from '../pdu/codec.js';
import { PduFramer } from '../pdu/framer.js';
import type { AssociatePdu, PDataPdu } from '../pdu/types.js';
import { CommandField, decodeCommand, encodeCommand, Status } from '../dimse/command.js';
import { buildUpstreamTlsContext, connectUpstream, UpstreamConnectError } from './upstream.js';

const VERIFICATION = '1.2.840.10008.1.1';
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

/** C-ECHO the upstream; never throws. */
export async function echoUpstream(
  upstream: UpstreamConfig,
  timeoutMs: number,
  callingAeTitle = 'DIMSE_PROXY',
): Promise<ProbeResult> {
  const started = performance.now();
  const done = (ok: boolean, status: number | null, error: string | null): ProbeResult => ({
    ok,
    status,
    error,
    durationMs: performance.now() - started,
  });
  let socket: TLSSocket;
  try {
    socket = await connectUpstream({
      host: upstream.host,
      port: upstream.port,
      timeoutMs,
      tls: buildUpstreamTlsContext(upstream.tls),
    });
  } catch (err) {
    const reason = err instanceof UpstreamConnectError ? `${err.reason}: ` : '';
    return done(false, null, `${reason}${(err as Error).message}`);
  }
  try {
    const status = await converse(
      socket,
      upstream,
      callingAeTitle,
      timeoutMs - (performance.now() - started),
    );
    return done(status === Status.Success, status, status === Status.Success ? null : 'failure status');
  } catch (err) {
    return done(false, null, (err as Error).message);
  } finally {
    socket.destroy();
  }
}

function converse(
  socket: TLSSocket,
  upstream: UpstreamConfig,
  callingAeTitle: string,
  budgetMs: number,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const framer = new PduFramer({ maxPDataLength: 65536, maxOtherLength: 65536 });
    const timer = setTimeout(
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
            throw new Error(`association rejected ${rj.result}/${rj.source}/${rj.reason}`);
          } else if (type === PduType.PDataTf) {
            const pdu = decodePdu(raw) as PDataPdu;
            const pdv = pdu.pdvs.find((p) => p.command && p.last);
            if (!pdv) continue;
            const cmd = decodeCommand(pdv.value);
            status = cmd.status ?? null;
            // PS3.8 7.2: release the association; the status is known already.
            socket.write(encodePdu({ type: PduType.ReleaseRq }));
            if (status !== null) succeed(status);
          } else if (type === PduType.Abort) {
            throw new Error('association aborted by the archive');
          } else if (type === PduType.ReleaseRp) {
            socket.end();
          }
        }
      } catch (err) {
        fail(err as Error);
      }
    });
    const rq: AssociatePdu = {
      type: PduType.AssociateRq,
      protocolVersion: 1,
      calledAeTitle: aeTitleField(upstream.aeTitle),
      callingAeTitle: aeTitleField(upstream.callingAeTitle ?? callingAeTitle),
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
