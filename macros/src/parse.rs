//! Stage 1: tokens → [`Spec`], a faithful typed copy of what the user wrote. No validation
//! beyond the shape of the syntax (that is [`crate::analyze`]'s job).

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, ItemEnum, LitStr, Path, Token, Visibility};

/// The parsed `#[lifecycle]` spec.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct Spec {
    pub vis: Visibility,
    pub ident: Ident,
    /// Attributes on the enum other than ours (docs, extra derives).
    pub attrs: Vec<Attribute>,
    pub name: LitStr,
    pub events: Vec<Ident>,
    pub krate: Option<Path>,
    pub phases: Vec<PhaseSpec>,
}

/// One variant with its markers and outgoing edges.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct PhaseSpec {
    pub ident: Ident,
    pub attrs: Vec<Attribute>,
    pub initial: Option<Ident>,
    pub terminal: Option<Ident>,
    pub declared_only: Option<Ident>,
    pub edges: Vec<EdgeSpec>,
}

/// `Event => Target` or `Event => Target if guard`.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct EdgeSpec {
    pub event: Ident,
    pub target: Ident,
    pub guard: Option<Ident>,
}

/// The parsed `#[phase_enum]` item.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct PlainEnum {
    pub vis: Visibility,
    pub ident: Ident,
    pub attrs: Vec<Attribute>,
    pub krate: Option<Path>,
    pub variants: Vec<(Ident, Vec<Attribute>)>,
}

impl Parse for EdgeSpec {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let event: Ident = input.parse()?;
        input.parse::<Token![=>]>()?;
        let target: Ident = input.parse()?;
        let guard = if input.peek(Token![if]) {
            input.parse::<Token![if]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(EdgeSpec {
            event,
            target,
            guard,
        })
    }
}

#[derive(Default)]
struct Args {
    name: Option<LitStr>,
    events: Option<Vec<Ident>>,
    krate: Option<Path>,
}

fn parse_args(args: TokenStream, allow_lifecycle: bool) -> syn::Result<Args> {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        if allow_lifecycle && meta.path.is_ident("name") {
            out.name = Some(meta.value()?.parse()?);
            Ok(())
        } else if allow_lifecycle && meta.path.is_ident("events") {
            let content;
            syn::parenthesized!(content in meta.input);
            let list = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
            out.events = Some(list.into_iter().collect());
            Ok(())
        } else if meta.path.is_ident("crates") {
            meta.parse_nested_meta(|inner| {
                if inner.path.is_ident("machines") {
                    out.krate = Some(inner.value()?.parse()?);
                    Ok(())
                } else {
                    Err(inner.error("unknown crate; expected `machines = path`"))
                }
            })
        } else if allow_lifecycle {
            Err(meta
                .error("unknown argument; expected `name = \"..\"`, `events(..)` or `crates(..)`"))
        } else {
            Err(meta.error("unknown argument; expected `crates(machines = path)`"))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    Ok(out)
}

fn parse_enum(item: TokenStream) -> syn::Result<ItemEnum> {
    let item: ItemEnum = syn::parse2(item)?;
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a phase enum cannot be generic",
        ));
    }
    for v in &item.variants {
        if !matches!(v.fields, syn::Fields::Unit) {
            return Err(syn::Error::new(
                v.fields.span(),
                "phases are unit variants (no fields)",
            ));
        }
        if let Some((_, d)) = &v.discriminant {
            return Err(syn::Error::new(
                d.span(),
                "phases cannot have explicit discriminants",
            ));
        }
    }
    Ok(item)
}

/// Parses `#[lifecycle(args)] enum ..`.
pub fn lifecycle(args: TokenStream, item: TokenStream) -> syn::Result<Spec> {
    let args = parse_args(args, true)?;
    let item = parse_enum(item)?;
    let name = args
        .name
        .ok_or_else(|| syn::Error::new(Span::call_site(), "missing `name = \"..\"`"))?;
    let events = args
        .events
        .ok_or_else(|| syn::Error::new(Span::call_site(), "missing `events(..)`"))?;
    let mut phases = Vec::new();
    for v in item.variants {
        let mut phase = PhaseSpec {
            ident: v.ident,
            attrs: Vec::new(),
            initial: None,
            terminal: None,
            declared_only: None,
            edges: Vec::new(),
        };
        for attr in v.attrs {
            let marker = |slot: &mut Option<Ident>, attr: &Attribute| -> syn::Result<()> {
                attr.meta.require_path_only()?;
                let ident = attr.path().get_ident().cloned().expect("checked by caller");
                if slot.is_some() {
                    return Err(syn::Error::new(
                        ident.span(),
                        format!("duplicate #[{ident}]"),
                    ));
                }
                *slot = Some(ident);
                Ok(())
            };
            if attr.path().is_ident("initial") {
                marker(&mut phase.initial, &attr)?;
            } else if attr.path().is_ident("terminal") {
                marker(&mut phase.terminal, &attr)?;
            } else if attr.path().is_ident("declared_only") {
                marker(&mut phase.declared_only, &attr)?;
            } else if attr.path().is_ident("on") {
                let edges =
                    attr.parse_args_with(Punctuated::<EdgeSpec, Token![,]>::parse_terminated)?;
                phase.edges.extend(edges);
            } else {
                phase.attrs.push(attr);
            }
        }
        phases.push(phase);
    }
    Ok(Spec {
        vis: item.vis,
        ident: item.ident,
        attrs: item.attrs,
        name,
        events,
        krate: args.krate,
        phases,
    })
}

/// Parses `#[phase_enum(args)] enum ..`.
pub fn phase_enum(args: TokenStream, item: TokenStream) -> syn::Result<PlainEnum> {
    let args = parse_args(args, false)?;
    let item = parse_enum(item)?;
    Ok(PlainEnum {
        vis: item.vis,
        ident: item.ident,
        attrs: item.attrs,
        krate: args.krate,
        variants: item
            .variants
            .into_iter()
            .map(|v| (v.ident, v.attrs))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::parse_quote;

    #[test]
    fn parses_a_whole_spec_into_the_model() {
        let spec = lifecycle(
            quote!(name = "Demo", events(Go, Stop), crates(machines = crate)),
            quote! {
                /// Docs stay.
                pub enum Phase {
                    #[initial]
                    #[on(Go => Done if ready, Stop => Done)]
                    Start,
                    /// Done.
                    #[terminal]
                    Done,
                }
            },
        )
        .unwrap();
        let expected = Spec {
            vis: parse_quote!(pub),
            ident: parse_quote!(Phase),
            attrs: vec![parse_quote!(#[doc = r" Docs stay."])],
            name: parse_quote!("Demo"),
            events: vec![parse_quote!(Go), parse_quote!(Stop)],
            krate: Some(parse_quote!(crate)),
            phases: vec![
                PhaseSpec {
                    ident: parse_quote!(Start),
                    attrs: vec![],
                    initial: Some(parse_quote!(initial)),
                    terminal: None,
                    declared_only: None,
                    edges: vec![
                        EdgeSpec {
                            event: parse_quote!(Go),
                            target: parse_quote!(Done),
                            guard: Some(parse_quote!(ready)),
                        },
                        EdgeSpec {
                            event: parse_quote!(Stop),
                            target: parse_quote!(Done),
                            guard: None,
                        },
                    ],
                },
                PhaseSpec {
                    ident: parse_quote!(Done),
                    attrs: vec![parse_quote!(#[doc = r" Done."])],
                    initial: None,
                    terminal: Some(parse_quote!(terminal)),
                    declared_only: None,
                    edges: vec![],
                },
            ],
        };
        assert_eq!(spec, expected);
    }

    #[test]
    fn rejects_fields_generics_unknown_args_and_missing_name() {
        let err =
            |args: TokenStream, item: TokenStream| lifecycle(args, item).err().unwrap().to_string();
        assert_eq!(
            err(
                quote!(name = "X", events(A)),
                quote!(
                    enum P {
                        A(u8),
                    }
                )
            ),
            "phases are unit variants (no fields)"
        );
        assert_eq!(
            err(
                quote!(name = "X", events(A)),
                quote!(
                    enum P<T> {
                        A,
                    }
                )
            ),
            "a phase enum cannot be generic"
        );
        assert!(
            err(
                quote!(nam = "X"),
                quote!(
                    enum P {
                        A,
                    }
                )
            )
            .starts_with("unknown argument")
        );
        assert_eq!(
            err(
                quote!(events(A)),
                quote!(
                    enum P {
                        A,
                    }
                )
            ),
            "missing `name = \"..\"`"
        );
        assert_eq!(
            err(
                quote!(name = "X", events(A)),
                quote!(
                    enum P {
                        #[initial]
                        #[initial]
                        A,
                    }
                )
            ),
            "duplicate #[initial]"
        );
    }

    #[test]
    fn parses_a_plain_phase_enum() {
        let e = phase_enum(
            quote!(),
            quote!(
                pub enum HostPhase {
                    Succeeded,
                    Failed,
                }
            ),
        )
        .unwrap();
        assert_eq!(e.ident, "HostPhase");
        assert_eq!(e.variants.len(), 2);
        assert!(e.krate.is_none());
    }
}
