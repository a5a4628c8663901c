//! Where things live in a manifest: the module content (`modulesContent`, `moduleContent` or
//! `content.modulesContent`), and the user and system modules under `$edgeAgent`, read the way
//! iotedgedev's `dot_to_json` reads them (dotted keys such as `properties.desired` or
//! `properties.desired.modules.m` are paths).

use super::value::{Object, Value};

/// A physical path of keys from the document root.
pub type KeyPath = Vec<String>;

/// The physical path of the module content, as iotedgedev's `_get_module_content` finds it.
pub fn module_content_path(root: &Object) -> Option<KeyPath> {
    if root.contains_key("modulesContent") {
        return Some(vec!["modulesContent".into()]);
    }
    if root.contains_key("moduleContent") {
        return Some(vec!["moduleContent".into()]);
    }
    if let Some(content) = root.get("content").and_then(Value::as_object) {
        if content.contains_key("modulesContent") {
            return Some(vec!["content".into(), "modulesContent".into()]);
        }
    }
    None
}

/// Whether the document is a layered/at-scale deployment (a top-level `content` key).
pub fn is_layered(root: &Object) -> bool {
    root.contains_key("content")
}

/// The children of the logical node `logical` (e.g. `$edgeAgent.properties.desired.modules`)
/// under `object`, each with its physical path relative to `object`. `None` when the logical
/// node does not exist.
pub fn logical_children(object: &Object, logical: &[&str]) -> Option<Vec<(String, KeyPath)>> {
    children(object, logical, true)
}

fn children(object: &Object, logical: &[&str], split_dots: bool) -> Option<Vec<(String, KeyPath)>> {
    let mut found = false;
    let mut out: Vec<(String, KeyPath)> = Vec::new();
    let put = |out: &mut Vec<(String, KeyPath)>, name: String, path: KeyPath| match out
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = path,
        None => out.push((name, path)),
    };
    for (key, value) in object.iter() {
        let segments: Vec<&str> = if split_dots && key.contains('.') {
            key.split('.').collect()
        } else {
            vec![key.as_str()]
        };
        let dotted = segments.len() > 1;
        if segments.len() == logical.len() + 1 && segments[..logical.len()] == *logical {
            found = true;
            put(
                &mut out,
                segments[logical.len()].to_string(),
                vec![key.clone()],
            );
        } else if segments == logical {
            if let Some(inner) = value.as_object() {
                found = true;
                for (k, _) in inner.iter() {
                    put(&mut out, k.clone(), vec![key.clone(), k.clone()]);
                }
            }
        } else if segments.len() < logical.len() && segments[..] == logical[..segments.len()] {
            if let Some(inner) = value.as_object() {
                if let Some(sub) = children(inner, &logical[segments.len()..], !dotted) {
                    found = true;
                    for (name, mut path) in sub {
                        path.insert(0, key.clone());
                        put(&mut out, name, path);
                    }
                }
            }
        }
    }
    found.then_some(out)
}

/// The value at physical `path` under `value`.
pub fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, k| v.as_object().and_then(|o| o.get(k)))
}

/// The value at physical `path` under the object `object` (`path` must not be empty).
pub fn get_in<'a>(object: &'a Object, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(object.get(first)?, |v, k| {
        v.as_object().and_then(|o| o.get(k))
    })
}

/// The value at physical `path` under `value`, mutably.
pub fn get_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter()
        .try_fold(value, |v, k| v.as_object_mut().and_then(|o| o.get_mut(k)))
}

/// Renders a physical path as a JSON path string (`modulesContent.$edgeAgent.properties.desired`).
pub fn render(path: &[String]) -> String {
    path.join(".")
}

/// `$edgeAgent` user modules (`properties.desired.modules`) with their physical paths relative
/// to the module content.
pub fn user_modules(content: &Object) -> Option<Vec<(String, KeyPath)>> {
    logical_children(content, &["$edgeAgent", "properties", "desired", "modules"])
}

/// `$edgeAgent` system modules (`properties.desired.systemModules`).
pub fn system_modules(content: &Object) -> Option<Vec<(String, KeyPath)>> {
    logical_children(
        content,
        &["$edgeAgent", "properties", "desired", "systemModules"],
    )
}

/// The physical path of the logical `<module>.properties.desired` object under the content.
pub fn desired_path(content: &Object, module: &str) -> Option<KeyPath> {
    let entry = content.get(module)?.as_object()?;
    if entry.get("properties.desired").is_some() {
        return Some(vec![module.to_string(), "properties.desired".into()]);
    }
    let props = entry.get("properties")?.as_object()?;
    props.get("desired")?;
    Some(vec![module.into(), "properties".into(), "desired".into()])
}

#[cfg(test)]
mod tests {
    use super::super::value::parse;
    use super::*;

    #[test]
    fn dotted_nested_and_layered_forms() {
        let v = parse(r#"{"$edgeAgent": {"properties.desired": {"modules": {"a": {}, "b": {}}, "systemModules": {"edgeHub": {}}}}}"#).unwrap();
        let o = v.as_object().unwrap();
        let users = user_modules(o).unwrap();
        assert_eq!(
            users[1],
            (
                "b".into(),
                vec![
                    "$edgeAgent".into(),
                    "properties.desired".into(),
                    "modules".into(),
                    "b".into()
                ]
            )
        );
        assert_eq!(system_modules(o).unwrap().len(), 1);

        let v = parse(r#"{"$edgeAgent": {"properties": {"desired": {"modules": {"a": {}}}}}}"#)
            .unwrap();
        let users = user_modules(v.as_object().unwrap()).unwrap();
        assert_eq!(users[0].1.len(), 5);
        assert!(system_modules(v.as_object().unwrap()).is_none());

        let v = parse(r#"{"$edgeAgent": {"properties.desired.modules.x": {"settings": {}}, "properties.desired.modules.y": {}}}"#).unwrap();
        let users = user_modules(v.as_object().unwrap()).unwrap();
        assert_eq!(
            users.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["x", "y"]
        );
        assert_eq!(
            users[0].1,
            vec![
                "$edgeAgent".to_string(),
                "properties.desired.modules.x".into()
            ]
        );
    }
}
