//! Twin patches as a device or the service sends them: JSON, system keys stripped, validated per
//! section, merged into a twin, size-checked, and rendered as the device sees it.
#![no_main]

use edgetwin_wire::twin::{self, Properties, Section};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // First byte picks the section; the rest is "target\0patch" or just a patch.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let section = match selector % 3 {
        0 => Section::Desired,
        1 => Section::Reported,
        _ => Section::Tags,
    };
    let (target, patch) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"{}"[..], rest),
    };
    let object = |bytes: &[u8]| match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    let (Some(mut target), Some(mut patch)) = (object(target), object(patch)) else {
        return;
    };
    twin::strip_system_keys(&mut patch);
    let valid = twin::validate_patch(section, &patch).is_ok();
    let _ = twin::section_size(&patch);
    twin::merge_patch(&mut target, &patch);
    let _ = twin::check_section_size(section, &target);
    if valid {
        // Merging the same patch again changes nothing (RFC 7386 is idempotent).
        let once = target.clone();
        twin::merge_patch(&mut target, &patch);
        assert_eq!(once, target, "merge patch is idempotent");
    }
    let empty = Properties::new();
    let _ = twin::device_view(&target, 1, &empty, 1).to_string();
    let _ = twin::desired_notification(&patch, i64::MAX).to_string();
});
