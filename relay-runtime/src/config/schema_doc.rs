//! The key catalog as people read it: the JSON Schema of pipeline configs that
//! `pgtrickle-relay config-schema` prints (draft 2020-12, one branch per sink and source type),
//! and the README's key tables.

use serde_json::{json, Map, Value};

use super::keys::{Catalog, DirectionKeys, KeyRule, KeySet, Kind, TypeKeys};

/// Every name a rule is written as, with each of `prefixes` (and bare).
fn written_names(rule: &KeyRule, prefixes: &[&str]) -> Vec<String> {
    let names = std::iter::once(&rule.name).chain(&rule.aliases);
    let mut out: Vec<String> = names.clone().cloned().collect();
    for p in prefixes {
        out.extend(names.clone().map(|n| format!("{p}{n}")));
    }
    out
}

fn properties(set: &KeySet, prefixes: &[&str], into: &mut Map<String, Value>) {
    for rule in &set.keys {
        let mut schema = rule.schema.clone();
        if let Some(obj) = schema.as_object_mut() {
            obj.remove("x-aliases");
        }
        for name in written_names(rule, prefixes) {
            into.insert(name, schema.clone());
        }
    }
}

/// `{"anyOf": [{"required": [n]} …]}`: one of `names` is present.
fn any_required(names: &[String]) -> Value {
    json!({"anyOf": names.iter().map(|n| json!({"required": [n]})).collect::<Vec<_>>()})
}

/// One of `names` at the top, or inside the object at `inner`.
fn required_here_or_in(names: &[String], inner: &str, inner_names: &[String]) -> Value {
    let mut alternatives: Vec<Value> = names.iter().map(|n| json!({"required": [n]})).collect();
    alternatives.push(json!({"required": [inner], "properties": {inner: any_required(inner_names)}}));
    json!({"anyOf": alternatives})
}

fn branch(dir: &DirectionKeys, t: &TypeKeys, forward: bool) -> Value {
    let (role_key, role_type) = if forward { ("sink", "sink_type") } else { ("source", "source_type") };
    let (other_key, other_type) = if forward { ("source", "source_type") } else { ("sink", "sink_type") };
    let spellings = json!(t.spellings);
    let mut props = Map::new();
    properties(&dir.pipeline, &[], &mut props);
    properties(&t.keys, t.prefixes, &mut props);
    // The backend's own object: its keys bare, and the pipeline's keys (pg_trickle's positional
    // forms keep some there).
    let mut role_props = Map::new();
    role_props.insert("type".into(), json!({"enum": spellings, "description": format!("The {} type.", dir.role)}));
    properties(&t.keys, &[], &mut role_props);
    properties(&dir.pipeline, &[], &mut role_props);
    // The other side's object: pipeline keys only.
    let mut other_props = Map::new();
    properties(&dir.pipeline, &[], &mut other_props);
    if forward {
        props.insert(other_type.into(), json!({"const": "outbox"}));
    } else {
        let inbox = ["pg-inbox", "pg_inbox", "inbox"];
        props.insert(other_type.into(), json!({"enum": inbox}));
        other_props.insert("type".into(), json!({"enum": inbox}));
    }
    props.insert(role_type.into(), json!({"enum": spellings, "description": format!("The {} type.", dir.role)}));
    props.insert(role_key.into(), json!({"type": "object", "properties": role_props, "additionalProperties": false}));
    props.insert(other_key.into(), json!({"type": "object", "properties": other_props, "additionalProperties": false}));

    let mut all_of = vec![json!({"anyOf": [
        {"required": [role_type]},
        {"required": [role_key], "properties": {role_key: {"required": ["type"]}}}
    ]})];
    let where_from = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    if forward {
        all_of.push(json!({"anyOf": [
            any_required(&where_from(&["stream_table", "outbox_table", "outbox"])),
            {"required": ["source"], "properties": {"source": any_required(&where_from(&["stream_table", "outbox_table", "outbox"]))}},
            {"required": ["sink"], "properties": {"sink": any_required(&where_from(&["stream_table", "outbox_table", "outbox"]))}}
        ]}));
    } else {
        all_of.push(json!({"anyOf": [
            any_required(&where_from(&["inbox_table", "inbox"])),
            {"required": ["sink"], "properties": {"sink": any_required(&where_from(&["inbox_table", "inbox"]))}},
            {"required": ["source"], "properties": {"source": any_required(&where_from(&["inbox_table", "inbox"]))}}
        ]}));
    }
    for rule in t.keys.keys.iter().filter(|r| r.required) {
        all_of.push(required_here_or_in(&written_names(rule, t.prefixes), role_key, &written_names(rule, &[])));
    }
    json!({
        "title": format!("{} {}", t.name, dir.role),
        "description": t.description,
        "type": "object",
        "properties": props,
        "additionalProperties": false,
        "allOf": all_of,
    })
}

impl Catalog {
    /// The JSON Schema (draft 2020-12) of a pipeline config: `#/$defs/forward` for
    /// `relay_outbox_config.config`, `#/$defs/reverse` for `relay_inbox_config.config`.
    pub fn json_schema(&self) -> Value {
        let forward: Vec<Value> = self.forward.types.iter().map(|t| branch(&self.forward, t, true)).collect();
        let reverse: Vec<Value> = self.reverse.types.iter().map(|t| branch(&self.reverse, t, false)).collect();
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "pgtrickle-relay pipeline config",
            "description": "The config of a pgtrickle-relay pipeline: a forward pipeline (pgtrickle.relay_outbox_config, \
                set_relay_outbox) is #/$defs/forward, a reverse one (pgtrickle.relay_inbox_config, set_relay_inbox) is \
                #/$defs/reverse. Keys may be written flat (a backend key with its prefix, e.g. nats_url) or nested in \
                'sink' / 'source'. Strings may hold ${env:NAME} and ${file:/path} references. Generated by \
                `pgtrickle-relay config-schema` from the relay's typed configs; the database checks the same rules, and \
                one more: a template's {word} within two edits of a template variable is refused as a typo.",
            "anyOf": [{"$ref": "#/$defs/forward"}, {"$ref": "#/$defs/reverse"}],
            "$defs": {
                "forward": {"title": "forward pipeline (outbox → sink)", "anyOf": forward},
                "reverse": {"title": "reverse pipeline (source → inbox)", "anyOf": reverse},
            },
        })
    }

    /// The README's key table of the keys in `set` (written with `prefix` in the flat form).
    pub fn markdown_table(set: &KeySet, prefix: Option<&str>) -> String {
        let mut out = String::from("| Key | Type | Meaning |\n|-----|------|---------|\n");
        for rule in &set.keys {
            let mut key = format!("`{}`", rule.name);
            if !rule.aliases.is_empty() {
                let aliases: Vec<String> = rule.aliases.iter().map(|a| format!("`{a}`")).collect();
                key.push_str(&format!(" (alias {})", aliases.join(", ")));
            }
            if rule.required {
                key.push_str(" **required**");
            }
            let ty = match &rule.kind {
                Kind::Int { min, max } => format!("integer {min}…{max}"),
                Kind::Flag => "true / false".into(),
                Kind::Text => "string".into(),
                Kind::String => "string (may be empty)".into(),
                Kind::Secret => "secret string".into(),
                Kind::Template => "template".into(),
                Kind::List => "list (array or comma-separated)".into(),
                Kind::Settings => "object of strings".into(),
                Kind::Choice(words) => words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", "),
                Kind::Ignored => "any (ignored)".into(),
            };
            out.push_str(&format!("| {key} | {ty} | {} |\n", rule.description.replace('|', "\\|")));
        }
        if let Some(p) = prefix {
            out.push_str(&format!("\nFlat form: each key with the `{p}` prefix (`{p}{}`).\n", set.keys[0].name));
        }
        out
    }

    /// The README's generated blocks: `<!-- keys:forward -->`, `<!-- keys:reverse -->`,
    /// `<!-- keys:sink:<type> -->`, `<!-- keys:source:<type> -->`, each closed by
    /// `<!-- /keys -->`.
    pub fn markdown_block(&self, tag: &str) -> Option<String> {
        match tag.split(':').collect::<Vec<_>>().as_slice() {
            ["forward"] => Some(Self::markdown_table(&self.forward.pipeline, None)),
            ["reverse"] => Some(Self::markdown_table(&self.reverse.pipeline, None)),
            ["sink", t] => self
                .forward
                .types
                .iter()
                .find(|x| x.name == *t)
                .map(|x| Self::markdown_table(&x.keys, x.prefixes.first().copied())),
            ["source", t] => self
                .reverse
                .types
                .iter()
                .find(|x| x.name == *t)
                .map(|x| Self::markdown_table(&x.keys, x.prefixes.first().copied())),
            _ => None,
        }
    }

    /// `text` with every generated block replaced by its current content.
    pub fn regenerate_markdown(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("<!-- keys:") {
            let open_end = rest[start..].find("-->").ok_or("unclosed <!-- keys: marker")? + start + 3;
            let tag = rest[start + 10..open_end - 3].trim();
            let close = rest[open_end..]
                .find("<!-- /keys -->")
                .ok_or_else(|| format!("<!-- keys:{tag} --> has no <!-- /keys -->"))?
                + open_end;
            let block = self.markdown_block(tag).ok_or_else(|| format!("unknown key table '{tag}'"))?;
            out.push_str(&rest[..open_end]);
            out.push_str("\n\n");
            out.push_str(&block);
            out.push('\n');
            rest = &rest[close..];
            out.push_str("<!-- /keys -->");
            rest = &rest["<!-- /keys -->".len()..];
        }
        out.push_str(rest);
        Ok(out)
    }
}
