// trunkgate softphone: a portal user's browser phone.
//
// JsSIP does the SIP (REGISTER, INVITE, digest, RFC 7118 WebSocket
// transport); this file is the page around it: the login form, the call
// states, the keypad, and a human message for every failure (src/messages.js).
//
// States (window.softphone.state):
//   logged-out → registering → registered → incoming | calling → in-call → registered
// A call's end leaves the state at 'registered' with the reason in
// window.softphone.lastCall and on the page (data-testid="call-end-reason").

import * as JsSIP from 'jssip';
import { registrationMessage, callMessage, microphoneMessage } from './messages.js';

const VERSION = '0.1.0';
const STORE_KEY = 'trunkgate.softphone.login'; // {domain, username}; never the password
const REGISTER_EXPIRES = 300;
// One audio section: bundling changes nothing for trunkgate (whose offers
// bundle anyway), and 'balanced' also takes offers without a BUNDLE group
// (rtpengine's), which 'max-bundle' refuses.
const PC_CONFIG = { iceServers: [], rtcpMuxPolicy: 'require', bundlePolicy: 'balanced' };
const AUDIO_ONLY = { audio: true, video: false };

// ------------------------------------------------------------ the DOM ---

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const el = {
  app: $('app'),
  net: $('net-status'),
  mic: $('mic-status'),
  micLevel: $('mic-level'),
  status: $('status'),
  error: $('error-message'),
  loginForm: $('login-form'),
  domain: $('login-domain'),
  username: $('login-username'),
  password: $('login-password'),
  server: $('login-server'),
  advanced: $('login-advanced'),
  loginButton: $('login-button'),
  phone: $('phone'),
  account: $('account'),
  logout: $('logout-button'),
  dialPanel: $('dial-panel'),
  dialInput: $('dial-input'),
  callButton: $('call-button'),
  lastCall: $('call-end-reason'),
  micTest: $('mic-test-button'),
  incoming: $('incoming-panel'),
  callerName: $('caller-name'),
  callerNumber: $('caller-number'),
  answer: $('answer-button'),
  reject: $('reject-button'),
  callPanel: $('call-panel'),
  peer: $('call-peer'),
  callState: $('call-state'),
  timer: $('call-timer'),
  ice: $('ice-status'),
  digits: $('dtmf-digits'),
  keypad: $('keypad'),
  mute: $('mute-button'),
  hold: $('hold-button'),
  hangup: $('hangup-button'),
  audio: $('remote-audio'),
};

// ---------------------------------------------------------- the state ---

const st = {
  state: 'logged-out',
  ua: null,
  session: null,
  lastError: null,
  lastCall: null,
  registration: 'unregistered', // unregistered | registering | registered | failed
  connection: 'disconnected', // disconnected | connecting | connected
  everConnected: false,
  serverUrl: '',
  domain: '',
  username: '',
  localStream: null,
  callStart: 0,
  timerId: 0,
  retryId: 0,
  muted: false,
  held: false,
  rejectedByUser: false,
  hungUpByUser: false,
  micFailure: null,
  dtmfTransport: null, // 'RFC2833' | 'INFO': how the last digit went
};

function setState(state) {
  st.state = state;
  el.app.dataset.state = state;
  const signedIn = state !== 'logged-out';
  el.loginForm.hidden = signedIn;
  el.phone.hidden = !signedIn;
  el.incoming.hidden = state !== 'incoming';
  el.callPanel.hidden = state !== 'calling' && state !== 'in-call';
  el.dialPanel.hidden = state === 'incoming' || state === 'calling' || state === 'in-call';
  el.callButton.disabled = state !== 'registered';
  el.dialInput.disabled = state !== 'registered';
  el.micTest.disabled = state !== 'registered';
  el.logout.textContent = state === 'registering' ? 'Cancel' : 'Sign out';
  el.keypad.querySelectorAll('button').forEach((b) => { b.disabled = state !== 'in-call'; });
  el.mute.disabled = state !== 'in-call';
  el.hold.disabled = state !== 'in-call';
  renderStatus();
}

function renderStatus() {
  let text;
  switch (st.state) {
    case 'logged-out': text = 'Signed out'; break;
    case 'registering':
      text = st.connection === 'connected' ? 'Signing in…' : 'Connecting to the server…';
      break;
    case 'registered':
      text = st.registration === 'registered' ? 'Ready' : 'Reconnecting…';
      break;
    case 'incoming': text = 'Incoming call'; break;
    case 'calling': text = 'Calling…'; break;
    case 'in-call': text = st.held ? 'On hold' : 'In call'; break;
    default: text = st.state;
  }
  el.status.textContent = text;
}

function showError(message) {
  st.lastError = message || null;
  el.error.textContent = message || '';
  el.error.hidden = !message;
}

function clearError() {
  showError(null);
}

function setIndicator(node, value, text) {
  node.dataset.value = value;
  (node.querySelector('.ind-text') || node).textContent = text;
}

function setConnection(value) {
  st.connection = value;
  const text = { connected: 'Online', connecting: 'Connecting', disconnected: 'Offline' }[value];
  setIndicator(el.net, value, text);
  renderStatus();
}

// ------------------------------------------------------- the login form ---

function defaultServer() {
  const params = new URLSearchParams(location.search);
  const fromQuery = params.get('server');
  if (fromQuery) return fromQuery;
  if (!location.host) return '';
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/sip`;
}

function loadRemembered() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
    if (saved && typeof saved === 'object') {
      if (typeof saved.domain === 'string') el.domain.value = saved.domain;
      if (typeof saved.username === 'string') el.username.value = saved.username;
    }
  } catch {
    // Storage may be disabled (private mode, file://): nothing remembered.
  }
  const params = new URLSearchParams(location.search);
  if (params.get('domain')) el.domain.value = params.get('domain');
  if (params.get('username')) el.username.value = params.get('username');
  el.server.value = defaultServer();
  if (!el.server.value || params.get('server')) el.advanced.open = true;
}

function remember(domain, username) {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify({ domain, username }));
  } catch {
    // Not fatal.
  }
}

function onLogin(event) {
  event.preventDefault();
  clearError();
  unlockAudio();
  const domain = el.domain.value.trim().toLowerCase().replace(/\.$/, '');
  const username = el.username.value.trim();
  const password = el.password.value;
  const server = el.server.value.trim();
  if (!domain) return fieldError(el.domain, 'Enter your portal domain, for example acme.example.com.');
  if (!/^[a-z0-9.-]+$|^\[[0-9a-f:.]+\]$/i.test(domain)) {
    return fieldError(el.domain, 'The portal domain looks wrong: use only the domain, for example acme.example.com.');
  }
  if (!username) return fieldError(el.username, 'Enter your username.');
  if (!password) return fieldError(el.password, 'Enter your password.');
  if (!/^wss?:\/\/[^/\s]+/i.test(server)) {
    el.advanced.open = true;
    return fieldError(el.server, 'Enter the server address, for example wss://phone.example.com/sip.');
  }
  remember(domain, username);
  start({ domain, username, password, server });
  return undefined;
}

function fieldError(input, message) {
  showError(message);
  input.setAttribute('aria-invalid', 'true');
  input.focus();
}

// --------------------------------------------------------------- the UA ---

function start({ domain, username, password, server }) {
  stopUa();
  st.domain = domain;
  st.username = username;
  st.serverUrl = server;
  st.everConnected = false;
  st.registration = 'registering';
  let ua;
  try {
    const socket = new JsSIP.WebSocketInterface(server);
    ua = new JsSIP.UA({
      sockets: [socket],
      uri: new JsSIP.URI('sip', username, domain).toString(),
      authorization_user: username,
      password,
      register: true,
      register_expires: REGISTER_EXPIRES,
      session_timers: false,
      user_agent: `trunkgate-softphone/${VERSION} JsSIP/${JsSIP.version}`,
      connection_recovery_min_interval: 2,
      connection_recovery_max_interval: 30,
      no_answer_timeout: 60,
    });
  } catch (error) {
    st.registration = 'failed';
    showError(`Cannot start the phone: ${error && error.message ? error.message : error}`);
    setState('logged-out');
    return;
  }
  el.password.value = '';
  st.ua = ua;
  el.account.textContent = `${username}@${domain}`;

  ua.on('connecting', () => { if (st.ua === ua) setConnection('connecting'); });
  ua.on('connected', () => {
    if (st.ua !== ua) return;
    st.everConnected = true;
    setConnection('connected');
    if (st.lastError && st.lastError.startsWith('Connection to the server lost')) clearError();
    if (st.lastError && st.lastError.startsWith('Cannot connect to the server')) clearError();
  });
  ua.on('disconnected', () => {
    if (st.ua !== ua) return;
    setConnection('disconnected');
    if (st.registration === 'registered') st.registration = 'registering';
    if (st.everConnected) {
      showError('Connection to the server lost, reconnecting…');
    } else {
      showError(`Cannot connect to the server (${st.serverUrl}). Check your network and the server address; retrying…`);
    }
    renderStatus();
  });
  ua.on('registered', () => {
    if (st.ua !== ua) return;
    st.registration = 'registered';
    if (st.state === 'registering') setState('registered');
    if (st.lastError && !st.session) clearError();
    renderStatus();
  });
  ua.on('unregistered', () => {
    if (st.ua !== ua) return;
    if (st.registration === 'registered') st.registration = 'registering';
    renderStatus();
  });
  ua.on('registrationFailed', (e) => {
    if (st.ua !== ua) return;
    onRegistrationFailed(e);
  });
  ua.on('newRTCSession', (e) => {
    if (st.ua !== ua) return;
    onNewSession(e);
  });

  setState('registering');
  setConnection('connecting');
  ua.start();
}

function stopUa() {
  clearTimeout(st.retryId);
  const ua = st.ua;
  st.ua = null;
  if (ua) {
    try { ua.stop(); } catch { /* already stopped */ }
  }
  st.registration = 'unregistered';
}

function onRegistrationFailed(e) {
  const response = e.response || null;
  const status = response ? response.status_code : 0;
  const warnings = response ? response.getHeaders('Warning') : [];
  const message = registrationMessage({ status, warnings, cause: e.cause });
  const transient = !response
    ? e.cause !== JsSIP.C.causes.AUTHENTICATION_ERROR
    : status === 408 || status === 423 || status === 500 || status === 503 || status === 504;
  if (transient) {
    // Keep the connection and try again; JsSIP re-registers by itself after
    // a reconnection, a timer covers 5xx answers.
    st.registration = 'registering';
    showError(message);
    let wait = 15;
    const retryAfter = response && parseInt(response.getHeader('Retry-After') || '', 10);
    if (retryAfter > 0 && retryAfter < 600) wait = retryAfter;
    clearTimeout(st.retryId);
    const ua = st.ua;
    if (response) st.retryId = setTimeout(() => { if (st.ua === ua && ua.isConnected()) ua.register(); }, wait * 1000);
    renderStatus();
    return;
  }
  // Wrong credentials, portal refused, unknown domain: back to the form.
  if (st.session) {
    // A re-registration failed during a call: let the call go on.
    st.registration = 'failed';
    showError(message);
    return;
  }
  stopUa();
  setConnection('disconnected');
  setState('logged-out');
  showError(message);
  st.registration = 'failed';
  if (status === 401 || status === 407 || e.cause === JsSIP.C.causes.AUTHENTICATION_ERROR) {
    el.password.focus();
  }
}

function logout() {
  if (st.session) {
    st.hungUpByUser = true;
    try { st.session.terminate(); } catch { /* gone */ }
  }
  stopUa();
  stopRing();
  stopLocalStream();
  setConnection('disconnected');
  clearError();
  setState('logged-out');
  el.password.focus();
}

// --------------------------------------------------------- the calls ---

/** The caller as shown: P-Asserted-Identity first, then From. */
function callerOf(session, request) {
  let identity = session.remote_identity;
  try {
    const pai = request && request.getHeader && request.getHeader('P-Asserted-Identity');
    if (pai) {
      const parsed = JsSIP.NameAddrHeader.parse(pai);
      if (parsed) identity = parsed;
    }
  } catch {
    // A bad PAI: keep From.
  }
  const uri = identity && identity.uri;
  const number = (uri && (uri.user || uri.host)) || 'Unknown';
  const name = (identity && identity.display_name) || '';
  return { name, number: decodeURIComponent(number) };
}

// `?autoanswer=1`: answer every call at once (unattended kiosks, and the
// latency benchmark in bench/webrtc-latency).
const AUTO_ANSWER = new URLSearchParams(location.search).get('autoanswer') === '1';

function onNewSession(e) {
  const session = e.session;
  if (e.originator === 'remote') {
    if (st.session) {
      // One call at a time: the second caller hears busy.
      session.terminate({ status_code: 486, reason_phrase: 'Busy Here' });
      return;
    }
    st.session = session;
    st.rejectedByUser = false;
    st.hungUpByUser = false;
    const who = callerOf(session, e.request);
    el.callerName.textContent = who.name || 'Unknown caller';
    el.callerName.hidden = !who.name;
    el.callerNumber.textContent = who.number;
    el.peer.textContent = who.name ? `${who.name} · ${who.number}` : who.number;
    el.lastCall.textContent = '';
    clearError();
    setState('incoming');
    if (AUTO_ANSWER) {
      answer();
    } else {
      startRing('incoming');
      el.answer.focus();
    }
  } else {
    st.session = session;
  }
  watchSession(session, e.originator === 'remote' ? 'incoming' : 'outgoing');
}

function watchSession(session, direction) {
  if (session.connection) watchPeerConnection(session.connection);
  session.on('peerconnection', (e) => watchPeerConnection(e.peerconnection));
  session.on('icecandidate', (e) => {
    // Host candidates only (no STUN/TURN): do not wait for a slow interface.
    setTimeout(() => e.ready(), 1500);
  });
  session.on('progress', (e) => {
    if (st.session !== session || direction !== 'outgoing') return;
    const response = e.response;
    el.callState.textContent = 'Ringing…';
    if (response && response.body) stopRing(); // early media plays instead
    else if (response && response.status_code === 180) startRing('ringback');
  });
  session.on('accepted', () => {
    if (st.session !== session) return;
    stopRing();
    st.callStart = Date.now();
    st.muted = false;
    st.held = false;
    renderToggles();
    el.callState.textContent = 'Connected';
    setState('in-call');
    startTimer();
  });
  session.on('confirmed', () => {
    if (st.session !== session) return;
    if (st.state !== 'in-call') {
      st.callStart = st.callStart || Date.now();
      setState('in-call');
      startTimer();
    }
  });
  session.on('hold', (e) => {
    if (st.session !== session) return;
    if (e.originator === 'local') st.held = true;
    else el.callState.textContent = 'Held by the other side';
    renderToggles();
    renderStatus();
  });
  session.on('unhold', (e) => {
    if (st.session !== session) return;
    if (e.originator === 'local') st.held = false;
    el.callState.textContent = 'Connected';
    renderToggles();
    renderStatus();
  });
  session.on('muted', () => { st.muted = true; renderToggles(); });
  session.on('unmuted', () => { st.muted = false; renderToggles(); });
  session.on('ended', (e) => endCall(session, e, true, direction));
  session.on('failed', (e) => endCall(session, e, false, direction));
}

function reasonHeaderText(message) {
  try {
    const reason = message && message.getHeader && message.getHeader('Reason');
    if (!reason) return '';
    const m = /text="([^"]*)"/.exec(reason);
    return m ? m[1] : '';
  } catch {
    return '';
  }
}

function endCall(session, e, ended, direction) {
  if (st.session !== session) return;
  const message = e.message || null;
  const status = message && typeof message.status_code === 'number' ? message.status_code : 0;
  const warnings = message && message.getHeaders ? message.getHeaders('Warning') : [];
  let text;
  let failure = false;
  if (!ended && st.rejectedByUser) {
    text = 'Call rejected.';
  } else if (!ended && st.hungUpByUser) {
    text = 'Call cancelled.';
  } else if (st.micFailure) {
    text = st.micFailure;
    failure = true;
  } else {
    text = callMessage({
      status,
      warnings,
      cause: e.cause,
      originator: e.originator,
      ended,
      reasonText: reasonHeaderText(message),
      direction,
    });
    // A missed call or a normal hang-up is news, not an error.
    failure = ended
      ? e.cause !== JsSIP.C.causes.BYE || !!reasonHeaderText(message)
      : !(direction === 'incoming' && e.cause === JsSIP.C.causes.CANCELED);
  }
  const duration = st.callStart ? Math.round((Date.now() - st.callStart) / 1000) : 0;
  st.lastCall = {
    direction,
    ended,
    originator: e.originator,
    cause: e.cause,
    status: status || null,
    message: text,
    duration,
  };
  st.session = null;
  st.micFailure = null;
  st.rejectedByUser = false;
  st.hungUpByUser = false;
  st.callStart = 0;
  st.muted = false;
  st.held = false;
  stopRing();
  stopTimer();
  stopLocalStream();
  el.audio.srcObject = null;
  el.digits.value = '';
  el.digits.textContent = '';
  setIndicator(el.ice, 'new', 'Audio: —');
  el.lastCall.textContent = ended && duration ? `${text} (${formatTime(duration)})` : text;
  // A failure is told once, in the error banner; the line keeps the text, hidden.
  el.lastCall.hidden = failure;
  if (failure) showError(text);
  setState(st.ua ? 'registered' : 'logged-out');
  renderStatus();
}

function watchPeerConnection(pc) {
  if (!pc || pc.__tgWatched) return;
  pc.__tgWatched = true;
  pc.addEventListener('track', (e) => {
    const stream = (e.streams && e.streams[0]) || new MediaStream([e.track]);
    if (el.audio.srcObject !== stream) el.audio.srcObject = stream;
    const played = el.audio.play();
    if (played && played.catch) played.catch(() => { /* autoplay will retry on the next gesture */ });
  });
  const renderIce = () => {
    const state = pc.iceConnectionState;
    const text = {
      new: 'Audio: starting',
      checking: 'Audio: connecting…',
      connected: 'Audio: connected',
      completed: 'Audio: connected',
      disconnected: 'Audio: network trouble…',
      failed: 'Audio: connection failed',
      closed: 'Audio: closed',
    }[state] || `Audio: ${state}`;
    setIndicator(el.ice, state, text);
    if (state === 'failed' && st.session) {
      showError('The audio connection failed: your network may block it. Try another network.');
    } else if (state === 'disconnected' && st.session) {
      showError('Audio connection interrupted, trying to recover…');
    } else if ((state === 'connected' || state === 'completed') && st.lastError && st.lastError.startsWith('Audio connection')) {
      clearError();
    }
  };
  pc.addEventListener('iceconnectionstatechange', renderIce);
  renderIce();
}

async function getMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    const error = new Error('no mediaDevices');
    error.name = 'NoMediaDevices';
    throw error;
  }
  setIndicator(el.mic, 'asking', 'Mic?');
  const stream = await navigator.mediaDevices.getUserMedia(AUDIO_ONLY);
  setIndicator(el.mic, 'on', 'Mic on');
  return stream;
}

function micFailed(error) {
  const message = microphoneMessage(error);
  setIndicator(el.mic, 'blocked', 'No mic');
  return message;
}

async function answer() {
  const session = st.session;
  if (!session || st.state !== 'incoming') return;
  unlockAudio();
  stopRing();
  el.answer.disabled = true;
  el.reject.disabled = true;
  let stream;
  try {
    stream = await getMicrophone();
  } catch (error) {
    st.micFailure = micFailed(error);
    el.answer.disabled = false;
    el.reject.disabled = false;
    if (st.session === session) {
      try { session.terminate({ status_code: 480, reason_phrase: 'No Microphone' }); } catch { /* gone */ }
    }
    return;
  } finally {
    el.answer.disabled = false;
    el.reject.disabled = false;
  }
  if (st.session !== session || session.isEnded()) {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  st.localStream = stream;
  startMeter(stream);
  el.callState.textContent = 'Connecting…';
  el.digits.textContent = '';
  setState('in-call');
  try {
    session.answer({ mediaStream: stream, mediaConstraints: AUDIO_ONLY, pcConfig: PC_CONFIG });
  } catch (error) {
    showError(`Could not answer: ${error && error.message ? error.message : error}`);
  }
}

function reject() {
  const session = st.session;
  if (!session) return;
  st.rejectedByUser = true;
  stopRing();
  try { session.terminate({ status_code: 486, reason_phrase: 'Busy Here' }); } catch { /* gone */ }
}

function hangup() {
  const session = st.session;
  if (!session) return;
  st.hungUpByUser = true;
  try { session.terminate(); } catch { /* gone */ }
}

function normaliseNumber(raw) {
  const text = raw.trim();
  if (/^sips?:/i.test(text) || text.includes('@')) return { uri: /^sips?:/i.test(text) ? text : `sip:${text}` };
  const compact = text.replace(/[\s().-]/g, '');
  if (!compact) return { error: 'Enter a number to call.' };
  if (!/^\+?[0-9A-Za-z*#_.~!$&'=;?]+$/.test(compact)) return { error: 'That number has characters a phone number cannot have.' };
  return { user: compact };
}

async function placeCall(event) {
  if (event) event.preventDefault();
  if (st.state !== 'registered' || !st.ua) return;
  unlockAudio();
  clearError();
  el.lastCall.textContent = '';
  const target = normaliseNumber(el.dialInput.value);
  if (target.error) {
    fieldError(el.dialInput, target.error);
    return;
  }
  let uri;
  try {
    uri = target.uri ? JsSIP.URI.parse(target.uri) : new JsSIP.URI('sip', target.user, st.domain);
    if (!uri) throw new Error('bad address');
  } catch {
    fieldError(el.dialInput, 'That is not a number or address that can be called.');
    return;
  }
  el.callButton.disabled = true;
  let stream;
  try {
    stream = await getMicrophone();
  } catch (error) {
    el.callButton.disabled = false;
    showError(micFailed(error));
    st.lastCall = { direction: 'outgoing', ended: false, cause: 'microphone', status: null, message: st.lastError, duration: 0 };
    return;
  }
  if (st.state !== 'registered' || !st.ua) {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  st.localStream = stream;
  startMeter(stream);
  st.rejectedByUser = false;
  st.hungUpByUser = false;
  const shown = uri.user ? decodeURIComponent(uri.user) : uri.toString();
  el.peer.textContent = shown;
  el.callState.textContent = 'Calling…';
  el.digits.textContent = '';
  setState('calling');
  try {
    st.ua.call(uri.toString(), {
      mediaStream: stream,
      mediaConstraints: AUDIO_ONLY,
      pcConfig: PC_CONFIG,
      rtcOfferConstraints: { offerToReceiveAudio: true, offerToReceiveVideo: false },
    });
  } catch (error) {
    st.session = null;
    stopLocalStream();
    setState('registered');
    showError(`Could not place the call: ${error && error.message ? error.message : error}`);
  }
}

function toggleMute() {
  const session = st.session;
  if (!session || st.state !== 'in-call') return;
  if (session.isMuted().audio) session.unmute({ audio: true });
  else session.mute({ audio: true });
}

function toggleHold() {
  const session = st.session;
  if (!session || st.state !== 'in-call') return;
  el.hold.disabled = true;
  const done = () => { el.hold.disabled = st.state !== 'in-call'; };
  const ok = session.isOnHold().local ? session.unhold({}, done) : session.hold({}, done);
  if (!ok) {
    done();
    showError('Cannot change hold right now (another change is in progress). Try again.');
  }
}

function renderToggles() {
  el.mute.setAttribute('aria-pressed', String(st.muted));
  el.mute.textContent = st.muted ? 'Unmute' : 'Mute';
  el.hold.setAttribute('aria-pressed', String(st.held));
  el.hold.textContent = st.held ? 'Resume' : 'Hold';
  if (st.held) el.callState.textContent = 'On hold';
  if (st.localStream) setIndicator(el.mic, st.muted ? 'muted' : 'on', st.muted ? 'Muted' : 'Mic on');
}

function sendDigit(digit) {
  const session = st.session;
  if (!session || st.state !== 'in-call') return;
  try {
    // RFC 4733 in the RTP stream; SIP INFO (application/dtmf-relay, which
    // trunkgate relays too) only when the audio sender cannot carry it
    // (no telephone-event negotiated, or media not up yet).
    const pc = session.connection;
    const sender = pc && pc.getSenders().find((s) => s.track && s.track.kind === 'audio' && s.dtmf);
    st.dtmfTransport = sender && sender.dtmf.canInsertDTMF ? 'RFC2833' : 'INFO';
    session.sendDTMF(digit, { transportType: st.dtmfTransport, duration: 100, interToneGap: 70 });
    el.digits.textContent += digit;
    el.digits.value = el.digits.textContent;
  } catch (error) {
    showError(`Could not send the digit: ${error && error.message ? error.message : error}`);
  }
  ringTone(digit);
}

// --------------------------------------------------------- the timer ---

function formatTime(seconds) {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  const mm = String(m).padStart(2, '0');
  const ss = String(s).padStart(2, '0');
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function startTimer() {
  stopTimer();
  const tick = () => {
    const seconds = st.callStart ? Math.floor((Date.now() - st.callStart) / 1000) : 0;
    el.timer.textContent = formatTime(seconds);
  };
  tick();
  st.timerId = setInterval(tick, 1000);
}

function stopTimer() {
  clearInterval(st.timerId);
  st.timerId = 0;
  el.timer.textContent = '00:00';
}

// --------------------------------------------- microphone and sounds ---

let audioCtx = null;

/** Creates/resumes the AudioContext inside a user gesture. */
function unlockAudio() {
  try {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!audioCtx) audioCtx = new Ctx();
    if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
  } catch {
    audioCtx = null;
  }
}

const meter = { source: null, analyser: null, raf: 0, buffer: null };

function startMeter(stream) {
  stopMeter();
  if (!audioCtx) return;
  try {
    meter.source = audioCtx.createMediaStreamSource(stream);
    meter.analyser = audioCtx.createAnalyser();
    meter.analyser.fftSize = 512;
    meter.buffer = new Float32Array(meter.analyser.fftSize);
    meter.source.connect(meter.analyser);
    const draw = () => {
      meter.analyser.getFloatTimeDomainData(meter.buffer);
      let sum = 0;
      for (let i = 0; i < meter.buffer.length; i += 1) sum += meter.buffer[i] * meter.buffer[i];
      const rms = Math.sqrt(sum / meter.buffer.length);
      const level = Math.min(1, rms * 4);
      el.micLevel.style.width = `${Math.round(level * 100)}%`;
      el.micLevel.dataset.level = level.toFixed(2);
      meter.raf = requestAnimationFrame(draw);
    };
    draw();
  } catch {
    stopMeter();
  }
}

function stopMeter() {
  cancelAnimationFrame(meter.raf);
  meter.raf = 0;
  if (meter.source) {
    try { meter.source.disconnect(); } catch { /* done */ }
  }
  meter.source = null;
  meter.analyser = null;
  el.micLevel.style.width = '0%';
  el.micLevel.dataset.level = '0';
}

function stopLocalStream() {
  stopMeter();
  if (st.localStream) st.localStream.getTracks().forEach((t) => t.stop());
  st.localStream = null;
  refreshMicPermission();
}

let micTestTimer = 0;

async function testMicrophone() {
  unlockAudio();
  clearError();
  if (st.localStream) return;
  let stream;
  try {
    stream = await getMicrophone();
  } catch (error) {
    showError(micFailed(error));
    return;
  }
  if (st.localStream || st.state !== 'registered') {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  st.localStream = stream;
  startMeter(stream);
  el.micTest.textContent = 'Listening… speak now';
  clearTimeout(micTestTimer);
  micTestTimer = setTimeout(() => {
    el.micTest.textContent = 'Test microphone';
    if (st.localStream === stream && !st.session) stopLocalStream();
  }, 5000);
}

async function refreshMicPermission() {
  if (st.localStream) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setIndicator(el.mic, 'unavailable', 'No mic (needs https)');
    return;
  }
  try {
    if (navigator.permissions && navigator.permissions.query) {
      const status = await navigator.permissions.query({ name: 'microphone' });
      const show = () => {
        if (st.localStream) return;
        if (status.state === 'granted') setIndicator(el.mic, 'allowed', 'Mic ok');
        else if (status.state === 'denied') setIndicator(el.mic, 'blocked', 'Mic blocked');
        else setIndicator(el.mic, 'prompt', 'Mic');
      };
      status.onchange = show;
      show();
    }
  } catch {
    // Firefox and others may not know 'microphone': leave it unknown.
  }
}

// Simple tones with WebAudio: the ring of an incoming call, the ringback
// of an outgoing one, a click per keypad digit. No audio files to embed.
const ring = { timer: 0, osc: [], gain: null };

function startRing(kind) {
  stopRing();
  if (!audioCtx) return;
  const burst = () => {
    try {
      const gain = audioCtx.createGain();
      gain.gain.value = kind === 'incoming' ? 0.12 : 0.06;
      gain.connect(audioCtx.destination);
      const freqs = kind === 'incoming' ? [440, 480] : [425];
      const now = audioCtx.currentTime;
      ring.osc = freqs.map((f) => {
        const o = audioCtx.createOscillator();
        o.frequency.value = f;
        o.connect(gain);
        o.start(now);
        o.stop(now + (kind === 'incoming' ? 1.5 : 1.0));
        return o;
      });
      ring.gain = gain;
    } catch {
      // No sound: the page still shows the call.
    }
  };
  burst();
  ring.timer = setInterval(burst, kind === 'incoming' ? 4000 : 5000);
}

function stopRing() {
  clearInterval(ring.timer);
  ring.timer = 0;
  for (const o of ring.osc) {
    try { o.stop(); } catch { /* stopped */ }
  }
  ring.osc = [];
  if (ring.gain) {
    try { ring.gain.disconnect(); } catch { /* done */ }
  }
  ring.gain = null;
}

function ringTone() {
  if (!audioCtx) return;
  try {
    const gain = audioCtx.createGain();
    gain.gain.value = 0.05;
    gain.connect(audioCtx.destination);
    const o = audioCtx.createOscillator();
    o.frequency.value = 1000;
    o.connect(gain);
    const now = audioCtx.currentTime;
    o.start(now);
    o.stop(now + 0.08);
    o.onended = () => gain.disconnect();
  } catch {
    // Silent keypad.
  }
}

// ----------------------------------------------------------- wiring ---

el.loginForm.addEventListener('submit', onLogin);
[el.domain, el.username, el.password, el.server, el.dialInput].forEach((input) => {
  input.addEventListener('input', () => input.removeAttribute('aria-invalid'));
});
el.logout.addEventListener('click', logout);
el.dialPanel.addEventListener('submit', placeCall);
el.answer.addEventListener('click', answer);
el.reject.addEventListener('click', reject);
el.hangup.addEventListener('click', hangup);
el.mute.addEventListener('click', toggleMute);
el.hold.addEventListener('click', toggleHold);
el.micTest.addEventListener('click', testMicrophone);
el.keypad.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-digit]');
  if (button) sendDigit(button.dataset.digit);
});
document.addEventListener('keydown', (event) => {
  if (st.state !== 'in-call' || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA')) return;
  if (/^[0-9*#]$/.test(event.key)) {
    event.preventDefault();
    sendDigit(event.key);
  }
});
window.addEventListener('online', () => { if (st.ua && !st.ua.isConnected()) setConnection('connecting'); });
window.addEventListener('offline', () => {
  setConnection('disconnected');
  if (st.ua) showError('Your device is offline. The phone reconnects when the network is back.');
});
window.addEventListener('pagehide', () => {
  // Best effort: hang up and unregister so calls do not ring a closed page.
  if (st.session) { try { st.session.terminate(); } catch { /* gone */ } }
  if (st.ua) { try { st.ua.stop(); } catch { /* gone */ } }
});

// The test hooks: live views on the phone's state.
window.softphone = Object.freeze({
  version: VERSION,
  get ua() { return st.ua; },
  get session() { return st.session; },
  get state() { return st.state; },
  get registration() { return st.registration; },
  get connection() { return st.connection; },
  get lastError() { return st.lastError; },
  get lastCall() { return st.lastCall; },
  get localStream() { return st.localStream; },
  get dtmfTransport() { return st.dtmfTransport; },
  peerConnection() { return st.session ? st.session.connection || null : null; },
});

loadRemembered();
setState('logged-out');
setConnection('disconnected');
refreshMicPermission();
(el.domain.value ? (el.username.value ? el.password : el.username) : el.domain).focus();
