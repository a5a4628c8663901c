//! The environment iotedgedev sees: the process environment, `.env` loaded with python-dotenv
//! semantics (`override=False`, interpolation of `${VAR}` and `${VAR:-default}`), and the
//! defaults iotedgedev writes into `os.environ` at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::ManifestError;

/// Defaults iotedgedev writes into the environment when a variable is unset or blank, in order.
pub const IOTEDGEDEV_DEFAULTS: [(&str, &str); 7] = [
    ("CONFIG_OUTPUT_DIR", "config"),
    (
        "DEPLOYMENT_CONFIG_TEMPLATE_FILE",
        "deployment.template.json",
    ),
    (
        "DEPLOYMENT_CONFIG_DEBUG_TEMPLATE_FILE",
        "deployment.debug.template.json",
    ),
    ("DEFAULT_PLATFORM", "amd64"),
    ("MODULES_PATH", "modules"),
    ("LOGS_PATH", "logs"),
    (
        "LOGS_CMD",
        "start /B start cmd.exe @cmd /k docker logs {0} -f",
    ),
];

/// A snapshot of environment variables (never written back to the process).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The current process environment (variables that are not valid UTF-8 are skipped).
    pub fn from_process() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self { vars }
    }

    /// An environment holding exactly `pairs`.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: pairs.into_iter().collect(),
        }
    }

    /// The value of `name`, if set (possibly empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// iotedgedev's `get_envvar`: the value with surrounding whitespace stripped, `""` if unset.
    pub fn get_stripped(&self, name: &str) -> &str {
        self.get(name).map(py_strip).unwrap_or("")
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Whether `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// The `.env` file iotedgedev reads: `$DOTENV_FILE` (quotes stripped) or `.env`, under `dir`.
    pub fn dotenv_path(&self, dir: &Path) -> PathBuf {
        let name = self
            .get("DOTENV_FILE")
            .map(|v| v.trim_matches('"').trim_matches('\''))
            .filter(|v| !v.is_empty())
            .unwrap_or(".env");
        dir.join(name)
    }

    /// Loads `path` as `load_dotenv(path)` does (existing variables win). A missing file is not
    /// an error; returns whether a file was read.
    pub fn load_dotenv(&mut self, path: &Path) -> Result<bool, ManifestError> {
        if !path.is_file() {
            return Ok(false);
        }
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ManifestError::Env {
            file: path.to_path_buf(),
            message: "not valid UTF-8".into(),
        })?;
        for (key, value) in self.resolve_dotenv(&text) {
            if self.contains(&key) {
                continue;
            }
            if let Some(value) = value {
                self.set(key, value);
            }
        }
        Ok(true)
    }

    /// python-dotenv's `resolve_variables(parse(text), override=False)` against this environment.
    pub fn resolve_dotenv(&self, text: &str) -> Vec<(String, Option<String>)> {
        let mut resolved: Vec<(String, Option<String>)> = Vec::new();
        for (key, value) in parse_dotenv(text) {
            let value = value.map(|raw| {
                interpolate(&raw, |name| {
                    if let Some(v) = self.get(name) {
                        return Some(Some(v.to_string()));
                    }
                    resolved
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                })
            });
            match resolved.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => resolved.push((key, value)),
            }
        }
        resolved
    }

    /// Writes iotedgedev's defaults for variables that are unset or blank.
    pub fn apply_iotedgedev_defaults(&mut self) {
        for (name, default) in IOTEDGEDEV_DEFAULTS {
            if self.get_stripped(name).is_empty() {
                self.set(name, default);
            }
        }
    }
}

/// Python's `str.isspace` for one character.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

fn is_hspace(c: char) -> bool {
    py_isspace(c) && c != '\n' && c != '\r'
}

/// python-dotenv's `${NAME}` / `${NAME:-default}` interpolation. `lookup` returns `None` for an
/// unset name and `Some(None)` for a name bound without a value.
fn interpolate(value: &str, lookup: impl Fn(&str) -> Option<Option<String>>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let name_len = after.find(['}', ':']).unwrap_or(after.len());
        let name = &after[..name_len];
        let tail = &after[name_len..];
        let parsed = if let Some(t) = tail.strip_prefix('}') {
            Some((None, t))
        } else if let Some(t) = tail.strip_prefix(":-") {
            t.find('}').map(|k| (Some(&t[..k]), &t[k + 1..]))
        } else {
            None
        };
        match parsed {
            Some((default, remaining)) => {
                out.push_str(&rest[..start]);
                let value = match lookup(name) {
                    Some(v) => v.unwrap_or_default(),
                    None => default.unwrap_or("").to_string(),
                };
                out.push_str(&value);
                rest = remaining;
            }
            None => {
                out.push_str(&rest[..start + 1]);
                rest = &rest[start + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// python-dotenv's parser: the bindings of `text` in order (`None` value for `KEY` without `=`).
/// Lines that do not parse are skipped, as python-dotenv does (it only logs a warning).
pub fn parse_dotenv(text: &str) -> Vec<(String, Option<String>)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Python reads the file in text mode: universal newlines.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let chars: Vec<char> = text.chars().collect();
    let mut reader = Reader {
        chars: &chars,
        pos: 0,
    };
    let mut out = Vec::new();
    while reader.pos < chars.len() {
        match reader.binding() {
            Ok(Some(binding)) => out.push(binding),
            Ok(None) => {}
            Err(()) => {
                // `_rest_of_line`
                while reader.pos < chars.len() && chars[reader.pos] != '\n' {
                    reader.pos += 1;
                }
                if reader.pos < chars.len() {
                    reader.pos += 1;
                }
            }
        }
    }
    out
}

struct Reader<'a> {
    chars: &'a [char],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip(&mut self, pred: impl Fn(char) -> bool) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn at(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    fn text(&self, from: usize, to: usize) -> String {
        self.chars[from..to].iter().collect()
    }

    /// `parse_binding`: `Ok(None)` for blank/comment-only content, `Err` for a malformed line.
    #[allow(clippy::result_unit_err)]
    fn binding(&mut self) -> Result<Option<(String, Option<String>)>, ()> {
        self.skip(py_isspace);
        if self.pos >= self.chars.len() {
            return Ok(None);
        }
        // `(?:export[^\S\r\n]+)?`
        if self.at("export") {
            let save = self.pos;
            self.pos += 6;
            if self.skip(is_hspace) == 0 {
                self.pos = save;
            }
        }
        let key = match self.peek() {
            Some('#') => None,
            Some('\'') => {
                let start = self.pos + 1;
                let mut end = start;
                while end < self.chars.len() && self.chars[end] != '\'' {
                    end += 1;
                }
                if end == start || end >= self.chars.len() {
                    return Err(());
                }
                self.pos = end + 1;
                Some(self.text(start, end))
            }
            _ => {
                let start = self.pos;
                if self.skip(|c| c != '=' && c != '#' && !py_isspace(c)) == 0 {
                    return Err(());
                }
                Some(self.text(start, self.pos))
            }
        };
        self.skip(is_hspace);
        let value = if self.peek() == Some('=') {
            self.pos += 1;
            let spaces = self.skip(is_hspace);
            if spaces > 0 && self.peek() == Some('#') {
                Some(String::new())
            } else {
                Some(self.value()?)
            }
        } else {
            None
        };
        // `_comment`
        let save = self.pos;
        self.skip(is_hspace);
        if self.peek() == Some('#') {
            self.skip(|c| c != '\n');
        } else {
            self.pos = save;
        }
        // `_end_of_line`
        self.skip(is_hspace);
        match self.peek() {
            None => {}
            Some('\n') => self.pos += 1,
            Some(_) => return Err(()),
        }
        Ok(key.map(|k| (k, value)))
    }

    fn quoted(&mut self, quote: char) -> Result<String, ()> {
        let start = self.pos + 1;
        let mut i = start;
        loop {
            match self.chars.get(i) {
                None => return Err(()),
                Some('\\') => {
                    if i + 1 >= self.chars.len() {
                        return Err(());
                    }
                    i += 2;
                }
                Some(c) if *c == quote => break,
                Some(_) => i += 1,
            }
        }
        self.pos = i + 1;
        Ok(self.text(start, i))
    }

    fn value(&mut self) -> Result<String, ()> {
        match self.peek() {
            Some('\'') => {
                let raw = self.quoted('\'')?;
                Ok(decode_escapes(&raw, |c| match c {
                    '\\' | '\'' => Some(c),
                    _ => None,
                }))
            }
            Some('"') => {
                let raw = self.quoted('"')?;
                Ok(decode_escapes(&raw, |c| match c {
                    '\\' | '\'' | '"' => Some(c),
                    'a' => Some('\u{7}'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\u{b}'),
                    _ => None,
                }))
            }
            None | Some('\n') => Ok(String::new()),
            Some(_) => {
                let start = self.pos;
                self.skip(|c| c != '\n');
                let part: Vec<char> = self.chars[start..self.pos].to_vec();
                // re.sub(r"\s+#.*", "", part).rstrip()
                let mut cut = part.len();
                if let Some(hash) =
                    (1..part.len()).find(|&j| part[j] == '#' && py_isspace(part[j - 1]))
                {
                    let mut k = hash - 1;
                    while k > 0 && py_isspace(part[k - 1]) {
                        k -= 1;
                    }
                    cut = k;
                }
                let value: String = part[..cut].iter().collect();
                Ok(value.trim_end_matches(py_isspace).to_string())
            }
        }
    }
}

fn decode_escapes(raw: &str, map: impl Fn(char) -> Option<char>) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(decoded) = chars.peek().and_then(|n| map(*n)) {
                out.push(decoded);
                chars.next();
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, Option<String>)> {
        parse_dotenv(text)
    }

    fn kv(k: &str, v: &str) -> (String, Option<String>) {
        (k.to_string(), Some(v.to_string()))
    }

    #[test]
    fn parses_like_python_dotenv() {
        let text = "# comment\n\nexport A=1\nB = 'two # not comment'\nC=\"x\\ny\\\"z\"\nD=plain value  # comment\nE= #empty\nF=#hash\nG\n'H I'=q\nbad line here\nJ=\"multi\nline\"\n";
        assert_eq!(
            parsed(text),
            vec![
                kv("A", "1"),
                kv("B", "two # not comment"),
                kv("C", "x\ny\"z"),
                kv("D", "plain value"),
                kv("E", ""),
                kv("F", "#hash"),
                ("G".to_string(), None),
                kv("H I", "q"),
                kv("J", "multi\nline"),
            ]
        );
    }

    #[test]
    fn single_quotes_keep_backslashes_except_quote_escapes() {
        assert_eq!(parsed(r"A='a\nb\'c\\d'"), vec![kv("A", r"a\nb'c\d")]);
    }

    #[test]
    fn interpolation_uses_process_env_first_then_earlier_lines() {
        let env = Env::from_pairs([("HOME_X".to_string(), "/h".to_string())]);
        let text = "A=${HOME_X}/a\nB=${A}-${LATER}-${MISSING:-dflt}\nLATER=z\nC='${A}'\nD=$A\nHOME_X=ignored\nE=${HOME_X}";
        let resolved = env.resolve_dotenv(text);
        assert_eq!(
            resolved,
            vec![
                kv("A", "/h/a"),
                kv("B", "/h/a--dflt"),
                kv("LATER", "z"),
                kv("C", "/h/a"),
                kv("D", "$A"),
                kv("HOME_X", "ignored"),
                kv("E", "/h"),
            ]
        );
    }

    #[test]
    fn load_does_not_override_and_defaults_fill_blanks() {
        let dir = std::env::temp_dir().join(format!("edgetwin-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, "KEEP=file\nNEW=file\nDEFAULT_PLATFORM=\n").unwrap();
        let mut env = Env::from_pairs([("KEEP".to_string(), "process".to_string())]);
        assert!(env.load_dotenv(&path).unwrap());
        env.apply_iotedgedev_defaults();
        assert_eq!(env.get("KEEP"), Some("process"));
        assert_eq!(env.get("NEW"), Some("file"));
        assert_eq!(env.get("DEFAULT_PLATFORM"), Some("amd64"));
        assert_eq!(env.get("MODULES_PATH"), Some("modules"));
        assert_eq!(env.get("CONTAINER_TAG"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
