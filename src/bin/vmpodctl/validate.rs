//! `vmpodctl validate FILE`: load a VirtualMachineInstance manifest (YAML or JSON,
//! `vmpod.io/v1alpha1` or `kubevirt.io/v1`), print every problem with its field path, exit
//! non-zero on any.

use anyhow::Context;
use clap::Args;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ValidateArgs {
    /// The manifest (YAML or JSON; `-` for standard input).
    pub file: PathBuf,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let file = args.file.display();
    match vmpod::api::load_valid_vmi(&text) {
        Ok(vmi) => {
            let name = vmi.name();
            println!("{file}: VirtualMachineInstance {name:?} is valid");
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{file}: {e}");
            }
            eprintln!("{file}: {} error(s)", errors.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
