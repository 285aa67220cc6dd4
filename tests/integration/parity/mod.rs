//! The native engine against fixtures produced by real DSPy 3.4.1
//! (`python/parity/generate_fixtures.py`).

mod format;
mod metrics;
mod parse;
mod signatures;
