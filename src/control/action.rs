//! Requests -> [`Action`]: the one place that knows the routes. Pure: no sockets, no
//! backend. The server turns an [`ApiError`] into its status code and `{"error": ...}`.

use super::types::ShutdownRequest;
use http::{Method, StatusCode};

/// The `Upgrade` protocol name that attaches to the serial console.
pub const CONSOLE_UPGRADE: &str = "console";

/// Everything a client can ask of the launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `GET /v1/status`; with `If-None-Match`, a long poll (see [`StatusWait`]).
    GetStatus { wait: Option<StatusWait> },
    /// `GET /v1/network`
    GetNetwork,
    /// `GET /v1/domain`
    GetDomain,
    /// `GET /v1/console[?follow=true]`: the console log, optionally followed.
    GetConsole { follow: bool },
    /// `GET /v1/console` with `Upgrade: console`: a raw byte stream to the serial console.
    AttachConsole,
    /// `POST /v1/{shutdown,pause,resume,kill}`
    Lifecycle(LifecycleAction),
}

/// A long poll of `GET /v1/status`: `If-None-Match: "<version>"` (the `ETag` of an
/// earlier answer) with `Prefer: wait=<seconds>`. The answer comes once the status version
/// differs from `seen`, or as `304 Not Modified` when it still is after `seconds` (0: at
/// once). A watcher (the handler) learns of each change as it happens, without polling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusWait {
    pub seen: u64,
    pub seconds: u32,
}

/// A status version as an `ETag`: the number, quoted.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The version an [`etag`] holds (surrounding whitespace allowed).
pub fn parse_etag(tag: &str) -> Option<u64> {
    tag.trim()
        .strip_prefix('"')?
        .strip_suffix('"')?
        .parse()
        .ok()
}

/// The longest `Prefer: wait` honoured; a longer one is cut to this.
pub const MAX_STATUS_WAIT_SECONDS: u32 = 300;

/// What the lifecycle endpoints ask the launcher to do with the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleAction {
    /// ACPI power-off, then destroy after the grace period (the VMI's when `None`).
    Shutdown {
        grace_period_seconds: Option<u32>,
    },
    Pause,
    Resume,
    /// Destroy the domain at once.
    Kill,
}

impl LifecycleAction {
    /// The endpoint's last path segment, e.g. `pause`.
    pub fn name(self) -> &'static str {
        match self {
            LifecycleAction::Shutdown { .. } => "shutdown",
            LifecycleAction::Pause => "pause",
            LifecycleAction::Resume => "resume",
            LifecycleAction::Kill => "kill",
        }
    }

    /// The path it is served on.
    pub fn path(self) -> &'static str {
        match self {
            LifecycleAction::Shutdown { .. } => "/v1/shutdown",
            LifecycleAction::Pause => "/v1/pause",
            LifecycleAction::Resume => "/v1/resume",
            LifecycleAction::Kill => "/v1/kill",
        }
    }
}

/// One served (method, path) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

/// Every route the server answers; the OpenAPI file must document exactly these.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/v1/status",
    },
    Route {
        method: "GET",
        path: "/v1/network",
    },
    Route {
        method: "GET",
        path: "/v1/domain",
    },
    Route {
        method: "GET",
        path: "/v1/console",
    },
    Route {
        method: "POST",
        path: "/v1/shutdown",
    },
    Route {
        method: "POST",
        path: "/v1/pause",
    },
    Route {
        method: "POST",
        path: "/v1/resume",
    },
    Route {
        method: "POST",
        path: "/v1/kill",
    },
];

/// A request the API refuses, or a backend failure, with the status code it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("no such endpoint: {path}")]
    NotFound { path: String },
    #[error("method {method} not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("bad request to {path}: {reason}")]
    BadRequest { path: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The parts of a request that decide its action.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The `Upgrade` header when `Connection` includes `upgrade`.
    pub upgrade: Option<&'a str>,
    /// The `If-None-Match` header.
    pub if_none_match: Option<&'a str>,
    /// The `Prefer` header.
    pub prefer: Option<&'a str>,
    pub body: &'a [u8],
}

/// Parse a request into its [`Action`], or say why it is refused.
pub fn parse(req: RequestParts<'_>) -> Result<Action, ApiError> {
    let path = req.path;
    let bad = |reason: String| ApiError::BadRequest {
        path: path.to_string(),
        reason,
    };
    let route = ROUTES
        .iter()
        .find(|r| r.path == path)
        .ok_or_else(|| ApiError::NotFound {
            path: path.to_string(),
        })?;
    if req.method.as_str() != route.method {
        return Err(ApiError::MethodNotAllowed {
            method: req.method.to_string(),
            path: path.to_string(),
            allowed: route.method,
        });
    }
    if path != "/v1/console" {
        if let Some(q) = req.query.filter(|q| !q.is_empty()) {
            return Err(bad(format!("unexpected query {q:?}")));
        }
        if let Some(u) = req.upgrade {
            return Err(bad(format!("cannot upgrade to {u:?} here")));
        }
    }
    let empty_body = || {
        if req.body.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(bad("this endpoint takes no body".into()))
        }
    };
    let action = match path {
        "/v1/status" => Action::GetStatus {
            wait: parse_status_wait(req.if_none_match, req.prefer).map_err(bad)?,
        },
        "/v1/network" => Action::GetNetwork,
        "/v1/domain" => Action::GetDomain,
        "/v1/console" => return parse_console(req.query, req.upgrade).map_err(bad),
        "/v1/shutdown" => {
            let body: ShutdownRequest = if req.body.iter().all(u8::is_ascii_whitespace) {
                ShutdownRequest::default()
            } else {
                serde_json::from_slice(req.body).map_err(|e| bad(format!("body: {e}")))?
            };
            return Ok(Action::Lifecycle(LifecycleAction::Shutdown {
                grace_period_seconds: body.grace_period_seconds,
            }));
        }
        "/v1/pause" => Action::Lifecycle(LifecycleAction::Pause),
        "/v1/resume" => Action::Lifecycle(LifecycleAction::Resume),
        "/v1/kill" => Action::Lifecycle(LifecycleAction::Kill),
        other => unreachable!("route {other} in ROUTES but not parsed"),
    };
    empty_body()?;
    Ok(action)
}

/// `If-None-Match: "<version>"` and `Prefer: wait=<seconds>` (RFC 7240; other
/// preferences ignored). Without `If-None-Match` there is nothing to wait for.
fn parse_status_wait(
    if_none_match: Option<&str>,
    prefer: Option<&str>,
) -> Result<Option<StatusWait>, String> {
    let Some(tag) = if_none_match else {
        return Ok(None);
    };
    let seen = parse_etag(tag).ok_or_else(|| {
        format!("If-None-Match {tag:?}: want a status version as an ETag gave it (\"<number>\")")
    })?;
    let mut seconds = 0;
    for pref in prefer.unwrap_or("").split([',', ';']) {
        if let Some((name, value)) = pref.split_once('=')
            && name.trim().eq_ignore_ascii_case("wait")
        {
            let value = value.trim();
            seconds = value
                .parse::<u32>()
                .map_err(|_| format!("Prefer wait={value:?}: want whole seconds"))?
                .min(MAX_STATUS_WAIT_SECONDS);
        }
    }
    Ok(Some(StatusWait { seen, seconds }))
}

fn parse_console(query: Option<&str>, upgrade: Option<&str>) -> Result<Action, String> {
    let mut follow = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("follow", "true" | "1")) => follow = true,
            Some(("follow", "false" | "0")) => follow = false,
            Some(("follow", v)) => return Err(format!("follow={v:?}: want true or false")),
            _ => return Err(format!("unknown query parameter {pair:?}")),
        }
    }
    match upgrade {
        None => Ok(Action::GetConsole { follow }),
        Some(u) if !u.eq_ignore_ascii_case(CONSOLE_UPGRADE) => Err(format!(
            "cannot upgrade to {u:?}; the console speaks {CONSOLE_UPGRADE:?}"
        )),
        Some(_) if follow => Err("follow and upgrade exclude each other".into()),
        Some(_) => Ok(Action::AttachConsole),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a Method, path: &'a str) -> RequestParts<'a> {
        RequestParts {
            method,
            path,
            query: None,
            upgrade: None,
            if_none_match: None,
            prefer: None,
            body: b"",
        }
    }

    #[test]
    fn every_route_parses_to_its_action() {
        let expected = |path: &str| match path {
            "/v1/status" => Action::GetStatus { wait: None },
            "/v1/network" => Action::GetNetwork,
            "/v1/domain" => Action::GetDomain,
            "/v1/console" => Action::GetConsole { follow: false },
            "/v1/shutdown" => Action::Lifecycle(LifecycleAction::Shutdown {
                grace_period_seconds: None,
            }),
            "/v1/pause" => Action::Lifecycle(LifecycleAction::Pause),
            "/v1/resume" => Action::Lifecycle(LifecycleAction::Resume),
            "/v1/kill" => Action::Lifecycle(LifecycleAction::Kill),
            other => panic!("route {other} has no expected action in this test"),
        };
        for r in ROUTES {
            let m = Method::from_bytes(r.method.as_bytes()).unwrap();
            let action =
                parse(req(&m, r.path)).unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
            assert_eq!(action, expected(r.path), "{} {}", r.method, r.path);
            // Each lifecycle action is served on the path it names.
            if let Action::Lifecycle(l) = action {
                assert_eq!(l.path(), r.path);
            }
        }
    }

    #[test]
    fn unknown_path_and_wrong_method() {
        let e = parse(req(&Method::GET, "/v1/nope")).unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = parse(req(&Method::GET, "/v1/pause")).unwrap_err();
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.to_string().contains("allowed: POST"), "{e}");
        let e = parse(req(&Method::DELETE, "/v1/status")).unwrap_err();
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn shutdown_body() {
        let mut r = req(&Method::POST, "/v1/shutdown");
        assert_eq!(
            parse(r).unwrap(),
            Action::Lifecycle(LifecycleAction::Shutdown {
                grace_period_seconds: None
            })
        );
        r.body = br#"{"gracePeriodSeconds": 7}"#;
        assert_eq!(
            parse(r).unwrap(),
            Action::Lifecycle(LifecycleAction::Shutdown {
                grace_period_seconds: Some(7)
            })
        );
        r.body = b"{not json";
        assert_eq!(parse(r).unwrap_err().status(), StatusCode::BAD_REQUEST);
        r.body = br#"{"gracePeriodSeconds": -1}"#;
        assert_eq!(parse(r).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn bodyless_endpoints_refuse_a_body() {
        let mut r = req(&Method::POST, "/v1/pause");
        r.body = b"{}";
        let e = parse(r).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("/v1/pause"), "{e}");
    }

    #[test]
    fn status_long_poll_from_if_none_match_and_prefer_wait() {
        let get = Method::GET;
        let parse_with = |inm: Option<&str>, prefer: Option<&str>| {
            let mut r = req(&get, "/v1/status");
            r.if_none_match = inm;
            r.prefer = prefer;
            parse(r)
        };
        let wait = |seen, seconds| {
            Ok(Action::GetStatus {
                wait: Some(StatusWait { seen, seconds }),
            })
        };
        assert_eq!(
            parse_with(None, Some("wait=30")),
            Ok(Action::GetStatus { wait: None })
        );
        assert_eq!(parse_with(Some("\"7\""), None), wait(7, 0));
        assert_eq!(
            parse_with(Some(" \"7\" "), Some("respond-async, wait=30")),
            wait(7, 30)
        );
        assert_eq!(
            parse_with(Some("\"7\""), Some("Wait = 5; handling=lenient")),
            wait(7, 5)
        );
        assert_eq!(
            parse_with(Some("\"7\""), Some("wait=86400")),
            wait(7, MAX_STATUS_WAIT_SECONDS)
        );
        for (inm, prefer) in [
            ("7", "wait=1"),
            ("\"x\"", "wait=1"),
            ("\"7\"", "wait=soon"),
            ("\"7\"", "wait=-1"),
        ] {
            let e = parse_with(Some(inm), Some(prefer)).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{inm} {prefer}: {e}");
        }
    }

    #[test]
    fn console_query_and_upgrade() {
        let mut r = req(&Method::GET, "/v1/console");
        assert_eq!(parse(r).unwrap(), Action::GetConsole { follow: false });
        r.query = Some("follow=true");
        assert_eq!(parse(r).unwrap(), Action::GetConsole { follow: true });
        r.query = Some("follow=maybe");
        assert_eq!(parse(r).unwrap_err().status(), StatusCode::BAD_REQUEST);
        r.query = Some("tail=10");
        assert_eq!(parse(r).unwrap_err().status(), StatusCode::BAD_REQUEST);
        r.query = None;
        r.upgrade = Some("Console");
        assert_eq!(parse(r).unwrap(), Action::AttachConsole);
        r.upgrade = Some("websocket");
        assert_eq!(parse(r).unwrap_err().status(), StatusCode::BAD_REQUEST);
        r.upgrade = Some("console");
        r.query = Some("follow=true");
        assert_eq!(parse(r).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn query_on_other_endpoints_is_refused() {
        let mut r = req(&Method::GET, "/v1/status");
        r.query = Some("x=1");
        assert_eq!(parse(r).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
