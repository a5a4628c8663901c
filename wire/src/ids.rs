//! IoT Hub's rules for ids: device and module ids, and configuration (deployment) ids; and UUIDs
//! as IoT Hub and the SDKs write them.

/// Why an id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty, or longer than 128 characters.
    #[error("must be 1 to 128 characters long")]
    Length,
    /// A character IoT Hub does not allow.
    #[error("contains '{0}', which IoT Hub does not allow")]
    Character(char),
    /// A character IoT Hub allows but a connection string cannot carry (`;` or `=`, its
    /// delimiters): the string would name another identity.
    #[error("contains '{0}', which a connection string cannot carry")]
    Delimiter(char),
}

fn check(id: &str, allowed: impl Fn(char) -> bool) -> Result<(), IdError> {
    if id.is_empty() || id.chars().count() > 128 {
        return Err(IdError::Length);
    }
    match id.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(IdError::Character(c)),
        None => Ok(()),
    }
}

/// A device or module id: 1-128 ASCII letters, digits and `- : . + % _ # * ? ! ( ) , = @ ; $ '`.
pub fn check_identity_id(id: &str) -> Result<(), IdError> {
    check(id, |c| {
        c.is_ascii_alphanumeric() || "-:.+%_#*?!(),=@;$'".contains(c)
    })
}

/// A device or module id that can appear in a connection string: an identity id without `;`
/// or `=` (`DeviceId=x;ModuleId=evil` would name module `evil` of device `x`).
pub fn check_connection_string_id(id: &str) -> Result<(), IdError> {
    check_identity_id(id)?;
    match id.chars().find(|c| matches!(c, ';' | '=')) {
        Some(c) => Err(IdError::Delimiter(c)),
        None => Ok(()),
    }
}

/// A configuration or deployment id: 1-128 characters, lower case, no white space and none of
/// `& ^ [ ] { } \ | " < > /`.
pub fn check_configuration_id(id: &str) -> Result<(), IdError> {
    check(id, |c| {
        !(c.is_whitespace() || c.is_uppercase() || "&^[]{}\\|\"<>/".contains(c))
    })
}

/// 16 bytes as a UUID is written: 8-4-4-4-12 lower-case hex digits.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A version-4 (random) UUID from 16 random bytes, hyphenated: message ids, lock tokens,
/// operation ids.
pub fn uuid_v4(mut random: [u8; 16]) -> String {
    random[6] = (random[6] & 0x0f) | 0x40;
    random[8] = (random[8] & 0x3f) | 0x80;
    uuid_text(&random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_written_8_4_4_4_12_and_v4_sets_its_version_and_variant() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        assert_eq!(uuid_text(&bytes), "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn identity_ids_follow_iot_hub_rules() {
        assert_eq!(check_identity_id("gw-01:a.b+c%_#*?!(),=@;$'"), Ok(()));
        assert_eq!(check_identity_id(""), Err(IdError::Length));
        assert_eq!(check_identity_id(&"a".repeat(129)), Err(IdError::Length));
        assert_eq!(check_identity_id("has space"), Err(IdError::Character(' ')));
        assert_eq!(check_identity_id("é"), Err(IdError::Character('é')));
    }

    #[test]
    fn ids_in_connection_strings_cannot_carry_its_delimiters() {
        assert_eq!(check_connection_string_id("gw-01:a.b"), Ok(()));
        assert_eq!(
            check_connection_string_id("x;ModuleId=evil"),
            Err(IdError::Delimiter(';'))
        );
        assert_eq!(
            check_connection_string_id("a=b"),
            Err(IdError::Delimiter('='))
        );
        assert_eq!(
            check_connection_string_id("a/b"),
            Err(IdError::Character('/'))
        );
    }

    #[test]
    fn configuration_ids_are_lower_case_without_special_characters() {
        assert_eq!(check_configuration_id("prod-base_2"), Ok(()));
        assert_eq!(check_configuration_id("Prod"), Err(IdError::Character('P')));
        assert_eq!(check_configuration_id("a/b"), Err(IdError::Character('/')));
        assert_eq!(
            check_configuration_id(&"x".repeat(129)),
            Err(IdError::Length)
        );
    }
}
