// End-to-end test of examples/web_app.cpp in a real browser: headless Chromium
// (Debian's /usr/bin/chromium) driven by playwright-core, against the fake
// Atlassian server, with two users signing in at once. The Connect button
// posts the start page's form, which carries the browser's CSRF token.
//
//   node tests/browser/web_app.test.mjs --web-app PATH --fake-atlassian PATH [--chromium PATH]
//
// The paths may also come from $WEB_APP, $FAKE_ATLASSIAN and $CHROMIUM (default
// /usr/bin/chromium). playwright-core comes from tests/browser/node_modules
// (scripts/install-node-deps.sh). A missing browser, binary or package is a
// failure, never a skip. Prints one summary line; exits 0 only when every
// check passed. Child processes are killed on every way out.

import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { executable, fatal, free_port, harness, option, read_port, wait_for } from './harness.mjs';

const action_timeout_ms = 15_000;
const name = 'web_app_browser';
let browser;

const { check, make_workdir, start, run } = harness({
  name,
  total_timeout_ms: 90_000,
  summary: ' (2 users at once, forged callbacks, CSRF, deny, logout)',
  on_failure: async () => {
    if (browser) await browser.close().catch(() => {});
  },
});

// ---------------------------------------------------------------------------
// One user in one browser context (its own cookie jar)
// ---------------------------------------------------------------------------

async function new_user(label) {
  const context = await browser.newContext();
  context.setDefaultTimeout(action_timeout_ms);
  const page = await context.newPage();
  // Every callback URL this browser is sent to: it carries the code, which
  // must never show up in a page or a log.
  page.callbacks = [];
  page.on('request', (request) => {
    if (new URL(request.url()).pathname === '/callback') page.callbacks.push(request.url());
  });
  return { label, context, page };
}

// Opens the app, clicks Connect (posting the form and its CSRF token), lands
// on the consent page; returns its state.
async function connect(user, base) {
  await user.page.goto(base + '/');
  check(await user.page.isVisible('#connect'), `${user.label}: the start page shows the Connect button`);
  const token = await user.page.getAttribute('form[action="/connect"] input[name="csrf"]', 'value');
  check(/^[0-9a-f]{64}$/.test(token ?? ''), `${user.label}: the Connect form carries a CSRF token`);
  await Promise.all([user.page.waitForURL(/\/authorize\?/), user.page.click('#connect')]);
  const state = new URL(user.page.url()).searchParams.get('state');
  check(!!state && (await user.page.isVisible('#allow')), `${user.label}: Connect leads to the consent page`);
  return state;
}

async function space_names(page) {
  return page.locator('ul.spaces li').evaluateAll((items) => items.map((li) => li.firstChild.textContent.trim()));
}

async function allow(user, base) {
  await Promise.all([user.page.waitForURL(base + '/'), user.page.click('#allow')]);
  await user.page.waitForSelector('ul.spaces li');
  const names = await space_names(user.page);
  check(JSON.stringify(names) === JSON.stringify(['Space 1', 'Space 2', 'Space 3']),
        `${user.label}: after Allow the app lists the spaces Space 1..Space 3 (got ${JSON.stringify(names)})`);
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

async function main() {
  const web_app = executable(option('--web-app', 'WEB_APP'), 'web-app', 'build the web-app target');
  const fake_atlassian = executable(option('--fake-atlassian', 'FAKE_ATLASSIAN'), 'fake-atlassian',
                                    'build the fake-atlassian target');
  const chromium_path = executable(option('--chromium', 'CHROMIUM', '/usr/bin/chromium'), 'Chromium',
                                   'run scripts/install-deps.sh');
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (e) {
    throw new fatal(`playwright-core cannot be loaded (${e.code ?? e.message}): run scripts/install-node-deps.sh`);
  }

  const workdir = make_workdir('web-app-test-');
  const client_id = 'web-app-test-client';
  const client_secret = randomBytes(24).toString('hex');
  writeFileSync(join(workdir, 'secret'), client_secret + '\n', { mode: 0o600 });

  // The web app's port must be known before the fake server starts: the
  // redirect URI is registered there, port included.
  const app_port = await free_port();
  const base = `http://127.0.0.1:${app_port}`;
  const redirect_uri = `${base}/callback`;

  const fake = start('fake-atlassian', fake_atlassian, [
    '--port-file', join(workdir, 'fake.port'), '--ca-out', join(workdir, 'ca.pem'),
    '--redirect-uri', redirect_uri, '--client-id', client_id, '--client-secret', client_secret]);
  const fake_port = await wait_for(fake, 'port file', () => read_port(join(workdir, 'fake.port')));
  const fake_base = `https://127.0.0.1:${fake_port}`;

  const app = start('web-app', web_app, [
    '--port', String(app_port), '--port-file', join(workdir, 'app.port'),
    '--client-id', client_id, '--client-secret-file', join(workdir, 'secret'),
    '--redirect-uri', redirect_uri, '--authorize-url', `${fake_base}/authorize`,
    '--token-url', `${fake_base}/oauth/token`, '--api-url', fake_base, '--ca-file', join(workdir, 'ca.pem')]);
  await wait_for(app, '"listening on" line', () => app.output.join('').includes(`listening on ${base}`));
  check(read_port(join(workdir, 'app.port')) === app_port, 'web-app writes its port to --port-file');

  browser = await chromium.launch({
    executablePath: chromium_path,
    headless: true,
    // The fake server's CA is made per run and is not in Chromium's trust store.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
           '--ignore-certificate-errors'],
  });
  console.log(`${name}: Chromium ${browser.version()}, web-app on ${base}, fake Atlassian on ${fake_base}`);

  // Two users start at once; both wait on the consent page.
  const alice = await new_user('alice');
  const bob = await new_user('bob');
  const [alice_state, bob_state] = await Promise.all([connect(alice, base), connect(bob, base)]);
  check(alice_state !== bob_state, 'each browser gets its own state');

  const cookies = await alice.context.cookies(base);
  const session_cookie = cookies.find((c) => c.name === 'webapp_session');
  check(!!session_cookie && session_cookie.httpOnly && session_cookie.sameSite === 'Lax' && session_cookie.path === '/',
        'the session cookie is HttpOnly, SameSite=Lax, Path=/');

  // Mallory sends alice's state to the callback, with no cookie and then with
  // a cookie of her own: the state is bound to alice's cookie, so both fail.
  const mallory = await new_user('mallory');
  const forged = `${base}/callback?code=forged-code&state=${encodeURIComponent(alice_state)}`;
  let res = await mallory.page.goto(forged);
  check(res.status() === 400 && (await mallory.page.isVisible('#mismatch')) &&
        (await mallory.page.locator('ul.spaces').count()) === 0,
        'a callback with another browser\'s state and no cookie gets 400 and no spaces');
  await connect(mallory, base);
  res = await mallory.page.goto(forged);
  check(res.status() === 400 && (await mallory.page.isVisible('#mismatch')),
        'a callback with another browser\'s state and a cookie of its own gets 400');
  // An error without the state, which any page can send, ends nothing and
  // shows none of its text.
  res = await mallory.page.goto(`${base}/callback?error=access_denied&error_description=${encodeURIComponent('<b>EVIL</b>')}`);
  check(res.status() === 400 && (await mallory.page.isVisible('#mismatch')) &&
        !(await mallory.page.content()).includes('EVIL'),
        'a callback with an error and no state gets the fixed 400 page, without the error\'s text');
  await mallory.page.goto(base + '/');
  check(await mallory.page.isVisible('#connect'), 'after the forged callbacks the attacker is still not connected');

  // Connect only by posting the form with this browser's token.
  const no_redirects = { maxRedirects: 0 };
  res = await mallory.context.request.get(`${base}/connect`, no_redirects);
  check(res.status() === 405 && res.headers()['allow'] === 'POST', 'GET /connect gets 405 (Allow: POST)');
  res = await mallory.context.request.post(`${base}/connect`, { form: { csrf: '0'.repeat(64) }, ...no_redirects });
  check(res.status() === 403 && !res.headers()['location'], 'POST /connect with a wrong CSRF token gets 403 and no redirect');
  const alice_start = await (await alice.context.request.get(`${base}/`)).text();
  const alice_token = /name="csrf" value="([0-9a-f]{64})"/.exec(alice_start)?.[1];
  res = await mallory.context.request.post(`${base}/connect`, { form: { csrf: alice_token ?? '' }, ...no_redirects });
  check(!!alice_token && res.status() === 403, 'another browser\'s CSRF token gets 403');

  // Both click Allow at once and see their spaces.
  await Promise.all([allow(alice, base), allow(bob, base)]);

  // The code is single use and bound to alice's browser: replaying the real
  // callback fails, in her browser and in mallory's.
  const real_callback = alice.page.callbacks.find((u) => new URL(u).searchParams.has('code'));
  check(!!real_callback, 'alice\'s browser was redirected to the callback with a code');
  const alice_code = real_callback ? new URL(real_callback).searchParams.get('code') : undefined;
  if (real_callback) {
    const replay = await alice.context.newPage();
    res = await replay.goto(real_callback);
    check(res.status() === 400, 'replaying the callback in the same browser gets 400 (the state is single use)');
    await replay.close();
    res = await mallory.page.goto(real_callback);
    check(res.status() === 400, 'replaying alice\'s callback in another browser gets 400');
  }
  const new_cookie = (await alice.context.cookies(base)).find((c) => c.name === 'webapp_session');
  check(!!new_cookie && new_cookie.value !== session_cookie?.value, 'signing in gives the browser a new session id');

  // Carol declines.
  const carol = await new_user('carol');
  await connect(carol, base);
  await Promise.all([carol.page.waitForURL(/\/callback\?/), carol.page.click('#deny')]);
  const declined_text = await carol.page.textContent('body');
  check((await carol.page.isVisible('#declined')) && /declined/i.test(declined_text),
        'Deny shows the "access declined" page');
  await carol.page.click('#try-again');
  check(await carol.page.isVisible('#connect'), 'the declined page links back to the Connect button');

  // Alice disconnects; bob keeps his grant.
  await Promise.all([alice.page.waitForURL(base + '/'), alice.page.click('#logout')]);
  check(await alice.page.isVisible('#connect'), 'after logout alice sees the Connect button again');
  await alice.page.reload();
  check(await alice.page.isVisible('#connect'), 'alice stays logged out on reload');
  await bob.page.reload();
  check(JSON.stringify(await space_names(bob.page)) === JSON.stringify(['Space 1', 'Space 2', 'Space 3']),
        'bob still sees his spaces after alice logged out');

  // Secrets never reach a page or the log.
  const pages = await Promise.all([alice, bob, mallory, carol].map((u) => u.page.content()));
  const log = app.output.join('');
  const codes = [alice, bob, carol].flatMap((u) => u.page.callbacks)
    .map((u) => new URL(u).searchParams.get('code')).filter(Boolean);
  check(codes.length >= 2 && alice_code !== undefined, 'the codes of the sign-ins were seen');
  check(!codes.some((c) => log.includes(c) || pages.some((p) => p.includes(c))),
        'no authorization code appears in a page or in web-app\'s log');
  check(!log.includes(client_secret) && !log.includes('code='), 'web-app\'s log holds neither the client secret nor a code');

  await browser.close();
  browser = undefined;

  // web-app stops cleanly on SIGTERM (sanitizer builds check for leaks there).
  app.kill('SIGTERM');
  const { code, signal } = await app.exited;
  check(code === 0, `web-app exits 0 on SIGTERM (got ${code ?? signal})`);
  fake.kill('SIGTERM');
  await fake.exited;
}

await run(main);
