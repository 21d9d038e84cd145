//! `berth completions bash|zsh|fish|elvish|powershell`: the shell completion script on
//! stdout, generated from the same definitions the parser uses (so it cannot drift).
//! `berth completions bash > /etc/bash_completion.d/berth`.

use std::process::ExitCode;

/// Arguments of `berth completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the script for `args.shell` describing `command`.
pub fn run(args: Args, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    let name = command.get_name().to_string();
    // Into memory first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    use std::io::Write;
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
