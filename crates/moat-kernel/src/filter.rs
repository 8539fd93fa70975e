//! Attaches a [`crate::bpf`] program to listening sockets.
