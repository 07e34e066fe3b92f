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
/// them. Alias and merge bombs and deep nesting end in an error of their own
/// (serde_yaml's repetition and recursion limits, or the checks below), never
/// in a hang or in exhausting the host's instruction budget.
pub fn parse_compose(yaml: &str) -> Result<ComposeImages, String> {
    if yaml.len() > MAX_COMPOSE_BYTES {
        return Err(format!(
            "compose file is {} bytes; the limit is {MAX_COMPOSE_BYTES} bytes",
            yaml.len()
        ));
    }
    check_flow_nesting(yaml)?;
    check_alias_expansion(yaml)?;
    let mut doc: Value = serde_yaml::from_str(yaml).map_err(|e| format!("invalid YAML: {e}"))?;
    if is_reset(&doc) {
        return Ok(ComposeImages::default());
    }
    remove_resets(&mut doc);
    resolve_merges(&mut doc)?;

    let mut out = ComposeImages::default();
    // Seen images, for de-duplication in linear time: 10,000 services would
    // cost ~2 billion instructions with a scan of the list per image.
    let mut seen = std::collections::BTreeSet::new();
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
            Some(literal) => push_unique(&mut out.images, &mut seen, literal, false),
            None => push_unique(&mut out.skipped, &mut seen, raw.to_string(), true),
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
/// A node's properties (a `!tag` or an `&anchor`) sit between that position
/// and the collection, so a bracket right after them counts too: `!t [` and
/// `&a [` repeated nest as deep as `[` repeated.
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
    // Inside a node property, and whether one just ended: either way the
    // position where a value may start carries on past it.
    let mut in_property = false;
    let mut after_property = false;
    let mut bytes = yaml.bytes();
    while let Some(b) = bytes.next() {
        if b == b'\n' {
            (line, comment, prev, after_blank) = (line + 1, false, None, true);
            (in_property, after_property) = (false, false);
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
            if in_property {
                (in_property, after_property) = (false, true);
            }
            after_blank = true;
            continue;
        }
        if in_property {
            // A property ends at a blank; libyaml refuses a bracket glued to
            // one, but counting it costs nothing and errs on the safe side.
            if !matches!(b, b'[' | b'{') {
                continue;
            }
            (in_property, after_property) = (false, true);
        }
        let at_value = after_property || starts_value(prev, prev_opened);
        match b {
            b'#' if after_blank => comment = true,
            b'!' | b'&' if at_value => {
                (in_property, after_property) = (true, false);
                after_blank = false;
                continue;
            }
            b'\'' | b'"' if at_value => quote = Some(b),
            b'[' | b'{' if at_value => {
                depth += 1;
                prev_opened = true;
                after_property = false;
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
        after_property = false;
        after_blank = false;
    }
    Ok(())
}

fn starts_value(prev: Option<u8>, prev_opened: bool) -> bool {
    prev_opened || matches!(prev, None | Some(b':' | b'-' | b',' | b'?'))
}

/// Values a document may expand to through aliases: about what 1 MiB can
/// hold without any (`[a,a,...]`, ~520,000). serde_yaml bounds alias jumps
/// only by 100 per event, which in a file padded towards 1 MiB allows
/// hundreds of millions of values, far past any memory cap; docker compose
/// (yaml.v3) refuses such "excessive aliasing" too.
pub const MAX_EXPANDED_VALUES: usize = 500_000;

/// Counts the values the document expands to, aliases replayed, and stops at
/// [`MAX_EXPANDED_VALUES`] before anything is built. Errors that need a
/// built value (duplicate keys, empty tags) are left to the real parse. Only a file with an alias
/// (`*`) can expand, so the others skip this second pass over the events.
fn check_alias_expansion(yaml: &str) -> Result<(), String> {
    use serde::de::DeserializeSeed;
    if !yaml.contains('*') {
        return Ok(());
    }
    let left = std::cell::Cell::new(MAX_EXPANDED_VALUES);
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let result = Count(&left).deserialize(document);
        if result.is_err() && left.get() == 0 {
            return Err(format!(
                "invalid YAML: aliases expand the file to more than {MAX_EXPANDED_VALUES} values"
            ));
        }
        // Any other error is serde_yaml's own (syntax, repetition or
        // recursion limit), in the words the real parse would use: report it
        // now rather than pay for the whole parse again.
        if let Err(e) = result {
            return Err(format!("invalid YAML: {e}"));
        }
    }
    Ok(())
}

/// A visitor that builds nothing and counts every value it is shown.
struct Count<'a>(&'a std::cell::Cell<usize>);

impl Count<'_> {
    fn tick<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom("too many values")),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.tick()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        use serde::de::DeserializeSeed;
        self.tick()?;
        Count(self.0).deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        while seq.next_element_seed(Count(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        while map.next_key_seed(Count(self.0))?.is_some() {
            map.next_value_seed(Count(self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        // A tagged value: the tag is the variant, the value its content.
        self.tick()?;
        let (serde::de::IgnoredAny, content) = data.variant()?;
        content.newtype_variant_seed(Count(self.0))
    }
}

/// Drops every value tagged `!reset`: the key from its mapping, the item from
/// its list, at any depth. Docker compose does this to the node tree before
/// `<<` merges resolve, so:
/// - a reset inside an anchored block is gone wherever the block is used;
/// - a reset key beside `<<` removes only the mapping's own key, and the merge
///   still brings in the inherited value (within one file; across override
///   files a reset also clears what earlier files set, but autodeploy reads
///   one file);
/// - `!override` keeps its value: within one file the tag changes nothing.
///
/// Recursion is bounded by serde_yaml's nesting limit.
fn remove_resets(v: &mut Value) {
    match v {
        Value::Mapping(mapping) => {
            mapping.retain(|_, value| !is_reset(value));
            for value in mapping.values_mut() {
                remove_resets(value);
            }
        }
        Value::Sequence(seq) => {
            seq.retain(|item| !is_reset(item));
            for item in seq {
                remove_resets(item);
            }
        }
        Value::Tagged(tagged) => remove_resets(&mut tagged.value),
        _ => {}
    }
}

/// Compose's `!reset` tag. serde_yaml compares tags without their `!`, so
/// this matches `!reset` but not `!!reset`, as compose's exact match does.
fn is_reset(v: &Value) -> bool {
    matches!(v, Value::Tagged(t) if t.tag == "reset")
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
                // A merge looks at the kind of node only, so a tagged source
                // (`<<: !override {...}`) merges like an untagged one.
                let sources = match into_untagged(merge) {
                    Value::Mapping(m) => vec![m],
                    Value::Sequence(seq) => seq
                        .into_iter()
                        .map(|item| match into_untagged(item) {
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

/// `seen` holds both lists' entries, each marked with the list it is in.
fn push_unique(
    list: &mut Vec<String>,
    seen: &mut std::collections::BTreeSet<(bool, String)>,
    item: String,
    skipped: bool,
) {
    if seen.insert((skipped, item.clone())) {
        list.push(item);
    }
}

/// A tag other than `!reset` (already removed), such as compose's
/// `!override`, wraps a value; the image inside is what counts.
fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

fn into_untagged(v: Value) -> Value {
    match v {
        Value::Tagged(t) => into_untagged(t.value),
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
    fn reset_removes_the_tagged_key_or_item_and_override_keeps_its_value() {
        let yaml = "services:\n  gone: {image: !reset x:1}\n  dropped: !reset {image: y:1}\n  kept: {image: !override z:1}\n  other: {image: w:1, labels: [!reset a, b]}\n";
        assert_eq!(parse(yaml).0, ["z:1", "w:1"]);
        let mut doc: Value = serde_yaml::from_str(yaml).unwrap();
        remove_resets(&mut doc);
        let other = &doc["services"]["other"];
        assert_eq!(
            other["labels"],
            serde_yaml::from_str::<Value>("[b]").unwrap()
        );
        assert!(doc["services"].get("dropped").is_none());
        // `!!reset` is another tag, not compose's.
        assert_eq!(parse("services:\n  a: {image: !!reset x:1}\n").0, ["x:1"]);
    }

    #[test]
    fn resets_are_removed_before_merges_resolve() {
        // In the anchor: gone from every service that merges it.
        let yaml =
            "x-b: &b {image: !reset b:1}\nservices:\n  a: {<<: *b}\n  c: {<<: *b, image: own:1}\n";
        assert_eq!(parse(yaml).0, ["own:1"]);
        // Beside `<<`: only the own key goes, the merged value stays.
        let yaml = "x-b: &b {image: b:1}\nservices:\n  a: {<<: *b, image: !reset own:1}\n";
        assert_eq!(parse(yaml).0, ["b:1"]);
        // A reset merge source, alone or in a list, merges nothing.
        let yaml = "x-b: &b {image: b:1}\nservices:\n  a: {<<: !reset {image: r:1}}\n  c: {<<: [!reset {image: r:1}, *b]}\n";
        assert_eq!(parse(yaml).0, ["b:1"]);
        // Tagged merge sources merge like untagged ones.
        let yaml =
            "services:\n  a: {<<: !override {image: o:1}}\n  c: {<<: [!override {image: p:1}]}\n";
        assert_eq!(parse(yaml).0, ["o:1", "p:1"]);
    }

    #[test]
    fn a_reset_document_lists_nothing() {
        assert_eq!(
            parse("!reset {services: {a: {image: x:1}}}\n"),
            (vec![], vec![])
        );
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

    /// `open` repeated `depth` times around `x`, each closed again.
    fn nested(open: &str, depth: usize) -> String {
        let closers: String = open
            .chars()
            .rev()
            .filter_map(|c| match c {
                '[' => Some(']'),
                '{' => Some('}'),
                _ => None,
            })
            .collect();
        format!("{}x{}", open.repeat(depth), closers.repeat(depth))
    }

    const BEHIND_PROPERTIES: [&str; 7] = [
        "!t [",
        "&a [",
        "!t &a [",
        "&a !!seq [",
        "!t {k: ",
        "&a {k: ",
        "!t[",
    ];

    #[test]
    fn nesting_behind_tags_and_anchors_is_counted() {
        for open in BEHIND_PROPERTIES {
            let yaml = format!(
                "services:\n  web:\n    image: x:1\n    labels: {}\n",
                nested(open, 10_000)
            );
            let err = parse_compose(&yaml).unwrap_err();
            assert!(err.contains("deeper than 128"), "{open:?}: {err}");
            // On a line of its own, after a sequence dash, and in flow.
            for yaml in [
                format!("x:\n{}\n", nested(open, 200)),
                format!("x:\n  - {}\n", nested(open, 200)),
                format!("x: [{}]\n", nested(open, 200)),
            ] {
                let err = parse_compose(&yaml).unwrap_err();
                assert!(err.contains("deeper than 128"), "{open:?}: {err}");
            }
        }
    }

    #[test]
    fn tags_and_anchors_in_text_are_not_nesting() {
        let yaml = format!(
            "services:\n  a:\n    image: x:1\n    command: echo !t {} &a {}\n    labels: [\"!t {}\"]\n",
            "[".repeat(200),
            "[".repeat(200),
            "[".repeat(200)
        );
        assert_eq!(parse(&yaml).0, ["x:1"]);
        // Moderate nesting behind properties is valid and parses.
        for open in ["!t [", "&a [", "!t {k: "] {
            let yaml = format!(
                "services:\n  a:\n    image: x:1\n    x-deep: {}\n",
                nested(open, 40)
            );
            assert_eq!(parse(&yaml).0, ["x:1"], "{open:?}");
        }
    }

    /// Nine levels of `<<` merges, each of nine copies of the level below.
    fn merge_bomb() -> String {
        let mut yaml =
            String::from("m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}\n");
        for i in 1..10 {
            let refs = vec![format!("*m{}", i - 1); 9].join(", ");
            yaml.push_str(&format!("m{i}: &m{i} {{<<: [{refs}], k{i}: 1}}\n"));
        }
        yaml.push_str("services:\n  web:\n    <<: *m9\n    image: x:1\n");
        yaml
    }

    #[test]
    fn merge_bombs_end_in_the_repetition_limit() {
        let err = parse_compose(&merge_bomb()).unwrap_err();
        assert!(err.contains("repetition limit"), "{err}");
    }

    #[test]
    fn bombs_padded_towards_the_size_limit_end_in_the_expansion_limit() {
        // Padding raises serde_yaml's own repetition limit (100 alias jumps
        // per event) to tens of millions: the expansion cap must stop it.
        let pad: String = "- a\n".repeat(200_000);
        let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        for bomb in [laughs, merge_bomb()] {
            let yaml = format!("x-pad:\n{pad}{bomb}");
            assert!(yaml.len() < MAX_COMPOSE_BYTES);
            let err = parse_compose(&yaml).unwrap_err();
            assert!(
                err.contains("aliases expand the file to more than"),
                "{err}"
            );
        }
    }

    #[test]
    fn aliases_within_the_limit_parse() {
        let mut yaml = String::from(
            "x-defaults: &defaults\n  restart: always\n  labels: {tier: web, team: a}\nservices:\n",
        );
        for i in 0..10_000 {
            yaml.push_str(&format!(
                "  s{i}:\n    <<: *defaults\n    image: app{i}:1\n"
            ));
        }
        let (images, _) = parse(&yaml);
        assert_eq!(images.len(), 10_000);
        assert_eq!(images[9_999], "app9999:1");
    }
}
