import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  isStorageSopClass,
  servicesForAbstractSyntax,
  sopClassesForService,
  SERVICE_REQUESTS,
} from '../../src/policy/services.js';

describe('isStorageSopClass', () => {
  it('recognizes storage SOP classes under the storage arc, with or without wire padding', () => {
    for (const uid of [
      '1.2.840.10008.5.1.4.1.1.2', // CT Image Storage
      '1.2.840.10008.5.1.4.1.1.2\0',
      '1.2.840.10008.5.1.4.1.1.4 ', // MR Image Storage
      '1.2.840.10008.5.1.4.1.1.88.22', // Enhanced SR Storage
      '1.2.840.10008.5.1.4.1.1.1.2.1', // Digital Mammography X-Ray - For Processing
      '1.2.840.10008.5.1.4.1.1.200.1', // CT Defined Procedure Protocol Storage
      '1.2.840.10008.5.1.4.1.1.201.1', // Inventory Storage
    ]) {
      assert.equal(isStorageSopClass(uid), true, uid);
    }
  });

  it('recognizes storage SOP classes outside the arc', () => {
    for (const uid of [
      '1.2.840.10008.5.1.4.38.1', // Hanging Protocol Storage
      '1.2.840.10008.5.1.4.39.1', // Color Palette Storage
      '1.2.840.10008.5.1.4.43.1', // Generic Implant Template Storage
      '1.2.840.10008.5.1.4.44.1', // Implant Assembly Template Storage
      '1.2.840.10008.5.1.4.45.1', // Implant Template Group Storage
      '1.2.840.10008.5.1.4.34.7', // RT Beams Delivery Instruction Storage
    ]) {
      assert.equal(isStorageSopClass(uid), true, uid);
    }
  });

  it('does not count query/retrieve or other classes as storage', () => {
    for (const uid of [
      '1.2.840.10008.1.1', // Verification
      '1.2.840.10008.5.1.4.1.2.2.1', // Study Root FIND
      '1.2.840.10008.5.1.4.1.1', // the arc itself
      '1.2.840.10008.5.1.4.1.10', // shares the arc's text but not its node
      '1.2.840.10008.5.1.4.1.1.200.4', // Protocol Approval FIND (under the arc)
      '1.2.840.10008.5.1.4.1.1.201.2', // Inventory FIND (under the arc)
      '1.2.840.10008.5.1.4.1.1.201.5', // Inventory Creation
      '1.2.840.10008.5.1.4.38.2', // Hanging Protocol FIND
      '1.2.840.10008.1.20.1', // Storage Commitment Push Model
      '1.3.12.2.1107.5.9.1', // private
    ]) {
      assert.equal(isStorageSopClass(uid), false, uid);
    }
  });
});

describe('servicesForAbstractSyntax', () => {
  it('maps each standard SOP class to its service', () => {
    const cases: [string, string[]][] = [
      ['1.2.840.10008.1.1', ['echo']],
      ['1.2.840.10008.5.1.4.1.1.2', ['store']],
      ['1.2.840.10008.5.1.4.1.2.1.1', ['find']],
      ['1.2.840.10008.5.1.4.1.2.2.1', ['find']],
      ['1.2.840.10008.5.1.4.1.2.3.1', ['find']],
      ['1.2.840.10008.5.1.4.1.2.1.2', ['move']],
      ['1.2.840.10008.5.1.4.1.2.2.2', ['move']],
      ['1.2.840.10008.5.1.4.1.2.3.2', ['move']],
      ['1.2.840.10008.5.1.4.1.2.4.2', ['move']],
      ['1.2.840.10008.5.1.4.1.2.1.3', ['get']],
      ['1.2.840.10008.5.1.4.1.2.2.3', ['get']],
      ['1.2.840.10008.5.1.4.1.2.3.3', ['get']],
      ['1.2.840.10008.5.1.4.1.2.4.3', ['get']],
      ['1.2.840.10008.5.1.4.1.2.5.3', ['get']],
      ['1.2.840.10008.5.1.4.31', ['worklist']],
      ['1.2.840.10008.3.1.2.3.3', ['mpps']],
      ['1.2.840.10008.1.20.1', ['commitment']],
      ['1.2.840.10008.5.1.4.1.1.200.4', ['find']],
      ['1.3.12.2.1107.5.9.1', []],
      ['1.2.840.10008.5.1.4.1.2.2.1\0', ['find']],
    ];
    for (const [uid, services] of cases) assert.deepEqual(servicesForAbstractSyntax(uid), services, uid);
  });

  it('gives no SOP class to two services', () => {
    const seen = new Map<string, string>();
    for (const service of ['echo', 'find', 'move', 'get', 'worklist', 'mpps', 'commitment'] as const) {
      for (const uid of sopClassesForService(service)) {
        assert.equal(seen.get(uid), undefined, `${uid} in ${service} and ${seen.get(uid)}`);
        assert.equal(isStorageSopClass(uid), false, `${uid} of ${service} is also storage`);
        seen.set(uid, service);
      }
    }
  });

  it('has request commands for every service', () => {
    for (const commands of Object.values(SERVICE_REQUESTS)) assert.ok(commands.size > 0);
  });
});
