//! A blocking wrapper for applications that are not async.
//!
//! [`BlockingRuntime`] owns a small tokio runtime (two worker threads) and a
//! [`Runtime`] running on it; every method blocks the calling thread until
//! the request ends. Do not call it from inside an async context.

use std::time::Duration;

use dspex_core::{Error, ErrorKind, Map, Result, RuntimeConfig, Value};

use crate::request::{CallOutput, Output, RequestOptions};
use crate::runtime::{Runtime, RuntimeBuilder};
use crate::supervisor::TreeNode;
use crate::Program;

/// A [`Runtime`] for synchronous code. See the [module docs](self).
pub struct BlockingRuntime {
    runtime: Option<Runtime>,
    tokio: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BlockingRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingRuntime").field("runtime", &self.runtime).finish()
    }
}

impl BlockingRuntime {
    /// Start a runtime built by `builder`.
    pub fn start(builder: RuntimeBuilder) -> Result<BlockingRuntime> {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dspex-rt")
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the tokio runtime: {e}")))?;
        let runtime = tokio.block_on(builder.start())?;
        Ok(BlockingRuntime { runtime: Some(runtime), tokio })
    }

    /// Start a runtime from a configuration.
    pub fn from_config(config: RuntimeConfig) -> Result<BlockingRuntime> {
        BlockingRuntime::start(RuntimeBuilder::from_config(config))
    }

    /// The async runtime inside (to hand to async parts of the application).
    pub fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("present until shutdown")
    }

    /// [`Runtime::run`], blocking.
    pub fn run(&self, program: &Program, inputs: Map, opts: RequestOptions) -> Result<Output> {
        self.tokio.block_on(self.runtime().run(program, inputs, opts))
    }

    /// [`Runtime::predict`], blocking.
    pub fn predict(&self, signature: &str, inputs: Map) -> Result<Output> {
        self.tokio.block_on(self.runtime().predict(signature, inputs))
    }

    /// [`Runtime::chain_of_thought`], blocking.
    pub fn chain_of_thought(&self, signature: &str, inputs: Map) -> Result<Output> {
        self.tokio.block_on(self.runtime().chain_of_thought(signature, inputs))
    }

    /// [`Runtime::call`], blocking.
    pub fn call(&self, pool: &str, command: &str, args: Value, opts: RequestOptions) -> Result<CallOutput> {
        self.tokio.block_on(self.runtime().call(pool, command, args, opts))
    }

    /// [`Runtime::tree`], blocking.
    pub fn tree(&self) -> Result<TreeNode> {
        self.tokio.block_on(self.runtime().tree())
    }

    /// Stop everything and wait for it.
    pub fn shutdown(mut self) -> Result<()> {
        match self.runtime.take() {
            Some(rt) => {
                let r = self.tokio.block_on(rt.shutdown());
                // Give the workers' reapers a moment before the threads go.
                self.tokio.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
                r
            }
            None => Ok(()),
        }
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            let _ = self.tokio.block_on(rt.shutdown());
        }
    }
}
