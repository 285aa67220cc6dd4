//! `dspex signature | format | parse`: the native engine from the command line.

use std::io::Read;
use std::sync::Arc;

use dspex::native::{self, adapter, chain_of_thought_signature, schema};
use dspex::{AdapterKind, Error, ErrorKind, Map, Result, Signature, SignatureSpec, Value};
use serde::Deserialize;
use serde_json::json;

use super::AdapterArg;

impl From<AdapterArg> for AdapterKind {
    fn from(a: AdapterArg) -> Self {
        match a {
            AdapterArg::Chat => AdapterKind::Chat,
            AdapterArg::Json => AdapterKind::Json,
        }
    }
}

fn describe(sig: &Signature) -> Value {
    let fields: Vec<Value> = sig
        .fields()
        .iter()
        .map(|f| {
            let mut v = json!({
                "name": f.name(),
                "role": f.role().as_str(),
                "type": f.ty().annotation_name(),
                "prefix": f.prefix(),
                "desc": f.desc(),
            });
            if let Ok(s) = schema::field_structure(f) {
                v["structure"] = json!(s);
            }
            v
        })
        .collect();
    json!({"instructions": sig.instructions(), "fields": fields})
}

/// `dspex signature`.
pub fn signature(text: &str, instructions: Option<&str>) -> Result<Value> {
    let sig = native::parse_signature(text, instructions)?;
    Ok(describe(&sig))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatRequest {
    signature: SignatureSpec,
    #[serde(default)]
    demos: Vec<Map>,
    #[serde(default)]
    inputs: Map,
    #[serde(default)]
    module: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParseRequest {
    signature: SignatureSpec,
    completion: String,
    #[serde(default)]
    module: Option<String>,
}

fn read_stdin<T: for<'de> Deserialize<'de>>() -> Result<T> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(Error::from)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("stdin is not a valid request: {e}")))
}

fn build(spec: &SignatureSpec, module: Option<&str>) -> Result<Arc<Signature>> {
    let sig = native::signature_from_spec(spec)?;
    match module {
        None | Some("predict") => Ok(sig),
        Some("chain_of_thought") => Ok(Arc::new(chain_of_thought_signature(&sig)?)),
        Some(other) => Err(Error::invalid_request(format!("unknown module {other:?} (predict or chain_of_thought)"))),
    }
}

/// `dspex format`.
pub fn format(a: AdapterArg) -> Result<Value> {
    let req: FormatRequest = read_stdin()?;
    let sig = build(&req.signature, req.module.as_deref())?;
    let messages = adapter::format(a.into(), &sig, &req.demos, &req.inputs)?;
    Ok(json!({"messages": messages}))
}

/// `dspex parse`.
pub fn parse(a: AdapterArg) -> Result<Value> {
    let req: ParseRequest = read_stdin()?;
    let sig = build(&req.signature, req.module.as_deref())?;
    Ok(json!({"fields": adapter::parse(a.into(), &sig, &req.completion)?}))
}
