//! `moat audit redis://[user:pass@]host:port`: checks a Redis server's and its host's
//! hardening against connection exhaustion (moat-audit does the work) and prints a report,
//! emits the fixes as files, or applies the safe ones (`--fix`).
//!
//! Exit status: 0 when nothing worse than info was found, 3 low, 4 medium, 5 high,
//! 6 critical; 1 when the audit could not run (unreachable, bad URL); 2 for usage errors.
//! With `--emit` it is 0 once the file is written (so `> file` pipelines keep working).
//! With `--fix` it is that of the audit after the changes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use moat_audit::{Audit, emit, fix, report};

/// `moat audit`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// The Redis to audit: `redis://[user:pass@]host:port`. Run it on Redis's host to get
    /// the kernel, fd-limit and file checks too.
    url: String,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print a file with the fixes instead of the report.
    #[arg(long, value_enum, conflicts_with = "fix")]
    emit: Option<Emit>,
    /// Apply the safe `CONFIG SET` fixes to the running Redis (asks first), and offer
    /// `CONFIG REWRITE`; never what needs a restart or the kernel.
    #[arg(long)]
    fix: bool,
    /// With `--fix`: do not ask (and rewrite the config file when Redis has one).
    #[arg(long, requires = "fix")]
    yes: bool,
    /// Longest wait for a connection or a reply.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// moat's config file, for `--emit nftables`: its guard limits, trusted and denied
    /// networks and table name (moat's defaults otherwise).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// For people; coloured on a terminal (unless NO_COLOR is set).
    Text,
    /// One JSON document.
    Json,
    /// SARIF 2.1.0, for CI code scanning.
    Sarif,
}

/// Files `--emit` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Emit {
    /// A snippet to append to redis.conf.
    RedisConf,
    /// A file for /etc/sysctl.d/.
    Sysctl,
    /// moat's nftables table for the port audited.
    Nftables,
}

/// Runs the audit and exits with its status.
pub(crate) fn main(args: AuditArgs) -> anyhow::Result<()> {
    let audit = run(&args.url, args.timeout)?;
    let code = if let Some(what) = args.emit {
        let text = match what {
            Emit::RedisConf => emit::redis_conf::render(&audit),
            Emit::Sysctl => emit::sysctl::render(&audit),
            Emit::Nftables => {
                let config = match &args.config {
                    Some(path) => moat_proxy::Config::load(path)?,
                    None => moat_proxy::Config::default(),
                };
                let port = audit.facts.port.unwrap_or(6379);
                emit::nftables::render(&moat_proxy::nftables_spec(&config, port))
            }
        };
        print!("{text}");
        let name = clap::ValueEnum::to_possible_value(&what)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        eprintln!(
            "moat audit: {} finding(s) on {}; emitted {name}",
            audit.evaluation.findings.len(),
            audit.facts.target,
        );
        0
    } else if args.fix {
        print!("{}", render(&audit, Format::Text));
        let after = apply_fixes(&args, &audit)?;
        after.map_or_else(|| audit.exit_code(), |a| a.exit_code())
    } else {
        print!("{}", render(&audit, args.format));
        audit.exit_code()
    };
    std::io::stdout().flush()?;
    std::process::exit(code);
}

fn run(url: &str, timeout: Duration) -> anyhow::Result<Audit> {
    let facts = moat_audit::collect(url, timeout)?;
    Ok(Audit::new(facts))
}

fn render(audit: &Audit, format: Format) -> String {
    match format {
        Format::Text => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            report::text::render(audit, colour)
        }
        Format::Json => report::json::render(audit) + "\n",
        Format::Sarif => report::sarif::render(audit) + "\n",
    }
}

/// The `--fix` dialogue; the audit after the changes, or `None` when nothing was changed.
fn apply_fixes(args: &AuditArgs, audit: &Audit) -> anyhow::Result<Option<Audit>> {
    let changes = fix::plan(audit);
    if changes.is_empty() {
        println!("\n--fix: no finding has a fix that is safe to apply live.");
        return Ok(None);
    }
    println!("\n--fix would run on {}:", audit.facts.target);
    for c in &changes {
        println!(
            "  CONFIG SET {} \"{}\"   (now {}; fixes {})",
            c.name,
            c.value,
            c.current.as_deref().unwrap_or("unknown"),
            c.id
        );
    }
    if !args.yes && !ask("Apply these changes?")? {
        println!("Nothing changed.");
        return Ok(None);
    }
    let results = fix::apply(&args.url, args.timeout, &changes)?;
    let mut applied = 0;
    for (c, r) in &results {
        match r {
            Ok(()) => {
                applied += 1;
                println!("  set {} {}", c.name, c.value);
            }
            Err(e) => println!("  refused {}: {e}", c.name),
        }
    }
    if applied > 0 && fix::can_rewrite(audit) {
        let path = audit.facts.info("config_file").unwrap_or_default();
        if args.yes
            || ask(&format!(
                "Persist them with CONFIG REWRITE (rewrites {path})?"
            ))?
        {
            match fix::rewrite(&args.url, args.timeout) {
                Ok(()) => println!("  CONFIG REWRITE: {path} updated"),
                Err(e) => println!("  {e}"),
            }
        }
    } else if applied > 0 {
        println!(
            "  Redis runs without a config file: add the settings to its startup options \
             (`--emit redis-conf`) or they are lost at restart."
        );
    }
    let after = run(&args.url, args.timeout).context("auditing again after the fixes")?;
    println!("\nAfter --fix:");
    print!("{}", render(&after, Format::Text));
    Ok(Some(after))
}

fn ask(question: &str) -> anyhow::Result<bool> {
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}
