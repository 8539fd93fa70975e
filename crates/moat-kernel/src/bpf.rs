//! A classic BPF program that drops packets from a list of networks (pure code).
