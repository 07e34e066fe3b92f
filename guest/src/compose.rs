//! `parse-compose`: which images does a docker-compose file use?

use serde_yaml::Value;

use crate::model::ComposeImages;

/// Larger compose files are refused before parsing: real ones are a few KiB,
/// and the cap keeps a hostile file from costing the guest's whole memory.
pub const MAX_COMPOSE_BYTES: usize = 1024 * 1024;

/// Lists the literal `services.*.image` strings of a compose file, and apart
/// from them the ones that need variable interpolation (those cannot be
/// resolved without the deploy node's environment, so they are not watched).
///
/// Anchors, aliases and `<<` merge keys resolve as docker compose resolves
/// them. Alias bombs and deep nesting end in an error from serde_yaml's
/// repetition and recursion limits, never in a hang.
pub fn parse_compose(yaml: &str) -> Result<ComposeImages, String> {
    if yaml.len() > MAX_COMPOSE_BYTES {
        return Err(format!(
            "compose file is {} bytes; the limit is {MAX_COMPOSE_BYTES} bytes",
            yaml.len()
        ));
    }
    check_flow_nesting(yaml)?;
    let mut doc: Value = serde_yaml::from_str(yaml).map_err(|e| format!("invalid YAML: {e}"))?;
    resolve_merges(&mut doc)?;

    let mut out = ComposeImages::default();
    let services = match untag(&doc) {
        Value::Null => return Ok(out),
        Value::Mapping(top) => match top.get("services").map(untag) {
            None | Some(Value::Null) => return Ok(out),
            Some(Value::Mapping(services)) => services,
            Some(other) => {
                return Err(format!(
                    "`services` must be a mapping, found {}",
                    kind(other)
                ));
            }
        },
        other => {
            return Err(format!(
                "a compose file must be a mapping at the top level, found {}",
                kind(other)
            ));
        }
    };

    for (name, service) in services {
        let name = match name {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        let service = match untag(service) {
            Value::Null => continue,
            Value::Mapping(m) => m,
            other => {
                return Err(format!(
                    "services.{name} must be a mapping, found {}",
                    kind(other)
                ));
            }
        };
        let raw = match service.get("image").map(untag) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.trim(),
            Some(other) => {
                return Err(format!(
                    "services.{name}.image must be a string, found {}",
                    kind(other)
                ));
            }
        };
        if raw.is_empty() {
            continue;
        }
        match unescape(raw).map_err(|e| format!("services.{name}.image {raw:?}: {e}"))? {
            Some(literal) => push_unique(&mut out.images, literal),
            None => push_unique(&mut out.skipped, raw.to_string()),
        }
    }
    Ok(out)
}

/// Applies compose's `$` rules to one string: `Ok(Some(literal))` with every
/// `$$` turned into `$`, or `Ok(None)` when it interpolates `${VAR...}` or
/// `$VAR`. A `$` that starts neither is an error, as in docker compose.
pub fn unescape(s: &str) -> Result<Option<String>, String> {
    let mut literal = String::with_capacity(s.len());
    let mut interpolated = false;
    let mut chars = s.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != '$' {
            literal.push(c);
            continue;
        }
        match chars.peek().map(|&(_, n)| n) {
            Some('$') => {
                chars.next();
                literal.push('$');
            }
            Some('{') => {
                if !s[at..].contains('}') {
                    return Err(format!("unclosed `${{` at byte {at}"));
                }
                // Skip to the closing brace so a `$` inside a default value
                // (`${TAG:-$$x}`) is not judged on its own.
                for (_, n) in chars.by_ref() {
                    if n == '}' {
                        break;
                    }
                }
                interpolated = true;
            }
            Some(n) if n == '_' || n.is_ascii_alphabetic() => interpolated = true,
            _ => {
                return Err(format!(
                    "invalid interpolation at byte {at}: write `$$` for a literal `$`"
                ));
            }
        }
    }
    Ok((!interpolated).then_some(literal))
}

/// Deeper flow nesting than serde_yaml accepts anyway. Checked up front
/// because libyaml's cost grows with the square of the depth: 10,000 nested
/// `[` take ~0.4 s in the guest before serde_yaml's own limit is reached.
pub const MAX_FLOW_DEPTH: usize = 128;

/// Refuses flow collections (`[...]`, `{...}`) nested deeper than
/// [`MAX_FLOW_DEPTH`]. A bracket counts only where a collection can start
/// (after `:`, `-`, `,`, `?`, another bracket, or at a line start), outside
/// quotes and comments, so text like `command: echo [` is not miscounted.
fn check_flow_nesting(yaml: &str) -> Result<(), String> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    // The last byte that was not a space or tab on this line, and whether a
    // blank came right before the current byte.
    let mut prev: Option<u8> = None;
    let mut after_blank = true;
    // Whether `prev` was a bracket that opened a counted collection.
    let mut prev_opened = false;
    let mut bytes = yaml.bytes();
    while let Some(b) = bytes.next() {
        if b == b'\n' {
            (line, comment, prev, after_blank) = (line + 1, false, None, true);
            continue;
        }
        if comment {
            continue;
        }
        if let Some(q) = quote {
            if q == b'"' && b == b'\\' {
                bytes.next();
            } else if b == q {
                quote = None;
            }
            prev = Some(b);
            continue;
        }
        if b == b' ' || b == b'\t' {
            after_blank = true;
            continue;
        }
        match b {
            b'#' if after_blank => comment = true,
            b'\'' | b'"' if starts_value(prev, prev_opened) => quote = Some(b),
            b'[' | b'{' if starts_value(prev, prev_opened) => {
                depth += 1;
                prev_opened = true;
                prev = Some(b);
                after_blank = false;
                if depth > MAX_FLOW_DEPTH {
                    return Err(format!(
                        "invalid YAML: collections nest deeper than {MAX_FLOW_DEPTH} levels (line {line})"
                    ));
                }
                continue;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = Some(b);
        prev_opened = false;
        after_blank = false;
    }
    Ok(())
}

fn starts_value(prev: Option<u8>, prev_opened: bool) -> bool {
    prev_opened || matches!(prev, None | Some(b':' | b'-' | b',' | b'?'))
}

/// Applies `<<` merge keys the way docker compose (yaml.v3) does: a merge
/// source is resolved before it is merged, keys the mapping sets itself win,
/// and in `<<: [*a, *b]` the first source that sets a key wins.
///
/// serde_yaml's own `apply_merge` leaves a chained merge (`&b` that itself
/// merges `*a`) half done, so this walks the tree itself. Recursion is bounded
/// by serde_yaml's nesting limit.
fn resolve_merges(v: &mut Value) -> Result<(), String> {
    match v {
        Value::Mapping(mapping) => {
            if let Some(merge) = mapping.remove("<<") {
                let sources = match merge {
                    Value::Mapping(m) => vec![m],
                    Value::Sequence(seq) => seq
                        .into_iter()
                        .map(|item| match item {
                            Value::Mapping(m) => Ok(m),
                            other => Err(format!(
                                "a `<<` merge list may hold only mappings, found {}",
                                kind(&other)
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(format!(
                            "`<<` must merge a mapping or a list of mappings, found {}",
                            kind(&other)
                        ));
                    }
                };
                for source in sources {
                    let mut source = Value::Mapping(source);
                    resolve_merges(&mut source)?;
                    if let Value::Mapping(source) = source {
                        for (key, value) in source {
                            mapping.entry(key).or_insert(value);
                        }
                    }
                }
            }
            for value in mapping.values_mut() {
                resolve_merges(value)?;
            }
        }
        Value::Sequence(seq) => {
            for item in seq {
                resolve_merges(item)?;
            }
        }
        Value::Tagged(tagged) => resolve_merges(&mut tagged.value)?,
        _ => {}
    }
    Ok(())
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Compose's own tags (`!reset`, `!override`) wrap a value; the image inside
/// is what counts.
fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (Vec<String>, Vec<String>) {
        let out = parse_compose(yaml).unwrap();
        (out.images, out.skipped)
    }

    #[test]
    fn literal_images_are_trimmed_and_deduplicated_in_order() {
        let (images, skipped) = parse(
            "services:\n  a: {image: ' redis:7 '}\n  b: {image: nginx}\n  c: {image: redis:7}\n  d: {build: .}\n",
        );
        assert_eq!(images, ["redis:7", "nginx"]);
        assert!(skipped.is_empty());
    }

    #[test]
    fn interpolation_is_skipped_and_double_dollar_is_literal() {
        assert_eq!(unescape("app:${TAG}").unwrap(), None);
        assert_eq!(unescape("app:${TAG:-latest}").unwrap(), None);
        assert_eq!(unescape("$REGISTRY/app").unwrap(), None);
        assert_eq!(unescape("app:$$x").unwrap().as_deref(), Some("app:$x"));
        assert_eq!(
            unescape("app:$${TAG}").unwrap().as_deref(),
            Some("app:${TAG}")
        );
        assert_eq!(unescape("app:${TAG:-$$x}").unwrap(), None);
        assert!(
            unescape("app:$")
                .unwrap_err()
                .contains("invalid interpolation")
        );
        assert!(unescape("app:$1").is_err());
        assert!(unescape("app:${TAG").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn merge_keys_resolve_like_compose() {
        let yaml = "x-base: &base\n  image: base:1\n  restart: always\nservices:\n  a:\n    <<: *base\n  b:\n    <<: *base\n    image: own:2\n";
        assert_eq!(parse(yaml).0, ["base:1", "own:2"]);
    }

    #[test]
    fn merge_list_takes_the_first_source_that_sets_a_key() {
        let yaml = "x-a: &a {image: first:1}\nx-b: &b {image: second:1}\nservices:\n  s:\n    <<: [*a, *b]\n";
        assert_eq!(parse(yaml).0, ["first:1"]);
    }

    #[test]
    fn chained_merges_resolve_the_inner_merge_first() {
        let yaml = "x-a: &a {image: a:1, restart: always}\nx-b: &b\n  <<: *a\n  restart: no\nservices:\n  s:\n    <<: *b\n";
        assert_eq!(parse(yaml).0, ["a:1"]);
    }

    #[test]
    fn brackets_in_text_quotes_and_comments_are_not_nesting() {
        let many = "[".repeat(200);
        let yaml = format!(
            "services:\n  a:\n    image: x:1\n    command: echo {many}\n    labels: ['{many}', \"{many}\"]\n    # {many}\n"
        );
        assert_eq!(parse(&yaml).0, ["x:1"]);
        let nested = format!(
            "services: {{a: {{image: x:1, labels: {}{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(parse(&nested).0, ["x:1"]);
    }

    #[test]
    fn empty_and_serviceless_documents_list_nothing() {
        assert_eq!(parse(""), (vec![], vec![]));
        assert_eq!(parse("version: '3'\n"), (vec![], vec![]));
        assert_eq!(parse("services:\n  a:\n"), (vec![], vec![]));
    }

    #[test]
    fn invalid_yaml_is_an_error_naming_the_problem() {
        let err = parse_compose("services: [unclosed").unwrap_err();
        assert!(err.starts_with("invalid YAML"), "{err}");
        let err = parse_compose("services:\n  a: {image: [x]}\n").unwrap_err();
        assert!(err.contains("services.a.image must be a string"), "{err}");
    }

    #[test]
    fn hostile_input_ends_in_an_error() {
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n",
                p = if i == 1 {
                    String::new()
                } else {
                    (i - 1).to_string()
                }
            ));
        }
        assert!(parse_compose(&bomb).is_err());
        let deep = format!("services: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            parse_compose(&deep)
                .unwrap_err()
                .contains("deeper than 128")
        );
        let block_deep: String = (0..1000)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(
            parse_compose(&block_deep)
                .unwrap_err()
                .contains("recursion limit")
        );
        let big = "#".repeat(10 * 1024 * 1024);
        assert!(parse_compose(&big).unwrap_err().contains("limit"));
    }
}
