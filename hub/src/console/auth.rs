//! Who is signed in to the console: the link token `edgetwin hub` prints (Jupyter style, signs in
//! once, as `iothubowner`), sign-in with a service connection string (the session then holds that
//! policy and the REST routes enforce its permissions), and the sessions themselves: a random id
//! in an `HttpOnly; Secure; SameSite=Strict` cookie and, per session, a CSRF token that mutating
//! requests must repeat in a header. Sessions are capped per policy, so signing in again and
//! again with one key ends only that key's own oldest sessions, never another policy's. Pure and
//! time-explicit; the handlers in `mod.rs` do the I/O.
//!
//! Depends on the store's records and the hub's host matching only; never on a door.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use edgetwin_wire::connection_string::{ConnectionString, ConnectionStringKind};
use edgetwin_wire::Secret;

use crate::hub::host_matches;
use crate::store::PolicyRecord;

/// The session cookie's name.
pub const COOKIE: &str = "edgetwin_console";
/// The header that carries a session's CSRF token on mutating requests.
pub const CSRF_HEADER: &str = "x-console-csrf";
/// How long a session lasts, in seconds (a working day).
pub const SESSION_SECONDS: u64 = 12 * 60 * 60;
/// Most sessions one shared access policy holds at once; signing in beyond it ends that policy's
/// oldest session (another policy's sessions are never touched).
pub const SESSIONS_PER_POLICY: usize = 16;
/// The policy the printed link signs in as (the one of the printed connection string).
pub const LINK_POLICY: &str = "iothubowner";

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The shared access policy whose permissions the session has.
    pub policy: String,
    /// Must accompany every mutating request in [`CSRF_HEADER`].
    pub csrf: Secret,
    /// Unix time after which the session is gone.
    expires_at: u64,
}

/// A session just started: the cookie value to set and the session.
pub struct Started {
    /// The session id, the cookie's value.
    pub id: Secret,
    /// The session.
    pub session: Session,
}

/// Why a sign-in was refused; the text is safe to show (it never holds key material).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The link's token is not this run's, or the link was used already.
    #[error("this sign-in link is not valid: it signs in once, and each start of `edgetwin hub` prints a new one; sign in with a service connection string instead (`edgetwin hub` prints iothubowner's, and hub.json holds it)")]
    BadLink,
    /// The connection string does not parse.
    #[error("connectionString: {0}")]
    Malformed(String),
    /// A device or module connection string.
    #[error("connectionString: a service connection string is needed (HostName, SharedAccessKeyName, SharedAccessKey), not a device or module one")]
    NotService,
    /// `HostName` names another hub.
    #[error("connectionString: HostName '{given}' is not this hub ('{expected}')")]
    OtherHub {
        /// The host name given.
        given: String,
        /// This hub's host name.
        expected: String,
    },
    /// Unknown policy or wrong key (one message, as IoT Hub's `Unauthorized`).
    #[error("connectionString: the shared access policy or its key is not right")]
    Unauthorized,
}

/// A session as held: the session and the sender whose drop ends its event streams.
struct Held {
    session: Session,
    /// Order of sign-in (sessions of one second share an expiry; this tells the oldest).
    started: u64,
    /// Dropped with the session (sign-out, eviction, expiry): every receiver sees it at once.
    alive: watch::Sender<()>,
}

/// The link token and the sessions.
pub struct Sessions {
    /// The token of the printed link until it is used.
    link_token: Mutex<Option<Secret>>,
    /// Session id -> session.
    by_id: Mutex<HashMap<String, Held>>,
    /// Sessions started so far.
    started: std::sync::atomic::AtomicU64,
}

impl Sessions {
    /// Sessions signed in by `link_token`'s link (once) or by a connection string.
    pub fn new(link_token: Secret) -> Self {
        Self {
            link_token: Mutex::new(Some(link_token)),
            by_id: Mutex::default(),
            started: Default::default(),
        }
    }

    /// The token of the printed link, `None` once it signed in.
    pub fn link_token(&self) -> Option<Secret> {
        self.link_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts an `iothubowner` session if `token` is the link's and the link was not used yet
    /// (a link in a terminal's scrollback or a shell history signs nobody in later).
    pub fn sign_in_with_link(&self, token: &str, now: u64) -> Result<Started, SignInError> {
        let mut link = self.link_token.lock().unwrap_or_else(|e| e.into_inner());
        if !link.as_ref().is_some_and(|t| same(token, t.expose())) {
            return Err(SignInError::BadLink);
        }
        *link = None;
        drop(link);
        Ok(self.start(LINK_POLICY, now))
    }

    /// Starts a session with the policy a service connection string authenticates.
    pub fn sign_in_with_connection_string(
        &self,
        connection_string: &str,
        host_name: &str,
        policies: &[PolicyRecord],
        now: u64,
    ) -> Result<Started, SignInError> {
        let parsed: ConnectionString = connection_string.trim().parse().map_err(
            |e: edgetwin_wire::connection_string::ConnectionStringError| {
                SignInError::Malformed(e.to_string())
            },
        )?;
        if parsed.kind() != ConnectionStringKind::Service {
            return Err(SignInError::NotService);
        }
        if !host_matches(&parsed.host_name, host_name) {
            return Err(SignInError::OtherHub {
                given: parsed.host_name,
                expected: host_name.to_owned(),
            });
        }
        let (Some(name), Some(key)) = (&parsed.shared_access_key_name, &parsed.shared_access_key)
        else {
            return Err(SignInError::NotService);
        };
        let policy = policies
            .iter()
            .find(|p| &p.name == name)
            .filter(|p| {
                same(key.expose(), p.primary_key.expose())
                    | same(key.expose(), p.secondary_key.expose())
            })
            .ok_or(SignInError::Unauthorized)?;
        Ok(self.start(&policy.name, now))
    }

    /// The live session of cookie value `id`.
    pub fn get(&self, id: &str, now: u64) -> Option<Session> {
        let mut by_id = self.lock();
        by_id.retain(|_, held| held.session.expires_at > now);
        by_id.get(id).map(|held| held.session.clone())
    }

    /// A receiver whose `changed()` fails once the session of cookie value `id` ends (signed
    /// out, evicted or expired); `None` if it is not live.
    pub fn watch_end(&self, id: &str) -> Option<watch::Receiver<()>> {
        self.lock().get(id).map(|held| held.alive.subscribe())
    }

    /// Ends the session of cookie value `id` (its event streams end with it).
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    fn start(&self, policy: &str, now: u64) -> Started {
        let id = random_token();
        let session = Session {
            policy: policy.to_owned(),
            csrf: random_token(),
            expires_at: now + SESSION_SECONDS,
        };
        let mut by_id = self.lock();
        by_id.retain(|_, held| held.session.expires_at > now);
        loop {
            let of_policy = by_id.iter().filter(|(_, h)| h.session.policy == policy);
            if of_policy.clone().count() < SESSIONS_PER_POLICY {
                break;
            }
            let Some(oldest) = of_policy
                .min_by_key(|(_, h)| h.started)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            by_id.remove(&oldest);
        }
        let held = Held {
            session: session.clone(),
            started: self
                .started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            alive: watch::channel(()).0,
        };
        by_id.insert(id.expose().to_owned(), held);
        Started { id, session }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Session {
    /// Seconds left until the session expires at `now`.
    pub fn seconds_left(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }
}

/// Whether a CSRF header value is the session's token.
pub fn csrf_matches(session: &Session, header: Option<&str>) -> bool {
    header.is_some_and(|h| same(h, session.csrf.expose()))
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value that stores session `id`.
pub fn set_cookie(id: &Secret) -> String {
    format!(
        "{COOKIE}={}; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age={SESSION_SECONDS}",
        id.expose()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// 32 random bytes, URL-safe base64 (a session id, a CSRF token, the link token).
pub fn random_token() -> Secret {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Vec<PolicyRecord> {
        vec![PolicyRecord {
            name: "registryRead".into(),
            primary_key: Secret::new("cHJpbWFyeQ=="),
            secondary_key: Secret::new("c2Vjb25kYXJ5"),
            permissions: vec!["RegistryRead".into()],
        }]
    }

    fn sessions() -> Sessions {
        Sessions::new(Secret::new("link-token"))
    }

    #[test]
    fn the_printed_link_signs_in_once_as_iothubowner_and_any_other_token_is_refused() {
        let sessions = sessions();
        assert_eq!(
            sessions.sign_in_with_link("link-tokem", 100).err(),
            Some(SignInError::BadLink)
        );
        let started = sessions.sign_in_with_link("link-token", 100).unwrap();
        assert_eq!(started.session.policy, LINK_POLICY);
        assert!(sessions.get(started.id.expose(), 101).is_some());
        assert_eq!(
            sessions.sign_in_with_link("link-token", 102).err(),
            Some(SignInError::BadLink)
        );
        assert!(sessions.link_token().is_none());
    }

    #[test]
    fn a_connection_string_signs_in_with_its_policy_by_either_key() {
        let sessions = sessions();
        for key in ["cHJpbWFyeQ==", "c2Vjb25kYXJ5"] {
            let cs = format!(
                "HostName=localhost:8443;SharedAccessKeyName=registryRead;SharedAccessKey={key}"
            );
            let started = sessions
                .sign_in_with_connection_string(&cs, "localhost", &policies(), 0)
                .unwrap();
            assert_eq!(started.session.policy, "registryRead");
        }
    }

    #[test]
    fn a_wrong_key_an_unknown_policy_another_hub_or_a_device_string_is_refused_without_the_key() {
        let sessions = sessions();
        let refuse = |cs: &str| {
            sessions
                .sign_in_with_connection_string(cs, "localhost", &policies(), 0)
                .err()
                .unwrap()
        };
        let wrong =
            refuse("HostName=localhost;SharedAccessKeyName=registryRead;SharedAccessKey=d3Jvbmc=");
        assert_eq!(wrong, SignInError::Unauthorized);
        assert!(!wrong.to_string().contains("d3Jvbmc="));
        assert_eq!(
            refuse("HostName=localhost;SharedAccessKeyName=nobody;SharedAccessKey=cHJpbWFyeQ=="),
            SignInError::Unauthorized
        );
        assert!(matches!(
            refuse(
                "HostName=elsewhere;SharedAccessKeyName=registryRead;SharedAccessKey=cHJpbWFyeQ=="
            ),
            SignInError::OtherHub { .. }
        ));
        assert_eq!(
            refuse("HostName=localhost;DeviceId=d;SharedAccessKey=cHJpbWFyeQ=="),
            SignInError::NotService
        );
        assert!(matches!(refuse("nonsense"), SignInError::Malformed(_)));
    }

    fn sign_in_as_registry_read(sessions: &Sessions, now: u64) -> Started {
        let cs = "HostName=localhost;SharedAccessKeyName=registryRead;SharedAccessKey=cHJpbWFyeQ==";
        sessions
            .sign_in_with_connection_string(cs, "localhost", &policies(), now)
            .unwrap()
    }

    #[test]
    fn sessions_expire_and_end_and_their_end_is_seen_by_their_watchers() {
        let sessions = sessions();
        let first = sign_in_as_registry_read(&sessions, 0);
        assert_eq!(first.session.seconds_left(1), SESSION_SECONDS - 1);
        let expired = sessions.watch_end(first.id.expose()).unwrap();
        assert!(sessions.get(first.id.expose(), SESSION_SECONDS).is_none());
        assert!(expired.has_changed().is_err());
        let ended = sign_in_as_registry_read(&sessions, 0);
        let watcher = sessions.watch_end(ended.id.expose()).unwrap();
        assert!(matches!(watcher.has_changed(), Ok(false)));
        sessions.end(ended.id.expose());
        assert!(watcher.has_changed().is_err());
        assert!(sessions.get(ended.id.expose(), 1).is_none());
        assert!(sessions.watch_end(ended.id.expose()).is_none());
    }

    #[test]
    fn signing_in_past_a_policys_cap_ends_only_that_policys_oldest_session() {
        let sessions = sessions();
        let owner = sessions.sign_in_with_link("link-token", 0).unwrap();
        let ids: Vec<Started> = (0..SESSIONS_PER_POLICY * 4)
            .map(|_| sign_in_as_registry_read(&sessions, 1))
            .collect();
        assert!(sessions.get(owner.id.expose(), 100).is_some());
        let (evicted, kept) = ids.split_at(ids.len() - SESSIONS_PER_POLICY);
        for started in evicted {
            assert!(sessions.get(started.id.expose(), 100).is_none());
        }
        for started in kept {
            assert!(sessions.get(started.id.expose(), 100).is_some());
        }
        assert_eq!(sessions.lock().len(), SESSIONS_PER_POLICY + 1);
    }

    #[test]
    fn the_csrf_header_must_be_the_sessions_token_and_cookies_are_found_by_name() {
        let sessions = sessions();
        let started = sign_in_as_registry_read(&sessions, 0);
        assert!(csrf_matches(
            &started.session,
            Some(started.session.csrf.expose())
        ));
        assert!(!csrf_matches(&started.session, Some("guess")));
        assert!(!csrf_matches(&started.session, None));
        assert_eq!(
            cookie("a=1; edgetwin_console=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie("a=1", COOKIE), None);
        let set = set_cookie(&started.id);
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
            assert!(set.contains(attribute), "{set}");
        }
    }
}
