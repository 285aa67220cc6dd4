//! Native `Predict` and `ChainOfThought`.

use dspex_core::{FieldRole, FieldSpec, FieldType, Result, Signature};

/// The signature `dspy.ChainOfThought` runs: `reasoning: str` prepended to the outputs.
pub fn chain_of_thought_signature(sig: &Signature) -> Result<Signature> {
    sig.prepend(FieldRole::Output, FieldSpec::new("reasoning", FieldType::Str))
}
