//! The gate every new connection passes: a cap on connections opened per second (a token
//! bucket), a jittered exponential delay after a failed attempt (moat-resilience's
//! [`Backoff`]), and, while attempts are failing, one attempt at a time.
//!
//! The delay is reset only when a command succeeds ([`ConnectGate::command_succeeded`]),
//! never when a connection opens: a Redis at `maxclients` accepts the TCP connection, writes
//! `-ERR max number of clients reached` and closes it, so a client that resets on connect
//! never backs off from it at all (node-redis#959).
//!
//! Pure: time and randomness are passed in.

use std::time::{Duration, Instant};

use moat_resilience::Backoff;
use rand::Rng;

/// How often a caller looks again while another attempt is in flight.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(10);

/// What the gate says to a caller that wants a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateVerdict {
    /// Open it now; report the outcome with [`ConnectGate::finished`].
    Go,
    /// Not before this long.
    Wait(Duration),
}

/// Rate cap plus backoff over connection attempts.
#[derive(Debug, Clone)]
pub(crate) struct ConnectGate {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    backoff: Backoff,
    not_before: Option<Instant>,
    in_flight: u32,
    last_error: Option<String>,
}

impl ConnectGate {
    /// At most `per_sec` attempts a second (bursts up to `per_sec`), delays between
    /// `base` and `max` after failures.
    pub(crate) fn new(per_sec: u32, base: Duration, max: Duration, now: Instant) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            rate,
            tokens: rate,
            refilled: now,
            backoff: Backoff::new(base, max),
            not_before: None,
            in_flight: 0,
            last_error: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.refilled = now;
    }

    /// Whether an attempt may start now; [`GateVerdict::Go`] takes a token.
    pub(crate) fn try_start(&mut self, now: Instant) -> GateVerdict {
        if let Some(t) = self.not_before
            && now < t
        {
            return GateVerdict::Wait(t - now);
        }
        if self.backoff.attempts() > 0 && self.in_flight > 0 {
            return GateVerdict::Wait(IN_FLIGHT_POLL);
        }
        self.refill(now);
        if self.tokens < 1.0 {
            return GateVerdict::Wait(Duration::from_secs_f64((1.0 - self.tokens) / self.rate));
        }
        self.tokens -= 1.0;
        self.in_flight += 1;
        GateVerdict::Go
    }

    /// An attempt started with [`GateVerdict::Go`] ended; a failure pushes the next one back
    /// by a jittered, growing delay.
    pub(crate) fn finished(&mut self, now: Instant, error: Option<String>, rng: &mut impl Rng) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(e) = error {
            self.not_before = Some(now + self.backoff.next_delay(rng));
            self.last_error = Some(e);
        }
    }

    /// A command succeeded: Redis serves this client again, so the delay starts over.
    pub(crate) fn command_succeeded(&mut self) {
        if self.backoff.attempts() > 0 || self.not_before.is_some() {
            self.backoff.reset();
            self.not_before = None;
            self.last_error = None;
        }
    }

    /// Failed attempts since the last successful command.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.backoff.attempts()
    }

    /// Why the gate is holding attempts back, for error messages.
    pub(crate) fn reason(&self) -> String {
        self.last_error
            .clone()
            .unwrap_or_else(|| "connection opening capped per second".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn attempts_are_capped_per_second() {
        let t0 = Instant::now();
        let mut g = ConnectGate::new(5, Duration::from_millis(10), Duration::from_secs(1), t0);
        let mut rng = StdRng::seed_from_u64(3);
        let mut started = 0;
        // 10 s of callers asking every millisecond, every attempt succeeding.
        for i in 0..10_000 {
            if g.try_start(ms(t0, i)) == GateVerdict::Go {
                started += 1;
                g.finished(ms(t0, i), None, &mut rng);
            }
        }
        assert!((50..=55).contains(&started), "{started} attempts in 10 s");
    }

    #[test]
    fn a_connect_does_not_reset_the_backoff_only_a_command_does() {
        let t0 = Instant::now();
        let mut g = ConnectGate::new(1000, Duration::from_millis(100), Duration::from_secs(5), t0);
        let mut rng = StdRng::seed_from_u64(9);
        let mut now = t0;
        let mut attempts = 0;
        // A full Redis: every connect "succeeds" at TCP level and then fails its handshake.
        while now < ms(t0, 10_000) {
            match g.try_start(now) {
                GateVerdict::Go => {
                    attempts += 1;
                    g.finished(now, Some("max number of clients reached".into()), &mut rng);
                }
                GateVerdict::Wait(d) => now += d,
            }
        }
        // 100 ms doubling to 5 s, full jitter: a handful of attempts, not thousands.
        assert!(attempts < 40, "{attempts} attempts in 10 s");
        assert!(g.failures() >= 5);
        assert!(matches!(g.try_start(now), GateVerdict::Wait(_)) || g.failures() > 0);
        g.command_succeeded();
        assert_eq!(g.failures(), 0);
    }

    #[test]
    fn while_failing_only_one_attempt_is_in_flight() {
        let t0 = Instant::now();
        let mut g = ConnectGate::new(100, Duration::from_millis(1), Duration::from_millis(1), t0);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(g.try_start(t0), GateVerdict::Go);
        g.finished(t0, Some("refused".into()), &mut rng);
        let later = ms(t0, 10);
        assert_eq!(g.try_start(later), GateVerdict::Go);
        assert_eq!(g.try_start(later), GateVerdict::Wait(IN_FLIGHT_POLL));
        g.finished(later, None, &mut rng);
        g.command_succeeded();
        assert_eq!(g.try_start(later), GateVerdict::Go);
        assert_eq!(g.try_start(later), GateVerdict::Go, "healthy: in parallel");
    }
}
