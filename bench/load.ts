// Many-associations C-STORE load for the bench: N concurrent associations, each storing a mix of small
// and medium instances one after the other (each C-STORE waits for its C-STORE-RSP, as a modality does).
// Written with the proxy's own PDU codec; the P-DATA bytes of every instance are encoded once and shared,
// so the load generator itself costs little CPU next to the relay under test.
//
// Reports per run: wall time, bytes, association setup latency (TCP connect → A-ASSOCIATE-AC received),
// and the count of failures (refused/aborted associations, non-success statuses, timeouts).
import * as net from 'node:net';
import { PduFramer } from '../src/pdu/framer.js';
import { decodePdu, encodePdu } from '../src/pdu/codec.js';
import { associateRq } from '../test/helpers/raw.js';
import { decodeCommand, encodeCommand } from '../src/dimse/command.js';

const CT_IMAGE = '1.2.840.10008.5.1.4.1.1.2';
const EXPLICIT_LE = '1.2.840.10008.1.2.1';
/** As DCMTK's storescu sends by default (PS3.8 D.1: the receiver's maximum is what bounds it). */
const PDU_VALUE = 16384 - 6;

export interface LoadSpec {
  host: string;
  port: number;
  callingAe: string;
  calledAe: string;
  associations: number;
  /** Instance sizes (pixel data bytes) each association stores, in order. */
  instances: readonly number[];
  timeoutMs: number;
}

export interface LoadResult {
  seconds: number;
  bytes: number;
  setupMs: number[];
  failures: string[];
}

function element(group: number, elem: number, vr: string, value: Buffer): Buffer {
  const long = vr === 'OB' || vr === 'OW' || vr === 'UN' || vr === 'SQ';
  const head = Buffer.alloc(long ? 12 : 8);
  head.writeUInt16LE(group, 0);
  head.writeUInt16LE(elem, 2);
  head.write(vr, 4, 'latin1');
  if (long) head.writeUInt32LE(value.length, 8);
  else head.writeUInt16LE(value.length, 6);
  return Buffer.concat([head, value]);
}

function uidValue(uid: string): Buffer {
  return Buffer.from(uid.length % 2 === 1 ? `${uid}\0` : uid, 'latin1');
}

/** The data PDUs of one Explicit VR Little Endian CT instance of `pixelBytes` bytes, as one buffer. */
function instancePdus(pixelBytes: number, index: number): Buffer {
  const dataset = Buffer.concat([
    element(0x0008, 0x0016, 'UI', uidValue(CT_IMAGE)),
    element(0x0008, 0x0018, 'UI', uidValue(`1.2.826.0.1.3680043.10.511.9.${pixelBytes}.${index}`)),
    element(0x0008, 0x0060, 'CS', Buffer.from('CT')),
    element(0x7fe0, 0x0010, 'OB', Buffer.alloc(pixelBytes, index & 0xff)),
  ]);
  const pdus: Buffer[] = [];
  for (let off = 0; off < dataset.length; off += PDU_VALUE) {
    const end = Math.min(dataset.length, off + PDU_VALUE);
    pdus.push(
      encodePdu({
        type: 0x04,
        pdvs: [
          { contextId: 1, command: false, last: end === dataset.length, value: dataset.subarray(off, end) },
        ],
      }),
    );
  }
  return Buffer.concat(pdus);
}

function associationRequest(calling: string, called: string): Buffer {
  return associateRq(
    calling,
    called,
    [{ id: 1, abstractSyntax: CT_IMAGE, transferSyntaxes: [EXPLICIT_LE] }],
    16384,
  );
}

/** One association: connect, negotiate, store every instance (waiting for each response), release. */
function oneAssociation(
  spec: LoadSpec,
  n: number,
  data: Map<number, Buffer>,
): Promise<{ setupMs: number; bytes: number; failure: string | null }> {
  return new Promise((resolve) => {
    const started = performance.now();
    let setupMs = -1;
    let bytes = 0;
    let next = 0;
    let done = false;
    const framer = new PduFramer({ maxPDataLength: 1 << 20, maxOtherLength: 1 << 20 });
    const socket = net.connect({ host: spec.host, port: spec.port, noDelay: true });
    const timer = setTimeout(
      () => finish(`association ${n}: no progress within ${spec.timeoutMs} ms`),
      spec.timeoutMs,
    );
    const finish = (failure: string | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ setupMs, bytes, failure });
    };
    const sendNext = (): void => {
      if (next === spec.instances.length) {
        socket.write(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])); // A-RELEASE-RQ
        return;
      }
      const size = spec.instances[next] as number;
      const messageId = next + 1;
      const command = encodeCommand({
        commandField: 0x0001,
        messageId,
        priority: 0,
        commandDataSetType: 0x0000,
        affectedSopClassUid: CT_IMAGE,
        affectedSopInstanceUid: `1.2.826.0.1.3680043.10.511.9.${size}.${n}.${messageId}`,
      });
      socket.write(
        encodePdu({ type: 0x04, pdvs: [{ contextId: 1, command: true, last: true, value: command }] }),
      );
      const pdus = data.get(size) as Buffer;
      socket.write(pdus);
      bytes += pdus.length;
      next++;
    };
    socket.on('connect', () => socket.write(associationRequest(spec.callingAe, spec.calledAe)));
    socket.on('data', (chunk: Buffer) => {
      let frames: Buffer[];
      try {
        frames = framer.push(chunk);
      } catch (err) {
        finish(`association ${n}: ${(err as Error).message}`);
        return;
      }
      for (const raw of frames) {
        const type = raw[0];
        if (type === 0x02) {
          setupMs = performance.now() - started;
          sendNext();
        } else if (type === 0x03) finish(`association ${n}: rejected`);
        else if (type === 0x07) finish(`association ${n}: aborted`);
        else if (type === 0x06) {
          socket.end();
          finish(null);
        } else if (type === 0x04) {
          const pdu = decodePdu(raw);
          if (pdu.type !== 0x04) continue;
          for (const pdv of pdu.pdvs) {
            if (!pdv.command || !pdv.last) continue;
            const rsp = decodeCommand(pdv.value);
            if (rsp.status !== 0) {
              finish(`association ${n}: C-STORE status 0x${(rsp.status ?? 0xffff).toString(16)}`);
              return;
            }
            sendNext();
          }
        }
      }
    });
    socket.on('error', (err) => finish(`association ${n}: ${err.message}`));
    socket.on('close', () => finish(`association ${n}: closed before release`));
  });
}

/** Pre-encode the instances' P-DATA once per distinct size. */
export function prepareLoad(instances: readonly number[]): Map<number, Buffer> {
  const data = new Map<number, Buffer>();
  for (const size of instances) if (!data.has(size)) data.set(size, instancePdus(size, data.size));
  return data;
}

export async function runLoad(spec: LoadSpec, data: Map<number, Buffer>): Promise<LoadResult> {
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: spec.associations }, (_, n) => oneAssociation(spec, n, data)),
  );
  const seconds = (performance.now() - started) / 1000;
  return {
    seconds,
    bytes: results.reduce((a, r) => a + r.bytes, 0),
    setupMs: results.filter((r) => r.setupMs >= 0).map((r) => r.setupMs),
    failures: results.flatMap((r) => (r.failure ? [r.failure] : [])),
  };
}

/**
 * Open `count` associations and keep them idle (negotiated, nothing sent) until `close()`: what an
 * association that is not backed up costs the relay.
 */
export async function openIdle(
  spec: Omit<LoadSpec, 'instances' | 'associations'>,
  count: number,
): Promise<{ close(): void; failures: number }> {
  const sockets: net.Socket[] = [];
  let failures = 0;
  await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<void>((resolve) => {
          const framer = new PduFramer({ maxPDataLength: 1 << 20, maxOtherLength: 1 << 20 });
          const s = net.connect({ host: spec.host, port: spec.port, noDelay: true });
          sockets.push(s);
          const t = setTimeout(() => {
            failures++;
            resolve();
          }, spec.timeoutMs);
          s.on('connect', () => s.write(associationRequest(spec.callingAe, spec.calledAe)));
          s.on('data', (chunk: Buffer) => {
            for (const raw of framer.push(chunk)) {
              if (raw[0] !== 0x02) failures++;
              clearTimeout(t);
              resolve();
            }
          });
          s.on('error', () => undefined);
        }),
    ),
  );
  return {
    failures,
    close: () => {
      for (const s of sockets) s.destroy();
    },
  };
}

export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] as number;
}
