#!/usr/bin/env node
// Node.js bench client (bench/run): axios over a keep-alive https.Agent.
//
//   node client.js load  --url URL --token TOKEN --ca CA_PEM_FILE --requests N --concurrency C
//   node client.js storm --grant GRANT_JSON_FILE --ca CA_PEM_FILE --requests R
//
// load:  N authenticated GETs, C workers sharing one axios instance whose agent
//        keeps up to C TLS connections alive (peer verified against CA_PEM_FILE).
// storm: the token handling of the common axios OAuth tutorial ("the seed
//        article's stack"), written plainly: tokens in module variables, a 401
//        triggers refreshAccessToken() and one retry. No single-flight, so R
//        concurrent requests that all meet the expired token refresh R times.
//
// Prints one JSON line on stdout; diagnostics on stderr. Exit 0 iff no request
// failed, 1 otherwise, 2 on bad arguments. Dependencies: scripts/install-node-deps.sh bench/clients/node axios.
'use strict';

const fs = require('node:fs');
const https = require('node:https');
const { parseArgs } = require('node:util');
const axios = require('axios');

function usage(message) {
  process.stderr.write(
    `client.js: ${message}\n` +
      'usage: node client.js load --url URL --token TOKEN --ca CA_PEM_FILE --requests N --concurrency C\n' +
      '       node client.js storm --grant GRANT_JSON_FILE --ca CA_PEM_FILE --requests R\n',
  );
  process.exit(2);
}

function positiveInt(name, text) {
  if (!/^[0-9]+$/.test(text ?? '') || Number(text) < 1) usage(`--${name} must be a positive integer`);
  return Number(text);
}

// parseArgs, with its errors (unknown option, missing value) as usage errors.
function options(argv, names) {
  try {
    const spec = Object.fromEntries(names.map((name) => [name, { type: 'string' }]));
    return parseArgs({ args: argv, options: spec }).values;
  } catch (err) {
    return usage(err.message);
  }
}

function readFileOrExit(name, path) {
  try {
    return fs.readFileSync(path, 'utf8');
  } catch (err) {
    return usage(`--${name}: ${err.message}`);
  }
}

// First few distinct errors, on stderr.
const seenErrors = new Set();
function reportError(text) {
  if (seenErrors.has(text) || seenErrors.size >= 5) return;
  seenErrors.add(text);
  process.stderr.write(`client.js: ${text}\n`);
}

function describe(err) {
  if (err.response) return `HTTP ${err.response.status} from ${err.config?.url}`;
  return `${err.code ?? 'error'}: ${err.message}`;
}

const msSince = (start) => Number(process.hrtime.bigint() - start) / 1e6;
const round3 = (x) => Math.round(x * 1000) / 1000;

// Nearest-rank percentile of an ascending list.
function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.max(1, Math.ceil((p / 100) * sorted.length)) - 1];
}

// ---------------------------------------------------------------- load mode

async function load(argv) {
  const values = options(argv, ['url', 'token', 'ca', 'requests', 'concurrency']);
  if (!values.url || !values.token || !values.ca) usage('load needs --url, --token and --ca');
  const requests = positiveInt('requests', values.requests);
  const concurrency = positiveInt('concurrency', values.concurrency);
  const ca = readFileOrExit('ca', values.ca);

  const api = axios.create({
    // Verification stays on (rejectUnauthorized defaults to true).
    httpsAgent: new https.Agent({ keepAlive: true, maxSockets: concurrency, ca }),
    proxy: false, // loopback server: ignore any *_proxy environment variables
    headers: { Authorization: `Bearer ${values.token}`, Accept: 'application/json' },
    responseType: 'text', // the whole body as a string, not JSON-parsed: its bytes are counted
    validateStatus: (status) => status === 200,
  });

  const latencies = [];
  let ok = 0;
  let failed = 0;
  let bodyBytes = 0;
  let next = 0;

  async function worker() {
    while (next < requests) {
      next++;
      const start = process.hrtime.bigint();
      try {
        const { data } = await api.get(values.url);
        latencies.push(msSince(start));
        if (typeof data === 'string' && data.length > 0) {
          ok++;
          bodyBytes += Buffer.byteLength(data);
        } else {
          failed++;
          reportError('empty body');
        }
      } catch (err) {
        latencies.push(msSince(start));
        failed++;
        reportError(describe(err));
      }
    }
  }

  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Math.min(concurrency, requests) }, worker));
  const seconds = msSince(start) / 1000;
  latencies.sort((a, b) => a - b);

  console.log(
    JSON.stringify({
      ok,
      failed,
      seconds: round3(seconds),
      p50_ms: round3(percentile(latencies, 50)),
      p99_ms: round3(percentile(latencies, 99)),
      body_bytes: bodyBytes,
    }),
  );
  return failed === 0 ? 0 : 1;
}

// --------------------------------------------------------------- storm mode
// The tutorial's code: module-level tokens, refresh on 401, retry once.

let grant; // token_url, api_url, client_id, client_secret
let accessToken;
let refreshToken;
let refreshes = 0;

async function refreshAccessToken(token) {
  refreshes++;
  const response = await axios.post(grant.token_url, {
    grant_type: 'refresh_token',
    client_id: grant.client_id,
    client_secret: grant.client_secret,
    refresh_token: token,
  });
  accessToken = response.data.access_token;
  refreshToken = response.data.refresh_token;
  return accessToken;
}

async function getPages() {
  try {
    return await axios.get(grant.api_url, { headers: { Authorization: `Bearer ${accessToken}` } });
  } catch (err) {
    if (err.response?.status !== 401) throw err;
    await refreshAccessToken(refreshToken);
    return axios.get(grant.api_url, { headers: { Authorization: `Bearer ${accessToken}` } });
  }
}

async function storm(argv) {
  const values = options(argv, ['grant', 'ca', 'requests']);
  if (!values.grant || !values.ca) usage('storm needs --grant and --ca');
  const requests = positiveInt('requests', values.requests);
  const ca = readFileOrExit('ca', values.ca);
  try {
    grant = JSON.parse(readFileOrExit('grant', values.grant));
  } catch (err) {
    usage(`--grant: ${err.message}`);
  }
  for (const key of ['token_url', 'api_url', 'client_id', 'client_secret', 'access_token', 'refresh_token']) {
    if (typeof grant[key] !== 'string') usage(`--grant: missing "${key}"`);
  }
  accessToken = grant.access_token; // expired: the server answers 401 to it
  refreshToken = grant.refresh_token;

  // The only departure from the tutorial: trust the bench CA (and no proxy).
  axios.defaults.httpsAgent = new https.Agent({ keepAlive: true, ca });
  axios.defaults.proxy = false;

  let ok = 0;
  let failed = 0;
  const start = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: requests }, async () => {
      try {
        const response = await getPages();
        if (response.status === 200 && response.data) ok++;
        else {
          failed++;
          reportError(`HTTP ${response.status} with an empty body`);
        }
      } catch (err) {
        failed++;
        reportError(describe(err));
      }
    }),
  );
  const seconds = msSince(start) / 1000;

  console.log(JSON.stringify({ ok, failed, seconds: round3(seconds), refreshes }));
  return failed === 0 ? 0 : 1;
}

// ---------------------------------------------------------------------- main

const modes = { load, storm };
const [mode, ...rest] = process.argv.slice(2);
if (!Object.hasOwn(modes, mode ?? '')) usage(`unknown mode ${JSON.stringify(mode ?? '')}`);
modes[mode](rest).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`client.js: ${err.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
