// node-redis (the `redis` package, v5), unmodified, against moat
// (or Redis itself with TARGET=direct).
//
// Usage: node node_redis.mjs HOST:PORT
import { createRequire } from 'node:module';
import { createClient, WatchError } from 'redis';
import { target, check, eq, sleep, Inbox, run } from './common.mjs';

const CLIENT = 'node-redis';
const PREFIX = 'clients:node-redis:';
const { host, port } = target();
const version = createRequire(import.meta.url)('redis/package.json').version;

const open = [];

/** A connected client; extra options are merged into createClient's. */
async function connect(options = {}) {
  const client = createClient({
    ...options,
    socket: { host, port, connectTimeout: 5000, reconnectStrategy: false, ...options.socket },
  });
  client.on('error', (err) => console.log(`[${CLIENT}]   client error event: ${err.message}`));
  open.push(client);
  await client.connect();
  return client;
}

/** Closes every client opened in a step, failed ones included. */
async function closeAll() {
  while (open.length) {
    const c = open.pop();
    if (c.isOpen) c.destroy();
  }
}

const step = (fn) => async () => {
  try {
    await fn();
  } finally {
    await closeAll();
  }
};

async function handshake() {
  const c = await connect({ name: 'moat-clients-node-redis' });
  eq(await c.ping(), 'PONG', 'PING');
  eq(await c.clientGetName(), 'moat-clients-node-redis', 'CLIENT GETNAME');
  eq(await c.echo('hello moat'), 'hello moat', 'ECHO');
}

async function pipeline() {
  const c = await connect();
  const n = 25;
  const p = c.multi();
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
  const results = await p.execAsPipeline();
  eq(results.length, expected.length, 'pipeline reply count');
  results.forEach((got, i) => eq(got, expected[i], `pipeline reply #${i}`));

  // Commands sent without awaiting each other are pipelined on the socket too.
  const auto = await Promise.all(Array.from({ length: 60 }, (_, i) => c.echo(`e${i}`)));
  auto.forEach((got, i) => eq(got, `e${i}`, `auto-pipelined ECHO #${i}`));
  console.log(`[${CLIENT}]   pipeline of ${expected.length} commands + 60 auto-pipelined, replies in order`);
}

async function watchExec() {
  const c = await connect();
  const key = `${PREFIX}tx:ok`;
  await c.set(key, '10');
  eq(await c.watch(key), 'OK', 'WATCH');
  const current = Number(await c.get(key));
  const results = await c.multi().set(key, String(current + 5)).incr(key).exec();
  eq(results, ['OK', 16], 'EXEC results');
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
  let aborted = false;
  try {
    await c.multi().set(key, 'from-transaction').exec();
  } catch (err) {
    if (!(err instanceof WatchError)) throw err;
    aborted = true;
  }
  check(aborted, 'EXEC was not aborted (no WatchError)');
  eq(await c.get(key), 'changed-by-other', 'value after aborted EXEC');
}

async function blpop() {
  const c = await connect();
  const pusher = await connect();
  const key = `${PREFIX}list`;
  await c.del(key);
  const push = sleep(200).then(() => pusher.lPush(key, 'wake-up'));
  const started = performance.now();
  const got = await c.blPop(key, 5);
  const waited = performance.now() - started;
  await push;
  eq(got, { key, element: 'wake-up' }, 'BLPOP reply');
  check(waited >= 100 && waited < 4000, `BLPOP returned after ${Math.round(waited)} ms, expected ~200 ms`);
  console.log(`[${CLIENT}]   BLPOP woken after ${Math.round(waited)} ms`);
}

async function pubsub() {
  const sub = await connect();
  const pub = await connect();
  const inbox = new Inbox();
  await sub.pSubscribe('news.*', (message, channel) => inbox.push(['pmessage', channel, message]));
  const channels = ['news.a', 'news.b', 'news.c'];
  for (const [i, ch] of channels.entries()) {
    eq(await pub.publish(ch, `m${i}`), 1, `PUBLISH ${ch} receivers`);
  }
  for (const [i, ch] of channels.entries()) {
    eq(await inbox.next(`pmessage #${i}`), ['pmessage', ch, `m${i}`], `pmessage #${i}`);
  }
  await sub.pUnsubscribe('news.*');

  await sub.subscribe('plain', (message, channel) => inbox.push(['message', channel, message]));
  eq(await pub.publish('plain', 'hello'), 1, 'PUBLISH plain receivers');
  eq(await inbox.next('message'), ['message', 'plain', 'hello'], 'message');
  await sub.unsubscribe('plain');
  check(!sub.isPubSubActive, 'client still in pub/sub mode after unsubscribing');
  // Out of pub/sub mode, the same connection serves plain commands again.
  // (node-redis 5 hands this first reply back as a Buffer, even against Redis itself.)
  eq(String(await sub.ping()), 'PONG', 'PING after pub/sub');
  eq(await pub.publish('news.a', 'nobody'), 0, 'PUBLISH after unsubscribe receivers');
}

async function select() {
  const key = `${PREFIX}db`;
  const db3 = await connect({ database: 3 });
  const db0 = await connect();
  await db0.del(key);
  eq(await db3.set(key, 'in-db-3'), 'OK', 'SET in db 3');
  eq(await db3.get(key), 'in-db-3', 'GET in db 3');
  eq(await db0.get(key), null, 'GET in db 0');
  eq(await db0.exists(key), 0, 'EXISTS in db 0');
  // An explicit SELECT moves that connection.
  await db0.select(3);
  eq(await db0.get(key), 'in-db-3', 'GET after SELECT 3');
  await db0.select(0);
  eq(await db0.get(key), null, 'GET after SELECT 0');
  eq(await db3.del(key), 1, 'DEL in db 3');
}

async function resp3() {
  const c = await connect({ RESP: 3, name: 'moat-clients-node-redis-resp3' });
  const hello = await c.hello();
  eq(hello.proto, 3, 'HELLO proto');
  eq(await c.clientGetName(), 'moat-clients-node-redis-resp3', 'CLIENT GETNAME');
  const key = `${PREFIX}resp3:h`;
  await c.del(key);
  eq(await c.hSet(key, { a: '1', b: '2' }), 2, 'HSET');
  eq(await c.hGetAll(key), { a: '1', b: '2' }, 'HGETALL');
  // Below the command's reply transform: a RESP3 map, not a flat RESP2 array.
  const raw = await c.sendCommand(['HGETALL', key]);
  check(raw !== null && typeof raw === 'object' && !Array.isArray(raw),
    `raw HGETALL is ${JSON.stringify(raw)}, expected a RESP3 map`);
  eq(await c.zAdd(`${PREFIX}resp3:z`, { score: 1.5, value: 'm' }), 1, 'ZADD');
  eq(await c.zScore(`${PREFIX}resp3:z`, 'm'), 1.5, 'ZSCORE (RESP3 double)');
  eq(await c.set(`${PREFIX}resp3:s`, 'x'), 'OK', 'SET');
  eq(await c.get(`${PREFIX}resp3:s`), 'x', 'GET');
  eq(await c.get(`${PREFIX}resp3:none`), null, 'GET missing (RESP3 null)');

  const sub = await connect({ RESP: 3 });
  const inbox = new Inbox();
  await sub.subscribe('resp3.chan', (message, channel) => inbox.push([channel, message]));
  eq(await c.publish('resp3.chan', 'pushed'), 1, 'PUBLISH receivers');
  eq(await inbox.next('push message'), ['resp3.chan', 'pushed'], 'push message');
  // With RESP3 a subscribed connection still serves plain commands.
  eq(await sub.get(`${PREFIX}resp3:s`), 'x', 'GET on a subscribed RESP3 connection');
  eq(await c.publish('resp3.chan', 'again'), 1, 'second PUBLISH receivers');
  eq(await inbox.next('second push message'), ['resp3.chan', 'again'], 'second push message');
  await sub.unsubscribe('resp3.chan');
  await c.del([key, `${PREFIX}resp3:z`, `${PREFIX}resp3:s`]);
}

await run(CLIENT, `node-redis ${version} against ${host}:${port}`, [
  ['handshake', step(handshake)],
  ['pipeline', step(pipeline)],
  ['watch-exec', step(watchExec)],
  ['watch-abort', step(watchAbort)],
  ['blpop', step(blpop)],
  ['pubsub', step(pubsub)],
  ['select', step(select)],
  ['resp3', step(resp3)],
]);
