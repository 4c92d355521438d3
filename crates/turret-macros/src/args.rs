//! The attribute's options: `#[cached(ttl = "10m", key = "product:{id}", …)]`.

use proc_macro2::Span;
use syn::{Expr, Ident, LitStr, Token, bracketed, meta::ParseNestedMeta, punctuated::Punctuated};

use crate::{duration::parse_millis, template::Template};

const OPTIONS: &str = "cache, ttl, grace, key, key_prefix, tags, skip";

/// The options as written.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) cache: Option<Expr>,
    pub(crate) ttl_ms: Option<u64>,
    pub(crate) grace_ms: Option<u64>,
    pub(crate) key: Option<Template>,
    pub(crate) key_prefix: Option<Template>,
    pub(crate) tags: Vec<Template>,
    pub(crate) skip: Vec<Ident>,
    seen: Vec<String>,
}

impl Args {
    pub(crate) fn parse_meta(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(name) = meta.path.get_ident().map(Ident::to_string) else {
            return Err(meta.error(format!(
                "unknown #[cached] option; the options are {OPTIONS}"
            )));
        };
        if self.seen.contains(&name) {
            return Err(meta.error(format!("`{name}` is given twice")));
        }
        match name.as_str() {
            "cache" => self.cache = Some(meta.value()?.parse()?),
            "ttl" => {
                let ms = duration(&meta.value()?.parse()?)?;
                self.ttl_ms = Some(ms);
            }
            "grace" => self.grace_ms = Some(duration(&meta.value()?.parse()?)?),
            "key" => self.key = Some(Template::parse(&meta.value()?.parse()?)?),
            "key_prefix" => {
                let lit: LitStr = meta.value()?.parse()?;
                let template = Template::parse(&lit)?;
                if template.args().next().is_some() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "key_prefix is literal text: use `key = \"…{arg}…\"` for a key built from arguments",
                    ));
                }
                self.key_prefix = Some(template);
            }
            "tags" => {
                let input = meta.value()?;
                let content;
                bracketed!(content in input);
                let tags = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
                for tag in &tags {
                    self.tags.push(Template::parse(tag)?);
                }
            }
            "skip" => meta.parse_nested_meta(|arg| {
                match arg.path.get_ident() {
                    Some(ident) => self.skip.push(ident.clone()),
                    None => return Err(arg.error("skip(...) lists argument names, e.g. skip(db)")),
                }
                Ok(())
            })?,
            other => {
                return Err(meta.error(format!(
                    "unknown #[cached] option `{other}`; the options are {OPTIONS}"
                )));
            }
        }
        self.seen.push(name);
        Ok(())
    }

    /// Checks that need every option.
    pub(crate) fn finish(&self) -> syn::Result<()> {
        if self.ttl_ms.is_none() {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[cached] needs a `ttl`: how long a value stays fresh, e.g. #[cached(ttl = \"10m\")]",
            ));
        }
        if let (Some(_), Some(prefix)) = (&self.key, &self.key_prefix) {
            return Err(syn::Error::new(
                prefix.span,
                "key_prefix names the default key; with `key = \"…\"` put the prefix in the template",
            ));
        }
        Ok(())
    }
}

fn duration(lit: &LitStr) -> syn::Result<u64> {
    match parse_millis(&lit.value()) {
        Ok(0) => Err(syn::Error::new(
            lit.span(),
            "a zero duration: write a positive one, e.g. \"30s\"",
        )),
        Ok(ms) => Ok(ms),
        Err(e) => Err(syn::Error::new(lit.span(), e)),
    }
}
