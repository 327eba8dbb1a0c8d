// Small generated instances for dcmjs-dimse SCUs, and the in-process mutual-TLS demo archive.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Dataset, startArchive, type ArchiveHandle, type ArchiveOptions } from '../../src/dicom/dcmjs.js';
import type { PemPair } from '../../src/tls/pki.js';

let counter = 0;

/** A Secondary Capture instance with `pixelBytes` of 8-bit pixel data (a distinct pattern per index). */
export function testInstance(index: number, pixelBytes = 8192): InstanceType<typeof Dataset> {
  const pixels = new Uint8Array(pixelBytes);
  for (let k = 0; k < pixels.length; k++) pixels[k] = (k * 7 + index) & 0xff;
  return new Dataset(
    {
      SOPClassUID: '1.2.840.10008.5.1.4.1.1.7',
      SOPInstanceUID: `1.2.826.0.1.3680043.10.1461.99.${process.pid}.${Date.now()}.${++counter}`,
      StudyInstanceUID: '1.2.826.0.1.3680043.10.1461.99.1',
      SeriesInstanceUID: '1.2.826.0.1.3680043.10.1461.99.2',
      PatientID: 'TEST',
      PatientName: 'TEST^RELAY',
      Modality: 'OT',
      SamplesPerPixel: 1,
      PhotometricInterpretation: 'MONOCHROME2',
      Rows: 1,
      Columns: pixelBytes,
      BitsAllocated: 8,
      BitsStored: 8,
      HighBit: 7,
      PixelRepresentation: 0,
      PixelData: [pixels.buffer],
      _vrMap: { PixelData: 'OB' },
    } as never,
    '1.2.840.10008.1.2.1',
  );
}

export interface TestArchive {
  archive: ArchiveHandle;
  close(): Promise<void>;
}

/** The demo archive on 127.0.0.1:0 with mutual TLS (client certificate required), storing in a temp dir. */
export async function startTestArchive(
  material: { ca: PemPair; archive: PemPair },
  extra: Partial<ArchiveOptions> = {},
): Promise<TestArchive> {
  const storageDir = await mkdtemp(join(tmpdir(), 'dimse-archive-'));
  const archive = await startArchive({
    port: 0,
    aeTitle: 'ARCHIVE',
    storageDir,
    tls: {
      ca: material.ca.cert,
      cert: material.archive.cert,
      key: material.archive.key,
      requireClientCert: true,
    },
    ...extra,
  });
  return {
    archive,
    close: async () => {
      archive.close();
      await rm(storageDir, { recursive: true, force: true });
    },
  };
}
