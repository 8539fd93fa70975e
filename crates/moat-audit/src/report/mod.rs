//! The findings as a report: [`text`] for people (colour only on a terminal), [`json`] for
//! scripts, [`sarif`] (2.1.0) for CI code scanning. Each shows what was not checked too.

pub mod json;
pub mod sarif;
pub mod text;

use serde::Serialize;

use crate::facts::Facts;
use crate::rules::Evaluation;

/// One audit: what was seen and what it means.
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    /// The observations.
    pub facts: Facts,
    /// The checks' results.
    pub evaluation: Evaluation,
}

impl Audit {
    /// Evaluates `facts`.
    pub fn new(facts: Facts) -> Self {
        let evaluation = crate::rules::evaluate(&facts);
        Self { facts, evaluation }
    }

    /// The exit status by worst severity (see [`crate::Severity::exit_code`]).
    pub fn exit_code(&self) -> i32 {
        crate::Severity::exit_code(self.evaluation.worst())
    }
}
