//! `moat ctl`: talks to a running moat's admin API (the address and token come from the
//! same config file as the proxy's, or from flags) and prints tables, or the raw JSON.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use moat_proxy::Config;
use moat_proxy::config::AdminConfig;
use serde_json::{Value, json};

/// Longest wait for the admin API's answer.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub(crate) struct CtlArgs {
    /// Moat's config file: the admin API's address and token are read from its `[admin]` table.
    #[arg(long, short, env = "MOAT_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the admin API (overrides admin.listen; default 127.0.0.1:6390).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Bearer token (overrides admin.token / admin.token_file).
    #[arg(long, env = "MOAT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's raw JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Version, uptime, clients, bans, the guard's counts.
    Status,
    /// Bans in force, with time left, repeat count and reason.
    Bans,
    /// Ban an address or network (refused for trusted networks and 127.0.0.1 / ::1).
    Ban {
        /// Address (192.0.2.7) or network (10.0.0.0/24).
        net: String,
        /// How long: 90s, 10m, 2h, 1d (default: guard.ban_time).
        #[arg(long = "for")]
        length: Option<String>,
        /// Why, kept with the ban and logged.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Unban {
        /// The banned address or network, as `bans` lists it.
        net: String,
    },
    /// Sources holding the most connections, and with the most recent refusals.
    Sources {
        /// How many of each (1-1000).
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// The heaviest clients: most unread output, then most in flight, then oldest.
    Clients {
        /// How many (1-1000).
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Re-read the config file moat was started with and apply what can change live.
    Reload,
    /// Stop accepting clients and let the connected ones finish.
    Drain,
    /// The Prometheus exposition, as scraped.
    Metrics,
}

/// Runs one `moat ctl` command; on failure prints the error (the API's own text for a
/// refused request) on stderr and exits with status 1.
pub(crate) fn main(args: CtlArgs) -> ! {
    match run(args) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("moat ctl: {e:#}");
            std::process::exit(1)
        }
    }
}

fn run(args: CtlArgs) -> anyhow::Result<()> {
    let admin = match &args.config {
        Some(path) => Config::load(path)?.admin,
        None => AdminConfig::default(),
    };
    let addr = match args.admin {
        Some(addr) => addr,
        None => address(&admin, args.config.is_some())?,
    };
    let token = match args.token {
        Some(t) => Some(t),
        None => admin.resolve_token()?,
    };
    let client = Client::new(addr, token);
    let json_out = args.json;
    match args.command {
        CtlCommand::Status => show(json_out, client.get("/status", &[])?, print_status),
        CtlCommand::Bans => show(json_out, client.get("/bans", &[])?, print_bans),
        CtlCommand::Ban {
            net,
            length,
            reason,
        } => {
            let mut body = json!({ "net": net });
            if let Some(length) = length {
                body["for"] = json!(length);
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            show(json_out, client.post("/bans", Some(body))?, |v| {
                println!(
                    "banned {} for {}s{}",
                    text(&v["net"]),
                    text(&v["remaining_secs"]),
                    v["note"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                );
            })
        }
        CtlCommand::Unban { net } => show(
            json_out,
            client.delete("/bans", &[("net", net.as_str())])?,
            |v| println!("unbanned {}", text(&v["net"])),
        ),
        CtlCommand::Sources { top } => show(
            json_out,
            client.get("/sources", &[("top", &top.to_string())])?,
            print_sources,
        ),
        CtlCommand::Clients { top } => show(
            json_out,
            client.get("/clients", &[("top", &top.to_string())])?,
            print_clients,
        ),
        CtlCommand::Reload => show(json_out, client.post("/reload", None)?, |v| {
            println!("reloaded");
            for (key, label) in [("applied", "applied"), ("needs_restart", "needs a restart")] {
                let items: Vec<String> = v[key]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default();
                if !items.is_empty() {
                    println!("{label}: {}", items.join(", "));
                }
            }
        }),
        CtlCommand::Drain => show(json_out, client.post("/drain", None)?, |_| {
            println!("draining: moat accepts no new clients; connected ones finish");
        }),
        CtlCommand::Metrics => {
            print!("{}", client.text("/metrics")?);
            Ok(())
        }
    }
}

/// Where to reach the API configured by `admin`: an unspecified listen address is reached
/// on loopback.
fn address(admin: &AdminConfig, from_file: bool) -> anyhow::Result<SocketAddr> {
    if !admin.enabled {
        bail!("the admin API is disabled in the config file (admin.enabled = false)");
    }
    let mut addr = admin.listen;
    if addr.port() == 0 {
        bail!(
            "admin.listen has port 0 (moat logs the port it picked): pass --admin ADDR{}",
            if from_file { "" } else { " or --config FILE" }
        );
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// A blocking client of the admin API.
struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(addr: SocketAddr, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            base: format!("http://{addr}"),
            token,
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let mut req = self.auth(self.agent.get(format!("{}{path}", self.base)));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        self.json(path, req.call())
    }

    fn delete(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let mut req = self.auth(self.agent.delete(format!("{}{path}", self.base)));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        self.json(path, req.call())
    }

    fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let req = self.auth(self.agent.post(format!("{}{path}", self.base)));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
        self.json(path, resp)
    }

    fn text(&self, path: &str) -> anyhow::Result<String> {
        let req = self.auth(self.agent.get(format!("{}{path}", self.base)));
        let (status, body) = self.read(path, req.call())?;
        if !(200..300).contains(&status) {
            bail!("{}", failure(status, &body));
        }
        Ok(body)
    }

    fn read(
        &self,
        path: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<(u16, String)> {
        let mut resp =
            resp.with_context(|| format!("cannot reach the admin API at {}{path}", self.base))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {}{path}", self.base))?;
        Ok((status, body))
    }

    fn json(
        &self,
        path: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.read(path, resp)?;
        if !(200..300).contains(&status) {
            bail!("{}", failure(status, &body));
        }
        serde_json::from_str(&body)
            .with_context(|| format!("the admin API answered {path} with something not JSON"))
    }
}

/// The error line for a non-2xx answer: the API's `error` text when it sent one.
fn failure(status: u16, body: &str) -> String {
    let text = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    format!("admin API answered {status}: {text}")
}

fn show(json_out: bool, value: Value, human: impl FnOnce(&Value)) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        human(&value);
    }
    Ok(())
}

/// A JSON scalar as plain text (`-` for null).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print_status(v: &Value) {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), text(other))),
        }
    }
    let mut fields = Vec::new();
    walk("", v, &mut fields);
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        println!("{k:<width$}  {v}");
    }
}

fn print_bans(v: &Value) {
    let bans = v["bans"].as_array().cloned().unwrap_or_default();
    if bans.is_empty() {
        println!("no bans in force");
        return;
    }
    let rows: Vec<Vec<String>> = bans
        .iter()
        .map(|b| {
            vec![
                text(&b["net"]),
                format!("{}s", text(&b["remaining_secs"])),
                text(&b["repeat"]),
                text(&b["reason"]),
                b["note"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    table(&["NET", "REMAINING", "REPEAT", "REASON", "NOTE"], &rows);
}

fn print_sources(v: &Value) {
    let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    println!("by connections held:");
    let rows: Vec<Vec<String>> = list("by_connections")
        .iter()
        .map(|s| vec![text(&s["ip"]), text(&s["connections"])])
        .collect();
    if rows.is_empty() {
        println!("  (none)");
    } else {
        table(&["IP", "CONNECTIONS"], &rows);
    }
    println!("\nby recent refusals and strikes:");
    let rows: Vec<Vec<String>> = list("by_refusals")
        .iter()
        .map(|s| {
            vec![
                text(&s["ip"]),
                text(&s["refusals"]),
                text(&s["strikes"]),
                text(&s["bans"]),
                s["banned_secs"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), |n| format!("{n}s")),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("  (none)");
    } else {
        table(&["IP", "REFUSALS", "STRIKES", "BANS", "BANNED"], &rows);
    }
    println!(
        "\n({} of {} remembered sources examined)",
        text(&v["scanned"]),
        text(&v["sources"])
    );
}

fn print_clients(v: &Value) {
    let clients = v["clients"].as_array().cloned().unwrap_or_default();
    if clients.is_empty() {
        println!("no clients");
        return;
    }
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            vec![
                text(&c["id"]),
                text(&c["addr"]),
                text(&c["user"]),
                text(&c["unread_output"]),
                text(&c["in_flight"]),
                format!("{}s", text(&c["age_secs"])),
                format!("{}s", text(&c["idle_secs"])),
                text(&c["holds"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "ADDR",
            "USER",
            "UNREAD",
            "IN_FLIGHT",
            "AGE",
            "IDLE",
            "HOLDS",
        ],
        &rows,
    );
}
