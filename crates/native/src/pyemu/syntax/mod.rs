//! Python's syntax, for the two places DSPy hands text to Python's parser.
//!
//! DSPy parses a string signature by wrapping its fields in
//! `def f(<fields>): pass` and calling `ast.parse`, and reads some LM output
//! with `ast.literal_eval`, which parses one expression. Both accept exactly
//! Python 3.11's grammar and fail with CPython's messages, so this module
//! follows CPython in three layers:
//!
//! - [`lexer`] — CPython's tokenizer, including where it reports its errors;
//! - [`ast`] — the expression tree `ast.parse` builds, and `ast.dump`;
//! - [`parser`] — the grammar for parameter lists and expressions, with
//!   CPython's syntax-error text.
//!
//! Only expressions and parameter lists are modelled; valid Python beyond
//! them is reported as unsupported (never as a syntax error), so callers can
//! hand such input to real Python.

pub(crate) mod ast;
mod lexer;
pub(crate) mod parser;
