//! The webhook sink: every alert event (raised and resolved) POSTed as JSON to each
//! configured receiver.
//!
//! The poll loop must never wait on a receiver, and a receiver that never answers must not
//! grow memory: [`Webhook::send`] only renders the body and pushes it onto a bounded queue
//! (one per receiver; when full the oldest event is dropped and counted), and one thread per
//! receiver delivers from it with a per-request timeout. Connection errors, timeouts, 5xx and
//! 429 are retried under exponential backoff (backon's sequence, capped in delay and in
//! attempts) with full jitter; any other status (or a failure that would recur, like a bad
//! certificate) is a refusal, logged once and not retried; an event older than `max_age` is
//! given up. [`Webhook::shutdown`] flushes for a
//! bounded grace and reports what was lost.
//!
//! The retry decisions ([`classify`], [`retry_delay`]) are pure functions of their inputs
//! and the time, tested under a fake clock.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;

use crate::detect::Event;

/// Why a webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not an `http://` or `https://` URL with a host.
    #[error("webhook URL must be http:// or https:// with a host: {0}")]
    Url(String),
    /// The delivery thread could not be started.
    #[error("cannot start the webhook thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// How the webhook queues, retries and gives up.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Events waiting per receiver at most; past it the oldest is dropped.
    pub queue_cap: usize,
    /// Longest wait for one request (connect, send, answer).
    pub timeout: Duration,
    /// Attempts per event at most, the first included.
    pub max_attempts: usize,
    /// An event older than this (since it was queued) is given up: a stale alert is noise.
    pub max_age: Duration,
    /// First retry delay before jitter.
    pub backoff_min: Duration,
    /// Longest retry delay before jitter.
    pub backoff_max: Duration,
}

impl Default for WebhookConfig {
    /// 256 events, 5 s per request, 6 attempts, 10 minutes, backoff 0.5 s doubling to 30 s.
    fn default() -> Self {
        Self {
            queue_cap: 256,
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            max_age: Duration::from_secs(600),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Delivery counters, summed over receivers (for the exporter and the exit summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    /// Events a receiver accepted (2xx).
    pub sent: u64,
    /// Retries made (attempts after the first).
    pub retried: u64,
    /// Events never attempted: dropped from a full queue, or still queued at shutdown.
    pub dropped: u64,
    /// Events given up: refused (4xx other than 429), out of attempts, too old, or cut off
    /// by the shutdown deadline in flight.
    pub failed: u64,
    /// Events waiting now.
    pub queued: u64,
}

impl WebhookStats {
    fn add(&mut self, o: &Self) {
        self.sent += o.sent;
        self.retried += o.retried;
        self.dropped += o.dropped;
        self.failed += o.failed;
        self.queued += o.queued;
    }
}

/// What [`Webhook::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Counters at the end.
    pub stats: WebhookStats,
    /// Events that never reached a receiver because the grace ran out (queued or in flight).
    pub lost: u64,
}

/// What one delivery attempt's outcome calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver took it.
    Delivered,
    /// A passing failure (connection, timeout, 5xx, 429): try again later.
    Retry(String),
    /// The receiver refused it (other statuses), or the request cannot work (a bad
    /// certificate): retrying would not help.
    Refused(String),
}

/// Why an attempt got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Whether another attempt may succeed (connection refused or reset, timeout, DNS), as
    /// opposed to a setup that will fail every time (a bad certificate, a malformed URL).
    pub transient: bool,
    /// What happened, for the log line.
    pub reason: String,
}

/// Judges one attempt: `Ok(status)` when the receiver answered, `Err` when the request
/// failed before an answer.
pub fn classify(result: Result<u16, Failure>) -> Verdict {
    match result {
        Ok(s) if (200..300).contains(&s) => Verdict::Delivered,
        Ok(s) if s == 429 || s == 408 || (500..600).contains(&s) => {
            Verdict::Retry(format!("HTTP {s}"))
        }
        Ok(s) => Verdict::Refused(format!("HTTP {s}")),
        Err(f) if f.transient => Verdict::Retry(f.reason),
        Err(f) => Verdict::Refused(f.reason),
    }
}

/// The wait before the next attempt, or `None` to give up: `backoff` is the next capped
/// exponential delay (`None` once the attempts are spent), `jitter` a uniform draw in
/// `[0, 1)` (full jitter: the wait is `jitter × backoff`). Gives up when the event would be
/// older than `max_age` at the next attempt.
pub fn retry_delay(
    queued_at: Instant,
    now: Instant,
    backoff: Option<Duration>,
    jitter: f64,
    max_age: Duration,
) -> Option<Duration> {
    let delay = backoff?.mul_f64(jitter.clamp(0.0, 1.0));
    let age = now.saturating_duration_since(queued_at) + delay;
    (age <= max_age).then_some(delay)
}

/// The JSON body POSTed for `event`: the JSON line's fields plus the watched Redis (its
/// URL, credentials already redacted by the caller) and this host's name.
pub fn body(event: &Event, unix_time: f64, redis: &str, host: &str) -> serde_json::Value {
    let mut value = super::event_json(event, unix_time);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("redis".into(), redis.into());
        obj.insert("host".into(), host.into());
    }
    value
}

/// The URL without its path, query or credentials, for log lines (webhook URLs often carry
/// a secret token in the path).
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}/…")
}

/// Checks that `url` is `http://` or `https://` with a host.
fn check_url(url: &str) -> Result<(), WebhookError> {
    let bad = || WebhookError::Url(redact_url(url));
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if scheme_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// An event waiting for delivery.
#[derive(Debug)]
struct Pending {
    body: String,
    queued_at: Instant,
}

/// One receiver's queue and counters, shared by the poll loop and its delivery thread.
#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Pending>,
    stats: WebhookStats,
    /// Set by shutdown: deliver what is queued until then, then stop.
    deadline: Option<Instant>,
    /// An event is being delivered (so a thread left behind at shutdown loses one more).
    in_flight: bool,
    /// Events whose delivery the shutdown deadline cut off.
    cut_off: u64,
    done: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a thread panicked mid-update of plain counters.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One receiver: its URL, queue and thread.
struct Receiver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Delivers alert events to HTTP receivers without ever blocking the caller.
pub struct Webhook {
    receivers: Vec<Receiver>,
    cap: usize,
    redis: String,
    host: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("receivers", &self.receivers.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Webhook {
    /// Starts one delivery thread per URL. `redis` (credentials already redacted) and
    /// `host` go into every body.
    pub fn start(
        urls: &[String],
        config: WebhookConfig,
        redis: String,
        host: String,
    ) -> Result<Self, WebhookError> {
        for url in urls {
            check_url(url)?;
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let mut receivers = Vec::with_capacity(urls.len());
        for url in urls {
            let shared = Arc::new(Shared::default());
            let worker = Worker {
                url: url.clone(),
                agent: agent.clone(),
                config: config.clone(),
                shared: Arc::clone(&shared),
            };
            let thread = std::thread::Builder::new()
                .name("moat-watch-webhook".into())
                .spawn(move || worker.run())?;
            receivers.push(Receiver {
                shared,
                thread: Some(thread),
            });
        }
        Ok(Self {
            receivers,
            cap: config.queue_cap.max(1),
            redis,
            host,
        })
    }

    /// Queues `event` for every receiver; never blocks on the network. When a queue is
    /// full its oldest event is dropped (and counted): the newest alerts matter most.
    pub fn send(&self, event: &Event) {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let body = body(event, unix, &self.redis, &self.host).to_string();
        let now = Instant::now();
        for r in &self.receivers {
            let mut state = r.shared.lock();
            if state.deadline.is_some() {
                state.stats.dropped += 1;
                continue;
            }
            while state.queue.len() >= self.cap {
                state.queue.pop_front();
                state.stats.dropped += 1;
            }
            state.queue.push_back(Pending {
                body: body.clone(),
                queued_at: now,
            });
            state.stats.queued = state.queue.len() as u64;
            drop(state);
            r.shared.wake.notify_all();
        }
    }

    /// Counters summed over receivers.
    pub fn stats(&self) -> WebhookStats {
        let mut total = WebhookStats::default();
        for r in &self.receivers {
            total.add(&r.shared.lock().stats);
        }
        total
    }

    /// Flushes queued events for at most `grace`, then stops the threads. Each request in
    /// flight is cut to the time left, so this returns shortly after `grace` even when a
    /// receiver never answers; what was not delivered by then is counted as lost.
    pub fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        let deadline = Instant::now() + grace;
        for r in &self.receivers {
            r.shared.lock().deadline = Some(deadline);
            r.shared.wake.notify_all();
        }
        // A request's own timeout is capped at the deadline; allow a little past it for
        // the thread to notice, then leave a stuck one behind (it owns nothing shared but
        // its counters).
        let give_up = deadline + Duration::from_secs(1);
        let mut lost = 0;
        for r in &mut self.receivers {
            let mut state = r.shared.lock();
            while !state.done {
                let now = Instant::now();
                if now >= give_up {
                    break;
                }
                state = r
                    .shared
                    .wake
                    .wait_timeout(state, give_up - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let done = state.done;
            // Whatever is still queued was never attempted.
            let left = state.queue.len() as u64;
            state.queue.clear();
            state.stats.dropped += left;
            state.stats.queued = 0;
            lost += left + state.cut_off;
            if !done && state.in_flight {
                // The thread is left behind with its event: count it now.
                state.stats.failed += 1;
                lost += 1;
            }
            drop(state);
            if done && let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
        ShutdownReport {
            stats: self.stats(),
            lost,
        }
    }
}

/// A receiver's delivery thread.
struct Worker {
    url: String,
    agent: ureq::Agent,
    config: WebhookConfig,
    shared: Arc<Shared>,
}

/// How a delivery ended.
enum Outcome {
    Sent,
    Failed,
    /// The shutdown deadline passed.
    CutOff,
}

impl Worker {
    fn run(self) {
        loop {
            let pending = {
                let mut state = self.shared.lock();
                loop {
                    if state.deadline.is_some_and(|d| Instant::now() >= d) {
                        break None;
                    }
                    if let Some(p) = state.queue.pop_front() {
                        state.stats.queued = state.queue.len() as u64;
                        state.in_flight = true;
                        break Some(p);
                    }
                    if state.deadline.is_some() {
                        break None;
                    }
                    state = self
                        .shared
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let Some(pending) = pending else { break };
            let outcome = self.deliver(&pending);
            let mut state = self.shared.lock();
            state.in_flight = false;
            match outcome {
                Outcome::Sent => state.stats.sent += 1,
                Outcome::Failed => state.stats.failed += 1,
                Outcome::CutOff => {
                    state.stats.failed += 1;
                    state.cut_off += 1;
                    break;
                }
            }
        }
        self.shared.lock().done = true;
        self.shared.wake.notify_all();
    }

    /// Attempts one event until it is delivered, refused, out of attempts or too old.
    fn deliver(&self, p: &Pending) -> Outcome {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.backoff_min)
            .with_max_delay(self.config.backoff_max)
            .with_factor(2.0)
            .with_max_times(self.config.max_attempts.saturating_sub(1))
            .build();
        let mut attempts = 0u32;
        loop {
            let now = Instant::now();
            if now.saturating_duration_since(p.queued_at) > self.config.max_age {
                self.log(&format!(
                    "gave up an event queued {}s ago (older than max age)",
                    now.saturating_duration_since(p.queued_at).as_secs()
                ));
                return Outcome::Failed;
            }
            let deadline = self.shared.lock().deadline;
            let timeout = match deadline {
                Some(d) if now >= d => return Outcome::CutOff,
                Some(d) => self.config.timeout.min(d - now),
                None => self.config.timeout,
            };
            attempts += 1;
            let reason = match classify(self.post(&p.body, timeout)) {
                Verdict::Delivered => return Outcome::Sent,
                Verdict::Refused(why) => {
                    self.log(&format!(
                        "an event was refused ({why}); not retried: check the URL, its \
                         certificate and what the receiver expects"
                    ));
                    return Outcome::Failed;
                }
                Verdict::Retry(why) => why,
            };
            let now = Instant::now();
            let Some(delay) = retry_delay(
                p.queued_at,
                now,
                backoff.next(),
                rand::random::<f64>(),
                self.config.max_age,
            ) else {
                self.log(&format!(
                    "gave up an event after {attempts} attempt(s): {reason}"
                ));
                return Outcome::Failed;
            };
            self.shared.lock().stats.retried += 1;
            if !self.sleep(delay) {
                return Outcome::CutOff;
            }
        }
    }

    /// One POST; the status, or why there was none.
    fn post(&self, body: &str, timeout: Duration) -> Result<u16, Failure> {
        self.agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("content-type", "application/json")
            .send(body)
            .map(|r| r.status().as_u16())
            .map_err(|e| Failure {
                transient: match &e {
                    // TLS failures (a bad certificate, TLS spoken to plain HTTP) come up as
                    // invalid data: they would fail the same way every time.
                    ureq::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
                    ureq::Error::Timeout(_)
                    | ureq::Error::HostNotFound
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Protocol(_) => true,
                    _ => false,
                },
                reason: e.to_string(),
            })
    }

    /// Waits `delay`, or less when shutdown's deadline comes first (then `false`).
    fn sleep(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let mut state = self.shared.lock();
        loop {
            let now = Instant::now();
            let end = state.deadline.map_or(until, |d| d.min(until));
            if now >= end {
                return now >= until;
            }
            state = self
                .shared
                .wake
                .wait_timeout(state, end - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn log(&self, what: &str) {
        eprintln!("moat watch: webhook {}: {what}", redact_url(&self.url));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{AlertId, Severity};

    #[test]
    fn classifies_statuses_and_errors() {
        assert_eq!(classify(Ok(200)), Verdict::Delivered);
        assert_eq!(classify(Ok(204)), Verdict::Delivered);
        assert!(matches!(classify(Ok(500)), Verdict::Retry(_)));
        assert!(matches!(classify(Ok(503)), Verdict::Retry(_)));
        assert!(matches!(classify(Ok(429)), Verdict::Retry(_)));
        assert!(matches!(classify(Ok(400)), Verdict::Refused(_)));
        assert!(matches!(classify(Ok(404)), Verdict::Refused(_)));
        assert!(matches!(classify(Ok(301)), Verdict::Refused(_)));
        let failure = |transient| Failure {
            transient,
            reason: "x".into(),
        };
        assert!(matches!(classify(Err(failure(true))), Verdict::Retry(_)));
        assert!(matches!(classify(Err(failure(false))), Verdict::Refused(_)));
    }

    #[test]
    fn retry_delay_is_full_jitter_capped_by_attempts_and_age() {
        let t0 = Instant::now();
        let age = Duration::from_secs(60);
        let b = Some(Duration::from_secs(8));
        assert_eq!(retry_delay(t0, t0, b, 0.0, age), Some(Duration::ZERO));
        assert_eq!(
            retry_delay(t0, t0, b, 0.5, age),
            Some(Duration::from_secs(4))
        );
        // Out of attempts.
        assert_eq!(retry_delay(t0, t0, None, 0.5, age), None);
        // The next attempt would come after the event's max age.
        let later = t0 + Duration::from_secs(57);
        assert_eq!(retry_delay(t0, later, b, 0.5, age), None);
        assert_eq!(
            retry_delay(t0, later, b, 0.25, age),
            Some(Duration::from_secs(2))
        );
        // A bad draw cannot stretch the wait past the backoff.
        assert_eq!(retry_delay(t0, t0, b, 7.0, age), b);
    }

    #[test]
    fn backon_sequence_doubles_to_its_cap_and_stops() {
        let delays: Vec<_> = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(2))
            .with_factor(2.0)
            .with_max_times(4)
            .build()
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 2000].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn body_is_the_json_line_plus_redis_and_host() {
        let e = Event::Raised {
            id: AlertId::RejectedConnections,
            severity: Severity::Critical,
            summary: "s".into(),
            value: 3.0,
            threshold: 0.0,
        };
        let v = body(&e, 12.5, "redis://***@h:1", "box");
        assert_eq!(v["event"], "raised");
        assert_eq!(v["id"], "rejected_connections");
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["unix_time"], 12.5);
        assert_eq!(v["redis"], "redis://***@h:1");
        assert_eq!(v["host"], "box");
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_url("https://hooks.example/T0/B0/secret").is_ok());
        for bad in ["ftp://x/y", "127.0.0.1:9", "http://", "nonsense"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let err = check_url("ftp://u:pw@hooks.example/secret-token").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
        assert_eq!(
            redact_url("https://u:p@hooks.example/T0/secret?x=1"),
            "https://hooks.example/…"
        );
    }
}
