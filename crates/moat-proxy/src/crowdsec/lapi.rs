//! The HTTP calls to the CrowdSec LAPI: a machine's login and alerts, a bouncer's
//! decision stream. Blocking (ureq), each bounded by the configured timeout and body size.

use std::time::{Duration, Instant};

use serde_json::Value;

/// A JWT is used for at most this long before logging in again (the LAPI's last an hour).
const TOKEN_LIFE: Duration = Duration::from_secs(30 * 60);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LapiError {
    /// No answer: the LAPI is down, unreachable or too slow.
    #[error("LAPI unreachable: {0}")]
    Down(String),
    /// The LAPI refused the credentials (status 401 or 403).
    #[error("LAPI refused the {what} (HTTP {status}): check crowdsec.{what}")]
    Auth {
        /// The credential refused: `password` (with `machine_id`) or `bouncer_key`.
        what: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// An answer moat cannot use: another status, too large, not the expected JSON.
    #[error("bad LAPI answer: {0}")]
    Bad(String),
}

/// A client of one LAPI.
pub(crate) struct Lapi {
    agent: ureq::Agent,
    base: String,
    max_body: u64,
    /// The machine's JWT and when it was obtained.
    token: Option<(String, Instant)>,
}

impl Lapi {
    /// A client of the LAPI at `base` (`http://host:port`).
    pub(crate) fn new(base: &str, timeout: Duration, max_body: u64) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            // The LAPI refuses a machine's login with a user agent not of the form
            // `name/version` ("bad user agent"), whatever the password.
            .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            max_body,
            token: None,
        }
    }

    fn read(&self, resp: ureq::http::Response<ureq::Body>) -> Result<(u16, String), LapiError> {
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let text = body
            .with_config()
            .limit(self.max_body)
            .read_to_string()
            .map_err(|e| LapiError::Bad(format!("reading the answer: {e}")))?;
        Ok((status, text))
    }

    fn login(
        &mut self,
        machine_id: &str,
        password: &str,
        now: Instant,
    ) -> Result<String, LapiError> {
        let body = serde_json::json!({"machine_id": machine_id, "password": password});
        let resp = self
            .agent
            .post(format!("{}/v1/watchers/login", self.base))
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| LapiError::Down(e.to_string()))?;
        let (status, text) = self.read(resp)?;
        match status {
            200 => {}
            401 | 403 => {
                return Err(LapiError::Auth {
                    what: "password",
                    status,
                });
            }
            _ => return Err(LapiError::Bad(format!("login: HTTP {status}"))),
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| LapiError::Bad(format!("login answer not JSON: {e}")))?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() < 8192)
            .ok_or_else(|| LapiError::Bad("login answer without a token".into()))?
            .to_owned();
        self.token = Some((token.clone(), now));
        Ok(token)
    }

    /// Pushes `alerts` (a JSON list) as `machine_id`, logging in first when needed and once
    /// more when the token was refused (expired, or the LAPI restarted).
    pub(crate) fn push(
        &mut self,
        alerts: &Value,
        machine_id: &str,
        password: &str,
        now: Instant,
    ) -> Result<(), LapiError> {
        let body = alerts.to_string();
        for attempt in 0..2 {
            let token = match &self.token {
                Some((t, at))
                    if attempt == 0 && now.saturating_duration_since(*at) < TOKEN_LIFE =>
                {
                    t.clone()
                }
                _ => self.login(machine_id, password, now)?,
            };
            let resp = self
                .agent
                .post(format!("{}/v1/alerts", self.base))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .send(body.as_str())
                .map_err(|e| LapiError::Down(e.to_string()))?;
            let (status, _) = self.read(resp)?;
            match status {
                200 | 201 => return Ok(()),
                401 | 403 if attempt == 0 => self.token = None,
                401 | 403 => {
                    return Err(LapiError::Auth {
                        what: "password",
                        status,
                    });
                }
                _ => return Err(LapiError::Bad(format!("alerts: HTTP {status}"))),
            }
        }
        Err(LapiError::Bad("alerts: refused twice".into()))
    }

    /// The decision stream as a bouncer: everything in force when `startup`, else what
    /// changed since the last call.
    pub(crate) fn stream(&self, key: &str, startup: bool) -> Result<String, LapiError> {
        let resp = self
            .agent
            .get(format!(
                "{}/v1/decisions/stream?startup={startup}",
                self.base
            ))
            .header("x-api-key", key)
            .call()
            .map_err(|e| LapiError::Down(e.to_string()))?;
        let (status, text) = self.read(resp)?;
        match status {
            200 => Ok(text),
            401 | 403 => Err(LapiError::Auth {
                what: "bouncer_key",
                status,
            }),
            _ => Err(LapiError::Bad(format!("decisions stream: HTTP {status}"))),
        }
    }
}
