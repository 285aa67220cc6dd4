//! The endpoint table — what the router serves and what the OpenAPI
//! document describes, in one list — and the document built from it, with
//! every schema generated from the Rust type that is (de)serialized.

use axum::routing::{delete, get, post, MethodRouter};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::api::{
    self, Chunk, CreateSession, Health, PipelineRunRequest, Readiness, RunRequest, Served, SessionView, Shared,
};
use crate::{ErrorReply, Output, PipelineResult};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a successful reply carries.
pub(crate) enum Reply {
    /// `application/json` of this type.
    Json(u16, SchemaFn),
    /// Server-Sent Events: `chunk` events of the first type, then `done`
    /// with the second (or `error` with an error body).
    Events(SchemaFn, SchemaFn),
    /// Prometheus text.
    Text,
    /// No body.
    Empty(u16),
}

/// One endpoint: its route and its description.
pub(crate) struct Endpoint {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    operation: &'static str,
    summary: &'static str,
    body: Option<SchemaFn>,
    reply: Reply,
    /// Failure statuses besides those every endpoint may answer.
    errors: &'static [u16],
    /// Served without a token (health checks).
    public: bool,
    pub(crate) handler: fn() -> MethodRouter<Shared>,
}

/// Statuses of a program run: bad request, bad input, unknown program,
/// not runnable here, an LM or parse failure, shed, past its deadline.
const RUN_ERRORS: &[u16] = &[400, 404, 409, 413, 422, 499, 500, 501, 502, 503, 504];

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "post",
            path: "/v1/programs/{name}/run",
            operation: "runProgram",
            summary: "Run a served program",
            body: Some(schema::<RunRequest>),
            reply: Reply::Json(200, schema::<Output>),
            errors: RUN_ERRORS,
            public: false,
            handler: || post(api::run_program),
        },
        Endpoint {
            method: "post",
            path: "/v1/programs/{name}/stream",
            operation: "streamProgram",
            summary: "Run a served program, streaming its output as Server-Sent Events",
            body: Some(schema::<RunRequest>),
            reply: Reply::Events(schema::<Chunk>, schema::<Output>),
            errors: RUN_ERRORS,
            public: false,
            handler: || post(api::stream_program),
        },
        Endpoint {
            method: "post",
            path: "/v1/pipelines/{name}/run",
            operation: "runPipeline",
            summary: "Run a served pipeline",
            body: Some(schema::<PipelineRunRequest>),
            reply: Reply::Json(200, schema::<PipelineResult>),
            errors: RUN_ERRORS,
            public: false,
            handler: || post(api::run_pipeline),
        },
        Endpoint {
            method: "post",
            path: "/v1/sessions",
            operation: "createSession",
            summary: "Start a session with every served program defined in it",
            body: Some(schema::<CreateSession>),
            reply: Reply::Json(201, schema::<SessionView>),
            errors: &[400, 404, 409, 413, 500, 503],
            public: false,
            handler: || post(api::create_session),
        },
        Endpoint {
            method: "post",
            path: "/v1/sessions/{id}/programs/{name}/run",
            operation: "runSessionProgram",
            summary: "Run a program in a session, with the session's history",
            body: Some(schema::<RunRequest>),
            reply: Reply::Json(200, schema::<Output>),
            errors: RUN_ERRORS,
            public: false,
            handler: || post(api::session_run),
        },
        Endpoint {
            method: "get",
            path: "/v1/sessions/{id}",
            operation: "getSession",
            summary: "A session's programs, history and variables",
            body: None,
            reply: Reply::Json(200, schema::<SessionView>),
            errors: &[404, 409, 500, 503],
            public: false,
            handler: || get(api::get_session),
        },
        Endpoint {
            method: "delete",
            path: "/v1/sessions/{id}",
            operation: "deleteSession",
            summary: "End a session",
            body: None,
            reply: Reply::Empty(204),
            errors: &[404, 409, 500, 503],
            public: false,
            handler: || delete(api::delete_session),
        },
        Endpoint {
            method: "get",
            path: "/v1/programs",
            operation: "listServed",
            summary: "The programs and pipelines served",
            body: None,
            reply: Reply::Json(200, schema::<Served>),
            errors: &[],
            public: false,
            handler: || get(api::served),
        },
        Endpoint {
            method: "get",
            path: "/healthz",
            operation: "health",
            summary: "The process is up",
            body: None,
            reply: Reply::Json(200, schema::<Health>),
            errors: &[],
            public: true,
            handler: || get(api::healthz),
        },
        Endpoint {
            method: "get",
            path: "/readyz",
            operation: "ready",
            summary: "Every pool has a ready worker (503 until then)",
            body: None,
            reply: Reply::Json(200, schema::<Readiness>),
            errors: &[503],
            public: true,
            handler: || get(api::readyz),
        },
        Endpoint {
            method: "get",
            path: "/metrics",
            operation: "metrics",
            summary: "Prometheus metrics (text exposition format)",
            body: None,
            reply: Reply::Text,
            errors: &[404],
            public: false,
            handler: || get(api::metrics),
        },
        Endpoint {
            method: "get",
            path: "/openapi.json",
            operation: "openapi",
            summary: "This document",
            body: None,
            reply: Reply::Json(200, |_| Schema::from(true)),
            errors: &[],
            public: false,
            handler: || get(api::openapi_json),
        },
    ]
}

fn describe(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No content",
        400 => "The request is malformed (body, header or program)",
        401 => "No or a wrong bearer token",
        404 => "No such program, pipeline, session or endpoint",
        405 => "Method not allowed",
        409 => "The session was changed by another node meanwhile (retry)",
        413 => "The body is over the size limit",
        422 => "An input does not match its field's type",
        499 => "The client closed the request",
        500 => "A failure in the program's Python code or in the runtime",
        501 => "Not runnable here (native only, no pool)",
        502 => "The LM failed or answered unparsably",
        429 => "Shed: more requests in flight than max_in_flight, or an LM's rate limit leaves no time before the deadline (see Retry-After)",
        402 => "The tenant's LM budget is spent for this period",
        503 => "Shed: a pool's queue is full or its worker was lost (see Retry-After)",
        504 => "The request's deadline passed",
        _ => "Error",
    }
}

fn json_content(schema: Schema) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn insert(paths: &mut Map<String, Value>, path: &str, method: &str, op: Value) {
    if let Value::Object(item) = paths.entry(path.to_string()).or_insert_with(|| Value::Object(Map::new())) {
        item.insert(method.to_string(), op);
    }
}

/// One operation; for a served `name`, its own operation id and the
/// body's `inputs` replaced by what that program or pipeline takes.
fn operation(
    e: &Endpoint,
    g: &mut SchemaGenerator,
    error: &Schema,
    auth: bool,
    named: Option<(&str, &Value)>,
) -> Value {
    let mut op = Map::new();
    let id = match named {
        Some((name, _)) => format!("{}_{}", e.operation, name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")),
        None => e.operation.to_string(),
    };
    op.insert("operationId".into(), json!(id));
    op.insert("summary".into(), json!(e.summary));
    let mut parameters = Vec::new();
    for segment in e.path.split('/') {
        if let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if param == "name" && named.is_some() {
                continue;
            }
            parameters.push(json!({"name": param, "in": "path", "required": true, "schema": {"type": "string"}}));
        }
    }
    if e.body.is_some() {
        parameters.push(json!({"name": "X-Dspex-Timeout-Ms", "in": "header", "required": false,
            "description": "Deadline of the request, in milliseconds from now (capped by the server's maximum)",
            "schema": {"type": "string", "pattern": "^ *0*[1-9][0-9]* *$"}}));
    }
    parameters.push(json!({"name": "X-Request-Id", "in": "header", "required": false,
        "description": "Taken as the request's trace id and echoed",
        "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"}}));
    op.insert("parameters".into(), Value::Array(parameters));
    if let Some(body) = e.body {
        let mut schema = Value::from(body(g));
        if let Some((_, inputs)) = named {
            // The generated body type, its `inputs` narrowed to this one's.
            let generated = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next()).map(String::from);
            if let Some(def) = generated.and_then(|n| g.definitions().get(&n).cloned()) {
                schema = def;
                schema["properties"]["inputs"] = inputs.clone();
            }
        }
        op.insert("requestBody".into(), json!({"required": true, "content": {"application/json": {"schema": schema}}}));
    }
    let mut responses = Map::new();
    match &e.reply {
        Reply::Json(status, s) => {
            responses
                .insert(status.to_string(), json!({"description": describe(*status), "content": json_content(s(g))}));
        }
        Reply::Events(chunk, done) => {
            let (chunk, done) = (Value::from(chunk(g)), Value::from(done(g)));
            let event = |name: &str, data: &Value| {
                json!({
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {"event": {"const": name}, "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}},
                })
            };
            let events = json!({"oneOf": [event("chunk", &chunk), event("done", &done), event("error", &Value::from(error.clone()))]});
            responses.insert("200".into(), json!({
                "description": "Server-Sent Events: `chunk` events (data: a Chunk), then one `done` (data: the Output) or one `error` (data: an ErrorReply)",
                "content": {"text/event-stream": {"schema": events}}}));
        }
        Reply::Text => {
            responses.insert(
                "200".into(),
                json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}),
            );
        }
        Reply::Empty(status) => {
            responses.insert(status.to_string(), json!({"description": describe(*status)}));
        }
    }
    let mut errors: Vec<u16> = e.errors.to_vec();
    errors.extend([400, 402, 405, 429, 503]);
    if auth && !e.public {
        errors.push(401);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        responses
            .entry(status.to_string())
            .or_insert_with(|| json!({"description": describe(status), "content": json_content(error.clone())}));
    }
    op.insert("responses".into(), Value::Object(responses));
    if auth && e.public {
        op.insert("security".into(), json!([]));
    }
    Value::Object(op)
}

fn build(programs: &[(&str, Value)], pipelines: &[(&str, Value)], auth: bool) -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let error = schema::<ErrorReply>(&mut g);
    let mut paths = Map::new();
    for e in endpoints() {
        // A `{name}` is one of those served: one path each, with its inputs.
        let served = if e.path.starts_with("/v1/pipelines/") { pipelines } else { programs };
        if e.path.contains("{name}") && !served.is_empty() {
            for (name, inputs) in served {
                let path = e.path.replace("{name}", name);
                let op = operation(&e, &mut g, &error, auth, Some((name, inputs)));
                insert(&mut paths, &path, e.method, op);
            }
        } else {
            let op = operation(&e, &mut g, &error, auth, None);
            insert(&mut paths, e.path, e.method, op);
        }
    }
    let schemas = Value::Object(g.take_definitions(true));
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "dspex",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "DSPy programs, pipelines and sessions served by a dspex runtime.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    });
    if auth {
        doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
        doc["security"] = json!([{"bearer": []}]);
    }
    doc
}

/// The OpenAPI 3.1 document of an API serving these programs and
/// pipelines (each with the schema of its `inputs`), with or without
/// bearer auth.
pub(crate) fn document(programs: &[(&str, Value)], pipelines: &[(&str, Value)], auth: bool) -> Value {
    build(programs, pipelines, auth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn every_status_an_error_can_take_is_documented_for_the_runs() {
        let doc = document(&[("qa", json!({"type": "object"}))], &[], true);
        for path in ["/v1/programs/qa/run", "/v1/programs/qa/stream", "/v1/sessions/{id}/programs/qa/run"] {
            let responses = &doc["paths"][path]["post"]["responses"];
            for kind in ErrorKind::ALL {
                let status = api::status_of(kind).as_u16().to_string();
                assert_eq!(
                    responses[&status]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorReply",
                    "{path}: {kind} answers {status}"
                );
            }
        }
    }
}
