//! Reading the signals of a [`crate::Sample`].
