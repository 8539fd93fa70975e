//! The `redis` crate (async, tokio), unmodified, against moat — or against Redis
//! itself with `TARGET=direct bash tests/clients/run.sh`.
//!
//! Usage: `moat-client-scenarios HOST:PORT`
//!
//! Runs each step in order (handshake, pipeline, WATCH/EXEC, aborted WATCH,
//! BLPOP, pub/sub, SELECT, RESP3), prints one line per step and exits 1 on the
//! first failure, naming the step; with `KEEP_GOING=1` it runs the remaining
//! steps too, then exits 1. Every step is bounded by a timeout, so a hang fails.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Client, PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::{sleep, timeout};

const CLIENT: &str = "rust";
const PREFIX: &str = "clients:rust:";
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);

/// Where the scenario connects.
struct Target {
    addr: String,
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;
type Step = for<'a> fn(&'a Target) -> StepFuture<'a>;

impl Target {
    /// A client for db `db`, speaking RESP3 when `resp3`.
    fn client(&self, db: u32, resp3: bool) -> Result<Client> {
        let query = if resp3 { "?protocol=resp3" } else { "" };
        let url = format!("redis://{}/{db}{query}", self.addr);
        Client::open(url.as_str()).with_context(|| format!("Client::open({url})"))
    }

    fn config() -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
    }

    /// A new multiplexed connection (its own TCP connection) to db 0, RESP2.
    async fn connect(&self) -> Result<MultiplexedConnection> {
        self.connect_to(0, false).await
    }

    async fn connect_to(&self, db: u32, resp3: bool) -> Result<MultiplexedConnection> {
        let con = self
            .client(db, resp3)?
            .get_multiplexed_async_connection_with_config(&Self::config())
            .await
            .context("connect")?;
        Ok(con)
    }

    /// A RESP3 connection whose push messages arrive on the returned channel.
    async fn connect_resp3_push(
        &self,
    ) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>)> {
        let (tx, rx) = unbounded_channel();
        let con = self
            .client(0, true)?
            .get_multiplexed_async_connection_with_config(&Self::config().set_push_sender(tx))
            .await
            .context("connect (RESP3, push sender)")?;
        Ok((con, rx))
    }
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(actual: T, expected: T, what: &str) -> Result<()> {
    ensure!(
        actual == expected,
        "{what}: expected {expected:?}, got {actual:?}"
    );
    Ok(())
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn handshake(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        let mut con = t.connect().await?;
        // The crate has no client-name setting: CLIENT SETNAME is its way.
        let () = con.client_setname("moat-clients-rust").await?;
        let name: Option<String> = con.client_getname().await?;
        expect_eq(name.as_deref(), Some("moat-clients-rust"), "CLIENT GETNAME")?;
        let pong: String = redis::cmd("PING").query_async(&mut con).await?;
        expect_eq(pong.as_str(), "PONG", "PING")?;
        let echo: String = redis::cmd("ECHO")
            .arg("hello moat")
            .query_async(&mut con)
            .await?;
        expect_eq(echo.as_str(), "hello moat", "ECHO")
    })
}

fn pipeline(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        let mut con = t.connect().await?;
        let n = 25;
        let counter = format!("{PREFIX}pl:counter");
        let mut pipe = redis::pipe();
        pipe.del(&counter);
        let mut expected = vec![Value::Int(0)];
        for i in 0..n {
            pipe.set(format!("{PREFIX}pl:{i}"), format!("v{i}"))
                .incr(&counter, 1);
            expected.push(Value::Okay);
            expected.push(Value::Int(i + 1));
        }
        for i in 0..n {
            pipe.get(format!("{PREFIX}pl:{i}"));
            expected.push(bulk(&format!("v{i}")));
        }
        pipe.get(format!("{PREFIX}pl:missing"));
        expected.push(Value::Nil);
        ensure!(expected.len() >= 50, "pipeline too short");
        let results: Vec<Value> = pipe.query_async(&mut con).await?;
        expect_eq(results.len(), expected.len(), "pipeline reply count")?;
        for (i, (got, want)) in results.iter().zip(&expected).enumerate() {
            expect_eq(got, want, &format!("pipeline reply #{i}"))?;
        }
        println!(
            "[{CLIENT}]   pipeline of {} commands, replies in order",
            expected.len()
        );
        Ok(())
    })
}

fn watch_exec(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        // A connection of its own: WATCH state belongs to the connection.
        let mut con = t.connect().await?;
        let key = format!("{PREFIX}tx:ok");
        let () = con.set(&key, "10").await?;
        let () = redis::cmd("WATCH").arg(&key).query_async(&mut con).await?;
        let current: i64 = con.get(&key).await?;
        let results: Option<(Value, i64)> = redis::pipe()
            .atomic()
            .set(&key, current + 5)
            .incr(&key, 1)
            .query_async(&mut con)
            .await?;
        expect_eq(results, Some((Value::Okay, 16)), "EXEC results")?;
        let value: String = con.get(&key).await?;
        expect_eq(value.as_str(), "16", "value after EXEC")
    })
}

fn watch_abort(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        let mut con = t.connect().await?;
        let mut other = t.connect().await?;
        let key = format!("{PREFIX}tx:abort");
        let () = con.set(&key, "original").await?;
        let () = redis::cmd("WATCH").arg(&key).query_async(&mut con).await?;
        let seen: String = con.get(&key).await?;
        expect_eq(seen.as_str(), "original", "GET under WATCH")?;
        // Another connection changes the watched key between WATCH and EXEC.
        let () = other.set(&key, "changed-by-other").await?;
        let results: Option<(Value,)> = redis::pipe()
            .atomic()
            .set(&key, "from-transaction")
            .query_async(&mut con)
            .await?;
        ensure!(
            results.is_none(),
            "EXEC was not aborted: got {results:?}, expected a null reply"
        );
        let value: String = con.get(&key).await?;
        expect_eq(
            value.as_str(),
            "changed-by-other",
            "value after aborted EXEC",
        )
    })
}

fn blpop(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        let mut con = t.connect().await?;
        let mut pusher = t.connect().await?;
        let key = format!("{PREFIX}list");
        let _: i64 = con.del(&key).await?;
        let push_key = key.clone();
        let push = tokio::spawn(async move {
            sleep(Duration::from_millis(200)).await;
            pusher.lpush::<_, _, i64>(&push_key, "wake-up").await
        });
        let started = Instant::now();
        let got: Option<[String; 2]> = con.blpop(&key, 5.0).await?;
        let waited = started.elapsed();
        push.await.context("pusher task")??;
        expect_eq(got, Some([key.clone(), "wake-up".into()]), "BLPOP reply")?;
        ensure!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(4),
            "BLPOP returned after {waited:?}, expected ~200 ms"
        );
        println!("[{CLIENT}]   BLPOP woken after {} ms", waited.as_millis());
        Ok(())
    })
}

fn pubsub(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        let mut ps = t.client(0, false)?.get_async_pubsub().await?;
        let mut publisher = t.connect().await?;
        ps.psubscribe("news.*").await?;
        let channels = ["news.a", "news.b", "news.c"];
        for (i, ch) in channels.iter().enumerate() {
            let receivers: i64 = publisher.publish(*ch, format!("m{i}")).await?;
            expect_eq(receivers, 1, &format!("PUBLISH {ch} receivers"))?;
        }
        {
            let mut messages = ps.on_message();
            for (i, ch) in channels.iter().enumerate() {
                let msg = timeout(WAIT, messages.next())
                    .await
                    .with_context(|| format!("no pmessage #{i} within {WAIT:?}"))?
                    .context("pub/sub stream ended")?;
                let pattern: Option<String> = msg.get_pattern().ok();
                let got = (
                    pattern,
                    msg.get_channel_name().to_owned(),
                    msg.get_payload::<String>()?,
                );
                expect_eq(
                    got,
                    (Some("news.*".into()), (*ch).into(), format!("m{i}")),
                    &format!("pmessage #{i}"),
                )?;
            }
        }
        ps.punsubscribe("news.*").await?;

        ps.subscribe("plain").await?;
        let receivers: i64 = publisher.publish("plain", "hello").await?;
        expect_eq(receivers, 1, "PUBLISH plain receivers")?;
        {
            let msg = timeout(WAIT, ps.on_message().next())
                .await
                .context("no message within 5s")?
                .context("pub/sub stream ended")?;
            let got = (
                msg.get_channel_name().to_owned(),
                msg.get_payload::<String>()?,
            );
            expect_eq(got, ("plain".into(), "hello".into()), "message")?;
        }
        ps.unsubscribe("plain").await?;
        let receivers: i64 = publisher.publish("news.a", "nobody").await?;
        expect_eq(receivers, 0, "PUBLISH after unsubscribe receivers")
    })
}

fn select(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        let key = format!("{PREFIX}db");
        let mut db3 = t.connect_to(3, false).await?;
        let mut db0 = t.connect().await?;
        let _: i64 = db0.del(&key).await?;
        let () = db3.set(&key, "in-db-3").await?;
        let v: Option<String> = db3.get(&key).await?;
        expect_eq(v.as_deref(), Some("in-db-3"), "GET in db 3")?;
        let v: Option<String> = db0.get(&key).await?;
        expect_eq(v, None, "GET in db 0")?;
        let exists: bool = db0.exists(&key).await?;
        expect_eq(exists, false, "EXISTS in db 0")?;
        // An explicit SELECT moves that connection.
        let () = redis::cmd("SELECT").arg(3).query_async(&mut db0).await?;
        let v: Option<String> = db0.get(&key).await?;
        expect_eq(v.as_deref(), Some("in-db-3"), "GET after SELECT 3")?;
        let () = redis::cmd("SELECT").arg(0).query_async(&mut db0).await?;
        let v: Option<String> = db0.get(&key).await?;
        expect_eq(v, None, "GET after SELECT 0")?;
        let deleted: i64 = db3.del(&key).await?;
        expect_eq(deleted, 1, "DEL in db 3")
    })
}

/// The next push of `kind` (others, such as subscribe confirmations, are skipped).
async fn next_push(rx: &mut UnboundedReceiver<PushInfo>, kind: PushKind) -> Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let push = timeout(left, rx.recv())
            .await
            .with_context(|| format!("no {kind:?} push within {WAIT:?}"))?
            .context("push channel closed")?;
        if push.kind == kind {
            return Ok(push.data);
        }
        if push.kind == PushKind::Disconnection {
            bail!("connection closed while waiting for a {kind:?} push");
        }
    }
}

fn resp3(t: &Target) -> StepFuture<'_> {
    Box::pin(async move {
        let (mut con, mut pushes) = t.connect_resp3_push().await?;
        let () = con.client_setname("moat-clients-rust-resp3").await?;
        let name: Option<String> = con.client_getname().await?;
        expect_eq(
            name.as_deref(),
            Some("moat-clients-rust-resp3"),
            "CLIENT GETNAME",
        )?;
        let hello: Value = redis::cmd("HELLO").query_async(&mut con).await?;
        let Value::Map(fields) = &hello else {
            bail!("HELLO reply is not a RESP3 map: {hello:?}");
        };
        let proto = fields
            .iter()
            .find(|(k, _)| *k == bulk("proto") || *k == Value::SimpleString("proto".into()))
            .map(|(_, v)| v.clone());
        expect_eq(proto, Some(Value::Int(3)), "HELLO proto")?;

        let key = format!("{PREFIX}resp3:h");
        let _: i64 = con.del(&key).await?;
        let added: i64 = redis::cmd("HSET")
            .arg(&key)
            .arg(&["a", "1", "b", "2"])
            .query_async(&mut con)
            .await?;
        expect_eq(added, 2, "HSET")?;
        let raw: Value = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut con)
            .await?;
        let Value::Map(mut pairs) = raw else {
            bail!("HGETALL reply is not a RESP3 map: {raw:?}");
        };
        pairs.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        expect_eq(
            pairs,
            vec![(bulk("a"), bulk("1")), (bulk("b"), bulk("2"))],
            "HGETALL map",
        )?;
        let zkey = format!("{PREFIX}resp3:z");
        let _: i64 = con.zadd(&zkey, "m", 1.5).await?;
        let score: Value = redis::cmd("ZSCORE")
            .arg(&zkey)
            .arg("m")
            .query_async(&mut con)
            .await?;
        expect_eq(score, Value::Double(1.5), "ZSCORE (RESP3 double)")?;
        let skey = format!("{PREFIX}resp3:s");
        let () = con.set(&skey, "x").await?;
        let v: Option<String> = con.get(&skey).await?;
        expect_eq(v.as_deref(), Some("x"), "GET")?;
        let none: Value = redis::cmd("GET")
            .arg(format!("{PREFIX}resp3:none"))
            .query_async(&mut con)
            .await?;
        expect_eq(none, Value::Nil, "GET missing (RESP3 null)")?;

        // Pub/sub over RESP3: messages arrive as pushes on a connection that
        // keeps serving plain commands.
        let (mut sub, mut sub_pushes) = t.connect_resp3_push().await?;
        sub.subscribe("resp3.chan").await?;
        let receivers: i64 = con.publish("resp3.chan", "pushed").await?;
        expect_eq(receivers, 1, "PUBLISH receivers")?;
        let data = next_push(&mut sub_pushes, PushKind::Message).await?;
        expect_eq(
            data,
            vec![bulk("resp3.chan"), bulk("pushed")],
            "push message",
        )?;
        let v: Option<String> = sub.get(&skey).await?;
        expect_eq(
            v.as_deref(),
            Some("x"),
            "GET on a subscribed RESP3 connection",
        )?;
        let receivers: i64 = con.publish("resp3.chan", "again").await?;
        expect_eq(receivers, 1, "second PUBLISH receivers")?;
        let data = next_push(&mut sub_pushes, PushKind::Message).await?;
        expect_eq(
            data,
            vec![bulk("resp3.chan"), bulk("again")],
            "second push message",
        )?;
        sub.unsubscribe("resp3.chan").await?;
        let _: i64 = con.del(&[&key, &zkey, &skey]).await?;
        // No push reached the connection that never subscribed.
        if let Ok(push) = pushes.try_recv() {
            bail!("unexpected push on the unsubscribed connection: {push:?}");
        }
        Ok(())
    })
}

const STEPS: &[(&str, Step)] = &[
    ("handshake", handshake),
    ("pipeline", pipeline),
    ("watch-exec", watch_exec),
    ("watch-abort", watch_abort),
    ("blpop", blpop),
    ("pubsub", pubsub),
    ("select", select),
    ("resp3", resp3),
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), None) = (args.next(), args.next()) else {
        eprintln!("usage: moat-client-scenarios HOST:PORT");
        return ExitCode::from(2);
    };
    let keep_going = std::env::var("KEEP_GOING").is_ok_and(|v| v == "1");
    println!("[{CLIENT}] redis crate (tokio) against {addr}");
    let target = Target { addr };
    let mut failed = Vec::new();
    for (name, step) in STEPS {
        let started = Instant::now();
        let outcome = match timeout(STEP_TIMEOUT, step(&target)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow::anyhow!(
                "step did not finish within {STEP_TIMEOUT:?}"
            )),
        };
        match outcome {
            Ok(()) => println!(
                "[{CLIENT}] ok   {name} ({} ms)",
                started.elapsed().as_millis()
            ),
            Err(err) => {
                // The redis crate's errors repeat their text as their source: print each once.
                let mut chain: Vec<String> = err.chain().map(ToString::to_string).collect();
                chain.dedup();
                println!("[{CLIENT}] FAIL {name}: {}", chain.join(": "));
                if !keep_going {
                    return ExitCode::FAILURE;
                }
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        println!("[{CLIENT}] all {} steps passed", STEPS.len());
        ExitCode::SUCCESS
    } else {
        println!(
            "[{CLIENT}] {} of {} steps failed: {}",
            failed.len(),
            STEPS.len(),
            failed.join(" ")
        );
        ExitCode::FAILURE
    }
}
