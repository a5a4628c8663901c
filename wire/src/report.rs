//! How every edgetwin program says why it failed: the error, then each of its causes
//! ([`source`](std::error::Error::source)) on a line of its own, as the IoT Edge runtime's
//! services do (`error_to_message` in Azure/iot-identity-service's `http-common`).

/// The message for `error` and its causes, without a trailing newline:
///
/// ```text
/// error: the connection string from --connection-string is not valid (…)
/// caused by: connection string is missing `SharedAccessKey`
/// ```
///
/// An error's own text names what failed; its cause's text is the next line, not repeated in
/// its own. A cause whose text the line above already holds is left out: some errors (a
/// library's, the hub's storage errors, the edge runtime's that its log also shows) carry their
/// cause's text in their own.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = format!("error: {error}");
    let mut above = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !above.contains(&text) {
            message.push_str("\ncaused by: ");
            message.push_str(&text);
            above = text;
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// An error with a text and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|cause| cause as _)
        }
    }

    fn chain(texts: &[&'static str]) -> Layer {
        let (last, above) = texts.split_last().unwrap();
        above.iter().rev().fold(Layer(last, None), |cause, text| {
            Layer(text, Some(Box::new(cause)))
        })
    }

    #[test]
    fn each_cause_is_a_line_of_its_own() {
        assert_eq!(error_chain(&chain(&["alone"])), "error: alone");
        assert_eq!(
            error_chain(&chain(&["cannot read f", "permission denied", "EACCES"])),
            "error: cannot read f\ncaused by: permission denied\ncaused by: EACCES"
        );
    }

    #[test]
    fn a_cause_that_the_line_above_holds_is_not_said_twice() {
        assert_eq!(
            error_chain(&chain(&[
                "db: open f: busy",
                "open f: busy",
                "busy",
                "errno 16"
            ])),
            "error: db: open f: busy\ncaused by: errno 16"
        );
        assert_eq!(
            error_chain(&chain(&["no engine at s: refused; start it", "refused"])),
            "error: no engine at s: refused; start it"
        );
        // Each cause is weighed against the last line said.
        assert_eq!(
            error_chain(&chain(&["a: b: c", "b", "c"])),
            "error: a: b: c"
        );
        assert_eq!(
            error_chain(&chain(&["a: c", "b", "c"])),
            "error: a: c\ncaused by: b\ncaused by: c"
        );
    }
}
