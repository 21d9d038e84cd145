//! `berth token create --role join|read|deploy|admin [--host H]`, `berth token list`,
//! `berth token revoke ID`: API tokens with roles, made by the controller (an admin call; on
//! the controller's host its `--data-dir` token is admin). The token text is printed once,
//! alone on stdout, so scripts can capture it.

use std::process::ExitCode;

use berth_controller::access::{TokenRequest, TokenRole};

use super::Global;
use super::remote::{age, block_on, client, now_ms};
use crate::output::{self, Format};

/// Arguments of `berth token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// `berth token` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make a token; prints it once
    Create {
        /// What it may do: join (one agent's host), read, deploy (read, sync, rollback), admin
        #[arg(long)]
        role: TokenRole,
        /// For join tokens: the host it speaks for (default: the first host that registers)
        #[arg(long)]
        host: Option<String>,
    },
    /// List tokens (ids, roles, hosts; never secrets)
    List,
    /// Delete a token; requests with it are refused from then on
    Revoke {
        /// The token id (`bt.<id>.…`, see `berth token list`)
        id: String,
    },
}

/// Runs `berth token`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let client = client(global)?;
    match args.command {
        Command::Create { role, host } => {
            let issued = block_on(client.create_token(&TokenRequest { role, host }))??;
            if global.output == Format::Json {
                output::json(&issued)?;
            } else {
                println!("{}", issued.token);
                let bound = match &issued.host {
                    Some(h) => format!(" for host {h}"),
                    None if role == TokenRole::Join => {
                        " (bound to the first host that registers with it)".into()
                    }
                    None => String::new(),
                };
                eprintln!(
                    "token {} with role {role}{bound}; it is shown only now",
                    issued.id
                );
                if let (TokenRole::Join, Some(fingerprint)) = (role, &issued.ca_fingerprint) {
                    eprintln!(
                        "join a host with: berth agent --join {} --token <token> --name {} \
                         --ca-fingerprint {fingerprint}",
                        global.controller,
                        issued.host.as_deref().unwrap_or("<host>")
                    );
                }
            }
        }
        Command::List => {
            let tokens = block_on(client.tokens())??;
            if global.output == Format::Json {
                output::json(&tokens)?;
            } else {
                let now = now_ms();
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.role.to_string(),
                            t.host.clone().unwrap_or_else(|| "-".into()),
                            age(t.created_ms, now),
                        ]
                    })
                    .collect();
                output::table(&["ID", "ROLE", "HOST", "CREATED"], rows)?;
            }
        }
        Command::Revoke { id } => {
            block_on(client.revoke_token(&id))??;
            if global.output == Format::Json {
                output::json(&serde_json::json!({ "revoked": id }))?;
            } else {
                println!("token {id} revoked");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
