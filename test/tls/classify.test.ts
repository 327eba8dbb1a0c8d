// Upstream TLS failures get their exact reason: the archive refusing the proxy's client certificate is
// told apart from a plain close, whether the alert comes during the handshake or after it (TLS 1.3,
// RFC 8446 4.4.2: the client's handshake completes before the server has judged its certificate).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyUpstreamError, classifyUpstreamSocketError } from '../../src/tls/upstream.js';

const err = (code: string, message: string) => Object.assign(new Error(message), { code });

test('an alert naming the client certificate after the handshake: client-certificate-rejected', () => {
  for (const e of [
    err('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'tlsv13 alert certificate required'),
    err('ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'sslv3 alert bad certificate'),
    err('ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'tlsv1 alert unknown ca'),
    err('', 'error:0A000418:SSL routines::tlsv1 alert unknown ca'),
  ]) {
    assert.equal(classifyUpstreamSocketError(e), 'client-certificate-rejected', e.message);
    assert.equal(classifyUpstreamError(e), 'client-certificate-rejected', e.message);
  }
});

test('other socket errors after the handshake are not called a certificate refusal', () => {
  for (const e of [
    err('ECONNRESET', 'read ECONNRESET'),
    err('EPIPE', 'write EPIPE'),
    err('ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR', 'tlsv1 alert internal error'),
    err('ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC', 'decryption failed or bad record mac'),
  ]) {
    assert.equal(classifyUpstreamSocketError(e), null, e.message);
  }
  assert.equal(classifyUpstreamSocketError(null), null);
});
