//! Integration tests over the public API, in one binary (shared helpers in `support`).

mod parity;
mod support;
