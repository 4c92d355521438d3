//! Key and tag templates: `"product:{id}"`, `"user:{uid}:orders:{page}"`.
//!
//! A template is split at `:` into segments; the first segment is the key's name
//! (`CacheKey::new`), the others its parts (`CacheKey::part`), each escaped by `CacheKey`, so
//! an argument's value can never be read as a separator. A segment holds literal text and at
//! most one `{argument}` (two in one segment could trade characters: `{a}-{b}`); `{{` and
//! `}}` are literal braces.

use proc_macro2::Span;
use syn::{Ident, LitStr};

/// One `:`-separated segment of a template.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Literal text only.
    Literal(String),
    /// An argument, with the literal text before and after it in the segment.
    Arg {
        before: String,
        name: String,
        after: String,
    },
}

/// A parsed template, with the literal it came from (for error spans).
#[derive(Debug)]
pub(crate) struct Template {
    pub(crate) segments: Vec<Segment>,
    pub(crate) span: Span,
}

impl Template {
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<Self> {
        let segments = parse_segments(&lit.value()).map_err(|e| syn::Error::new(lit.span(), e))?;
        Ok(Self {
            segments,
            span: lit.span(),
        })
    }

    /// The arguments the template names, with the literal's span.
    pub(crate) fn args(&self) -> impl Iterator<Item = Ident> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Arg { name, .. } => Some(Ident::new(name, self.span)),
            Segment::Literal(_) => None,
        })
    }
}

pub(crate) fn parse_segments(text: &str) -> Result<Vec<Segment>, String> {
    if text.is_empty() {
        return Err("empty template: write a name, e.g. \"product:{id}\"".into());
    }
    let mut segments = Vec::new();
    for raw in split_segments(text)? {
        segments.push(parse_segment(text, &raw)?);
    }
    Ok(segments)
}

/// Splits at `:` outside braces.
fn split_segments(text: &str) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut depth = 0;
    for c in text.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = (depth - 1).max(0),
            ':' if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    if out.iter().any(String::is_empty) {
        return Err(format!(
            "empty segment in \"{text}\": every `:` separates two non-empty parts, e.g. \"product:{{id}}\""
        ));
    }
    Ok(out)
}

fn parse_segment(text: &str, segment: &str) -> Result<Segment, String> {
    let mut before = String::new();
    let mut after = String::new();
    let mut name: Option<String> = None;
    let mut chars = segment.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                if name.is_some() {
                    after.push('{')
                } else {
                    before.push('{')
                }
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                if name.is_some() {
                    after.push('}')
                } else {
                    before.push('}')
                }
            }
            '{' => {
                let mut inner = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    return Err(format!(
                        "unclosed `{{` in \"{text}\": write `{{argument}}`, or `{{{{` for a literal brace"
                    ));
                }
                let inner = inner.trim();
                if syn::parse_str::<Ident>(inner).is_err() {
                    return Err(format!(
                        "`{{{inner}}}` in \"{text}\" is not an argument name: a placeholder is `{{name}}` of one of the function's arguments"
                    ));
                }
                if name.is_some() {
                    return Err(format!(
                        "two arguments in one segment of \"{text}\": separate them with `:` (e.g. \"{{a}}:{{b}}\") so that their values cannot run into each other"
                    ));
                }
                name = Some(inner.to_owned());
            }
            '}' => {
                return Err(format!(
                    "unmatched `}}` in \"{text}\": write `}}}}` for a literal brace"
                ));
            }
            c => {
                if name.is_some() {
                    after.push(c)
                } else {
                    before.push(c)
                }
            }
        }
    }
    Ok(match name {
        Some(name) => Segment::Arg {
            before,
            name,
            after,
        },
        None => Segment::Literal(before),
    })
}

#[cfg(test)]
mod tests {
    use super::{Segment, parse_segments};

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.into())
    }
    fn arg(before: &str, name: &str, after: &str) -> Segment {
        Segment::Arg {
            before: before.into(),
            name: name.into(),
            after: after.into(),
        }
    }

    #[test]
    fn splits_names_parts_and_placeholders() {
        assert_eq!(
            parse_segments("product:{id}").unwrap(),
            vec![lit("product"), arg("", "id", "")]
        );
        assert_eq!(
            parse_segments("user:{uid}:orders:p{page}x").unwrap(),
            vec![
                lit("user"),
                arg("", "uid", ""),
                lit("orders"),
                arg("p", "page", "x")
            ]
        );
        assert_eq!(
            parse_segments("{tenant}:top").unwrap(),
            vec![arg("", "tenant", ""), lit("top")]
        );
        assert_eq!(parse_segments("a{{b}}").unwrap(), vec![lit("a{b}")]);
        assert_eq!(parse_segments("sales").unwrap(), vec![lit("sales")]);
    }

    #[test]
    fn refuses_ambiguous_or_broken_templates() {
        for (bad, says) in [
            ("", "empty template"),
            ("a::{id}", "empty segment"),
            ("a:", "empty segment"),
            ("a:{a}{b}", "two arguments in one segment"),
            ("a:{id", "unclosed"),
            ("a:id}", "unmatched"),
            ("a:{1x}", "not an argument name"),
            ("a:{}", "not an argument name"),
        ] {
            let err = parse_segments(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
