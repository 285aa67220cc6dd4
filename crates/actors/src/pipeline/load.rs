//! Pipelines from TOML and JSON text and files; semantic errors carry the
//! line of the offending step.

use std::path::{Path, PathBuf};

use dspex_core::{Error, ErrorKind, Result};

use super::builder::PipelineBuilder;
use super::check::compile;
use super::spec::PipelineSpec;
use super::Pipeline;
pub(super) fn parse_text(text: &str, path: &Path) -> Result<PipelineSpec> {
    let json = path.extension().is_some_and(|e| e == "json");
    let parsed = if json {
        serde_json::from_str(text).map_err(|e| format!("{}: {e}", path.display()))
    } else {
        toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))
    };
    parsed.map_err(|msg| Error::invalid_request(msg.trim_end().to_string()))
}

/// Add the line of the offending step to a semantic error from a file.
fn locate(e: Error, text: &str, origin: &str) -> Error {
    let Some(step) = e.context().step.clone() else {
        return Error::invalid_request(format!("{origin}: {}", e.message())).with_context(e.context().clone());
    };
    let line = text.lines().position(|l| {
        let l = l.replace(' ', "");
        l.contains(&format!("name=\"{step}\""))
            || l.contains(&format!("name='{step}'"))
            || l.contains(&format!("\"name\":\"{step}\""))
    });
    let at = match line {
        Some(n) => format!("{origin}, line {}", n + 1),
        None => origin.to_string(),
    };
    Error::new(e.kind(), format!("{at}: step {step}: {}", e.message())).with_context(e.context().clone())
}

impl Pipeline {
    /// Start a pipeline.
    pub fn builder(name: &str) -> PipelineBuilder {
        PipelineBuilder {
            spec: PipelineSpec {
                name: name.into(),
                description: None,
                inputs: Vec::new(),
                outputs: Vec::new(),
                timeout_ms: None,
                steps: Vec::new(),
            },
        }
    }

    /// Check and build from the file model.
    pub fn from_spec(spec: PipelineSpec) -> Result<Pipeline> {
        compile(spec, None, 0)
    }

    /// Parse TOML. Errors carry the line.
    pub fn from_toml(text: &str) -> Result<Pipeline> {
        let spec: PipelineSpec =
            toml::from_str(text).map_err(|e| Error::invalid_request(e.to_string().trim_end().to_string()))?;
        compile(spec, None, 0).map_err(|e| locate(e, text, "pipeline"))
    }

    /// Parse JSON. Errors carry the line.
    pub fn from_json(text: &str) -> Result<Pipeline> {
        let spec: PipelineSpec = serde_json::from_str(text).map_err(|e| Error::invalid_request(e.to_string()))?;
        compile(spec, None, 0).map_err(|e| locate(e, text, "pipeline"))
    }

    /// Load a `.toml` or `.json` file; nested `file` steps are relative to it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Pipeline> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read pipeline file {}: {e}", path.display())))?;
        let spec = parse_text(&text, path)?;
        compile(spec, path.parent(), 0).map_err(|e| locate(e, &text, &path.display().to_string()))
    }

    /// The file model (what `toml::to_string` or `serde_json` would write).
    pub fn spec(&self) -> &PipelineSpec {
        &self.inner.spec
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }
}

/// Anything [`Runtime::run_pipeline`] accepts: a pipeline, a builder, or a file path.
pub trait IntoPipeline {
    /// Build it.
    fn into_pipeline(self) -> Result<Pipeline>;
}

impl IntoPipeline for Pipeline {
    fn into_pipeline(self) -> Result<Pipeline> {
        Ok(self)
    }
}

impl IntoPipeline for &Pipeline {
    fn into_pipeline(self) -> Result<Pipeline> {
        Ok(self.clone())
    }
}

impl IntoPipeline for PipelineBuilder {
    fn into_pipeline(self) -> Result<Pipeline> {
        self.build()
    }
}

impl IntoPipeline for &Path {
    fn into_pipeline(self) -> Result<Pipeline> {
        Pipeline::from_file(self)
    }
}

impl IntoPipeline for PathBuf {
    fn into_pipeline(self) -> Result<Pipeline> {
        Pipeline::from_file(self)
    }
}

impl IntoPipeline for &PathBuf {
    fn into_pipeline(self) -> Result<Pipeline> {
        Pipeline::from_file(self)
    }
}
