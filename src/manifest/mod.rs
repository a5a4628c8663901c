//! The deployment-manifest generator: `edgetwin manifest gen` reproduces
//! `iotedgedev solution genconfig` (iotedgedev 3.3.9) byte for byte, then validates the result;
//! `edgetwin manifest validate` checks an existing manifest or template.
//!
//! One job per file: [`env`] (process environment, `.env` with python-dotenv semantics,
//! iotedgedev defaults), [`expand`] (`os.path.expandvars`), [`value`] (JSON model and a parser
//! with Python `json.loads` semantics), [`serialize`] (Python `json.dump` output), [`layout`]
//! (where modules live in a manifest), [`modules`] (module.json and image placeholders),
//! [`create_options`] (serialisation and 512-character chunks), [`validate`] and [`generate`]
//! (the genconfig algorithm).

pub mod cli;
pub mod create_options;
pub mod env;
pub mod error;
pub mod expand;
pub mod generate;
pub mod layout;
pub mod modules;
pub mod serialize;
pub mod validate;
pub mod value;

pub use env::Env;
pub use error::ManifestError;
pub use generate::{genconfig, GenOptions, Generated};
pub use validate::{validate_file, Mode};
