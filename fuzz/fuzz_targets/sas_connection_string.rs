//! SAS tokens (parse, scope, verify with a fixed key) and connection strings (parse, and the
//! derived resource, host and string form of those that parse).
#![no_main]

use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::sas::SasToken;
use edgetwin_wire::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for candidate in [text.to_owned(), format!("SharedAccessSignature {text}")] {
        if let Ok(token) = SasToken::parse(&candidate) {
            let _ = token.is_expired(u64::MAX, u64::MAX);
            let _ = token.is_expired(0, 0);
            if let Ok(scope) = token.scope() {
                let _ = (scope.host(), scope.device_id(), scope.module_id());
            }
            let _ = token.verify(&Secret::new("AAECAwQFBgcICQoLDA0ODw=="));
            let _ = token.verify(&Secret::new(text));
        }
    }
    if let Ok(cs) = text.parse::<ConnectionString>() {
        let _ = cs.kind();
        let _ = cs.resource();
        let _ = cs.connect_host();
        let again = cs.to_secret_string();
        // What the hub writes must parse back to the same thing.
        let reparsed: ConnectionString = again
            .expose()
            .parse()
            .expect("a connection string's own string form parses");
        assert_eq!(reparsed.to_secret_string().expose(), again.expose());
    }
    if let Some((key, rest)) = text.split_once('\n') {
        let _ = edgetwin_wire::sas::decode_key(key);
        let _ = edgetwin_wire::sas::encode_resource(rest);
    }
});
