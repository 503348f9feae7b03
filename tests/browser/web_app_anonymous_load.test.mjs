// Anonymous traffic must not knock examples/web_app.cpp over (issue 14): with
// the fake Atlassian server auto-approving, a logged-in user keeps using the
// app while 10,000 anonymous /connect and callback requests arrive from
// several connections at once, and web-app's resident size (VmRSS) grows by
// at most 20 MiB over the flood.
//
//   node tests/browser/web_app_anonymous_load.test.mjs --web-app PATH --fake-atlassian PATH
//
// The paths may also come from $WEB_APP and $FAKE_ATLASSIAN. Node built-ins
// only (no browser): the users are plain HTTP clients with a cookie jar. The
// flood comes from 127.0.1.x and the users from 127.0.0.2 and 127.0.0.3 (all
// loopback on Linux), so the per-address rate limit stops the flood and not
// the users. Prints one summary line; exits 0 only when every check passed.

import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { join } from 'node:path';
import { executable, free_port, harness, option, read_port, wait_for } from './harness.mjs';

const name = 'web_app_anonymous_load';
const request_timeout_ms = 20_000;
const flood_requests = 10_000;
const flood_connections = 8;  // one source address each
// High enough that thousands of authorizations are pending when the flood
// ends, low enough that every flooding address runs into the limit.
const connect_rate = 120;
const max_growth_mib = 20;
const abort_growth_mib = 256;  // the flood stops here: the old app grew by ~800 KiB a request

// A flood logs a line a request: only the last part of each program's output is kept.
const { check, make_workdir, start, run } = harness({ name, total_timeout_ms: 110_000, trim_output: true });

// ---------------------------------------------------------------------------
// Resident size
// ---------------------------------------------------------------------------

function rss_kib(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)[1]);
}

const mib = (kib) => (kib / 1024).toFixed(1);

// ---------------------------------------------------------------------------
// HTTP: one request a connection, as web-app serves them
// ---------------------------------------------------------------------------

// Resolves with { status, headers, body }; a network failure or a timeout rejects.
function send(url, { method = 'GET', headers = {}, body, from, ca } = {}) {
  const u = new URL(url);
  const module = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = module.request(u, { method, headers, agent: false, localAddress: from, ca }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.setTimeout(request_timeout_ms, () => req.destroy(new Error(`${method} ${u.pathname}: no answer in time`)));
    req.on('error', reject);
    if (body !== undefined) req.setHeader('Content-Type', 'application/x-www-form-urlencoded');
    req.end(body);
  });
}

// The cookie a response sets ("name=value"), if any.
function set_cookie(res) {
  const header = res.headers['set-cookie'];
  return header ? header[0].split(';')[0] : undefined;
}

// The CSRF token of a page's forms; empty when the page has none.
function csrf_of(html) {
  return /name="csrf" value="([0-9a-f]+)"/.exec(html)?.[1] ?? '';
}

// ---------------------------------------------------------------------------
// A user: a cookie jar on its own source address
// ---------------------------------------------------------------------------

class user {
  constructor(label, from, base, ca) {
    Object.assign(this, { label, from, base, ca, cookie: undefined, requests: 0, failed: [] });
  }

  async get(url, extra = {}) {
    const headers = this.cookie && url.startsWith(this.base) ? { Cookie: this.cookie } : {};
    const res = await send(url, { headers, from: url.startsWith(this.base) ? this.from : undefined, ca: this.ca, ...extra });
    this.cookie = set_cookie(res) ?? this.cookie;
    return res;
  }

  // Start page, Connect with the form's token, the fake server's auto-approving
  // /authorize, the callback, and the spaces.
  async login() {
    const start = await this.get(this.base + '/');
    const connect = await this.get(this.base + '/connect', { method: 'POST', body: `csrf=${csrf_of(start.body)}` });
    if (connect.status !== 303) throw new Error(`POST /connect answered ${connect.status}`);
    const authorize = await this.get(connect.headers.location);
    if (authorize.status !== 302) throw new Error(`/authorize answered ${authorize.status}`);
    const callback = await this.get(authorize.headers.location);
    if (callback.status !== 303) throw new Error(`the callback answered ${callback.status}`);
    await this.spaces();
  }

  async spaces() {
    const res = await this.get(this.base + '/');
    if (res.status !== 200 || !['Space 1', 'Space 2', 'Space 3'].every((s) => res.body.includes(`<li>${s}`)))
      throw new Error(`GET / answered ${res.status} without the spaces`);
  }

  // Runs `what`, counting it; a failure is recorded, not thrown.
  async attempt(what, action) {
    this.requests++;
    try {
      await action();
    } catch (e) {
      this.failed.push(`${what}: ${e.message}`);
    }
  }
}

// ---------------------------------------------------------------------------
// The flood
// ---------------------------------------------------------------------------

const evil = encodeURIComponent('<script>EVIL</script>');
const random_hex = (bytes) => randomBytes(bytes).toString('hex');

// The i-th anonymous request of one attacker, and the statuses it may get.
// `attacker` holds the attacker's own cookie and token, renewed now and then
// from the start page (those GETs are not counted).
function anonymous_request(i, base, attacker) {
  const cookie = attacker.cookie ? { Cookie: attacker.cookie } : {};
  const post = (headers, body) => ({ method: 'POST', url: base + '/connect', headers, body });
  const kinds = [
    () => ({ ...post(cookie, `csrf=${attacker.csrf}`), expect: [303, 429], valid_post: true }),
    () => ({ ...post(cookie, `csrf=${attacker.csrf}`), expect: [303, 429], valid_post: true }),
    () => ({ ...post(cookie, `csrf=${random_hex(32)}`), expect: [403, 429] }),
    () => ({ ...post({}, `csrf=${attacker.csrf}`), expect: [403, 429] }),
    () => ({ ...post(cookie, ''), expect: [403, 429] }),
    () => ({ method: 'GET', url: base + '/connect', headers: cookie, expect: [405] }),
    () => ({ method: 'GET', url: `${base}/callback?error=access_denied&error_description=${evil}`, headers: cookie,
             expect: [400] }),
    () => ({ method: 'GET', url: `${base}/callback?error=${evil}&error_description=${evil}&state=${random_hex(16)}`,
             headers: cookie, expect: [400] }),
    () => ({ method: 'GET', url: `${base}/callback?code=${evil}&state=${random_hex(16)}`, headers: cookie, expect: [400] }),
    () => ({ method: 'GET', url: `${base}/callback?error=server_error&error_description=${evil}`, headers: {},
             expect: [400] }),
  ];
  return kinds[i % kinds.length]();
}

async function renew(attacker, base, from) {
  const res = await send(base + '/', { headers: attacker.cookie ? { Cookie: attacker.cookie } : {}, from });
  attacker.cookie = set_cookie(res) ?? attacker.cookie;
  attacker.csrf = csrf_of(res.body);
}

// Sends `count` anonymous requests from `connections` source addresses at
// once; stops early when `stop()` says so. Returns what it saw.
async function flood(base, count, connections, first_address, stop) {
  const seen = { sent: 0, statuses: {}, unexpected: [], evil: 0, errors: [], retry_after: 0 };
  let next = 0;
  async function connection(c) {
    const from = `127.0.${first_address}.${c + 1}`;
    const attacker = {};
    let valid_posts = 0;
    while (next < count && !stop()) {
      const i = next++;
      if (valid_posts % 2 === 0) await renew(attacker, base, from);  // a new browser every two authorizations
      const r = anonymous_request(i, base, attacker);
      if (r.valid_post) valid_posts++;
      let res;
      try {
        res = await send(r.url, { method: r.method, headers: r.headers, body: r.body, from });
      } catch (e) {
        seen.errors.push(e.message);
        continue;
      }
      seen.sent++;
      seen.statuses[res.status] = (seen.statuses[res.status] ?? 0) + 1;
      if (!r.expect.includes(res.status)) seen.unexpected.push(`${r.method} ${r.url.slice(base.length, base.length + 60)}: ${res.status}`);
      if (res.body.includes('EVIL')) seen.evil++;
      if (res.status === 429 && Number(res.headers['retry-after']) > 0) seen.retry_after++;
    }
  }
  await Promise.all(Array.from({ length: connections }, (_, c) => connection(c)));
  return seen;
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

async function main() {
  const web_app = executable(option('--web-app', 'WEB_APP'), 'web-app');
  const fake_atlassian = executable(option('--fake-atlassian', 'FAKE_ATLASSIAN'), 'fake-atlassian');

  const workdir = make_workdir('web-app-load-');
  const client_id = 'web-app-load-client';
  const client_secret = random_hex(24);
  writeFileSync(join(workdir, 'secret'), client_secret + '\n', { mode: 0o600 });

  const app_port = await free_port();
  const base = `http://127.0.0.1:${app_port}`;
  const redirect_uri = `${base}/callback`;

  const fake = start('fake-atlassian', fake_atlassian, [
    '--port-file', join(workdir, 'fake.port'), '--ca-out', join(workdir, 'ca.pem'), '--auto-approve',
    '--redirect-uri', redirect_uri, '--client-id', client_id, '--client-secret', client_secret]);
  const fake_port = await wait_for(fake, 'port file', () => read_port(join(workdir, 'fake.port')));
  const fake_base = `https://127.0.0.1:${fake_port}`;
  const ca = readFileSync(join(workdir, 'ca.pem'));

  // Under AddressSanitizer freed memory sits in a quarantine (256 MiB by
  // default) and counts as resident: without it the bound holds there too.
  const asan_options = [process.env.ASAN_OPTIONS, 'quarantine_size_mb=0'].filter(Boolean).join(':');
  const app = start('web-app', web_app, [
    '--port', String(app_port), '--client-id', client_id, '--client-secret-file', join(workdir, 'secret'),
    '--redirect-uri', redirect_uri, '--authorize-url', `${fake_base}/authorize`,
    '--token-url', `${fake_base}/oauth/token`, '--api-url', fake_base, '--ca-file', join(workdir, 'ca.pem'),
    '--connect-rate', String(connect_rate)], { ...process.env, ASAN_OPTIONS: asan_options });
  await wait_for(app, '"listening on" line', () => app.output.join('').includes(`listening on ${base}`));

  // Warm-up: a user signs in, and a first small flood from other addresses
  // brings every code path and the allocator up to speed.
  const alice = new user('alice', '127.0.0.2', base, ca);
  await alice.attempt('sign-in before the flood', () => alice.login());
  const warm = await flood(base, 500, flood_connections, 2, () => false);
  check(warm.errors.length === 0, `the warm-up's 500 requests were all answered (errors: ${warm.errors.slice(0, 3)})`);
  const before = rss_kib(app.pid);

  // The flood, while alice keeps using the app and bob signs in.
  let peak = before;
  let flooding = true;
  let aborted = false;
  const monitor = setInterval(() => {
    peak = Math.max(peak, rss_kib(app.pid));
    if (peak - before > abort_growth_mib * 1024) aborted = true;
  }, 100);
  const bob = new user('bob', '127.0.0.3', base, ca);
  const users = (async () => {
    await new Promise((r) => setTimeout(r, 300));
    await bob.attempt('sign-in during the flood', () => bob.login());
    while (flooding) {
      await alice.attempt('GET / during the flood', () => alice.spaces());
      await bob.attempt('GET / during the flood', () => bob.spaces());
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const flood_started = Date.now();
  const seen = await flood(base, flood_requests, flood_connections, 1, () => aborted);
  const flood_seconds = (Date.now() - flood_started) / 1000;
  flooding = false;
  await users;
  clearInterval(monitor);
  const after = rss_kib(app.pid);
  peak = Math.max(peak, after);

  for (const u of [alice, bob]) await u.attempt('GET / after the flood', () => u.spaces());
  await alice.attempt('signing in again after the flood', () => alice.login());

  console.log(`${name}: ${seen.sent} anonymous requests in ${flood_seconds.toFixed(1)} s over ${flood_connections} ` +
              `connections, statuses ${JSON.stringify(seen.statuses)}; VmRSS ${mib(before)} MiB before, ` +
              `${mib(after)} MiB after, peak ${mib(peak)} MiB (+${mib(peak - before)} MiB)`);
  check(!aborted && seen.sent === flood_requests,
        `all ${flood_requests} anonymous requests were answered (${seen.sent}${aborted ? `; stopped at +${abort_growth_mib} MiB` : ''}` +
        `${seen.errors.length ? `; ${seen.errors.length} failed, e.g. ${seen.errors[0]}` : ''})`);
  check(peak - before <= max_growth_mib * 1024,
        `web-app's resident size grew by at most ${max_growth_mib} MiB (grew by ${mib(peak - before)} MiB)`);
  check(seen.unexpected.length === 0,
        `every anonymous request got the answer it should (${seen.unexpected.length} did not, e.g. ${seen.unexpected.slice(0, 3)})`);
  check(seen.evil === 0, `no answer shows the attacker's text (${seen.evil} did)`);
  check((seen.statuses[429] ?? 0) > 0 && seen.retry_after === seen.statuses[429],
        `the rate limit answered 429 with Retry-After (${seen.statuses[429] ?? 0} times)`);
  const user_requests = alice.requests + bob.requests;
  check(user_requests >= 6 && alice.failed.length + bob.failed.length === 0,
        `the users' ${user_requests} sign-ins and page views all succeeded ` +
        `(${[...alice.failed, ...bob.failed].slice(0, 3).join('; ') || 'no failures'})`);

  // Sanitizer builds check for leaks at exit.
  app.kill('SIGTERM');
  const { code, signal } = await app.exited;
  check(code === 0, `web-app exits 0 on SIGTERM (got ${code ?? signal})`);
  fake.kill('SIGTERM');
  await fake.exited;
}

await run(main);
