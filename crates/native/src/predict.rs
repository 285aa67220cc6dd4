//! Native `Predict` and `ChainOfThought`.
//!
//! A [`Predict`] sends the messages `dspy.Predict` would send for the same
//! program (signature, demos, adapter, call arguments), parses the reply
//! into a [`Prediction`], and — like DSPy's `ChatAdapter` — retries once with
//! the JSON adapter when the chat-format reply cannot be parsed.
//! [`ChainOfThought`] is a `Predict` over the signature with `reasoning`
//! prepended to the outputs. Both load the JSON DSPy's `program.save(...)`
//! writes, so a program optimized in Python runs natively.
//!
//! ```no_run
//! # async fn demo(lm: &dyn dspex_native::lm::LanguageModel) -> dspex_core::Result<()> {
//! use dspex_native::{parse_signature, ChainOfThought, PredictOptions};
//! use serde_json::json;
//!
//! let cot = ChainOfThought::new(parse_signature("question -> answer", None)?)?;
//! let inputs = json!({"question": "What is 2 + 2?"});
//! let pred = cot.call(lm, inputs.as_object().unwrap(), &PredictOptions::default()).await?;
//! println!("{} because {}", pred.fields["answer"], pred.fields["reasoning"]);
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use dspex_core::{
    AdapterKind, Error, ErrorKind, FieldRole, FieldSpec, FieldType, Map, ModuleKind, Prediction, ProgramSpec, Result,
    Signature, Usage, Value,
};
use futures_util::{Stream, StreamExt};
use tracing::{debug, warn};

use crate::adapter;
use crate::lm::{LanguageModel, LmEvent, LmRequest, LmResponse, Message};
use crate::template::PromptTemplate;
use crate::validate;

/// The signature `dspy.ChainOfThought` runs: `reasoning: str` prepended to the outputs.
pub fn chain_of_thought_signature(sig: &Signature) -> Result<Signature> {
    sig.prepend(FieldRole::Output, FieldSpec::new("reasoning", FieldType::Str))
}

/// How inputs are checked against their types before a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputCheck {
    /// Log a warning and go on, as DSPy does.
    #[default]
    Warn,
    /// Fail with a `Validation` error.
    Strict,
    /// Do not check.
    Off,
}

/// Per-call settings.
#[derive(Debug, Clone, Default)]
pub struct PredictOptions {
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// Request id, sent to the LM service and recorded in logs.
    pub request_id: Option<String>,
    /// LM arguments for this call only (`Predict(..)(config={...})`).
    pub config: Map,
    /// Who the LM calls are for (tenant, meter), as the gateway sees them.
    pub scope: crate::lm::LmScope,
}

/// One event of a streamed prediction: text as it arrives, then the result.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictEvent {
    /// New completion text; `field` is the output field the text belongs to,
    /// when the adapter format makes that visible.
    Chunk {
        /// The output field being written, if known.
        field: Option<String>,
        /// The text.
        text: String,
    },
    /// The parsed prediction (always last on success).
    Prediction(Prediction),
}

/// A stream of [`PredictEvent`]s.
pub type PredictStream = Pin<Box<dyn Stream<Item = Result<PredictEvent>> + Send>>;

/// `dspy.Predict`, natively: the messages `dspy.Predict` would send for the
/// same program, the reply parsed into a [`Prediction`], and one retry with
/// the JSON adapter when a chat-format reply cannot be parsed.
#[derive(Debug, Clone)]
pub struct Predict {
    signature: Arc<Signature>,
    demos: Vec<Map>,
    adapter: AdapterKind,
    config: Map,
    json_fallback: bool,
    template: Option<PromptTemplate>,
    input_check: InputCheck,
    json_response_format: bool,
}

impl Predict {
    /// A predictor for `signature` with DSPy's defaults (ChatAdapter, JSON fallback on).
    pub fn new(signature: impl Into<Arc<Signature>>) -> Predict {
        Predict {
            signature: signature.into(),
            demos: Vec::new(),
            adapter: AdapterKind::Chat,
            config: Map::new(),
            json_fallback: true,
            template: None,
            input_check: InputCheck::Warn,
            json_response_format: false,
        }
    }

    /// Ask for `response_format: {"type": "json_object"}` on JSON-adapter calls.
    /// DSPy does this only for models LiteLLM knows support it (OpenAI's own);
    /// for other OpenAI-compatible services it sends no `response_format`,
    /// which is the default here.
    pub fn with_json_response_format(mut self, on: bool) -> Predict {
        self.json_response_format = on;
        self
    }

    /// Few-shot demos.
    pub fn with_demos(mut self, demos: Vec<Map>) -> Predict {
        self.demos = demos;
        self
    }

    /// The adapter (prompt format).
    pub fn with_adapter(mut self, adapter: AdapterKind) -> Predict {
        self.adapter = adapter;
        self
    }

    /// LM call arguments, as `dspy.Predict(sig, **config)`.
    pub fn with_config(mut self, config: Map) -> Predict {
        self.config = config;
        self
    }

    /// Whether a chat-format reply that cannot be parsed is retried with the JSON adapter.
    pub fn with_json_fallback(mut self, on: bool) -> Predict {
        self.json_fallback = on;
        self
    }

    /// Format prompts with a user-defined template instead of the adapter.
    pub fn with_template(mut self, template: PromptTemplate) -> Predict {
        self.template = Some(template);
        self
    }

    /// How inputs are checked before a call.
    pub fn with_input_check(mut self, check: InputCheck) -> Predict {
        self.input_check = check;
        self
    }

    /// The signature.
    pub fn signature(&self) -> &Arc<Signature> {
        &self.signature
    }

    /// The demos.
    pub fn demos(&self) -> &[Map] {
        &self.demos
    }

    /// The adapter.
    pub fn adapter(&self) -> AdapterKind {
        self.adapter
    }

    /// The LM call arguments.
    pub fn config(&self) -> &Map {
        &self.config
    }

    /// Apply saved state from DSPy's `Predict.dump_state()` (what `save()` writes
    /// for one predictor): instructions, field prefixes and descriptions, demos.
    pub fn load_state(&mut self, state: &Value) -> Result<()> {
        let bad = |what: &str| Error::invalid_request(format!("saved predictor state: {what}"));
        let sig_state = state.get("signature").ok_or_else(|| bad("missing `signature`"))?;
        let instructions = sig_state
            .get("instructions")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing `signature.instructions`"))?;
        let fields =
            sig_state.get("fields").and_then(Value::as_array).ok_or_else(|| bad("missing `signature.fields`"))?;
        if fields.len() != self.signature.fields().len() {
            return Err(bad(&format!(
                "it has {} fields, the program's signature `{}` has {}",
                fields.len(),
                self.signature,
                self.signature.fields().len()
            )));
        }
        let pairs: Vec<(String, String)> = fields
            .iter()
            .map(|f| {
                let prefix = f.get("prefix").and_then(Value::as_str).ok_or_else(|| bad("a field without `prefix`"))?;
                let desc =
                    f.get("description").and_then(Value::as_str).ok_or_else(|| bad("a field without `description`"))?;
                Ok((prefix.to_string(), desc.to_string()))
            })
            .collect::<Result<_>>()?;
        if state.get("fields").is_some_and(|f| f.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(Error::unsupported("decision criteria (`fields`) in saved state are not handled natively"));
        }
        let demos = match state.get("demos") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|d| d.as_object().cloned().ok_or_else(|| bad("a demo that is not an object")))
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("`demos` is not a list")),
        };
        self.signature = Arc::new(self.signature.with_state(instructions, &pairs));
        self.demos = demos;
        Ok(())
    }

    /// This predictor's state in the shape DSPy's `Predict.dump_state()` writes.
    pub fn dump_state(&self) -> Value {
        let fields: Vec<Value> = self
            .signature
            .fields()
            .iter()
            .map(|f| serde_json::json!({"prefix": f.prefix(), "description": f.desc()}))
            .collect();
        serde_json::json!({
            "traces": [],
            "train": [],
            "demos": self.demos,
            "signature": {"instructions": self.signature.instructions(), "fields": fields},
            "lm": null,
        })
    }

    /// Inputs as DSPy's `_forward_preprocess` leaves them: defaults filled in,
    /// types checked per [`InputCheck`].
    fn prepare_inputs(&self, inputs: &Map) -> Result<Map> {
        let mut inputs = inputs.clone();
        for f in self.signature.inputs() {
            if let (false, Some(d)) = (inputs.contains_key(f.name()), f.default()) {
                inputs.insert(f.name().to_string(), d.clone());
            }
        }
        let extra: Vec<&String> = inputs.keys().filter(|k| self.signature.input(k).is_none()).collect();
        if !extra.is_empty() {
            warn!(?extra, "inputs not in the signature are ignored");
        }
        let missing = validate::missing_inputs(&self.signature, &inputs);
        if !missing.is_empty() {
            warn!(?missing, "not all input fields were provided");
        }
        match self.input_check {
            InputCheck::Off => {}
            InputCheck::Warn => {
                if let Err(e) = validate::check_inputs(&self.signature, &inputs) {
                    warn!(error = %e, "input type mismatch");
                }
            }
            InputCheck::Strict => validate::check_inputs(&self.signature, &inputs)?,
        }
        Ok(inputs)
    }

    /// The messages a call with `inputs` sends (adapter or template formatting).
    pub fn messages(&self, inputs: &Map) -> Result<Vec<Message>> {
        self.messages_for(self.adapter, inputs)
    }

    fn messages_for(&self, adapter: AdapterKind, inputs: &Map) -> Result<Vec<Message>> {
        match &self.template {
            Some(t) => t.render(&self.signature, &self.demos, inputs),
            None => adapter::format(adapter, &self.signature, &self.demos, inputs),
        }
    }

    /// Call arguments with DSPy's adjustment: several generations at a low
    /// temperature get temperature 0.7.
    fn params(&self, opts: &PredictOptions) -> Map {
        let mut params = self.config.clone();
        for (k, v) in &opts.config {
            params.insert(k.clone(), v.clone());
        }
        let n = params.get("n").and_then(Value::as_u64).unwrap_or(1);
        let temperature = params.get("temperature").and_then(Value::as_f64);
        if n > 1 && temperature.is_none_or(|t| t <= 0.15) {
            params.insert("temperature".into(), Value::from(0.7));
        }
        params
    }

    fn parse_outputs(&self, adapter: AdapterKind, response: &LmResponse) -> Result<Vec<Map>> {
        let parsed: Result<Vec<Map>> = response
            .outputs
            .iter()
            .map(|o| match o.as_deref() {
                Some(text) if !text.is_empty() => adapter::parse(adapter, &self.signature, text),
                other => Err(Error::new(
                    ErrorKind::Parse,
                    format!(
                        "The LM returned an empty or null response.\n\nAdapter {} failed to parse the LM response. \n\nLM Response: {} \n\nExpected to find output fields in the LM response: [{}] \n\n",
                        if adapter == AdapterKind::Json { "JSONAdapter" } else { "ChatAdapter" },
                        other.map_or("None".to_string(), str::to_string),
                        self.signature.outputs().iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                    ),
                )
                .with_python_type("AdapterParseError")),
            })
            .collect();
        // A reply cut at the length limit usually fails to parse for that
        // reason alone; say so, since the caller sees only the error.
        parsed.map_err(|e| {
            if response.truncated() {
                let message = format!(
                    "{}The LM stopped at its length limit (finish_reason \"length\"): the reply is incomplete; raise max_tokens.",
                    e.message()
                );
                Error::new(e.kind(), message).with_python_type("AdapterParseError").with_context(e.context().clone())
            } else {
                e
            }
        })
    }

    /// Run one prediction.
    pub async fn call(&self, lm: &dyn LanguageModel, inputs: &Map, opts: &PredictOptions) -> Result<Prediction> {
        let inputs = self.prepare_inputs(inputs)?;
        let mut params = self.params(opts);
        if self.adapter == AdapterKind::Json && self.json_response_format {
            params.insert("response_format".into(), serde_json::json!({"type": "json_object"}));
        }
        let request = LmRequest {
            messages: self.messages_for(self.adapter, &inputs)?,
            params: params.clone(),
            deadline: opts.deadline,
            request_id: opts.request_id.clone(),
            scope: opts.scope.clone(),
        };
        let response = lm.complete(request).await?;
        let mut usage = response.usage.unwrap_or_default();
        let mut truncated = response.truncated();
        let parsed = match self.parse_outputs(self.adapter, &response) {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::Parse && self.adapter == AdapterKind::Chat && self.json_fallback => {
                debug!(error = %e, "chat-format reply unparseable; retrying with the JSON adapter");
                let mut params = params;
                if self.json_response_format {
                    params.insert("response_format".into(), serde_json::json!({"type": "json_object"}));
                }
                let request = LmRequest {
                    messages: self.messages_for(AdapterKind::Json, &inputs)?,
                    params,
                    deadline: opts.deadline,
                    request_id: opts.request_id.clone(),
                    scope: opts.scope.clone(),
                };
                let response = lm.complete(request).await?;
                if let Some(u) = response.usage {
                    usage.add(u);
                }
                truncated = response.truncated();
                self.parse_outputs(AdapterKind::Json, &response)?
            }
            Err(e) => return Err(e),
        };
        Ok(prediction(parsed, usage, truncated))
    }

    /// Run one prediction, streaming the completion text as it arrives. The
    /// stream ends with [`PredictEvent::Prediction`]. Like DSPy, no JSON
    /// fallback happens once text has been streamed.
    pub async fn stream(
        &self,
        lm: Arc<dyn LanguageModel>,
        inputs: &Map,
        opts: &PredictOptions,
    ) -> Result<PredictStream> {
        let inputs = self.prepare_inputs(inputs)?;
        let request = LmRequest {
            messages: self.messages_for(self.adapter, &inputs)?,
            params: self.params(opts),
            deadline: opts.deadline,
            request_id: opts.request_id.clone(),
            scope: opts.scope.clone(),
        };
        let this = self.clone();
        let chat = self.adapter == AdapterKind::Chat && self.template.is_none();
        let mut upstream = lm.stream(request).await?;
        let stream = async_stream(move |tx| async move {
            let mut text = String::new();
            while let Some(ev) = upstream.next().await {
                match ev {
                    Ok(LmEvent::Delta { index: 0, text: delta }) => {
                        let field = if chat { current_field(&text, &delta) } else { None };
                        text.push_str(&delta);
                        if tx.send(Ok(PredictEvent::Chunk { field, text: delta })).await.is_err() {
                            return;
                        }
                    }
                    Ok(LmEvent::Delta { .. }) => {}
                    Ok(LmEvent::Done(resp)) => {
                        let truncated = resp.truncated();
                        let usage = resp.usage.unwrap_or_default();
                        let result = this
                            .parse_outputs(this.adapter, &resp)
                            .map(|parsed| PredictEvent::Prediction(prediction(parsed, usage, truncated)));
                        let _ = tx.send(result).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let _ = tx.send(Err(Error::new(ErrorKind::Lm, "the LM stream ended without a final event"))).await;
        });
        Ok(stream)
    }
}

/// The output field a chat-format delta belongs to: the last `[[ ## name ## ]]`
/// header in the text so far (or in the delta itself, if it opens one).
fn current_field(so_far: &str, delta: &str) -> Option<String> {
    let joined = format!("{so_far}{delta}");
    let pos = joined.rfind("[[ ## ")?;
    let rest = &joined[pos + 6..];
    let end = rest.find(" ## ]]")?;
    let name = &rest[..end];
    (name != "completed").then(|| name.to_string())
}

/// A stream fed by a task through a bounded channel (backpressure: the task
/// waits when the consumer is slow).
fn async_stream<F, Fut>(f: F) -> PredictStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<PredictEvent>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

fn prediction(parsed: Vec<Map>, usage: Usage, truncated: bool) -> Prediction {
    let mut it = parsed.into_iter();
    let first = it.next().unwrap_or_default();
    let rest: Vec<Map> = it.collect();
    let completions = if rest.is_empty() { Vec::new() } else { std::iter::once(first.clone()).chain(rest).collect() };
    Prediction { fields: first, completions, usage: Some(usage), truncated }
}

/// `dspy.ChainOfThought`, natively: a [`Predict`] over the signature with
/// `reasoning` prepended to the outputs.
#[derive(Debug, Clone)]
pub struct ChainOfThought {
    predict: Predict,
}

impl ChainOfThought {
    /// Chain of thought over `signature`.
    pub fn new(signature: impl AsRef<Signature>) -> Result<ChainOfThought> {
        let extended = chain_of_thought_signature(signature.as_ref())?;
        Ok(ChainOfThought { predict: Predict::new(extended) })
    }

    /// The inner predictor (the one DSPy saves as `predict`).
    pub fn predictor(&self) -> &Predict {
        &self.predict
    }

    /// The inner predictor, to configure.
    pub fn predictor_mut(&mut self) -> &mut Predict {
        &mut self.predict
    }

    /// Run one prediction; the result has `reasoning` and the outputs.
    pub async fn call(&self, lm: &dyn LanguageModel, inputs: &Map, opts: &PredictOptions) -> Result<Prediction> {
        self.predict.call(lm, inputs, opts).await
    }
}

/// A native program: the modules the native engine runs.
#[derive(Debug, Clone)]
pub enum NativeProgram {
    /// `dspy.Predict`.
    Predict(Predict),
    /// `dspy.ChainOfThought`.
    ChainOfThought(ChainOfThought),
}

impl NativeProgram {
    /// Build from a serializable program description. Fails with
    /// `Unsupported` when the program needs Python.
    pub fn from_spec(spec: &ProgramSpec) -> Result<NativeProgram> {
        let sig = crate::signature_from_spec(&spec.signature)?;
        if let Some(f) = sig.fields().iter().find(|f| !f.ty().is_native()) {
            return Err(Error::unsupported(format!(
                "field `{}` of type `{}` needs Python",
                f.name(),
                f.ty().annotation_name()
            )));
        }
        let template = match &spec.template {
            Some(t) => Some(PromptTemplate::new(t.system.as_deref(), &t.user)?),
            None => None,
        };
        let check = if spec.strict_inputs { InputCheck::Strict } else { InputCheck::Warn };
        let configure = |p: Predict| {
            let p = p.with_demos(spec.demos.clone()).with_adapter(spec.adapter).with_config(spec.config.clone());
            let p = p.with_input_check(check);
            match template.clone() {
                Some(t) => p.with_template(t),
                None => p,
            }
        };
        let mut program = match spec.module {
            ModuleKind::Predict => NativeProgram::Predict(configure(Predict::new(sig))),
            ModuleKind::ChainOfThought => {
                let mut cot = ChainOfThought::new(&sig)?;
                cot.predict = configure(cot.predict);
                NativeProgram::ChainOfThought(cot)
            }
            other => {
                return Err(Error::unsupported(format!("{} runs in Python only", other.as_str())));
            }
        };
        if let Some(state) = &spec.state {
            program.load_saved(state, None)?;
        }
        Ok(program)
    }

    /// The predictor that talks to the LM.
    pub fn predictor(&self) -> &Predict {
        match self {
            NativeProgram::Predict(p) => p,
            NativeProgram::ChainOfThought(c) => c.predictor(),
        }
    }

    /// The predictor, to configure.
    pub fn predictor_mut(&mut self) -> &mut Predict {
        match self {
            NativeProgram::Predict(p) => p,
            NativeProgram::ChainOfThought(c) => c.predictor_mut(),
        }
    }

    /// Load what DSPy's `program.save(path)` wrote. `name` picks a predictor
    /// in a multi-predictor module (e.g. `"gen.predict"`); without it the
    /// file's only predictor is used.
    pub fn load_saved(&mut self, saved: &Value, name: Option<&str>) -> Result<()> {
        let obj = saved.as_object().ok_or_else(|| Error::invalid_request("saved program is not a JSON object"))?;
        let state = match name {
            Some(n) => obj
                .get(n)
                .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no predictor `{n}` in the saved program")))?,
            None if obj.contains_key("signature") => saved,
            None => {
                let names: Vec<&String> = obj.keys().filter(|k| k.as_str() != "metadata").collect();
                match names.as_slice() {
                    [one] => &obj[one.as_str()],
                    _ => {
                        return Err(Error::invalid_request(format!(
                            "the saved program has several predictors ({}); name one",
                            names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )))
                    }
                }
            }
        };
        self.predictor_mut().load_state(state)
    }

    /// Run one prediction.
    pub async fn call(&self, lm: &dyn LanguageModel, inputs: &Map, opts: &PredictOptions) -> Result<Prediction> {
        self.predictor().call(lm, inputs, opts).await
    }

    /// Run one prediction, streaming.
    pub async fn stream(
        &self,
        lm: Arc<dyn LanguageModel>,
        inputs: &Map,
        opts: &PredictOptions,
    ) -> Result<PredictStream> {
        self.predictor().stream(lm, inputs, opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_signature;
    use serde_json::json;

    #[test]
    fn current_field_tracks_headers() {
        assert_eq!(current_field("", "[[ ## reasoning ## ]]\nBecause"), Some("reasoning".into()));
        assert_eq!(current_field("[[ ## reasoning ## ]]\nx\n\n[[ ## answer ## ]]\n", "4"), Some("answer".into()));
        assert_eq!(current_field("[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]", ""), None);
        assert_eq!(current_field("no header", " yet"), None);
    }

    #[test]
    fn state_roundtrips_and_is_checked() {
        let mut p = NativeProgram::from_spec(&ProgramSpec::chain_of_thought("question -> answer")).unwrap();
        let saved = json!({"predict": {"demos": [{"question": "q", "reasoning": "r", "answer": "a"}],
            "signature": {"instructions": "Be terse.", "fields": [
                {"prefix": "Q:", "description": "the question"},
                {"prefix": "Think:", "description": "${reasoning}"},
                {"prefix": "A:", "description": "${answer}"}]}, "lm": null}, "metadata": {}});
        p.load_saved(&saved, None).unwrap();
        assert_eq!(p.predictor().signature().instructions(), "Be terse.");
        assert_eq!(p.predictor().signature().inputs()[0].desc(), "the question");
        assert_eq!(p.predictor().demos().len(), 1);
        let dumped = p.predictor().dump_state();
        assert_eq!(dumped["signature"]["fields"][1]["prefix"], "Think:");
        let wrong = json!({"signature": {"instructions": "x", "fields": []}});
        assert!(p.load_saved(&wrong, None).is_err());
        assert!(p.load_saved(&json!({"a": {}, "b": {}}), None).unwrap_err().message().contains("several predictors"));
    }

    /// An LM that answers from a script and remembers what it was sent.
    struct Scripted {
        replies: parking_lot::Mutex<Vec<String>>,
        seen: parking_lot::Mutex<Vec<LmRequest>>,
    }

    impl Scripted {
        fn new(replies: &[&str]) -> Scripted {
            Scripted {
                replies: parking_lot::Mutex::new(replies.iter().rev().map(|r| r.to_string()).collect()),
                seen: parking_lot::Mutex::new(Vec::new()),
            }
        }
    }

    impl LanguageModel for Scripted {
        fn complete(&self, request: LmRequest) -> futures_util::future::BoxFuture<'_, Result<crate::lm::LmResponse>> {
            self.seen.lock().push(request);
            let reply = self.replies.lock().pop().unwrap_or_default();
            Box::pin(async move { Ok(crate::lm::LmResponse::text(reply)) })
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn inputs(v: serde_json::Value) -> Map {
        v.as_object().cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn options_change_what_is_sent_and_how_replies_are_read() {
        let sig = parse_signature("question -> answer: int", None).unwrap();
        let q = inputs(json!({"question": "2 + 2?"}));
        // An unreadable chat reply is retried with the JSON adapter, as DSPy does...
        let lm = Scripted::new(&["no headers at all", r#"{"answer": 4}"#]);
        let p = Predict::new(sig.clone());
        assert_eq!(p.call(&lm, &q, &PredictOptions::default()).await.unwrap().fields["answer"], json!(4));
        assert_eq!(lm.seen.lock().len(), 2);
        // ...unless the fallback is off.
        let lm = Scripted::new(&["no headers at all"]);
        let strict = Predict::new(sig.clone()).with_json_fallback(false);
        assert_eq!(strict.call(&lm, &q, &PredictOptions::default()).await.unwrap_err().kind(), ErrorKind::Parse);
        // The JSON adapter with response_format, when asked for.
        let lm = Scripted::new(&[r#"{"answer": 5}"#]);
        let json_p = Predict::new(sig.clone()).with_adapter(AdapterKind::Json).with_json_response_format(true);
        assert_eq!(json_p.adapter(), AdapterKind::Json);
        assert_eq!(json_p.call(&lm, &q, &PredictOptions::default()).await.unwrap().fields["answer"], json!(5));
        assert_eq!(lm.seen.lock()[0].params["response_format"]["type"], "json_object");
        // Inputs of the wrong type fail in strict mode only (missing ones only warn, as in DSPy).
        let typed = parse_signature("n: int -> answer: int", None).unwrap();
        let wrong = inputs(json!({"n": "two"}));
        let lm = Scripted::new(&["[[ ## answer ## ]]\n1", "[[ ## answer ## ]]\n1"]);
        let checked = Predict::new(typed.clone()).with_input_check(InputCheck::Strict);
        let err = checked.call(&lm, &wrong, &PredictOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert!(lm.seen.lock().is_empty(), "nothing was sent");
        let lax = Predict::new(typed.clone()).with_input_check(InputCheck::Off);
        assert_eq!(lax.call(&lm, &wrong, &PredictOptions::default()).await.unwrap().fields["answer"], json!(1));
        let warned = Predict::new(typed).with_input_check(InputCheck::Warn);
        assert_eq!(warned.call(&lm, &Map::new(), &PredictOptions::default()).await.unwrap().fields["answer"], json!(1));
        // A user template replaces the adapter's messages; demos and config are kept.
        let template =
            crate::template::PromptTemplate::new(Some("Answer tersely."), "Q: {{ inputs.question }}").unwrap();
        let demo = inputs(json!({"question": "1 + 1?", "answer": 2}));
        let templated = Predict::new(sig.clone())
            .with_template(template)
            .with_demos(vec![demo])
            .with_config(inputs(json!({"temperature": 0.0})));
        assert_eq!(templated.demos().len(), 1);
        assert_eq!(templated.config()["temperature"], json!(0.0));
        let messages = templated.messages(&q).unwrap();
        assert_eq!(messages.first().map(|m| m.content.as_str()), Some("Answer tersely."));
        assert_eq!(messages.last().map(|m| m.content.as_str()), Some("Q: 2 + 2?"));
        let lm = Scripted::new(&["[[ ## answer ## ]]\n4"]);
        assert_eq!(templated.call(&lm, &q, &PredictOptions::default()).await.unwrap().fields["answer"], json!(4));
        assert_eq!(lm.seen.lock()[0].params["temperature"], json!(0.0));
    }

    #[test]
    fn params_follow_dspy() {
        let p = Predict::new(parse_signature("q -> a", None).unwrap())
            .with_config(json!({"n": 3}).as_object().cloned().unwrap());
        assert_eq!(p.params(&PredictOptions::default())["temperature"], json!(0.7));
        let spec = ProgramSpec::predict("q: dspy.Image -> a");
        assert_eq!(NativeProgram::from_spec(&spec).unwrap_err().kind(), ErrorKind::Unsupported);
    }
}
