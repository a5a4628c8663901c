//! The console's front end: plain HTML, CSS and JavaScript built into the binary (nothing is
//! fetched from anywhere else), and the security headers every console response carries.
//!
//! A leaf of the console: depends on nothing else of the hub.

/// One built-in file.
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The page shown to a signed-in browser.
pub const APP: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/app.html"),
};

/// The sign-in page.
pub const SIGN_IN: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/signin.html"),
};

/// The file served at `/console/{name}`, if there is one.
pub fn file(name: &str) -> Option<Asset> {
    let (content_type, body) = match name {
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/app.js"),
        ),
        "signin.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/signin.js"),
        ),
        "console.css" => (
            "text/css; charset=utf-8",
            include_str!("assets/console.css"),
        ),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// Headers on every console response: only the console's own scripts, styles and connections;
/// no framing; no referrer (the sign-in link carries a token); nothing cached.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
];
