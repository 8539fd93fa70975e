//! Named phases the caller switches while a workload runs (baseline, attack, recovery...),
//! so every measurement is filed under the phase it was made in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::time::Instant;

/// Phase switches remembered for the report's spans; a caller switching more often than
/// this is not marking phases, and later switches only stop being listed.
const MAX_SWITCHES: usize = 10_000;

/// A shared handle to the current phase: cheap to clone, switched from anywhere
/// (`moat lab` marks baseline, attack and recovery on it while the workload runs).
#[derive(Debug, Clone)]
pub struct PhaseHandle {
    inner: Arc<State>,
}

#[derive(Debug)]
struct State {
    current: AtomicUsize,
    names: RwLock<Vec<String>>,
    switches: Mutex<Vec<(usize, Instant)>>,
}

impl PhaseHandle {
    /// A handle whose current phase is `first`.
    pub fn new(first: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(State {
                current: AtomicUsize::new(0),
                names: RwLock::new(vec![first.into()]),
                switches: Mutex::new(vec![(0, Instant::now())]),
            }),
        }
    }

    /// Makes `name` the current phase. Entering a phase seen before (by name) adds to its
    /// measurements.
    pub fn set(&self, name: &str) {
        let index = {
            let mut names = self
                .inner
                .names
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    names.push(name.to_owned());
                    names.len() - 1
                }
            }
        };
        self.inner.current.store(index, Ordering::Relaxed);
        let mut switches = self
            .inner
            .switches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if switches.len() < MAX_SWITCHES {
            switches.push((index, Instant::now()));
        }
    }

    /// The current phase's name.
    pub fn current_name(&self) -> String {
        self.name(self.current())
    }

    /// The current phase's index (into [`PhaseHandle::names`]).
    pub(crate) fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed)
    }

    /// The name of phase `index`.
    pub(crate) fn name(&self, index: usize) -> String {
        let names = self
            .inner
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        names.get(index).cloned().unwrap_or_default()
    }

    /// Every phase's name, in order of first use.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every switch so far: (phase index, when).
    pub(crate) fn switches(&self) -> Vec<(usize, Instant)> {
        self.inner
            .switches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Default for PhaseHandle {
    /// A single phase named `run`.
    fn default() -> Self {
        Self::new("run")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_by_name_reuses_indices() {
        let p = PhaseHandle::new("baseline");
        assert_eq!(p.current_name(), "baseline");
        p.set("attack");
        assert_eq!((p.current(), p.current_name().as_str()), (1, "attack"));
        p.set("baseline");
        assert_eq!(p.current(), 0);
        assert_eq!(p.names(), ["baseline", "attack"]);
        let order: Vec<usize> = p.switches().iter().map(|s| s.0).collect();
        assert_eq!(order, [0, 1, 0]);
    }
}
