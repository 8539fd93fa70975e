// Step runner and checks shared by the Node.js scenarios (node_redis.mjs, ioredis.mjs).

/** Parses the HOST:PORT argument. */
export function target() {
  const arg = process.argv[2];
  const m = /^(.+):(\d+)$/.exec(arg ?? '');
  if (!m) {
    console.error(`usage: node ${process.argv[1]} HOST:PORT`);
    process.exit(2);
  }
  return { host: m[1], port: Number(m[2]) };
}

export class CheckError extends Error {}

export function check(cond, message) {
  if (!cond) throw new CheckError(message);
}

export function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new CheckError(`${what}: expected ${e}, got ${a}`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rejects after `ms` unless `promise` settles first. */
export function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A queue of received pub/sub messages with a bounded wait for the next one. */
export class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }
  next(what, ms = 5000) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return within(ms, new Promise((resolve) => this.waiters.push(resolve)), what);
  }
}

/**
 * Runs the steps in order, one line each. Exits 1 on the first failure (with
 * KEEP_GOING=1: after running every step). Each step gets STEP_TIMEOUT_MS.
 */
export async function run(client, banner, steps) {
  const STEP_TIMEOUT_MS = 20000;
  const keepGoing = process.env.KEEP_GOING === '1';
  console.log(`[${client}] ${banner}`);
  const failed = [];
  for (const [name, fn] of steps) {
    const started = performance.now();
    try {
      await within(STEP_TIMEOUT_MS, fn(), `step ${name}`);
    } catch (err) {
      const msg = `${err?.constructor?.name ?? 'Error'}: ${err?.message ?? err}`;
      if (!(err instanceof CheckError) && err?.stack) {
        console.log(err.stack.split('\n').slice(0, 4).join('\n'));
      }
      console.log(`[${client}] FAIL ${name}: ${msg}`);
      if (!keepGoing) process.exit(1);
      failed.push(name);
      continue;
    }
    console.log(`[${client}] ok   ${name} (${Math.round(performance.now() - started)} ms)`);
  }
  if (failed.length) {
    console.log(`[${client}] ${failed.length} of ${steps.length} steps failed: ${failed.join(' ')}`);
    process.exit(1);
  }
  console.log(`[${client}] all ${steps.length} steps passed`);
  // Lingering sockets of a failed disconnect must not keep the process alive.
  process.exit(0);
}
