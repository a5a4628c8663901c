//! Errors of the manifest generator and validator. Each names the file and, where there is one,
//! the JSON path (`modulesContent.$edgeAgent.properties.desired.modules.edgetwin.settings.image`).

use std::path::PathBuf;

/// What went wrong while generating or validating a deployment manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read or written.
    #[error("file {}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file (after variable expansion) is not valid JSON.
    #[error("{}: invalid JSON: {message} (line {line}, column {column})", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// Python-style description.
        message: String,
        /// 1-based line in the expanded text.
        line: usize,
        /// 1-based column in the expanded text.
        column: usize,
    },
    /// The `.env` file could not be used.
    #[error("{}: {message}", file.display())]
    Env {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A required part of a template or module.json is missing or has the wrong type, so no
    /// manifest can be generated.
    #[error("{}: {path}: {message}", file.display())]
    Template {
        /// The file.
        file: PathBuf,
        /// JSON path of the offending value.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A module referenced through `${MODULEDIR<dir>}` has no module.json.
    #[error("{}: {path}: no module.json in {}", file.display(), dir.display())]
    MissingModuleJson {
        /// The template.
        file: PathBuf,
        /// JSON path of the image placeholder.
        path: String,
        /// The module directory.
        dir: PathBuf,
    },
    /// createOptions would need more than eight 512-character chunks.
    #[error("{}: {path}: size of createOptions of {module} is too big ({chars} characters, {chunks} chunks of 512). The maximum size of createOptions is 4K", file.display())]
    CreateOptionsTooBig {
        /// The template.
        file: PathBuf,
        /// JSON path of `createOptions`.
        path: String,
        /// The module.
        module: String,
        /// Length in characters.
        chars: usize,
        /// Chunks needed.
        chunks: usize,
    },
    /// A module's image placeholder needs a platform its module.json does not have.
    #[error(
        "{}: module {module} has no platform \"{platform}\" (image.tag.platforms has {}); choose \
         one of those with -P, or add \"{platform}\" and its Dockerfile to image.tag.platforms",
        file.display(),
        platforms.join(", ")
    )]
    NoSuchPlatform {
        /// The module.json.
        file: PathBuf,
        /// The module, as the template names it.
        module: String,
        /// The platform asked for.
        platform: String,
        /// The platforms module.json has.
        platforms: Vec<String>,
    },
    /// A validation rule failed for the generated (or given) manifest.
    #[error("{}: {path}: {message}", file.display())]
    Invalid {
        /// The manifest.
        file: PathBuf,
        /// JSON path of the offending value.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl ManifestError {
    /// The JSON path this error is about, if any.
    pub fn json_path(&self) -> Option<&str> {
        match self {
            ManifestError::Template { path, .. }
            | ManifestError::MissingModuleJson { path, .. }
            | ManifestError::CreateOptionsTooBig { path, .. }
            | ManifestError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Joins JSON path segments: keys with `.`, array indices as `[i]`.
pub fn join_path(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}
