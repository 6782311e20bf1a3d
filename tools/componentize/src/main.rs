//! `componentize CORE.wasm -o COMPONENT.wasm`: a core WebAssembly module built
//! for wasm32-wasi (preview1) as a reactor, with its component type embedded
//! (the `*_component_type.o` that `wit-bindgen c` writes), becomes a component.
//! Its `wasi_snapshot_preview1` imports are served by the preview1 reactor
//! adapter of wasmtime's version, which turns them into WASI 0.2 imports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::ComponentEncoder;

const USAGE: &str = "usage: componentize CORE.wasm -o COMPONENT.wasm";

fn args() -> Result<(PathBuf, PathBuf)> {
    let mut input = None;
    let mut output = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-o" {
            output = Some(PathBuf::from(args.next().context(USAGE)?));
        } else if input.is_none() {
            input = Some(PathBuf::from(arg));
        } else {
            bail!("{USAGE}");
        }
    }
    Ok((input.context(USAGE)?, output.context(USAGE)?))
}

fn run() -> Result<()> {
    let (input, output) = args()?;
    let module = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
    let component = ComponentEncoder::default()
        .module(&module)
        .with_context(|| {
            format!(
                "{} is not a core module with a component type",
                input.display()
            )
        })?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .context("the preview1 reactor adapter")?
        .validate(true)
        .encode()
        .with_context(|| format!("making a component of {}", input.display()))?;
    std::fs::write(&output, component).with_context(|| format!("writing {}", output.display()))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("componentize: {e:#}");
            ExitCode::FAILURE
        }
    }
}
