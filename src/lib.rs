//! dspex
