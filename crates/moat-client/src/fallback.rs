//! Graceful degradation: a bounded local cache of last-known values with a TTL, and the
//! [`Served`] answer of [`crate::Client::get_or_fallback`], which says where a value came
//! from so the application can show "data may be out of date" instead of an error page.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::CacheConfig;

/// Where a value served by [`crate::Client::get_or_fallback`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Redis answered.
    Redis,
    /// Redis was unavailable; this is the last value Redis gave, `age` old.
    Stale {
        /// Time since Redis gave it.
        age: Duration,
    },
    /// Redis was unavailable and nothing was cached: the caller's fallback.
    Fallback,
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Served<T> {
    /// The value.
    pub value: T,
    /// Its source.
    pub source: Source,
}

impl<T> Served<T> {
    /// Whether the value did not come from Redis just now.
    pub fn is_degraded(&self) -> bool {
        self.source != Source::Redis
    }
}

#[derive(Debug)]
struct Entry {
    value: redis::Value,
    stored: Instant,
    seq: u64,
}

/// Last-known values, at most `max_entries`, the oldest write evicted first; entries
/// older than `ttl` are never served.
#[derive(Debug)]
pub(crate) struct StaleCache {
    cfg: CacheConfig,
    entries: HashMap<String, Entry>,
    /// Write order, for eviction; entries rewritten since leave stale marks here, which
    /// [`StaleCache::compact`] drops.
    order: VecDeque<(String, u64)>,
    seq: u64,
}

impl StaleCache {
    pub(crate) fn new(cfg: CacheConfig) -> Self {
        Self {
            cfg,
            entries: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    /// Remembers what Redis answered for `key`.
    pub(crate) fn put(&mut self, key: &str, value: redis::Value, now: Instant) {
        self.seq += 1;
        let seq = self.seq;
        self.entries.insert(
            key.to_owned(),
            Entry {
                value,
                stored: now,
                seq,
            },
        );
        self.order.push_back((key.to_owned(), seq));
        while self.entries.len() > self.cfg.max_entries {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&k).is_some_and(|e| e.seq == s) {
                self.entries.remove(&k);
            }
        }
        if self.order.len() > 2 * self.cfg.max_entries + 16 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let entries = &self.entries;
        self.order
            .retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
    }

    /// The last value for `key` and its age, if it is younger than the TTL.
    pub(crate) fn get(&mut self, key: &str, now: Instant) -> Option<(redis::Value, Duration)> {
        let e = self.entries.get(key)?;
        let age = now.saturating_duration_since(e.stored);
        if age >= self.cfg.ttl {
            self.entries.remove(key);
            return None;
        }
        Some((e.value.clone(), age))
    }

    /// Keys held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_entries: usize) -> StaleCache {
        StaleCache::new(CacheConfig {
            max_entries,
            ttl: Duration::from_secs(60),
        })
    }

    fn v(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn values_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = cache(10);
        c.put("k", v("1"), t0);
        let (got, age) = c
            .get("k", t0 + Duration::from_secs(59))
            .expect("fresh enough");
        assert_eq!((got, age), (v("1"), Duration::from_secs(59)));
        assert!(c.get("k", t0 + Duration::from_secs(60)).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn the_oldest_write_is_evicted_and_rewrites_keep_it_bounded() {
        let t0 = Instant::now();
        let mut c = cache(3);
        for k in ["a", "b", "c"] {
            c.put(k, v(k), t0);
        }
        c.put("a", v("a2"), t0); // "a" is now the newest
        c.put("d", v("d"), t0);
        assert!(c.get("b", t0).is_none(), "b was the oldest write");
        assert!(c.get("a", t0).is_some());
        for i in 0..1000 {
            c.put("hot", v(&i.to_string()), t0);
        }
        assert!(c.len() <= 3);
        assert!(c.order.len() <= 2 * 3 + 16);
    }
}
