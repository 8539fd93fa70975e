// ioredis (v5), unmodified, against moat (or Redis itself with TARGET=direct).
// ioredis speaks RESP2 only, so this scenario has no RESP3 step.
//
// Usage: node ioredis.mjs HOST:PORT
import { createRequire } from 'node:module';
import Redis from 'ioredis';
import { target, check, eq, sleep, Inbox, run } from './common.mjs';

const CLIENT = 'ioredis';
const PREFIX = 'clients:ioredis:';
const { host, port } = target();
const version = createRequire(import.meta.url)('ioredis/package.json').version;

const open = [];

/** A connected client (no reconnects, no offline queue); options merge into ioredis's. */
async function connect(options = {}) {
  const client = new Redis({
    host,
    port,
    lazyConnect: true,
    connectTimeout: 5000,
    commandTimeout: 10000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableOfflineQueue: false,
    ...options,
  });
  client.on('error', (err) => console.log(`[${CLIENT}]   client error event: ${err.message}`));
  open.push(client);
  await client.connect();
  return client;
}

/** Closes every client opened in a step, failed ones included. */
function closeAll() {
  while (open.length) open.pop().disconnect();
}

const step = (fn) => async () => {
  try {
    await fn();
  } finally {
    closeAll();
  }
};

async function handshake() {
  // connectionName makes ioredis send CLIENT SETNAME; its ready check sends INFO.
  const c = await connect({ connectionName: 'moat-clients-ioredis' });
  eq(c.status, 'ready', 'client status');
  eq(await c.ping(), 'PONG', 'PING');
  eq(await c.client('GETNAME'), 'moat-clients-ioredis', 'CLIENT GETNAME');
  eq(await c.echo('hello moat'), 'hello moat', 'ECHO');
}

async function pipeline() {
  const c = await connect();
  const n = 25;
  const p = c.pipeline();
  p.del(`${PREFIX}pl:counter`);
  const expected = [0];
  for (let i = 0; i < n; i++) {
    p.set(`${PREFIX}pl:${i}`, `v${i}`);
    p.incr(`${PREFIX}pl:counter`);
    expected.push('OK', i + 1);
  }
  for (let i = 0; i < n; i++) {
    p.get(`${PREFIX}pl:${i}`);
    expected.push(`v${i}`);
  }
  p.get(`${PREFIX}pl:missing`);
  expected.push(null);
  check(expected.length >= 50, 'pipeline too short');
  const results = await p.exec();
  eq(results.length, expected.length, 'pipeline reply count');
  results.forEach(([err, got], i) => {
    check(err === null, `pipeline reply #${i} is an error: ${err?.message}`);
    eq(got, expected[i], `pipeline reply #${i}`);
  });
  console.log(`[${CLIENT}]   pipeline of ${expected.length} commands, replies in order`);
}

async function watchExec() {
  const c = await connect();
  const key = `${PREFIX}tx:ok`;
  await c.set(key, '10');
  eq(await c.watch(key), 'OK', 'WATCH');
  const current = Number(await c.get(key));
  const results = await c.multi().set(key, String(current + 5)).incr(key).exec();
  eq(results, [[null, 'OK'], [null, 16]], 'EXEC results');
  eq(await c.get(key), '16', 'value after EXEC');
}

async function watchAbort() {
  const c = await connect();
  const other = await connect();
  const key = `${PREFIX}tx:abort`;
  await c.set(key, 'original');
  eq(await c.watch(key), 'OK', 'WATCH');
  eq(await c.get(key), 'original', 'GET under WATCH');
  // Another connection changes the watched key between WATCH and EXEC.
  await other.set(key, 'changed-by-other');
  const results = await c.multi().set(key, 'from-transaction').exec();
  eq(results, null, 'EXEC result of an aborted transaction');
  eq(await c.get(key), 'changed-by-other', 'value after aborted EXEC');
}

async function blpop() {
  const c = await connect();
  const pusher = await connect();
  const key = `${PREFIX}list`;
  await c.del(key);
  const push = sleep(200).then(() => pusher.lpush(key, 'wake-up'));
  const started = performance.now();
  const got = await c.blpop(key, 5);
  const waited = performance.now() - started;
  await push;
  eq(got, [key, 'wake-up'], 'BLPOP reply');
  check(waited >= 100 && waited < 4000, `BLPOP returned after ${Math.round(waited)} ms, expected ~200 ms`);
  console.log(`[${CLIENT}]   BLPOP woken after ${Math.round(waited)} ms`);
}

async function pubsub() {
  const sub = await connect();
  const pub = await connect();
  const inbox = new Inbox();
  sub.on('pmessage', (pattern, channel, message) => inbox.push(['pmessage', pattern, channel, message]));
  sub.on('message', (channel, message) => inbox.push(['message', channel, message]));
  eq(await sub.psubscribe('news.*'), 1, 'PSUBSCRIBE count');
  const channels = ['news.a', 'news.b', 'news.c'];
  for (const [i, ch] of channels.entries()) {
    eq(await pub.publish(ch, `m${i}`), 1, `PUBLISH ${ch} receivers`);
  }
  for (const [i, ch] of channels.entries()) {
    eq(await inbox.next(`pmessage #${i}`), ['pmessage', 'news.*', ch, `m${i}`], `pmessage #${i}`);
  }
  eq(await sub.punsubscribe('news.*'), 0, 'PUNSUBSCRIBE count');

  eq(await sub.subscribe('plain'), 1, 'SUBSCRIBE count');
  eq(await pub.publish('plain', 'hello'), 1, 'PUBLISH plain receivers');
  eq(await inbox.next('message'), ['message', 'plain', 'hello'], 'message');
  eq(await sub.unsubscribe('plain'), 0, 'UNSUBSCRIBE count');
  // Out of pub/sub mode, the same connection serves plain commands again.
  eq(await sub.ping(), 'PONG', 'PING after pub/sub');
  eq(await pub.publish('news.a', 'nobody'), 0, 'PUBLISH after unsubscribe receivers');
}

async function select() {
  const key = `${PREFIX}db`;
  const db3 = await connect({ db: 3 });
  const db0 = await connect();
  await db0.del(key);
  eq(await db3.set(key, 'in-db-3'), 'OK', 'SET in db 3');
  eq(await db3.get(key), 'in-db-3', 'GET in db 3');
  eq(await db0.get(key), null, 'GET in db 0');
  eq(await db0.exists(key), 0, 'EXISTS in db 0');
  // An explicit SELECT moves that connection.
  eq(await db0.select(3), 'OK', 'SELECT 3');
  eq(await db0.get(key), 'in-db-3', 'GET after SELECT 3');
  eq(await db0.select(0), 'OK', 'SELECT 0');
  eq(await db0.get(key), null, 'GET after SELECT 0');
  eq(await db3.del(key), 1, 'DEL in db 3');
}

await run(CLIENT, `ioredis ${version} against ${host}:${port} (RESP2 only: no RESP3 step)`, [
  ['handshake', step(handshake)],
  ['pipeline', step(pipeline)],
  ['watch-exec', step(watchExec)],
  ['watch-abort', step(watchAbort)],
  ['blpop', step(blpop)],
  ['pubsub', step(pubsub)],
  ['select', step(select)],
]);
