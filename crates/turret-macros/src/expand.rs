//! The expansion of `#[cached]`: the key function, the options function and the function
//! itself calling `fetch`.

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::{
    Expr, FnArg, GenericParam, Ident, ItemFn, Pat, PathArguments, ReturnType, Type,
    spanned::Spanned,
};

use crate::{
    args::Args,
    template::{Segment, Template},
};

/// One argument of the function, as the key sees it.
struct Arg {
    ident: Ident,
    ty: Type,
    skipped: bool,
}

/// Collects errors so that one compilation reports all of them.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.0 {
            Some(e) => e.combine(error),
            None => self.0 = Some(error),
        }
    }
    fn push_spanned(&mut self, tokens: impl quote::ToTokens, message: impl std::fmt::Display) {
        let error = syn::Error::new_spanned(tokens, message);
        match &mut self.0 {
            Some(e) => e.combine(error),
            None => self.0 = Some(error),
        }
    }
    fn result(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `::turret_stampede` or `::turret::stampede`, whichever the calling crate depends on.
fn krate() -> TokenStream {
    match crate_name("turret-stampede") {
        Ok(FoundCrate::Itself) => quote!(::turret_stampede),
        Ok(FoundCrate::Name(name)) => {
            let name = Ident::new(&name, Span::call_site());
            quote!(::#name)
        }
        Err(_) => match crate_name("turret") {
            Ok(FoundCrate::Itself) => quote!(::turret::stampede),
            Ok(FoundCrate::Name(name)) => {
                let name = Ident::new(&name, Span::call_site());
                quote!(::#name::stampede)
            }
            Err(_) => quote!(::turret_stampede),
        },
    }
}

/// Whether `tokens` contain the identifier `name` (a generic parameter, `impl`).
fn mentions(tokens: TokenStream, name: &str) -> bool {
    tokens.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == name,
        TokenTree::Group(g) => mentions(g.stream(), name),
        _ => false,
    })
}

/// `(value type, whether the function returns a Result)`. A return type whose last path
/// segment is `Result` is fallible (`Result<T, E>`, `io::Result<T>`, `anyhow::Result<T>`).
fn value_type(ret: &ReturnType) -> (Type, bool) {
    let ty = match ret {
        ReturnType::Default => return (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Type::Path(path) = &ty
        && path.qself.is_none()
        && let Some(last) = path.path.segments.last()
        && last.ident == "Result"
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(value)) = args.args.first()
    {
        return (value.clone(), true);
    }
    (ty, false)
}

pub(crate) fn expand(args: Args, item: ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let sig = &item.sig;
    let name = &sig.ident;

    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token.span,
            "#[cached] works on `async fn`s: make it `async fn` (the cache is asynchronous)",
        );
    }
    if let Some(c) = &sig.constness {
        errors.push(
            c.span,
            "#[cached] cannot make a `const fn` cached: remove `const`",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push(v.span(), "#[cached] functions cannot be variadic");
    }

    // The receiver: a method needs `cache = self.<field>`.
    let mut method = false;
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        method = true;
        if receiver.reference.is_some() && receiver.mutability.is_some() {
            errors.push_spanned(
                receiver,
                "#[cached] methods take `&self`: on a hit the body does not run, so it cannot be what changes `self`",
            );
        }
        if args.cache.is_none() {
            errors.push_spanned(
                receiver,
                "a #[cached] method needs the cache it uses: add `cache = self.cache` (the field holding the StampedeCache), or `cache = StampedeCache::default_cache()` for the process-wide one",
            );
        }
    }

    // An argument named by `cache = <ident>` is a handle: left out of the key.
    let cache_ident = match &args.cache {
        Some(Expr::Path(p)) if p.qself.is_none() => p.path.get_ident().cloned(),
        _ => None,
    };

    let mut fn_args = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(typed) = input else { continue };
        match &*typed.pat {
            Pat::Ident(pat) => {
                let skipped = args.skip.contains(&pat.ident)
                    || cache_ident.as_ref().is_some_and(|c| *c == pat.ident);
                fn_args.push(Arg {
                    ident: pat.ident.clone(),
                    ty: (*typed.ty).clone(),
                    skipped,
                });
            }
            Pat::Wild(_) => {} // unused by the body: cannot change the value
            other => errors.push_spanned(
                other,
                "a pattern argument cannot be keyed or skipped by name: bind it to a name (`pair: (u8, u8)`) and destructure it in the body",
            ),
        }
    }
    for skip in &args.skip {
        if !fn_args.iter().any(|a| a.ident == *skip) {
            errors.push(
                skip.span(),
                format!("skip({skip}): the function has no argument named `{skip}`"),
            );
        }
    }

    // The type parameters: the key must say which types the value has.
    let type_params: Vec<Ident> = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.clone()),
            GenericParam::Const(c) => Some(c.ident.clone()),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    let (value_ty, fallible) = value_type(&sig.output);
    if let ReturnType::Type(_, ty) = &sig.output {
        if mentions(quote!(#ty), "impl") {
            errors.push_spanned(
                ty,
                "#[cached] stores the returned value: give it a concrete type, not `impl Trait`",
            );
        }
        for param in &type_params {
            if mentions(quote!(#ty), &param.to_string()) {
                errors.push(
                    param.span(),
                    format!("the cached value's type depends on `{param}`, so one key could hold values of different types: write one #[cached] function per type (a non-generic wrapper)"),
                );
            }
        }
    }
    for arg in fn_args.iter().filter(|a| !a.skipped) {
        let ty = &arg.ty;
        let ident = &arg.ident;
        if mentions(quote!(#ty), "impl") {
            errors.push_spanned(
                ty,
                format!("`{ident}` is an `impl Trait` argument and cannot be part of the key: give it a concrete type, or skip({ident}) if it is a handle"),
            );
        }
        for param in &type_params {
            if mentions(quote!(#ty), &param.to_string()) {
                errors.push_spanned(
                    ty,
                    format!("`{ident}` has the generic type `{param}`: the key would be the same for two types with the same value; give it a concrete type, or skip({ident}) if it is a handle"),
                );
            }
        }
    }

    // The templates name arguments that exist and are not skipped.
    let check_template = |template: &Template, errors: &mut Errors| {
        for ident in template.args() {
            if ident == "self" {
                errors.push(template.span, "`{self}` cannot be in a template: name an argument, or a field through an argument");
                continue;
            }
            match fn_args.iter().find(|a| a.ident == ident) {
                None => errors.push(
                    template.span,
                    format!("`{{{ident}}}`: the function has no argument named `{ident}`"),
                ),
                Some(a) if a.skipped => errors.push(
                    template.span,
                    format!("`{{{ident}}}` names the skipped argument `{ident}`: remove it from skip(...) or from the template"),
                ),
                Some(_) => {}
            }
        }
    };
    if let Some(key) = &args.key {
        check_template(key, &mut errors);
    }
    for tag in &args.tags {
        check_template(tag, &mut errors);
    }

    let in_template = |t: &Template, ident: &Ident| t.args().any(|a| a == *ident);
    let in_key = |ident: &Ident| args.key.as_ref().is_none_or(|k| in_template(k, ident));
    let in_tags = |ident: &Ident| args.tags.iter().any(|t| in_template(t, ident));
    if args.key.is_some() {
        for arg in fn_args.iter().filter(|a| !a.skipped) {
            if !in_key(&arg.ident) && !in_tags(&arg.ident) {
                let ident = &arg.ident;
                errors.push(
                    ident.span(),
                    format!("`{ident}` is in neither the key template nor a tag, so calls differing only in `{ident}` would share one value: add `{{{ident}}}` to the key, or skip({ident})"),
                );
            }
        }
    }
    errors.result()?;

    let krate = krate();
    let private = quote!(#krate::__private);
    let vis = &item.vis;
    let lifetimes: Vec<_> = sig
        .generics
        .params
        .iter()
        .filter(|p| matches!(p, GenericParam::Lifetime(_)))
        .collect();
    let key_fn = format_ident!("{}_key", name);
    let options_fn = format_ident!("{}_options", name);

    // The key function's parameters.
    let key_args: Vec<&Arg> = fn_args
        .iter()
        .filter(|a| !a.skipped && in_key(&a.ident))
        .collect();
    let tag_args: Vec<&Arg> = fn_args
        .iter()
        .filter(|a| !a.skipped && in_tags(&a.ident))
        .collect();
    let params = |list: &[&Arg]| {
        let p = list.iter().map(|a| {
            let (ident, ty) = (&a.ident, &a.ty);
            quote!(#ident: #ty)
        });
        quote!(#(#p),*)
    };
    let key_params = params(&key_args);
    let tag_params = params(&tag_args);

    let key_expr = match &args.key {
        Some(template) => render(&private, template, &fn_args),
        None => {
            let path = if method {
                quote!(::core::any::type_name::<Self>())
            } else {
                quote!(::core::module_path!())
            };
            let start = match &args.key_prefix {
                Some(prefix) => render_key(&private, prefix, &fn_args),
                None => {
                    let name = name.to_string();
                    quote! {{
                        let mut __turret_path = #path.split("::");
                        let mut __turret_key = #private::CacheKey::new(__turret_path.next().unwrap_or_default());
                        for __turret_segment in __turret_path {
                            __turret_key = __turret_key.part(__turret_segment);
                        }
                        __turret_key.part(#name)
                    }}
                }
            };
            let hashed = key_args.iter().map(|a| {
                let ident = &a.ident;
                quote_spanned!(a.ident.span()=> .arg(&#ident))
            });
            quote! {
                ::std::string::ToString::to_string(
                    &#start.part(#private::ArgHasher::new() #(#hashed)* .finish())
                )
            }
        }
    };

    let ttl = args.ttl_ms.unwrap_or_default();
    let grace = args
        .grace_ms
        .map(|g| quote!(.grace(#private::Duration::from_millis(#g))));
    let tags = args.tags.iter().map(|t| {
        let tag = render(&private, t, &fn_args);
        quote!(.tag(#tag))
    });
    let options_expr = quote! {
        #private::Options::ttl(#private::Duration::from_millis(#ttl)) #grace #(#tags)*
    };

    let cache = match &args.cache {
        Some(expr) => quote!((#expr)),
        None => quote!(#private::StampedeCache::default_cache()),
    };
    let block = &item.block;
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    let call = if fallible {
        quote_spanned! {ret_span=>
            #cache.fetch(__turret_key, &__turret_options, move || async move #block).await
        }
    } else {
        quote_spanned! {ret_span=>
            match #cache
                .fetch(__turret_key, &__turret_options, move || async move {
                    ::core::result::Result::Ok::<#value_ty, ::core::convert::Infallible>(async move #block.await)
                })
                .await
            {
                ::core::result::Result::Ok(__turret_value) => __turret_value,
                ::core::result::Result::Err(__turret_never) => match __turret_never {},
            }
        }
    };

    let attrs = &item.attrs;
    let key_doc = format!(
        " The cache key `{name}` uses for these arguments (`#[cached]`): for `invalidate` and `set` (write-through)."
    );
    let options_doc = format!(
        " The options `{name}` caches with (`#[cached]`: TTL, grace, tags): for `set` (write-through)."
    );
    let lifetimes = if lifetimes.is_empty() {
        quote!()
    } else {
        quote!(<#(#lifetimes),*>)
    };
    Ok(quote! {
        #[doc = #key_doc]
        #[allow(dead_code)]
        #vis fn #key_fn #lifetimes (#key_params) -> ::std::string::String {
            #key_expr
        }

        #[doc = #options_doc]
        #[allow(dead_code)]
        #vis fn #options_fn #lifetimes (#tag_params) -> #private::Options {
            #options_expr
        }

        #(#attrs)*
        #vis #sig {
            let __turret_key: ::std::string::String = #key_expr;
            let __turret_options = #options_expr;
            #call
        }
    })
}

/// A template as a `String` expression.
fn render(private: &TokenStream, template: &Template, args: &[Arg]) -> TokenStream {
    let key = render_key(private, template, args);
    quote!(::std::string::ToString::to_string(&#key))
}

/// A template as a `CacheKey` expression: the first segment names it, the others are parts.
fn render_key(private: &TokenStream, template: &Template, args: &[Arg]) -> TokenStream {
    let mut segments = template.segments.iter().map(|segment| match segment {
        Segment::Literal(text) => quote!(#text),
        Segment::Arg {
            before,
            name,
            after,
        } => {
            // The argument's own identifier: a missing `Display` is reported at the argument.
            let ident = args
                .iter()
                .find(|a| a.ident == name)
                .map_or_else(|| Ident::new(name, template.span), |a| a.ident.clone());
            let span = ident.span();
            if before.is_empty() && after.is_empty() {
                quote_spanned!(span=> &::std::string::ToString::to_string(&#ident))
            } else {
                let format = format!("{}{{}}{}", escape(before), escape(after));
                quote_spanned!(span=> &::std::format!(#format, #ident))
            }
        }
    });
    let first = segments.next().unwrap_or_else(|| quote!(""));
    quote!(#private::CacheKey::new(#first) #(.part(#segments))*)
}

fn escape(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}
