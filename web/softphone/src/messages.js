// SIP answers → the human messages the softphone shows.
//
// Pure functions (no DOM, no JsSIP): src/app.js feeds them the status code
// and the Warning texts of a response, test/messages.test.mjs checks them.
//
// trunkgate puts the reason of every refusal in `Warning: 399 <host> "<text>"`
// where <text> is `<token>: <detail>` (src/admission/answers.rs,
// src/node/register.rs, src/b2bua/call.rs). The token decides the message;
// the status code is only a fallback, because `[admission.answers]` may
// change the code of any reason.

/** Messages for the Warning tokens trunkgate sends, keyed by token. */
export const TOKEN_MESSAGES = {
  // Licence rules (REGISTER and calls).
  'portal-blocked': 'Your portal is blocked. Contact your administrator.',
  'licence-expired': 'Your portal’s licence has expired. Contact your administrator.',
  'portal-deleted': 'This portal has been deleted.',
  'portal-not-found': 'This portal does not exist.',
  'not-licensed': 'Your portal has no active licence for calls (no SIP connector extension).',
  'channels-busy': 'All of your portal’s channels are busy. Try again when a call ends.',
  'rate-limited': 'Too many calls right now, try again shortly.',
  overloaded: 'The server is busy right now, try again shortly.',
  'database-unavailable': 'The service is temporarily unavailable, try again shortly.',
  'unknown-trunk': 'This call was refused: it did not come through a known trunk.',
  'no-route': 'That number does not exist here.',
  unavailable: 'Nobody is available to take the call.',
  'not-permitted': 'You are not allowed to call that number.',
  // Media.
  'no-common-codec': 'The call failed: no audio format in common with the other side.',
  'media-ports-exhausted': 'The server has no room for more calls right now, try again shortly.',
  'unusable-sdp': 'The call failed: the audio description could not be used.',
  // REGISTER only.
  'user-disabled': 'Your account is disabled. Contact your administrator.',
  'extranet-not-allowed': 'Guest (extranet) users cannot use the phone on this portal.',
  'user-limit': 'Your portal has reached the number of users its plan allows online. Try again later.',
  'too-many-authentication-failures': 'Too many wrong passwords: this device is locked out for a while. Try again later.',
  'too-many-contacts': 'Too many devices are signed in with this account. Sign out elsewhere and try again.',
  // Call end reasons (BYE Reason header text, call records).
  'media-timeout': 'The call was ended: no audio was received for too long.',
  'node-stopped': 'The call was ended: the server is restarting.',
};

/**
 * The token of one Warning text: the part before the first `:`, lowercased,
 * spaces turned to `-` (so an older text such as `portal blocked: inactivity`
 * and a plain `too many authentication failures` map as well).
 */
export function warningToken(text) {
  if (!text) return '';
  const head = String(text).split(':', 1)[0];
  let token = head.trim().toLowerCase().replace(/\s+/g, '-');
  // "too many contacts (maximum 5)" → too-many-contacts
  token = token.replace(/-?\(.*$/, '');
  if (token === 'sip-connector-not-licensed') token = 'not-licensed';
  if (token === 'all-channels-busy') token = 'channels-busy';
  return token;
}

/**
 * The quoted texts of `Warning` header values (`399 host "text"`), in order.
 * Values whose code is not 399 are kept too: they may still say something.
 */
export function warningTexts(values) {
  const out = [];
  for (const raw of values || []) {
    if (raw == null) continue;
    // A header may carry several comma-separated warnings.
    const re = /(\d{3})\s+\S+\s+"((?:[^"\\]|\\.)*)"/g;
    let m;
    let any = false;
    while ((m = re.exec(String(raw))) !== null) {
      out.push(m[2].replace(/\\(.)/g, '$1'));
      any = true;
    }
    if (!any && String(raw).trim()) out.push(String(raw).trim());
  }
  return out;
}

/** The first known token among the Warning texts, or ''. */
export function knownToken(texts) {
  for (const t of texts) {
    const token = warningToken(t);
    if (Object.prototype.hasOwnProperty.call(TOKEN_MESSAGES, token)) return token;
  }
  return '';
}

/**
 * Why a registration failed, for a person.
 * @param {{status?: number, warnings?: string[], cause?: string, retryAfter?: number}} r
 *   status: the final response's code (0/undefined when none came);
 *   warnings: the Warning header values; cause: JsSIP's cause string.
 */
export function registrationMessage({ status, warnings, cause } = {}) {
  const texts = warningTexts(warnings);
  const token = knownToken(texts);
  if (token) return TOKEN_MESSAGES[token];
  switch (cause) {
    case 'Connection Error':
      return 'Cannot reach the server. Check your network connection.';
    case 'Request Timeout':
      return 'The server did not answer. Check your network connection and try again.';
    default:
      break;
  }
  switch (status) {
    case 401:
    case 407:
      return 'Wrong username or password.';
    case 403:
      // trunkgate answers 403 without a Warning when the credentials name
      // another user; with a Warning we did not recognise, show its text.
      return texts.length ? `Sign-in refused: ${texts[0]}` : 'Wrong username or password.';
    case 404:
      return 'Unknown portal domain: check the portal domain you typed.';
    case 408:
      return 'The server did not answer in time. Try again.';
    case 423:
      return 'The server refused the registration interval. Try again.';
    case 500:
      return 'The server had an internal error. Try again shortly.';
    case 503:
      return 'The service is temporarily unavailable, try again shortly.';
    default:
      break;
  }
  if (cause === 'Authentication Error') return 'Wrong username or password.';
  if (status) return `Sign-in failed (${status})${texts.length ? `: ${texts[0]}` : ''}.`;
  return 'Sign-in failed.';
}

/**
 * Why a call failed or ended, for a person.
 * @param {{status?: number, warnings?: string[], cause?: string,
 *          originator?: string, ended?: boolean, reasonText?: string,
 *          direction?: 'incoming'|'outgoing'}} r
 *   ended: true for the 'ended' event of a confirmed call (BYE),
 *   false for 'failed' (the call never started); reasonText: a BYE's
 *   Reason header text, if any.
 */
export function callMessage({ status, warnings, cause, originator, ended, reasonText, direction } = {}) {
  const texts = warningTexts(warnings);
  if (reasonText) texts.push(reasonText);
  const token = knownToken(texts);
  if (ended) {
    if (token) return TOKEN_MESSAGES[token];
    if (cause === 'RTP Timeout') return TOKEN_MESSAGES['media-timeout'];
    if (cause === 'Connection Error') return 'Call ended: the connection to the server was lost.';
    if (cause === 'Request Timeout' || cause === 'No ACK') return 'Call ended: the other side stopped answering.';
    if (cause === 'WebRTC Error' || cause === 'Bad Media Description') return 'Call ended: the audio connection failed.';
    if (cause === 'Dialog Error') return 'Call ended: the call got out of step with the server.';
    if (cause === 'Terminated' && originator === 'local') return 'You hung up.';
    if (cause === 'Terminated' && originator === 'remote') return 'The other side hung up.';
    if (originator === 'remote') return 'The other side hung up.';
    return 'Call ended.';
  }
  if (token) return TOKEN_MESSAGES[token];
  if (cause === 'Canceled') {
    return originator === 'remote' || direction === 'incoming' ? 'Missed call: the caller hung up.' : 'Call cancelled.';
  }
  if (cause === 'User Denied Media Access') return 'No microphone: allow microphone access and try again.';
  if (cause === 'Connection Error') return 'Call failed: the connection to the server was lost.';
  if (cause === 'Request Timeout') return 'Call failed: the server did not answer.';
  if (cause === 'WebRTC Error' || cause === 'Bad Media Description') return 'Call failed: the audio connection could not be set up.';
  if (cause === 'No Answer' || cause === 'Expires') return 'No answer.';
  if (originator === 'local' && cause === 'Rejected') return 'Call rejected.';
  switch (status) {
    case 404:
    case 604:
      return 'That number does not exist here.';
    case 408:
      return 'No answer: the call timed out.';
    case 480:
      return 'Nobody is available to take the call.';
    case 484:
      return 'The number is incomplete.';
    case 486:
    case 600:
      return 'The line is busy.';
    case 487:
      return 'Call cancelled.';
    case 488:
    case 606:
      return 'The call failed: no audio format in common with the other side.';
    case 403:
      return texts.length ? `Call refused: ${texts[0]}` : 'Call refused.';
    case 603:
      return 'The call was declined.';
    case 401:
    case 407:
      return 'Call refused: the server did not accept your credentials. Sign in again.';
    case 500:
      return 'Call failed: server error.';
    case 503:
      return 'The service is temporarily unavailable, try again shortly.';
    default:
      break;
  }
  if (status) return `Call failed (${status})${texts.length ? `: ${texts[0]}` : ''}.`;
  if (cause === 'Rejected') return 'Call rejected.';
  if (cause === 'Busy') return 'The line is busy.';
  return cause ? `Call failed: ${cause}.` : 'Call failed.';
}

/** getUserMedia errors → message (DOMException names). */
export function microphoneMessage(error) {
  const name = (error && error.name) || '';
  switch (name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
    case 'SecurityError':
      return 'No microphone: allow microphone access for this page (the lock or camera icon in the address bar), then try again.';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
      return 'No microphone: none was found. Plug in a microphone or headset and try again.';
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return 'No microphone: it is in use by another application or could not be started.';
    case 'NoMediaDevices':
      return 'No microphone: this page needs a secure (https) connection to use the microphone.';
    default:
      return `No microphone: ${(error && error.message) || 'it could not be opened'}.`;
  }
}
