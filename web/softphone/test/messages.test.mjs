// node --test: the SIP answer → human message table (src/messages.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { registrationMessage, callMessage, microphoneMessage, warningTexts, warningToken } from '../src/messages.js';

const w = (text) => [`399 tg1.example.com "${text}"`];

test('Warning values give their quoted texts and tokens', () => {
  assert.deepEqual(warningTexts(['399 tg1 "portal-blocked: manual (stored status)"']), ['portal-blocked: manual (stored status)']);
  assert.deepEqual(warningTexts(['399 a "x: 1", 307 [2001:db8::1]:5060 "y"']), ['x: 1', 'y']);
  assert.equal(warningToken('portal blocked: inactivity'), 'portal-blocked');
  assert.equal(warningToken('too many contacts (maximum 5)'), 'too-many-contacts');
  assert.equal(warningToken('sip connector not licensed'), 'not-licensed');
});

test('registration failures', () => {
  assert.equal(registrationMessage({ status: 401, cause: 'Authentication Error' }), 'Wrong username or password.');
  assert.equal(registrationMessage({ status: 403 }), 'Wrong username or password.');
  assert.match(registrationMessage({ status: 403, warnings: w('portal-blocked: violation (stored status)') }), /portal is blocked/);
  assert.match(registrationMessage({ status: 403, warnings: w('licence-expired: demo ended 2026-01-01T00:00:00Z; policy block') }), /licence has expired/);
  assert.match(registrationMessage({ status: 403, warnings: w('portal-deleted: the portal is being deleted or is deleted') }), /deleted/);
  assert.match(registrationMessage({ status: 403, warnings: w('user-disabled: the user is disabled') }), /account is disabled/);
  assert.match(registrationMessage({ status: 403, warnings: w('extranet-not-allowed: the portal does not allow extranet users') }), /Guest/);
  assert.match(registrationMessage({ status: 403, warnings: w('user-limit: 5 other users registered, the plan allows 5') }), /plan allows/);
  assert.match(registrationMessage({ status: 403, warnings: w('too many authentication failures') }), /locked out/);
  assert.match(registrationMessage({ status: 403, warnings: w('too many contacts (maximum 5)') }), /Too many devices/);
  assert.match(registrationMessage({ status: 404 }), /Unknown portal domain/);
  assert.match(registrationMessage({ status: 503 }), /temporarily unavailable/);
  assert.match(registrationMessage({ cause: 'Connection Error' }), /Cannot reach the server/);
  assert.match(registrationMessage({ cause: 'Request Timeout' }), /did not answer/);
});

test('call refusals follow the Warning token, whatever the code', () => {
  assert.match(callMessage({ status: 403, warnings: w('not-licensed: no SIP connector extension in force') }), /no active licence/);
  assert.match(callMessage({ status: 486, warnings: w('channels-busy: 3 calls in progress, all 3 channels busy') }), /channels are busy/);
  assert.match(callMessage({ status: 600, warnings: w('channels-busy: x') }), /channels are busy/);
  assert.equal(callMessage({ status: 503, warnings: w('rate-limited: 21 calls in the last second') }), 'Too many calls right now, try again shortly.');
  assert.match(callMessage({ status: 403, warnings: w('portal-blocked: inactivity: free plan') }), /portal is blocked/);
  assert.match(callMessage({ status: 403, warnings: w('not-permitted: +1900') }), /not allowed/);
  assert.match(callMessage({ status: 488, warnings: w('no-common-codec') }), /no audio format/);
  assert.match(callMessage({ status: 503, warnings: w('media-ports-exhausted') }), /no room/);
  assert.match(callMessage({ status: 480, warnings: w('unavailable: no user answered') }), /Nobody is available/);
});

test('call failures by status code', () => {
  assert.match(callMessage({ status: 404 }), /does not exist/);
  assert.match(callMessage({ status: 408 }), /timed out/);
  assert.match(callMessage({ status: 480 }), /Nobody is available/);
  assert.equal(callMessage({ status: 486, cause: 'Busy', originator: 'remote' }), 'The line is busy.');
  assert.equal(callMessage({ status: 487 }), 'Call cancelled.');
  assert.equal(callMessage({ status: 603, cause: 'Rejected', originator: 'remote' }), 'The call was declined.');
  assert.equal(callMessage({ cause: 'Canceled', originator: 'remote', direction: 'incoming' }), 'Missed call: the caller hung up.');
  assert.equal(callMessage({ cause: 'User Denied Media Access', originator: 'local' }), 'No microphone: allow microphone access and try again.');
});

test('ended calls', () => {
  assert.equal(callMessage({ ended: true, cause: 'Terminated', originator: 'remote' }), 'The other side hung up.');
  assert.equal(callMessage({ ended: true, cause: 'Terminated', originator: 'local' }), 'You hung up.');
  assert.match(callMessage({ ended: true, cause: 'Terminated', originator: 'remote', reasonText: 'media-timeout' }), /no audio/);
  assert.match(callMessage({ ended: true, cause: 'RTP Timeout', originator: 'local' }), /no audio/);
  assert.equal(callMessage({ ended: true, cause: 'WebRTC Error', originator: 'local' }), 'Call ended: the audio connection failed.');
  assert.equal(callMessage({ ended: true, cause: 'Terminated' }), 'Call ended.');
});

test('microphone errors', () => {
  assert.match(microphoneMessage({ name: 'NotAllowedError' }), /^No microphone: allow microphone access/);
  assert.match(microphoneMessage({ name: 'NotFoundError' }), /none was found/);
  assert.match(microphoneMessage({ name: 'NotReadableError' }), /in use/);
  assert.match(microphoneMessage({ name: 'NoMediaDevices' }), /https/);
});
