//! Deployment target conditions, twin queries and edgeHub routes: parse, and evaluate what
//! parses against a small twin document.
#![no_main]

use edgetwin_wire::condition::Condition;
use edgetwin_wire::query::parse_query;
use edgetwin_wire::route::Route;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let twin = json!({
        "deviceId": "d1",
        "status": "enabled",
        "capabilities": { "iotEdge": true },
        "tags": { "env": "prod", "n": 3, "list": [1, "a", null], "nested": { "x": { "y": true } } },
        "properties": { "desired": { "a": 1.5 }, "reported": { "b": "c" } },
    });
    if let Ok(condition) = Condition::parse(text) {
        let _ = condition.matches(&twin);
        let _ = condition.matches(&json!(null));
    }
    for query in [text.to_owned(), format!("SELECT * FROM devices WHERE {text}")] {
        if let Ok(query) = parse_query(&query) {
            let _ = query.run(&[twin.clone(), json!(null), json!({"deviceId": "d2"})]);
        }
    }
    if let Ok(route) = Route::parse(text) {
        let _ = route.takes(None, None);
        let _ = route.takes(Some("m1"), Some("out1"));
    }
    let _ = Route::parse(&format!("FROM /messages/* WHERE {text} INTO $upstream"));
});
