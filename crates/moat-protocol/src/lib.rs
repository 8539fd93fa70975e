//! RESP request parsing and reply framing for moat.
//!
//! Client input is untrusted, so [`RequestParser`] is hand-written: it
//! enforces [`Limits`] as soon as a header is seen (before buffering a body),
//! never recurses, and resumes partial requests without rescanning.
//! [`ReplyFramer`] finds reply boundaries iteratively so a hostile nesting
//! depth cannot overflow the stack. [`Value`] decodes replies for moat's own
//! control paths, and [`encode`] writes replies and commands.
#![forbid(unsafe_code)]

pub mod encode;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod line;
mod number;

pub use number::parse_i64;
pub mod reply;
pub mod request;
pub mod value;

pub use reply::{Frame, FrameError, FrameKind, ReplyFramer};
pub use request::{Limits, ParseError, Request, RequestParser};
pub use value::Value;
