//! Metrics for embedders: the Prometheus registry a runtime builder
//! installs, the overhead histogram (a request's time minus the model's),
//! and the same text over the HTTP API.

use std::time::Duration;

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::{LmConfig, ProgramSpec, RequestOptions, Runtime, StreamEvent};
use futures_util::StreamExt;
use serde_json::json;

use crate::support::runtime;

/// The LM answers after this long, so the model's share is unmistakable.
const LM_LATENCY: Duration = Duration::from_millis(40);

async fn measured_runtime() -> (Runtime, LmServer) {
    let server = LmServer::start(OfflineResponder::with_latency(LM_LATENCY)).await.unwrap();
    let lm = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("test").with_temperature(0.0);
    let rt = Runtime::builder().native_only().lm(lm).prometheus().start().await.unwrap();
    (rt, server)
}

/// `name{labels} value` of a rendered series, summed when it repeats.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn requests_report_the_models_time_and_the_runtimes_own() {
    runtime().block_on(async {
        let (rt, _lm) = measured_runtime().await;
        let program = dspex::Program::from(ProgramSpec::predict("question -> answer: int"));
        let inputs = |q: &str| json!({ "question": q }).as_object().cloned().unwrap();

        let out = rt.run(&program, inputs("What is 17 + 25?"), RequestOptions::default()).await.unwrap();
        let t = &out.meta.timings;
        assert!(t.lm_us >= LM_LATENCY.as_micros() as u64, "the LM's time is measured: {t:?}");
        assert_eq!(t.overhead_us + t.lm_us, t.total_us, "{t:?}");
        assert!(t.overhead_us < t.lm_us, "formatting and parsing cost less than a 40 ms LM: {t:?}");
        assert!(t.lm_us <= t.execution_us, "the LM's time is part of the execution: {t:?}");

        // A cached result spent nothing in the model: all of it is overhead.
        let hit = rt.run(&program, inputs("What is 17 + 25?"), RequestOptions::default()).await.unwrap();
        assert!(hit.meta.cached);
        assert_eq!((hit.meta.timings.lm_us, hit.meta.timings.overhead_us), (0, hit.meta.timings.total_us));

        // A stream's model time runs to its last event.
        let mut stream = rt.stream(&program, inputs("What is 2 + 2?"), RequestOptions::default()).await.unwrap();
        let mut done = None;
        while let Some(event) = stream.next().await {
            if let StreamEvent::Done(out) = event.unwrap() {
                done = Some(out);
            }
        }
        let streamed = done.expect("a final prediction").meta.timings;
        assert!(streamed.lm_us >= LM_LATENCY.as_micros() as u64, "{streamed:?}");

        // The registry has both histograms per route, the cache's included.
        let text = rt.metrics_text().expect("the builder installed a registry");
        for series in [
            "dspex_overhead_seconds_count{route=\"native\"}",
            "dspex_request_seconds_count{route=\"native\"}",
            "dspex_overhead_seconds_count{route=\"cache\"}",
        ] {
            let n = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
            assert!(n >= 1.0, "{series} = {n}");
        }
        // The overhead of a native request is far below the LM's 40 ms; the
        // request's total is not.
        let fast = "dspex_overhead_seconds_bucket{route=\"native\",le=\"0.025\"}";
        let slow = "dspex_request_seconds_bucket{route=\"native\",le=\"0.025\"}";
        assert!(sample(&text, fast).unwrap_or(0.0) >= 2.0, "{text}");
        assert_eq!(sample(&text, slow), Some(0.0), "{text}");

        // A second runtime in the process shares the registry.
        let again = Runtime::builder().native_only().prometheus().start().await.unwrap();
        assert!(again.metrics_text().is_some_and(|t| t.contains("dspex_overhead_seconds")));
        // One built without it renders nothing.
        let plain = Runtime::builder().native_only().start().await.unwrap();
        assert!(plain.metrics_text().is_none());
        for r in [again, plain, rt] {
            r.shutdown().await.unwrap();
        }
    });
}

#[test]
fn the_http_api_serves_the_runtimes_registry() {
    runtime().block_on(async {
        let (rt, _lm) = measured_runtime().await;
        let server = dspex::http::HttpApi::new(&rt)
            .program("qa", ProgramSpec::predict("question -> answer: int"))
            .config(dspex::HttpConfig { addr: "127.0.0.1:0".into(), ..Default::default() })
            .serve()
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let c = reqwest::Client::new();
        let body = json!({"inputs": {"question": "What is 1 + 2?"}, "options": {"cache": false}});
        let r = c
            .post(format!("{base}/v1/programs/qa/run"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let reply: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let timings = &reply["meta"]["timings"];
        assert!(timings["lm_us"].as_u64().unwrap() >= LM_LATENCY.as_micros() as u64, "{reply}");
        assert!(timings["overhead_us"].is_u64(), "{reply}");

        let r = c.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let text = r.text().await.unwrap();
        assert!(text.contains("# TYPE dspex_overhead_seconds histogram"), "{text}");
        assert!(sample(&text, "dspex_overhead_seconds_count{route=\"native\"}").is_some_and(|n| n >= 1.0), "{text}");
        server.stop(Duration::from_secs(2)).await;
        rt.shutdown().await.unwrap();
    });
}
