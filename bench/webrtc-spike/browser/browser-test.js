// Headless Chromium (fake mic) offers; the Rust server at SERVER answers
// (ICE-lite, host candidate 127.0.0.1, one shared UDP port).
// usage: node browser-test.js http://127.0.0.1:8080 [seconds]
const { chromium } = require('playwright-core');
(async () => {
  const url = process.argv[2] || 'http://127.0.0.1:8080';
  const secs = Number(process.argv[3] || 6);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', '--no-sandbox'],
  });
  const page = await browser.newPage();
  page.on('console', m => console.log('page:', m.text()));
  await page.goto(url);
  const answer = await page.evaluate(() => window.run());
  const offer = await page.evaluate(() => window.offerSdp);
  console.log('--- offer (Chromium) ---\n' + offer);
  console.log('--- answer (server) ---\n' + answer);
  await page.waitForTimeout(secs * 1000 / 2);
  const dtmf = await page.evaluate(() => window.dtmf('159#'));
  console.log('insertDTMF possible:', dtmf);
  await page.waitForTimeout(secs * 1000 / 2);
  const stats = await page.evaluate(() => window.stats());
  console.log('STATS ' + JSON.stringify(stats));
  await browser.close();
})().catch(e => { console.error(e); process.exit(1); });
