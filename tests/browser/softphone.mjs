// Drives Debian's Chromium (headless, fake microphone) through trunkgate's
// softphone page for tests/browser.rs. One scenario per run; every step is
// reported as one JSON line on stdout ({"event": ..., "t": ms since start})
// so the Rust test can check order and act at the PBX side meanwhile.
//
//   node softphone.mjs '{"scenario":"answer","url":"https://127.0.0.1:8443",
//                        "domain":"acme.example.com","username":"alice",
//                        "password":"...","digits":"159#","out":"/tmp/shots"}'
//
// Scenarios: wrong-password, answer (answer, audio both ways, keypad, hold,
// resume, hang up), answer-until-end (answer, then samples of what the page
// says and of the audio until the far end hangs up), close-mid-call
// (answer, then the browser goes away), call-out (dial plan.digits with the
// dial pad's input and Call button, hear the far end, hang up).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const plan = JSON.parse(process.argv[2]);
const started = Date.now();
const emit = (event, extra = {}) =>
  process.stdout.write(JSON.stringify({ event, t: Date.now() - started, ...extra }) + '\n');
mkdirSync(plan.out, { recursive: true });
let shot = 0;
const screenshot = async (page, name) => {
  const path = join(plan.out, `${String(++shot).padStart(2, '0')}-${plan.scenario}-${name}.png`);
  await page.screenshot({ path });
  emit('screenshot', { path });
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    '--ignore-certificate-errors',
    '--autoplay-policy=no-user-gesture-required',
  ],
});
// A phone-sized screen: the page must work there.
const context = await browser.newContext({ viewport: { width: 360, height: 640 }, ignoreHTTPSErrors: true });
await context.grantPermissions(['microphone']);
const page = await context.newPage();
page.on('console', (m) => {
  if (m.type() === 'error') emit('console-error', { text: m.text() });
});
const byId = (id) => page.getByTestId(id);
const waitState = (state, timeout = 15000) =>
  page.waitForFunction((s) => window.softphone && window.softphone.state === s, state, { timeout });

// Audio figures of the call from RTCPeerConnection.getStats().
async function audioStats() {
  return page.evaluate(async () => {
    const pc = window.softphone.peerConnection();
    if (!pc) return null;
    const out = { inbound: null, outbound: null };
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        out.inbound = {
          packetsReceived: r.packetsReceived,
          bytesReceived: r.bytesReceived,
          audioLevel: r.audioLevel ?? 0,
          totalAudioEnergy: r.totalAudioEnergy ?? 0,
          packetsLost: r.packetsLost,
          codec: r.codecId,
        };
      }
      if (r.type === 'outbound-rtp' && r.kind === 'audio') {
        out.outbound = { packetsSent: r.packetsSent, bytesSent: r.bytesSent };
      }
      if (r.type === 'transport') {
        out.dtls = { state: r.dtlsState, version: r.tlsVersion, cipher: r.dtlsCipher, srtp: r.srtpCipher };
      }
    });
    return out;
  });
}

async function login(password) {
  await page.goto(`${plan.url}/softphone`);
  await byId('login-domain').fill(plan.domain);
  await byId('login-username').fill(plan.username);
  await byId('login-password').fill(password);
  await byId('login-button').click();
}

async function answerAndHear() {
  await login(plan.password);
  await waitState('registered');
  emit('registered');
  await screenshot(page, 'registered');
  await waitState('incoming', 30000);
  emit('incoming', { caller: (await byId('caller-number').textContent()).trim() });
  await screenshot(page, 'incoming');
  await byId('answer-button').click();
  await waitState('in-call');
  emit('answered');
  // Audio must reach the browser (packets and energy) and leave it.
  let stats = null;
  for (let i = 0; i < 100; i++) {
    stats = await audioStats();
    if (stats?.inbound?.packetsReceived > 20 && stats.inbound.totalAudioEnergy > 0 && stats?.outbound?.packetsSent > 20) {
      break;
    }
    await page.waitForTimeout(100);
  }
  emit('audio', { stats });
  await screenshot(page, 'in-call');
  return stats;
}

try {
  if (plan.scenario === 'wrong-password') {
    await login(plan.password);
    await page.waitForFunction(() => window.softphone && window.softphone.lastError, null, { timeout: 15000 });
    const shown = (await byId('error-message').textContent()).trim();
    emit('error-shown', { text: shown, state: await page.evaluate(() => window.softphone.state) });
    await screenshot(page, 'wrong-password');
  } else if (plan.scenario === 'answer') {
    await answerAndHear();
    for (const d of plan.digits || '') {
      const id = d === '*' ? 'keypad-star' : d === '#' ? 'keypad-hash' : `keypad-${d}`;
      await byId(id).click();
      emit('digit', { digit: d });
      await page.waitForTimeout(400);
    }
    await byId('hold-button').click();
    await page.waitForFunction(() => document.querySelector('[data-testid=hold-button]').getAttribute('aria-pressed') === 'true');
    await page.waitForTimeout(300);
    emit('held', { stats: await audioStats() });
    await page.waitForTimeout(2000);
    const whileHeld = await audioStats();
    await byId('hold-button').click();
    await page.waitForFunction(() => document.querySelector('[data-testid=hold-button]').getAttribute('aria-pressed') === 'false');
    emit('resumed', { stats: whileHeld });
    await page.waitForTimeout(1500);
    emit('after-resume', { stats: await audioStats() });
    await screenshot(page, 'resumed');
    await byId('hangup-button').click();
    await waitState('registered');
    emit('hung-up', { lastCall: await page.evaluate(() => window.softphone.lastCall) });
    await screenshot(page, 'ended');
  } else if (plan.scenario === 'answer-until-end') {
    // Answer, then watch the call until the far end hangs up: what the page
    // says and the audio figures, every 250 ms.
    await answerAndHear();
    let shotHeld = false;
    for (let i = 0; i < 120; i++) {
      const state = await page.evaluate(() => window.softphone.state);
      if (state !== 'in-call') break;
      const said = (await byId('call-state').textContent()).trim();
      emit('sample', { said, stats: await audioStats() });
      if (said.includes('Held') && !shotHeld) {
        shotHeld = true;
        await screenshot(page, 'held-by-the-pbx');
      }
      await page.waitForTimeout(250);
    }
    await waitState('registered', 10000);
    emit('ended', { lastCall: await page.evaluate(() => window.softphone.lastCall) });
  } else if (plan.scenario === 'call-out') {
    await login(plan.password);
    await waitState('registered');
    emit('registered');
    await byId('dial-input').fill(plan.digits);
    await byId('call-button').click();
    emit('dialled', { number: plan.digits });
    await waitState('calling');
    await page.waitForFunction(() => ['in-call', 'registered'].includes(window.softphone.state), null, { timeout: 30000 });
    if ((await page.evaluate(() => window.softphone.state)) !== 'in-call') {
      await screenshot(page, 'call-failed');
      throw new Error(`the call failed: ${JSON.stringify(await page.evaluate(() => [window.softphone.lastCall, window.softphone.lastError]))}`);
    }
    emit('answered');
    let stats = null;
    for (let i = 0; i < 100; i++) {
      stats = await audioStats();
      if (stats?.inbound?.packetsReceived > 20 && stats.inbound.totalAudioEnergy > 0 && stats?.outbound?.packetsSent > 20) {
        break;
      }
      await page.waitForTimeout(100);
    }
    emit('audio', { stats });
    await screenshot(page, 'calling-out');
    // Talk a little longer (2 s), then hang up.
    await page.waitForTimeout(2000);
    await byId('hangup-button').click();
    await waitState('registered');
    emit('hung-up', { lastCall: await page.evaluate(() => window.softphone.lastCall) });
  } else if (plan.scenario === 'close-mid-call') {
    await answerAndHear();
    emit('closing');
    await browser.close();
  } else {
    throw new Error(`unknown scenario ${plan.scenario}`);
  }
  emit('done');
} catch (e) {
  emit('failed', { error: String(e && e.stack || e) });
  try {
    await screenshot(page, 'failure');
  } catch {}
  process.exitCode = 1;
} finally {
  await browser.close().catch(() => {});
}
