//! The IoT Edge `config.toml` of one device, as `edgetwin provision --edge-config` writes it:
//! manual provisioning with the device's connection string, the hub as the modules' gateway,
//! the hub's CA as the trust bundle, and the Docker engine IoT Edge uses by default — what
//! `edgetwin edge run` (and aziot's `iotedge config apply`) read.

use std::path::Path;

/// A TOML basic string: quoted, with `\`, `"` and control characters escaped.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The config.toml text for a device with `connection_string` on the hub `host_name`, trusting
/// `ca_file` if given.
pub fn render(host_name: &str, connection_string: &str, ca_file: Option<&Path>) -> String {
    let provisioning = format!(
        "[provisioning]\nsource = \"manual\"\nconnection_string = {}\n",
        toml_string(connection_string)
    );
    config(Some(host_name), ca_file, &provisioning)
}

/// The config.toml text for a device that provisions itself through DPS, as aziot's template
/// has it: `[provisioning] source = "dps"`, the `global_endpoint` URL and `id_scope`, and
/// symmetric-key attestation with its `registration_id` and (derived) key inline.
pub fn render_dps(
    global_endpoint: &str,
    id_scope: &str,
    registration_id: &str,
    symmetric_key: &str,
    ca_file: Option<&Path>,
) -> String {
    let provisioning = format!(
        "[provisioning]\nsource = \"dps\"\nglobal_endpoint = {}\nid_scope = {}\n\n\
         [provisioning.attestation]\nmethod = \"symmetric_key\"\nregistration_id = {}\n\
         symmetric_key = {{ value = {} }}\n",
        toml_string(global_endpoint),
        toml_string(id_scope),
        toml_string(registration_id),
        toml_string(symmetric_key)
    );
    config(None, ca_file, &provisioning)
}

/// The whole file: `hostname` if given, the trust bundle, the `provisioning` section, the
/// Docker engine.
fn config(host_name: Option<&str>, ca_file: Option<&Path>, provisioning: &str) -> String {
    let mut text = String::from(
        "# IoT Edge config.toml for edgetwin edge run (and aziot's iotedge config apply)\n",
    );
    if let Some(host_name) = host_name {
        text.push_str(&format!("hostname = {}\n", toml_string(host_name)));
    }
    if let Some(ca) = ca_file {
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.to_owned());
        text.push_str(&format!(
            "trust_bundle_cert = {}\n",
            toml_string(&format!("file://{}", ca.display()))
        ));
    }
    text.push('\n');
    text.push_str(provisioning);
    text.push_str(
        "\n[moby_runtime]\nuri = \"unix:///var/run/docker.sock\"\nnetwork = \"azure-iot-edge\"\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_hub_the_device_and_the_ca_and_escapes_what_toml_needs() {
        let text = render(
            "hub.local",
            "HostName=hub.local;DeviceId=a\"b;SharedAccessKey=k=",
            Some(Path::new("/ca.pem")),
        );
        assert!(text.contains("hostname = \"hub.local\"\n"), "{text}");
        assert!(
            text.contains("trust_bundle_cert = \"file:///ca.pem\"\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "connection_string = \"HostName=hub.local;DeviceId=a\\\"b;SharedAccessKey=k=\"\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("[moby_runtime]\nuri = \"unix:///var/run/docker.sock\""),
            "{text}"
        );
        assert_eq!(toml_string("a\\b\n"), "\"a\\\\b\\u000A\"");
    }

    #[test]
    fn a_dps_config_has_aziots_provisioning_and_attestation_sections() {
        let text = render_dps(
            "https://hub.local",
            "0ne0000ABCD",
            "pi-1",
            "a2V5",
            Some(Path::new("/ca.pem")),
        );
        assert!(
            text.contains(
                "\n[provisioning]\nsource = \"dps\"\nglobal_endpoint = \"https://hub.local\"\n\
             id_scope = \"0ne0000ABCD\"\n\n[provisioning.attestation]\n\
             method = \"symmetric_key\"\nregistration_id = \"pi-1\"\n\
             symmetric_key = { value = \"a2V5\" }\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("trust_bundle_cert = \"file:///ca.pem\"\n"),
            "{text}"
        );
        assert!(!text.contains("hostname"), "{text}");
    }
}
