//! The web console's server side over real sockets against `edgetwin hub`: event streams are
//! bounded and end when the hub stops, sign-in is refused unless it comes as the console's own
//! page sends it, and neither the link's token nor a key reaches the hub's log. (The pages
//! themselves are tested in Chromium by `scripts/console-check`.)

#[allow(dead_code)]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use support::{poll, Hub, HubOptions, TempDir};

/// The `/console/...` part of the printed link.
fn link_path(hub: &Hub) -> String {
    let url = hub.info["consoleUrl"].as_str().unwrap();
    url[url.find("/console").unwrap()..].to_owned()
}

/// Sends one request on a new connection.
async fn send(hub: &Hub, request: hyper::Request<Full<Bytes>>) -> hyper::Response<Incoming> {
    let mut sender = hub.rest.connect().await.unwrap();
    sender.send_request(request).await.unwrap()
}

fn get(path: &str, cookie: Option<&str>) -> hyper::Request<Full<Bytes>> {
    let mut builder = hyper::Request::get(path).header("host", "localhost");
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// Signs in with the printed link; returns the `Cookie` header value.
async fn sign_in(hub: &Hub) -> String {
    let response = send(hub, get(&link_path(hub), None)).await;
    assert_eq!(response.status(), 303);
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The next data frame of an event stream, `None` once it ended.
async fn next_event(body: &mut Incoming) -> Option<String> {
    loop {
        let frame = body.frame().await?.ok()?;
        if let Ok(data) = frame.into_data() {
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
    }
}

#[tokio::test]
async fn an_open_event_stream_ends_when_the_hub_stops_and_the_hub_still_exits_0() {
    let dir = TempDir::new("console-stop");
    let mut hub = Hub::start(dir.path(), HubOptions::default());
    let cookie = sign_in(&hub).await;
    let response = send(&hub, get("/console/events", Some(&cookie))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    assert_eq!(next_event(&mut body).await.unwrap(), "retry: 2000\n\n");
    let connections = next_event(&mut body).await.unwrap();
    assert!(
        connections.starts_with("event: connections\ndata: []"),
        "{connections}"
    );
    hub.proc.signal(libc::SIGTERM);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while next_event(&mut body).await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the hub's stop");
    assert_eq!(hub.proc.wait_exit(Duration::from_secs(5)), Some(0));
}

#[tokio::test]
async fn event_streams_are_capped_and_a_closed_one_gives_its_place_back() {
    let dir = TempDir::new("console-cap");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let cookie = sign_in(&hub).await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let response = send(&hub, get("/console/events", Some(&cookie))).await;
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let refused = send(&hub, get("/console/events", Some(&cookie))).await;
    assert_eq!(refused.status(), 429);
    drop(open.pop());
    poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let status = send(&hub, get("/console/events", Some(&cookie)))
                .await
                .status();
            if status == 200 {
                Ok(())
            } else {
                Err(move || format!("a closed stream's place was not given back: {status}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_sign_in_not_sent_as_the_consoles_own_json_is_refused_and_no_secret_is_logged() {
    let dir = TempDir::new("console-signin");
    let hub = Hub::start(
        dir.path(),
        HubOptions {
            rust_log: Some("debug"),
            ..HubOptions::default()
        },
    );
    let key = hub.info["policies"]["iothubowner"]
        .as_str()
        .unwrap()
        .to_owned();
    let connection_string = hub.service_connection_string().to_owned();
    let sign_in_request = |content_type: &str, site: &str| {
        let body = serde_json::json!({ "connectionString": connection_string }).to_string();
        hyper::Request::post("/console/signin")
            .header("host", "localhost")
            .header("content-type", content_type)
            .header("sec-fetch-site", site)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let form = send(
        &hub,
        sign_in_request("application/x-www-form-urlencoded", "same-origin"),
    )
    .await;
    assert_eq!(form.status(), 400);
    let cross_site = send(&hub, sign_in_request("application/json", "cross-site")).await;
    assert_eq!(cross_site.status(), 400);
    let accepted = send(&hub, sign_in_request("application/json", "same-origin")).await;
    assert_eq!(accepted.status(), 204);
    let cookie = sign_in(&hub).await;
    let session = send(&hub, get("/console/session", Some(&cookie))).await;
    let body = session.into_body().collect().await.unwrap().to_bytes();
    let session: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(session["policy"], "iothubowner");
    let bad_link = send(&hub, get("/console/?token=guessed", None)).await;
    assert_eq!(bad_link.status(), 303);
    assert!(bad_link.headers().get("set-cookie").is_none());
    let token = link_path(&hub).rsplit('=').next().unwrap().to_owned();
    let log = hub.proc.log();
    assert!(log.contains("console signed in"), "{log}");
    for secret in [
        token.as_str(),
        key.as_str(),
        cookie.split('=').nth(1).unwrap(),
    ] {
        assert!(!log.contains(secret), "a secret is in the hub's log");
    }
}
