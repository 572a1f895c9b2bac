// Builds dist/index.html: one self-contained page (JS and CSS inlined) that
// the daemon embeds with include_str! and serves at /softphone.
//
//   npm ci && npm run build
//
// The output is deterministic: same sources and lockfile, same bytes (no
// timestamps, no absolute paths, no source maps). The page's
// Content-Security-Policy allows exactly the inlined script and style by
// their SHA-256, so no other script can run in it.

import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));
const src = join(root, 'src');
const dist = join(root, 'dist');

const common = {
  bundle: true,
  minify: true,
  write: false,
  legalComments: 'none',
  logLevel: 'warning',
  absWorkingDir: root,
  charset: 'utf8',
};

const js = await esbuild.build({
  ...common,
  entryPoints: [join(src, 'app.js')],
  format: 'iife',
  platform: 'browser',
  target: ['chrome100', 'firefox100', 'safari15', 'edge100'],
  define: { 'process.env.NODE_ENV': '"production"' },
});
const css = await esbuild.build({
  ...common,
  entryPoints: [join(src, 'app.css')],
  loader: { '.css': 'css' },
  target: ['chrome100', 'firefox100', 'safari15'],
});

const jsText = js.outputFiles[0].text.trimEnd();
const cssText = css.outputFiles[0].text.trimEnd();

// Inline safety: the text must not close its own element.
if (/<\/script/i.test(jsText)) throw new Error('bundled JS contains "</script": cannot inline it');
if (/<\/style/i.test(cssText)) throw new Error('bundled CSS contains "</style": cannot inline it');

const sha256 = (text) => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;
const csp = [
  "default-src 'none'",
  `script-src ${sha256(jsText)}`,
  `style-src ${sha256(cssText)}`,
  // SIP over WebSocket: same host by default, any ws(s) server with ?server=.
  "connect-src 'self' wss: ws:",
  "media-src 'self' blob: mediastream:",
  'img-src data:',
  "base-uri 'none'",
  "form-action 'none'",
].join('; ');

const template = await readFile(join(src, 'index.html'), 'utf8');
const parts = { '/*CSP*/': csp, '/*CSS*/': cssText, '/*JS*/': jsText };
let html = template;
for (const [marker, text] of Object.entries(parts)) {
  const at = html.indexOf(marker);
  if (at < 0 || html.indexOf(marker, at + 1) >= 0) throw new Error(`template must hold ${marker} exactly once`);
  // Split/join rather than String.replace: the inlined text may hold `$&`.
  html = html.split(marker).join(text);
}

// The MIT licences of the bundled packages travel with the page, in a
// comment at its end (in the lockfile's order, so the bytes stay fixed).
const lock = JSON.parse(await readFile(join(root, 'package-lock.json'), 'utf8'));
const bundled = Object.entries(lock.packages)
  .filter(([path, meta]) => path.startsWith('node_modules/') && !meta.dev)
  .map(([path, meta]) => ({ name: path.slice('node_modules/'.length), version: meta.version, license: meta.license }));
const notices = [];
for (const pkg of bundled) {
  const dir = join(root, 'node_modules', pkg.name);
  const names = ['LICENSE', 'LICENSE.md', 'license.md', 'license', 'LICENSE.txt'];
  let text = '';
  for (const name of names) {
    try { text = await readFile(join(dir, name), 'utf8'); break; } catch { /* next */ }
  }
  if (!text) throw new Error(`no licence file for ${pkg.name}`);
  notices.push(`${pkg.name} ${pkg.version} (${pkg.license})\n\n${text.trim()}`);
}
// `--` may not appear inside an HTML comment.
const body = `Third-party software in this page:\n\n${notices.join('\n\n* * *\n\n')}`.replace(/--/g, '- -');
const comment = `<!--\n${body}\n-->`;
html = `${html.trimEnd()}\n${comment}\n`;

await mkdir(dist, { recursive: true });
await writeFile(join(dist, 'index.html'), html);
const bytes = Buffer.byteLength(html);
const digest = createHash('sha256').update(html).digest('hex');
console.log(`dist/index.html ${bytes} bytes sha256 ${digest}`);
console.log(`  script ${Buffer.byteLength(jsText)} bytes, style ${Buffer.byteLength(cssText)} bytes`);
