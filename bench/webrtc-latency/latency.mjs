// INVITE to first audio with a real browser answering: a PBX written here
// (SIP over UDP, RTP on a socket of its own) calls a headless Chromium that
// runs the softphone page with ?autoanswer=1, through trunkgate or through
// the WebRTC anchor (Kamailio + rtpengine, ../../../shared/bench/webrtc-anchor).
// For each call: milliseconds from the INVITE leaving to the 200 arriving,
// and to the first RTP packet from the browser arriving at the PBX. Then
// ACK, a second of PBX audio both ways, BYE.
//
//   node latency.mjs '{"page":"https://127.0.0.1:8443/softphone?autoanswer=1",
//     "domain":"acme.example.com","username":"alice","password":"...",
//     "pbx":"127.0.0.2","target":"127.0.0.1:5070","ruri":"sip:+15550001@127.0.0.1:5070",
//     "calls":20}'
//
// Prints one JSON line per call, then a summary line.
import { chromium } from '../../tests/browser/node_modules/playwright-core/index.mjs';
import dgram from 'node:dgram';

const plan = JSON.parse(process.argv[2]);
const [targetHost, targetPortText] = plan.target.split(':');
const targetPort = Number(targetPortText);
const now = () => Number(process.hrtime.bigint()) / 1e6;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    '--ignore-certificate-errors', '--autoplay-policy=no-user-gesture-required'],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true });
await context.grantPermissions(['microphone']);
const page = await context.newPage();
page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') process.stderr.write(`page: ${m.text()}\n`); });
await page.goto(plan.page);
await page.getByTestId('login-domain').fill(plan.domain);
await page.getByTestId('login-username').fill(plan.username);
await page.getByTestId('login-password').fill(plan.password || 'x');
await page.getByTestId('login-button').click();
await page.waitForFunction(() => window.softphone && window.softphone.state === 'registered', null, { timeout: 20000 });

const sip = dgram.createSocket('udp4');
const rtp = dgram.createSocket('udp4');
await new Promise((r) => sip.bind(0, plan.pbx, r));
await new Promise((r) => rtp.bind(0, plan.pbx, r));
const sipPort = sip.address().port;
const rtpPort = rtp.address().port;

let waiter = null;
sip.on('message', (buf) => {
  const text = buf.toString();
  if (text.startsWith('SIP/2.0 ')) {
    if (waiter) waiter(text);
  } else {
    // A request (BYE from the far end, OPTIONS): answer 200.
    const head = text.split('\r\n\r\n')[0].split('\r\n');
    const keep = head.filter((l) => /^(via|v|from|f|to|t|call-id|i|cseq):/i.test(l));
    sip.send(`SIP/2.0 200 OK\r\n${keep.join('\r\n')}\r\nContent-Length: 0\r\n\r\n`, targetPort, targetHost);
  }
});
let firstRtpAt = null;
let rtpFrom = null;
rtp.on('message', (_buf, rinfo) => {
  if (firstRtpAt === null) {
    firstRtpAt = now();
    rtpFrom = `${rinfo.address}:${rinfo.port}`;
  }
});

const headers = (msg) => msg.split('\r\n\r\n')[0].split('\r\n');
const header = (msg, name) => headers(msg).find((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))?.replace(/^[^:]+:\s*/, '');
const all = (msg, name) => headers(msg).filter((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`)).map((l) => l.replace(/^[^:]+:\s*/, ''));
const nextResponse = (timeout, final) => new Promise((resolve, reject) => {
  const t = setTimeout(() => { waiter = null; reject(new Error('no answer')); }, timeout);
  waiter = (text) => {
    const code = Number(text.slice(8, 11));
    if (final && code < 200) return;
    clearTimeout(t);
    waiter = null;
    resolve(text);
  };
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function rtpPacket(seq, ts) {
  const p = Buffer.alloc(172);
  p[0] = 0x80; p[1] = 0;
  p.writeUInt16BE(seq & 0xffff, 2); p.writeUInt32BE(ts >>> 0, 4); p.writeUInt32BE(0x5eed, 8);
  for (let i = 12; i < 172; i++) p[i] = 0x55 + ((i * 7) & 0x1f);
  return p;
}

const results = [];
for (let n = 1; n <= plan.calls; n++) {
  const callId = `lat-${process.pid}-${n}`;
  const tag = `pbx${n}`;
  const branch = () => `z9hG4bK${Math.random().toString(36).slice(2)}`;
  const from = `<sip:+15550100@${plan.pbx}>;tag=${tag}`;
  const sdp = `v=0\r\no=pbx ${n} 1 IN IP4 ${plan.pbx}\r\ns=-\r\nc=IN IP4 ${plan.pbx}\r\nt=0 0\r\n` +
    `m=audio ${rtpPort} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n` +
    `a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n`;
  const invite = `INVITE ${plan.ruri} SIP/2.0\r\nVia: SIP/2.0/UDP ${plan.pbx}:${sipPort};branch=${branch()};rport\r\n` +
    `Max-Forwards: 70\r\nFrom: ${from}\r\nTo: <${plan.ruri}>\r\nCall-ID: ${callId}\r\nCSeq: 1 INVITE\r\n` +
    `Contact: <sip:pbx@${plan.pbx}:${sipPort}>\r\nContent-Type: application/sdp\r\nContent-Length: ${sdp.length}\r\n\r\n${sdp}`;
  firstRtpAt = null;
  const answered = nextResponse(10000, true);
  const t0 = now();
  sip.send(invite, targetPort, targetHost);
  let ok;
  try {
    ok = await answered;
  } catch (e) {
    results.push({ call: n, error: String(e) });
    console.log(JSON.stringify(results.at(-1)));
    continue;
  }
  const t200 = now();
  const status = Number(ok.slice(8, 11));
  if (status !== 200) {
    const why = [ok.split('\r\n')[0], header(ok, 'warning'), header(ok, 'reason'), header(ok, 'server') || header(ok, 'user-agent')];
    results.push({ call: n, status, refused: why.filter(Boolean).join(' | ') });
    console.log(JSON.stringify(results.at(-1)));
    continue;
  }
  const to = header(ok, 'to');
  const contact = (header(ok, 'contact') || '').replace(/^.*</, '').replace(/>.*$/, '');
  const routes = all(ok, 'record-route').flatMap((v) => v.split(',')).map((s) => s.trim()).reverse();
  const routeLines = routes.map((r) => `Route: ${r}\r\n`).join('');
  const body = ok.split('\r\n\r\n')[1] || '';
  const c = /c=IN IP4 (\S+)/.exec(body);
  const m = /m=audio (\d+)/.exec(body);
  const ack = `ACK ${contact} SIP/2.0\r\nVia: SIP/2.0/UDP ${plan.pbx}:${sipPort};branch=${branch()};rport\r\n` +
    `Max-Forwards: 70\r\nFrom: ${from}\r\nTo: ${to}\r\nCall-ID: ${callId}\r\nCSeq: 1 ACK\r\n${routeLines}Content-Length: 0\r\n\r\n`;
  sip.send(ack, targetPort, targetHost);
  // PBX audio toward the anchored address (a second, or hold_ms), as a PBX would.
  const packets = Math.round((plan.hold_ms || 1000) / 20);
  for (let i = 0; i < packets && status === 200 && c && m; i++) {
    rtp.send(rtpPacket(n * 1000 + i, i * 160), Number(m[1]), c[1]);
    await sleep(20);
  }
  const firstAudio = firstRtpAt === null ? null : firstRtpAt - t0;
  const bye = `BYE ${contact} SIP/2.0\r\nVia: SIP/2.0/UDP ${plan.pbx}:${sipPort};branch=${branch()};rport\r\n` +
    `Max-Forwards: 70\r\nFrom: ${from}\r\nTo: ${to}\r\nCall-ID: ${callId}\r\nCSeq: 2 BYE\r\n${routeLines}Content-Length: 0\r\n\r\n`;
  const byeDone = nextResponse(5000, true).catch(() => null);
  sip.send(bye, targetPort, targetHost);
  await byeDone;
  results.push({ call: n, status, ms_to_200: +(t200 - t0).toFixed(1), ms_to_first_audio: firstAudio && +firstAudio.toFixed(1), audio_from: rtpFrom });
  console.log(JSON.stringify(results.at(-1)));
  await page.waitForFunction(() => window.softphone.state === 'registered', null, { timeout: 10000 }).catch(() => {});
  await sleep(300);
}

const pct = (xs, p) => {
  const s = xs.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : null;
};
const to200 = results.map((r) => r.ms_to_200);
const audio = results.map((r) => r.ms_to_first_audio);
console.log(JSON.stringify({
  summary: true,
  calls: results.length,
  answered: results.filter((r) => r.status === 200).length,
  with_audio: audio.filter((a) => a !== null && a !== undefined).length,
  ms_to_200: { min: pct(to200, 0), p50: pct(to200, 50), p95: pct(to200, 95) },
  ms_to_first_audio: { min: pct(audio, 0), p50: pct(audio, 50), p95: pct(audio, 95) },
}));
await browser.close();
sip.close();
rtp.close();
