//! `manifest gen` golden tests without Python: the expected bytes below were produced by
//! `iotedgedev solution genconfig -P amd64` (iotedgedev 3.3.9) from the same inputs.

use std::path::{Path, PathBuf};

use edgetwin::manifest::{genconfig, Env, GenOptions, ManifestError};

const TEMPLATE: &str = r#"{
  "$schema-template": "4.0.0",
  "modulesContent": {
    "$edgeAgent": {
      "properties.desired": {
        "schemaVersion": "1.1",
        "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25", "loggingOptions": ""}},
        "systemModules": {
          "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:${EDGE_RUNTIME_VERSION}", "createOptions": {}}},
          "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                      "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:${EDGE_RUNTIME_VERSION}",
                                   "createOptions": {"HostConfig": {"PortBindings": {"5671/tcp": [{"HostPort": "5671"}]}}}}}
        },
        "modules": {
          "m1": {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
                 "settings": {"createOptions": {"Env": ["PAD=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"], "Labels": {"site": "café ☃"}, "Ratio": 1e3}, "image": "${MODULES.m1}"}}
        }
      }
    },
    "$edgeHub": {
      "properties.desired": {
        "schemaVersion": "1.2",
        "routes": {"m1ToUpstream": "FROM /messages/modules/m1/outputs/* INTO $upstream"},
        "storeAndForwardConfiguration": {"timeToLiveSecs": ${TTL}}
      }
    },
    "m1": {"properties.desired": {"interval": 1.5, "big": 123456789012345678901234567890}}
  }
}
"#;

const MODULE_JSON: &str = r#"{"image": {"repository": "${CONTAINER_REGISTRY_SERVER}/M1", "tag": {"version": "1.0.0", "platforms": {"amd64": "./Dockerfile.amd64", "arm64v8": "./Dockerfile.arm64v8"}}}}
"#;

const DOTENV: &str = "CONTAINER_REGISTRY_SERVER=MyAcr.azurecr.io\nEDGE_RUNTIME_VERSION=1.5\nTTL=7200\nCONTAINER_TAG=ci42\n";

/// iotedgedev's output for TEMPLATE + MODULE_JSON + DOTENV, `-P amd64`.
const EXPECTED_AMD64: &str = r#"{
  "modulesContent": {
    "$edgeAgent": {
      "properties.desired": {
        "schemaVersion": "1.1",
        "runtime": {
          "type": "docker",
          "settings": {
            "minDockerVersion": "v1.25",
            "loggingOptions": ""
          }
        },
        "systemModules": {
          "edgeAgent": {
            "type": "docker",
            "settings": {
              "image": "mcr.microsoft.com/azureiotedge-agent:1.5",
              "createOptions": "{}"
            }
          },
          "edgeHub": {
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "settings": {
              "image": "mcr.microsoft.com/azureiotedge-hub:1.5",
              "createOptions": "{\"HostConfig\":{\"PortBindings\":{\"5671/tcp\":[{\"HostPort\":\"5671\"}]}}}"
            }
          }
        },
        "modules": {
          "m1": {
            "version": "1.0",
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "settings": {
              "createOptions": "{\"Env\":[\"PAD=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
              "image": "myacr.azurecr.io/m1:1.0.0-ci42-amd64",
              "createOptions01": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
              "createOptions02": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"],\"Labels\":{\"site\":\"caf\\u00e9 \\u2603\"},\"Ratio\":1000.0}"
            }
          }
        }
      }
    },
    "$edgeHub": {
      "properties.desired": {
        "schemaVersion": "1.2",
        "routes": {
          "m1ToUpstream": "FROM /messages/modules/m1/outputs/* INTO $upstream"
        },
        "storeAndForwardConfiguration": {
          "timeToLiveSecs": 7200
        }
      }
    },
    "m1": {
      "properties.desired": {
        "interval": 1.5,
        "big": 123456789012345678901234567890
      }
    }
  }
}"#;

fn solution(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgetwin-manifest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn options(dir: &Path, platform: &str) -> GenOptions {
    GenOptions {
        dir: dir.to_path_buf(),
        template: None,
        platform: Some(platform.to_string()),
    }
}

#[test]
fn golden_output_is_byte_identical_to_iotedgedev() {
    let dir = solution(
        "golden",
        &[
            ("deployment.template.json", TEMPLATE),
            ("modules/m1/module.json", MODULE_JSON),
            (".env", DOTENV),
        ],
    );
    let generated = genconfig(&options(&dir, "amd64"), Env::default()).unwrap();
    assert_eq!(generated.output, Path::new("config/deployment.amd64.json"));
    let written = std::fs::read_to_string(dir.join(&generated.output)).unwrap();
    assert_eq!(written, EXPECTED_AMD64);
    assert_eq!(generated.text, EXPECTED_AMD64);
    assert!(generated.findings.is_empty(), "{:?}", generated.findings);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn process_environment_wins_over_dotenv() {
    let dir = solution(
        "procenv",
        &[
            ("deployment.template.json", TEMPLATE),
            ("modules/m1/module.json", MODULE_JSON),
            (".env", DOTENV),
        ],
    );
    let env = Env::from_pairs([("CONTAINER_TAG".to_string(), String::new())]);
    let generated = genconfig(&options(&dir, "arm64v8"), env).unwrap();
    assert_eq!(
        generated.output,
        Path::new("config/deployment.arm64v8.json")
    );
    assert!(generated
        .text
        .contains("\"image\": \"myacr.azurecr.io/m1:1.0.0-arm64v8\""));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn repository_template_generates_valid_manifests_with_the_right_tags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(root.join("deployment.template.json")).unwrap();
    let module = std::fs::read_to_string(root.join("modules/edgetwin/module.json")).unwrap();
    let dir = solution(
        "repo",
        &[
            ("deployment.template.json", &template),
            ("modules/edgetwin/module.json", &module),
        ],
    );
    for platform in ["amd64", "arm64v8"] {
        let generated = genconfig(&options(&dir, platform), Env::default()).unwrap();
        assert!(generated.findings.is_empty(), "{:?}", generated.findings);
        assert_eq!(
            generated.output,
            PathBuf::from(format!("config/deployment.{platform}.json"))
        );
        assert!(generated.text.contains(&format!(
            "\"image\": \"localhost:5000/edgetwin:0.1.0-{platform}\""
        )));
        assert!(generated
            .text
            .contains("/sys/class/thermal:/sys/class/thermal:ro"));
        assert!(!generated.text.contains("$schema-template"));
        assert!(!generated.text.ends_with('\n'));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn create_options_over_4k_name_the_json_path_and_write_nothing() {
    let big = "y".repeat(4200);
    let template = TEMPLATE.replace(
        "\"Env\": [\"PAD=",
        &format!("\"Env\": [\"BIG={big}\", \"PAD="),
    );
    let dir = solution(
        "toobig",
        &[
            ("deployment.template.json", &template),
            ("modules/m1/module.json", MODULE_JSON),
            (".env", DOTENV),
        ],
    );
    let error = genconfig(&options(&dir, "amd64"), Env::default()).unwrap_err();
    assert!(
        matches!(error, ManifestError::CreateOptionsTooBig { .. }),
        "{error}"
    );
    assert_eq!(
        error.json_path(),
        Some("modulesContent.$edgeAgent.properties.desired.modules.m1.settings.createOptions")
    );
    assert!(error.to_string().contains("deployment.template.json"));
    assert!(!dir.join("config/deployment.amd64.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_template_without_a_user_module_image_names_the_path() {
    let template = TEMPLATE.replace("\"image\": \"${MODULES.m1}\"", "\"imag\": \"x\"");
    let dir = solution(
        "noimage",
        &[("deployment.template.json", &template), (".env", DOTENV)],
    );
    let error = genconfig(&options(&dir, "amd64"), Env::default()).unwrap_err();
    assert_eq!(
        error.json_path(),
        Some("modulesContent.$edgeAgent.properties.desired.modules.m1.settings.image")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_platform_that_module_json_does_not_have_is_refused_naming_the_module_and_its_platforms() {
    let dir = solution(
        "riscv",
        &[
            ("deployment.template.json", TEMPLATE),
            ("modules/m1/module.json", MODULE_JSON),
            (".env", DOTENV),
        ],
    );
    let error = genconfig(&options(&dir, "riscv"), Env::default()).unwrap_err();
    assert!(
        matches!(error, ManifestError::NoSuchPlatform { .. }),
        "{error}"
    );
    let text = error.to_string();
    for expected in ["module.json", "m1", "\"riscv\"", "amd64, arm64v8", "-P"] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(!dir.join("config").exists(), "a manifest was written");

    // As an operator runs it: exit 1, one line, nothing written.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgetwin"))
        .args(["manifest", "gen", "-P", "riscv", "-C"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("riscv"),
        "{stderr}"
    );
    assert!(!dir.join("config").exists(), "a manifest was written");

    // A debug image the module lacks on a platform it has stays as iotedgedev leaves it; a
    // platform it lacks altogether is refused for debug images too.
    let debug = TEMPLATE.replace("${MODULES.m1}", "${MODULES.m1.debug}");
    std::fs::write(dir.join("deployment.template.json"), debug).unwrap();
    let generated = genconfig(&options(&dir, "arm64v8"), Env::default()).unwrap();
    assert!(generated.text.contains("${MODULES.m1.debug}"));
    let error = genconfig(&options(&dir, "riscv"), Env::default()).unwrap_err();
    assert!(
        matches!(error, ManifestError::NoSuchPlatform { .. }),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
