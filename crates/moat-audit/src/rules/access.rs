//! Who may connect and what they may run: the default user's password, protected mode,
//! the bound interfaces, dangerous commands open to the default user, the config file's
//! permissions and the process's owner.

use super::{CheckInfo, Evaluation, Fix, Severity, finding, no_config, no_host};
use crate::facts::Facts;

/// The commands an attacker uses to reconfigure, stall, wipe or stop Redis, or to grant
/// themselves the rest (ACL SETUSER, MODULE LOAD), as the command lines `ACL DRYRUN` is
/// asked about, with the ACL rule that removes each.
pub const DANGEROUS: &[(&str, &str)] = &[
    ("CONFIG SET maxclients 1", "-config"),
    ("DEBUG SLEEP 0", "-debug"),
    ("FLUSHALL", "-flushall"),
    ("CLIENT KILL ID 1", "-client|kill"),
    ("SHUTDOWN", "-shutdown"),
    ("ACL SETUSER moat-audit-probe", "-acl|setuser"),
    ("MODULE LOAD /nonexistent.so", "-module"),
];

/// How a dangerous command line is named in reports: the command, and its subcommand
/// when the rule names one.
fn command_name(line: &str, rule: &str) -> String {
    let words = if rule.contains('|') || line.starts_with("CONFIG") {
        2
    } else {
        1
    };
    line.split_whitespace()
        .take(words)
        .collect::<Vec<_>>()
        .join(" ")
}

const SECURITY: &str = "https://redis.io/docs/latest/operate/oss_and_stack/management/security/";

const NO_PASSWORD: CheckInfo = CheckInfo {
    id: "default-user-no-password",
    severity: Severity::High,
    title: "the default user needs no password",
    reference: SECURITY,
};
const PROTECTED: CheckInfo = CheckInfo {
    id: "protected-mode-off",
    severity: Severity::Low,
    title: "protected mode is off",
    reference: SECURITY,
};
const BIND_ALL: CheckInfo = CheckInfo {
    id: "bound-to-all-interfaces",
    severity: Severity::Medium,
    title: "Redis listens on every interface",
    reference: SECURITY,
};
const DANGEROUS_OPEN: CheckInfo = CheckInfo {
    id: "dangerous-commands-open",
    severity: Severity::Medium,
    title: "the default user may run CONFIG, DEBUG, FLUSHALL, CLIENT KILL, SHUTDOWN, ACL SETUSER or MODULE",
    reference: "https://redis.io/docs/latest/operate/oss_and_stack/management/security/acl/",
};
const FILE_MODE: CheckInfo = CheckInfo {
    id: "config-file-permissions",
    severity: Severity::Medium,
    title: "the config file is readable or writable by other users, or owned by another",
    reference: "Lynis test DBS-1882, Redis configuration file (https://github.com/CISOfy/lynis, include/tests_databases)",
};
const ROOT: CheckInfo = CheckInfo {
    id: "runs-as-root",
    severity: Severity::Medium,
    title: "Redis runs as root",
    reference: SECURITY,
};

/// The checks of this module.
pub const CHECKS: &[CheckInfo] = &[
    NO_PASSWORD,
    PROTECTED,
    BIND_ALL,
    DANGEROUS_OPEN,
    FILE_MODE,
    ROOT,
];

pub(crate) fn run(f: &Facts, ev: &mut Evaluation) {
    let nopass = no_password(f);
    let exposed = exposure(f);
    password(f, ev, nopass, exposed);
    protected(f, ev, nopass);
    bind(f, ev, exposed);
    dangerous(f, ev, nopass);
    file_mode(f, ev);
    root(f, ev);
}

/// Whether the default user logs in without a password; `None` when unknown.
pub fn no_password(f: &Facts) -> Option<bool> {
    if let Some(u) = &f.redis.default_user {
        return Some(u.enabled && u.nopass);
    }
    if f.redis.unauthenticated_access == Some(true) {
        return Some(true);
    }
    f.config("requirepass").map(str::is_empty)
}

/// Whether the bind list includes anything but loopback; `None` when unknown.
pub fn exposure(f: &Facts) -> Option<bool> {
    let bind = f.config("bind")?;
    let addrs: Vec<&str> = bind.split_whitespace().collect();
    if addrs.is_empty() {
        return Some(true);
    }
    Some(addrs.iter().any(|a| {
        let a = a.trim_start_matches('-');
        !(a == "localhost" || a == "::1" || a.starts_with("127."))
    }))
}

fn password(f: &Facts, ev: &mut Evaluation, nopass: Option<bool>, exposed: Option<bool>) {
    let protected_off = f.config("protected-mode") == Some("no");
    match nopass {
        None => ev.skip(
            NO_PASSWORD.id,
            if f.redis.reachable {
                "neither ACL GETUSER default nor CONFIG GET requirepass answered".to_owned()
            } else {
                no_config(f, "requirepass")
            },
        ),
        Some(false) => {}
        Some(true) => {
            let open = exposed == Some(true) && protected_off;
            let severity = if open {
                Severity::Critical
            } else {
                NO_PASSWORD.severity
            };
            let evidence = if open {
                "the default user needs no password, protected mode is off and Redis listens \
                 beyond loopback: anyone who reaches the port owns it"
            } else {
                "the default user needs no password: any process that reaches the port can \
                 run any command"
            };
            ev.push(finding(
                &NO_PASSWORD,
                severity,
                evidence.to_owned(),
                Fix {
                    text: "Give the default user a long random password: `ACL SETUSER \
                           default on >$(openssl rand -hex 32)` (or `requirepass` in \
                           redis.conf), give it to the clients, then `CONFIG REWRITE`. \
                           moat in front can check AUTH before Redis sees the client."
                        .to_owned(),
                    redis_conf: vec![
                        "# requirepass <a long random secret>   (choose one; give it to the clients)"
                            .to_owned(),
                    ],
                    ..Fix::default()
                },
            ));
        }
    }
}

fn protected(f: &Facts, ev: &mut Evaluation, nopass: Option<bool>) {
    match f.config("protected-mode") {
        None => ev.skip(PROTECTED.id, no_config(f, "protected-mode")),
        Some("no") => {
            let severity = if nopass == Some(true) {
                Severity::High
            } else {
                PROTECTED.severity
            };
            ev.push(finding(
                &PROTECTED,
                severity,
                if nopass == Some(true) {
                    "protected-mode is no and the default user needs no password: clients \
                     from any address are served"
                        .to_owned()
                } else {
                    "protected-mode is no (it matters only while the default user has no \
                     password)"
                        .to_owned()
                },
                Fix {
                    text: "Set `protected-mode yes` (`CONFIG SET protected-mode yes` when no \
                           remote client relies on password-less access)."
                        .to_owned(),
                    redis_conf: vec!["protected-mode yes".to_owned()],
                    ..Fix::default()
                },
            ));
        }
        Some(_) => {}
    }
}

fn bind(f: &Facts, ev: &mut Evaluation, exposed: Option<bool>) {
    let Some(bind) = f.config("bind") else {
        return ev.skip(BIND_ALL.id, no_config(f, "bind"));
    };
    let all = bind.split_whitespace().next().is_none()
        || bind
            .split_whitespace()
            .map(|a| a.trim_start_matches('-'))
            .any(|a| matches!(a, "*" | "0.0.0.0" | "::" | "::*"));
    if all && exposed == Some(true) {
        ev.push(finding(
            &BIND_ALL,
            BIND_ALL.severity,
            format!("bind is `{bind}`"),
            Fix {
                text: "Bind loopback and the one private address clients use: `bind \
                       127.0.0.1 -::1 <private address>` (restart), and filter the port \
                       (`--emit nftables`)."
                    .to_owned(),
                redis_conf: vec!["bind 127.0.0.1 -::1".to_owned()],
                ..Fix::default()
            },
        ));
    }
}

fn dangerous(f: &Facts, ev: &mut Evaluation, nopass: Option<bool>) {
    if f.redis.default_user_commands.is_empty() {
        let why = if f.redis.reachable {
            "ACL DRYRUN default ... was refused (Redis before 7.0, or the audit's user may \
             not run ACL)"
                .to_owned()
        } else {
            no_config(f, "the default user's commands")
        };
        return ev.skip(DANGEROUS_OPEN.id, why);
    }
    if f.redis.default_user.as_ref().is_some_and(|u| !u.enabled) {
        return;
    }
    let open: Vec<(&str, &str)> = DANGEROUS
        .iter()
        .filter(|(cmd, _)| f.redis.default_user_commands.get(*cmd) == Some(&true))
        .copied()
        .collect();
    if open.is_empty() {
        return;
    }
    let names: Vec<String> = open
        .iter()
        .map(|(cmd, rule)| command_name(cmd, rule))
        .collect();
    let rules: Vec<&str> = open.iter().map(|(_, rule)| *rule).collect();
    let severity = if nopass == Some(true) {
        Severity::High
    } else {
        DANGEROUS_OPEN.severity
    };
    let mut redis_conf = Vec::new();
    match &f
        .redis
        .default_user
        .as_ref()
        .and_then(|u| u.acl_line.clone())
    {
        Some(line) if !line.contains('(') => {
            redis_conf.push(
                "# the default user without the dangerous commands (INFO stays allowed for \
                 monitoring; its password hashes are kept)"
                    .to_owned(),
            );
            redis_conf.push(format!("{line} {}", rules.join(" ")));
        }
        _ => redis_conf.push(format!(
            "# ACL SETUSER default {}   (then CONFIG REWRITE)",
            rules.join(" ")
        )),
    }
    ev.push(finding(
        &DANGEROUS_OPEN,
        severity,
        format!(
            "ACL DRYRUN says the default user may run: {}",
            names.join(", ")
        ),
        Fix {
            text: format!(
                "`ACL SETUSER default {}` then `CONFIG REWRITE` (or `ACL SAVE` with an \
                 aclfile); give administrators a user of their own. INFO stays allowed, so \
                 monitoring keeps working. Prefer ACL to `rename-command`, which also \
                 hides CONFIG from monitoring.",
                rules.join(" ")
            ),
            redis_conf,
            ..Fix::default()
        },
    ));
}

fn file_mode(f: &Facts, ev: &mut Evaluation) {
    let Some(file) = &f.host.config_file else {
        let why = match f.info("config_file") {
            Some("") => "Redis was started without a config file".to_owned(),
            Some(path) if f.local => format!("{path} could not be read (see the gaps)"),
            _ => no_host(f, "the config file"),
        };
        return ev.skip(FILE_MODE.id, why);
    };
    let mode = file.mode & 0o777;
    let foreign_owner = file.uid != 0 && f.host.redis_uid.is_some_and(|uid| uid != file.uid);
    let (severity, what) = if mode & 0o022 != 0 {
        (Severity::High, "writable by other users".to_owned())
    } else if mode & 0o004 != 0 {
        (FILE_MODE.severity, "readable by every user".to_owned())
    } else if foreign_owner {
        (
            Severity::Low,
            format!(
                "owned by uid {}, neither root nor Redis's user, who can change Redis's config",
                file.uid
            ),
        )
    } else {
        return;
    };
    ev.push(finding(
        &FILE_MODE,
        severity,
        format!(
            "{} has mode {mode:03o}: {what} (it can hold requirepass and masterauth, and \
             CONFIG REWRITE writes it)",
            file.path
        ),
        Fix {
            text: format!(
                "`chmod 640 {}` and let only root and Redis's user own it.",
                file.path
            ),
            ..Fix::default()
        },
    ));
}

fn root(f: &Facts, ev: &mut Evaluation) {
    match f.host.redis_uid {
        None => ev.skip(ROOT.id, no_host(f, "the Redis process's owner")),
        Some(0) => ev.push(finding(
            &ROOT,
            ROOT.severity,
            "the Redis process's real user id is 0".to_owned(),
            Fix {
                text: "Run Redis as a dedicated unprivileged user (systemd `User=redis`, as \
                       Debian's package does): CONFIG SET dir/dbfilename then cannot write \
                       where root can."
                    .to_owned(),
                ..Fix::default()
            },
        )),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::facts::{DefaultUser, FileFacts};
    use crate::rules::test_facts::with_config;
    use crate::rules::{Severity, evaluate};

    fn sev(ev: &crate::rules::Evaluation, id: &str) -> Option<Severity> {
        ev.findings.iter().find(|f| f.id == id).map(|f| f.severity)
    }

    #[test]
    fn password_exposure_and_protected_mode() {
        let f = with_config(&[
            ("requirepass", ""),
            ("protected-mode", "no"),
            ("bind", "* -::*"),
        ]);
        let ev = evaluate(&f);
        assert_eq!(
            sev(&ev, "default-user-no-password"),
            Some(Severity::Critical)
        );
        assert_eq!(sev(&ev, "protected-mode-off"), Some(Severity::High));
        assert_eq!(sev(&ev, "bound-to-all-interfaces"), Some(Severity::Medium));
        let f = with_config(&[
            ("requirepass", ""),
            ("protected-mode", "yes"),
            ("bind", "127.0.0.1 -::1"),
        ]);
        let ev = evaluate(&f);
        assert_eq!(sev(&ev, "default-user-no-password"), Some(Severity::High));
        assert!(!ev.has("protected-mode-off") && !ev.has("bound-to-all-interfaces"));
        let f = with_config(&[("requirepass", "s3cret"), ("bind", "10.0.0.5")]);
        let ev = evaluate(&f);
        assert!(!ev.has("default-user-no-password") && !ev.has("bound-to-all-interfaces"));
    }

    #[test]
    fn acl_beats_requirepass() {
        let mut f = with_config(&[("requirepass", "")]);
        f.redis.default_user = Some(DefaultUser {
            enabled: true,
            nopass: false,
            passwords: 1,
            ..DefaultUser::default()
        });
        assert!(!evaluate(&f).has("default-user-no-password"));
    }

    #[test]
    fn dangerous_commands() {
        let mut f = with_config(&[("requirepass", "x")]);
        assert!(
            evaluate(&f)
                .skipped
                .iter()
                .any(|s| s.id == "dangerous-commands-open")
        );
        for (cmd, _) in super::DANGEROUS {
            f.redis
                .default_user_commands
                .insert((*cmd).into(), cmd.starts_with("FLUSHALL"));
        }
        f.redis.default_user = Some(DefaultUser {
            enabled: true,
            nopass: false,
            passwords: 1,
            commands: "+@all".into(),
            keys: "~*".into(),
            channels: "&*".into(),
            acl_line: Some("user default on #abc ~* &* +@all".into()),
        });
        let ev = evaluate(&f);
        let hit = ev
            .findings
            .iter()
            .find(|x| x.id == "dangerous-commands-open")
            .expect("found");
        assert_eq!(hit.severity, Severity::Medium);
        assert!(hit.evidence.contains("FLUSHALL") && !hit.evidence.contains("CONFIG"));
        assert_eq!(
            hit.fix.redis_conf.last().map(String::as_str),
            Some("user default on #abc ~* &* +@all -flushall")
        );
        for (cmd, _) in super::DANGEROUS {
            f.redis.default_user_commands.insert((*cmd).into(), false);
        }
        assert!(!evaluate(&f).has("dangerous-commands-open"));
    }

    #[test]
    fn file_mode_and_root() {
        let mut f = with_config(&[]);
        f.host.config_file = Some(FileFacts {
            path: "/etc/redis/redis.conf".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        f.host.redis_uid = Some(0);
        let ev = evaluate(&f);
        assert_eq!(sev(&ev, "config-file-permissions"), Some(Severity::Medium));
        assert!(ev.has("runs-as-root"));
        f.host.config_file.as_mut().expect("set").mode = 0o666;
        assert_eq!(
            sev(&evaluate(&f), "config-file-permissions"),
            Some(Severity::High)
        );
        f.host.config_file.as_mut().expect("set").mode = 0o640;
        f.host.redis_uid = Some(110);
        let ev = evaluate(&f);
        assert!(!ev.has("config-file-permissions") && !ev.has("runs-as-root"));
        f.host.config_file.as_mut().expect("set").uid = 1000;
        assert_eq!(
            sev(&evaluate(&f), "config-file-permissions"),
            Some(Severity::Low)
        );
        f.host.config_file.as_mut().expect("set").uid = 110;
        assert!(!evaluate(&f).has("config-file-permissions"));
    }
}
