//! Message templates with the consent-link placeholder, in Synapse's syntax (Python `%`
//! formatting: `%(consent_uri)s`, `%%` for a literal `%`) or as `{consent_uri}`.

use serde_json::Value;

const PERCENT_PLACEHOLDER: &str = "%(consent_uri)s";
const BRACE_PLACEHOLDER: &str = "{consent_uri}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    ConsentUri,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Part>);

impl Template {
    /// Parse `text`. A `%` must start `%(consent_uri)s` or be doubled, as Python's `%`
    /// formatting (which Synapse applies) would require.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest
                .strip_prefix(PERCENT_PLACEHOLDER)
                .or_else(|| rest.strip_prefix(BRACE_PLACEHOLDER))
            {
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::ConsentUri);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("%%") {
                literal.push('%');
                rest = after;
            } else if c == '%' {
                return Err(
                    "a `%` must start the placeholder `%(consent_uri)s` or be doubled (`%%`)"
                        .into(),
                );
            } else {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self(parts))
    }

    /// Whether the template mentions the consent link.
    pub(crate) fn has_placeholder(&self) -> bool {
        self.0.contains(&Part::ConsentUri)
    }

    /// The text with the placeholder replaced by `consent_uri`.
    pub(crate) fn render(&self, consent_uri: &str) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::ConsentUri => consent_uri,
            })
            .collect()
    }
}

/// Replace the placeholder in every string of `value` (validated at load, so a string that no
/// longer parses is kept as is).
pub(crate) fn render_value(value: &Value, consent_uri: &str) -> Value {
    match value {
        Value::String(s) => {
            Value::String(Template::parse(s).map_or_else(|_| s.clone(), |t| t.render(consent_uri)))
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| render_value(v, consent_uri)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_value(v, consent_uri)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_placeholder_syntaxes_and_escaped_percent() {
        let t = Template::parse("100%% sure: %(consent_uri)s or {consent_uri}.").expect("valid");
        assert!(t.has_placeholder());
        assert_eq!(t.render("U"), "100% sure: U or U.");
        assert!(
            !Template::parse("plain, {other}")
                .expect("valid")
                .has_placeholder()
        );
        assert_eq!(
            Template::parse("é {x}").expect("valid").render("U"),
            "é {x}",
            "non-ASCII and other braces are literal"
        );
    }

    #[test]
    fn stray_percent_is_refused() {
        assert!(Template::parse("50% off").is_err());
        assert!(Template::parse("%(other)s").is_err());
        assert!(Template::parse("ends with %").is_err());
    }

    #[test]
    fn values_are_rendered_recursively() {
        let v = json!({"a": ["%(consent_uri)s", 1], "b": {"c": "x {consent_uri}"}});
        assert_eq!(
            render_value(&v, "U"),
            json!({"a": ["U", 1], "b": {"c": "x U"}})
        );
    }
}
