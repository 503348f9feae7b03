// What the Node.js tests in tests/browser/ share: checks and the summary line,
// the exit code, the overall timeout, child processes and a work directory
// cleaned up on every way out (exit, SIGINT, SIGTERM), and helpers to find the
// programs, pick a port, start a program and wait for it. Node built-ins only.
//
//   const { check, start, make_workdir, run } = harness({ name, total_timeout_ms });
//   ...
//   await run(main);  // prints `<name>: PASSED ...` or `<name>: FAILED ...` last

import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// A failure after which the test cannot go on.
export class fatal extends Error {}

// ---------------------------------------------------------------------------
// Arguments, programs, ports
// ---------------------------------------------------------------------------

// The value after `flag` on the command line, else $env_name, else `fallback`.
export function option(flag, env_name, fallback) {
  const i = process.argv.indexOf(flag);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[env_name] || fallback;
}

// `path` if it is an executable file; `hint` (by default "build the <what>
// target") says how to get one, and is added to the second message only when given.
export function executable(path, what, hint) {
  if (!path) throw new fatal(`no path to ${what}: ${hint ?? `build the ${what} target`}`);
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new fatal(`${what} is not an executable file: ${path}${hint ? ` (${hint})` : ''}`);
  }
  return path;
}

export function free_port() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// Waits until `ready()` gives a value, failing early if the program exits.
export async function wait_for(child, what, ready, timeout_ms = 15_000) {
  const deadline = Date.now() + timeout_ms;
  while (Date.now() < deadline) {
    const value = ready();
    if (value) return value;
    if (child.exitCode !== null || child.signalCode !== null)
      throw new fatal(`${child.label} exited (${child.exitCode ?? child.signalCode}) before ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new fatal(`${child.label}: no ${what} within ${timeout_ms / 1000} s`);
}

export function read_port(file) {
  try {
    const port = Number(readFileSync(file, 'utf8').trim());
    return port > 0 ? port : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Checks and the way out
// ---------------------------------------------------------------------------

// Call once, first thing: starts the clock and the overall timeout.
//   name              the first word of the summary line
//   total_timeout_ms  the whole test fails after this long
//   summary           added to the PASSED line after "N checks in S s"
//   trim_output       keep only the last part of each program's output (a flood
//                     logs a line a request) and show its last 30 lines on failure
//   on_failure        awaited when the test throws, before the report (closing a browser)
export function harness({ name, total_timeout_ms, summary = '', trim_output = false, on_failure = async () => {} }) {
  const started = Date.now();
  let passed = 0;
  const failures = [];
  const children = [];
  let workdir;

  function check(condition, what) {
    if (condition) {
      passed++;
      console.log(`  ok   ${what}`);
    } else {
      failures.push(what);
      console.log(`  FAIL ${what}`);
    }
    return condition;
  }

  process.on('exit', () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (workdir) rmSync(workdir, { recursive: true, force: true });
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      console.log(`${name}: FAILED (interrupted by ${signal})`);
      process.exit(1);
    });
  }

  function finish(extra) {
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (extra) failures.push(extra);
    if (failures.length === 0) {
      console.log(`${name}: PASSED, ${passed} checks in ${seconds} s${summary}`);
      process.exit(0);
    }
    console.log(`${name}: FAILED, ${failures.length} of ${passed + failures.length} checks failed in ${seconds} s:`);
    for (const f of failures) console.log(`  - ${f}`);
    for (const child of children) {
      const output = child.output.join('').trimEnd();
      console.log(`--- ${trim_output ? 'last ' : ''}output of ${child.label} ---`);
      console.log(trim_output ? output.split('\n').slice(-30).join('\n') : output);
    }
    process.exit(1);
  }

  setTimeout(() => finish(`the whole test took longer than ${total_timeout_ms / 1000} s`), total_timeout_ms).unref();

  // A fresh directory under the temporary one, removed on the way out.
  function make_workdir(prefix) {
    workdir = mkdtempSync(join(tmpdir(), prefix));
    return workdir;
  }

  // Starts a program, keeping its output (`child.output`, a list of chunks) for
  // the failure report and the test's own checks; killed on the way out.
  function start(label, path, args, env = process.env) {
    const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    child.label = label;
    child.output = [];
    const keep = (d) => {
      child.output.push(d.toString());
      if (trim_output && child.output.length > 200) child.output.splice(0, 100);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    children.push(child);
    return child;
  }

  // Runs the test and reports: exits 0 only when every check passed.
  async function run(main) {
    try {
      await main();
      finish();
    } catch (e) {
      await on_failure();
      finish(e instanceof fatal ? e.message : `unexpected error: ${e.stack ?? e}`);
    }
  }

  return { check, finish, make_workdir, start, run };
}
