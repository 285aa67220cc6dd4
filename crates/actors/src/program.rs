//! Programs ready to run.
//!
//! A [`Program`] wraps a [`ProgramSpec`] with what every request would
//! otherwise recompute: the native form (or why there is none), the JSON
//! sent to Python workers, and the canonical text of the spec that cache
//! keys start from. Cloning is cheap.
//!
//! ```
//! use dspex_actors::Program;
//! use dspex_core::ProgramSpec;
//!
//! let p = Program::new(ProgramSpec::chain_of_thought("question -> answer: int"));
//! let info = p.inspect();
//! assert_eq!(info.signature, "question -> reasoning, answer");
//! assert!(p.native_support().is_ok());
//! let react = Program::new(ProgramSpec::react("question -> answer", ["tools:search"]));
//! assert!(react.native_support().unwrap_err().contains("Python"));
//! ```

use std::sync::{Arc, OnceLock};

use dspex_core::{Map, ProgramSpec, Signature, Value};
use dspex_native::NativeProgram;
use serde::Serialize;

use crate::cache::CacheKey;

struct Inner {
    spec: ProgramSpec,
    native: Result<NativeProgram, String>,
    wire: Value,
    key: CacheKey,
    /// The signature strict input checks read, parsed on first use.
    checked_signature: OnceLock<dspex_core::Result<Arc<Signature>>>,
}

/// A program and its precomputed forms. See the [module docs](self).
#[derive(Clone)]
pub struct Program {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("spec", &self.inner.spec).finish()
    }
}

/// One field as [`Program::inspect`] shows it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldInfo {
    /// Name.
    pub name: String,
    /// `input` or `output`.
    pub role: String,
    /// Type annotation (`str`, `list[int]`, ...).
    #[serde(rename = "type")]
    pub ty: String,
    /// Prompt prefix.
    pub prefix: String,
    /// Description.
    pub desc: String,
}

/// What a program is: module, signature, demos, parameters.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProgramInfo {
    /// `predict`, `chain_of_thought`, `react`, ...
    pub module: String,
    /// The signature as DSPy prints it (`a, b -> c`), with the fields the
    /// module adds (`reasoning`), when the native engine can read it.
    pub signature: String,
    /// Instructions.
    pub instructions: String,
    /// Fields in order.
    pub fields: Vec<FieldInfo>,
    /// Few-shot demos.
    pub demos: Vec<Map>,
    /// LM call arguments.
    pub config: Map,
    /// Module parameters.
    pub params: Map,
    /// `chat` or `json`.
    pub adapter: String,
    /// `null` when the native engine can run it, else why not.
    pub native_unsupported: Option<String>,
}

impl Program {
    /// Prepare `spec`.
    pub fn new(spec: ProgramSpec) -> Program {
        let native = NativeProgram::from_spec(&spec).map_err(|e| e.message().to_string());
        let wire = serde_json::to_value(&spec).unwrap_or(Value::Null);
        let key = CacheKey::new("program", &[&wire]);
        Program { inner: Arc::new(Inner { spec, native, wire, key, checked_signature: OnceLock::new() }) }
    }

    /// The description it was made from.
    pub fn spec(&self) -> &ProgramSpec {
        &self.inner.spec
    }

    /// The native form, when the engine can run it.
    pub fn native(&self) -> Option<&NativeProgram> {
        self.inner.native.as_ref().ok()
    }

    /// `Ok` when the native engine can run it; else why not.
    pub fn native_support(&self) -> Result<(), &str> {
        match &self.inner.native {
            Ok(_) => Ok(()),
            Err(why) => Err(why),
        }
    }

    /// `Ok` when a Python worker can run this program as specified; else
    /// why not (a user template is rendered by the native engine only).
    pub fn python_support(&self) -> Result<(), &'static str> {
        match self.inner.spec.template {
            Some(_) => Err("a user template formats prompts natively only"),
            None => Ok(()),
        }
    }

    /// With `strict_inputs` (the request's choice over the program's), check
    /// `inputs` against the field types and the constraints in them, for
    /// whichever route will run it: a `Validation` error naming the field.
    pub(crate) fn check_inputs(&self, inputs: &Map, strict: Option<bool>) -> dspex_core::Result<()> {
        if !strict.unwrap_or(self.inner.spec.strict_inputs) {
            return Ok(());
        }
        let sig = self
            .inner
            .checked_signature
            .get_or_init(|| dspex_native::signature_from_spec(&self.inner.spec.signature))
            .as_ref()
            .map_err(Clone::clone)?;
        dspex_native::validate::check_inputs(sig, inputs)
    }

    /// The spec as JSON (what Python workers receive).
    pub fn wire(&self) -> &Value {
        &self.inner.wire
    }

    pub(crate) fn cache_key(&self) -> &CacheKey {
        &self.inner.key
    }

    /// The operation name (`predict`, `chain_of_thought`, ...).
    pub fn op(&self) -> &'static str {
        self.inner.spec.module.as_str()
    }

    /// The same program with a saved state applied (what an optimizer returned).
    pub fn with_state(&self, state: Value) -> Program {
        let mut spec = self.inner.spec.clone();
        spec.state = Some(state);
        Program::new(spec)
    }

    /// Module, signature, demos and parameters.
    pub fn inspect(&self) -> ProgramInfo {
        let spec = &self.inner.spec;
        let (signature, instructions, fields, demos) = match &self.inner.native {
            Ok(native) => {
                let p = native.predictor();
                let sig = p.signature();
                let names =
                    |fs: &[dspex_core::Field]| fs.iter().map(|f| f.name().to_string()).collect::<Vec<_>>().join(", ");
                let fields = sig
                    .fields()
                    .iter()
                    .map(|f| FieldInfo {
                        name: f.name().to_string(),
                        role: format!("{:?}", f.role()).to_lowercase(),
                        ty: f.ty().annotation_name(),
                        prefix: f.prefix().to_string(),
                        desc: f.desc().to_string(),
                    })
                    .collect();
                (
                    format!("{} -> {}", names(sig.inputs()), names(sig.outputs())),
                    sig.instructions().to_string(),
                    fields,
                    p.demos().to_vec(),
                )
            }
            Err(_) => {
                let text = match &spec.signature {
                    dspex_core::SignatureSpec::Text(t) => t.clone(),
                    dspex_core::SignatureSpec::Class(c) => {
                        let n = |fs: &[dspex_core::FieldDecl]| {
                            fs.iter().map(|f| f.name.clone()).collect::<Vec<_>>().join(", ")
                        };
                        format!("{} -> {}", n(&c.inputs), n(&c.outputs))
                    }
                };
                (text, String::new(), Vec::new(), spec.demos.clone())
            }
        };
        ProgramInfo {
            module: spec.module.as_str().into(),
            signature,
            instructions,
            fields,
            demos,
            config: spec.config.clone(),
            params: spec.params.clone(),
            adapter: spec.adapter.as_str().into(),
            native_unsupported: self.inner.native.as_ref().err().cloned(),
        }
    }
}

impl From<ProgramSpec> for Program {
    fn from(spec: ProgramSpec) -> Program {
        Program::new(spec)
    }
}
