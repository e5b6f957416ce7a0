//! Stage 4: [`Ir`] → tokens. No decisions are taken here; every name, arm and string was
//! computed by [`crate::lower`].

use crate::lower::Ir;
use crate::parse::PlainEnum;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Path;

/// `#[serde(crate = ..)]` and the derives, routed through the support crate so the user crate
/// needs no direct dependency on serde.
fn derives(krate: &Path) -> TokenStream {
    let serde = quote!(#krate::__private::serde).to_string();
    quote! {
        #[derive(
            ::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug,
            ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash,
            #krate::__private::serde::Serialize, #krate::__private::serde::Deserialize
        )]
        #[serde(crate = #serde)]
    }
}

/// A hand-rolled `JsonSchema`: exactly `{"type": "string", "enum": [names..]}` (plus the enum's
/// docs as description), inlined. The derive would turn documented variants into a `oneOf` of
/// `const`s, which is not what a CRD status enum should look like.
fn json_schema(
    krate: &Path,
    ident: &syn::Ident,
    attrs: &[syn::Attribute],
    variants: &[&syn::Ident],
) -> TokenStream {
    let docs: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }),
                ..
            }) => Some(s.value().trim().to_string()),
            _ => None,
        })
        .collect();
    let description = docs.join(" ").trim().to_string();
    let names: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
    let name = ident.to_string();
    let s = quote!(#krate::__private::schemars);
    let j = quote!(#krate::__private::serde_json);
    quote! {
        impl #s::JsonSchema for #ident {
            fn inline_schema() -> bool { true }
            fn schema_name() -> ::std::borrow::Cow<'static, str> { ::std::borrow::Cow::Borrowed(#name) }
            fn schema_id() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed(::core::concat!(::core::module_path!(), "::", #name))
            }
            fn json_schema(_: &mut #s::SchemaGenerator) -> #s::Schema {
                let mut map = #j::Map::new();
                map.insert("type".into(), #j::Value::from("string"));
                map.insert("enum".into(), #j::Value::from(::std::vec![#(#names),*]));
                if !#description.is_empty() {
                    map.insert("description".into(), #j::Value::from(#description));
                }
                #s::Schema::from(map)
            }
        }
    }
}

/// Name helpers shared by both macros: `ALL`, `as_str`, `from_name`, `Display`.
fn names(ident: &syn::Ident, variants: &[&syn::Ident]) -> TokenStream {
    let n = variants.len();
    let strs: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
    quote! {
        impl #ident {
            /// Every value, in declaration order.
            pub const ALL: [Self; #n] = [#(Self::#variants),*];
            /// The name, exactly as serialized.
            pub const fn as_str(self) -> &'static str {
                match self { #(Self::#variants => #strs,)* }
            }
            /// Parses a name as serialized; `None` for anything else.
            pub fn from_name(name: &str) -> ::core::option::Option<Self> {
                match name { #(#strs => ::core::option::Option::Some(Self::#variants),)* _ => ::core::option::Option::None }
            }
        }
        impl ::core::fmt::Display for #ident {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    }
}

/// `#[phase_enum]`.
pub fn phase_enum(e: PlainEnum) -> TokenStream {
    let krate = e
        .krate
        .unwrap_or_else(|| syn::parse_quote!(::stash_machines));
    let derives = derives(&krate);
    let PlainEnum {
        vis,
        ident,
        attrs,
        variants,
        ..
    } = e;
    let idents: Vec<_> = variants.iter().map(|(i, _)| i).collect();
    let vattrs = variants.iter().map(|(_, a)| a);
    let names = names(&ident, &idents);
    let schema = json_schema(&krate, &ident, &attrs, &idents);
    quote! {
        #(#attrs)*
        #derives
        #vis enum #ident { #( #(#vattrs)* #idents, )* }
        #names
        #schema
    }
}

/// `#[lifecycle]`.
pub fn lifecycle(ir: Ir) -> TokenStream {
    let Ir {
        vis,
        ident,
        attrs,
        krate,
        name,
        phases,
        events,
        guards,
        rows,
        arms,
        mermaid,
        dot,
    } = ir;
    let derives = derives(&krate);
    let lc = quote!(#krate::lifecycle);
    let statig = quote!(#krate::__private::statig);

    let pidents: Vec<_> = phases.iter().map(|p| &p.ident).collect();
    let pattrs = phases.iter().map(|p| &p.attrs);
    let initial = &phases.iter().find(|p| p.initial).expect("analyzed").ident;
    let flag = |f: fn(&crate::lower::PhaseIr) -> bool| {
        let arms = phases.iter().map(|p| {
            let (i, v) = (&p.ident, f(p));
            quote!(Self::#i => #v)
        });
        quote!(match self { #(#arms,)* })
    };
    let is_terminal = flag(|p| p.terminal);
    let is_declared_only = flag(|p| p.declared_only);
    let ranks = phases.iter().map(|p| {
        let (i, r) = (&p.ident, p.rank);
        quote!(Self::#i => #r)
    });
    let phase_names = names(&ident, &pidents);
    let schema = json_schema(&krate, &ident, &attrs, &pidents);

    let eidents: Vec<_> = events.iter().collect();
    let event_names = names(&format_ident!("Event"), &eidents);
    let gidents: Vec<_> = guards.iter().map(|g| &g.variant).collect();
    let gstrs: Vec<_> = guards.iter().map(|g| &g.name).collect();
    let ng = gidents.len();
    let guard_docs = gstrs
        .iter()
        .map(|g| format!("The guard `{g}` as written in the spec."));

    let table = rows.iter().map(|r| {
        let (from, event, to) = (&r.from, &r.event, &r.to);
        let guard = match &r.guard {
            Some(g) => quote!(::core::option::Option::Some(Guard::#g)),
            None => quote!(::core::option::Option::None),
        };
        quote!(#lc::Transition { from: #ident::#from, event: Event::#event, guard: #guard, to: #ident::#to })
    });

    let match_arms = arms.iter().map(|a| {
        let (from, event) = (&a.from, &a.event);
        let mut options = a.options.iter().rev();
        let mut body = match a.options.last() {
            Some((None, to)) => {
                options.next();
                quote!(::core::result::Result::Ok(Self::#to))
            }
            _ => quote!(::core::result::Result::Err(#lc::Rejection {
                phase: self, event, kind: #lc::RejectionKind::GuardsFailed,
            })),
        };
        for (g, to) in options {
            let g = g.as_ref().expect("only the last option is unguarded");
            body = quote!(if guard(Guard::#g) { ::core::result::Result::Ok(Self::#to) } else { #body });
        }
        quote!((Self::#from, Event::#event) => #body)
    });

    let doc_transition = format!(
        "The {name} transition function: the next phase, or a rejection naming the phase and the event."
    );
    let doc_table = format!(
        "The {name} transition table, in declaration order (guarded rows are tried in order)."
    );
    let doc_mermaid = format!("The {name} lifecycle as a Mermaid state diagram.");
    let doc_dot = format!("The {name} lifecycle as a Graphviz DOT graph.");
    let doc_statig = format!(
        "A [statig] state machine whose states are the {name} phases; events go through [`{ident}::transition`].\n\n\
         Rejected events are handled (the state stays) and recorded in `rejected`; every transition taken is recorded in `trace`."
    );

    quote! {
        #(#attrs)*
        #derives
        #vis enum #ident { #( #(#pattrs)* #pidents, )* }

        #phase_names
        #schema

        impl #ident {
            /// The phase a new object starts in.
            pub const INITIAL: Self = Self::#initial;
            /// Whether this is the initial phase.
            pub const fn is_initial(self) -> bool { matches!(self, Self::#initial) }
            /// Whether this phase absorbs every event.
            pub const fn is_terminal(self) -> bool { #is_terminal }
            /// Whether this phase is part of the API but never set by the lifecycle.
            pub const fn is_declared_only(self) -> bool { #is_declared_only }
            /// Longest path from the initial phase: every transition strictly increases it.
            pub const fn rank(self) -> u8 { match self { #(#ranks,)* } }
            #[doc = #doc_transition]
            #[allow(unreachable_patterns, unused_variables)]
            pub fn transition(
                self,
                event: Event,
                guard: impl Fn(Guard) -> bool,
            ) -> ::core::result::Result<Self, #lc::Rejection<Self>> {
                match (self, event) {
                    #(#match_arms,)*
                    (phase, event) => ::core::result::Result::Err(#lc::Rejection {
                        phase,
                        event,
                        kind: if phase.is_terminal() {
                            #lc::RejectionKind::Terminal
                        } else {
                            #lc::RejectionKind::NoTransition
                        },
                    }),
                }
            }
        }

        impl ::core::default::Default for #ident {
            fn default() -> Self { Self::INITIAL }
        }

        #[doc = concat!("The events of the ", #name, " lifecycle.")]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash)]
        #vis enum Event { #( #[allow(missing_docs)] #eidents, )* }
        #event_names

        #[doc = concat!("The guards of the ", #name, " lifecycle: questions the caller answers when an event fires.")]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash)]
        #vis enum Guard { #( #[doc = #guard_docs] #gidents, )* }
        impl Guard {
            /// Every guard, in order of first use.
            pub const ALL: [Self; #ng] = [#(Self::#gidents),*];
            /// The guard's name as written in the spec.
            pub const fn as_str(self) -> &'static str { match self { #(Self::#gidents => #gstrs,)* } }
        }

        #[doc = concat!("The name of the lifecycle: `", #name, "`.")]
        #vis const LIFECYCLE: &str = #name;
        #[doc = #doc_table]
        #vis const TRANSITIONS: &[#lc::Transition<#ident>] = &[#(#table),*];
        #[doc = #doc_mermaid]
        #vis const MERMAID: &str = #mermaid;
        #[doc = #doc_dot]
        #vis const DOT: &str = #dot;

        impl #lc::Lifecycle for #ident {
            type Event = Event;
            type Guard = Guard;
            const NAME: &'static str = #name;
            const INITIAL: Self = Self::#initial;
            const PHASES: &'static [Self] = &Self::ALL;
            const EVENTS: &'static [Event] = &Event::ALL;
            const GUARDS: &'static [Guard] = &Guard::ALL;
            const TRANSITIONS: &'static [#lc::Transition<Self>] = TRANSITIONS;
            const MERMAID: &'static str = MERMAID;
            const DOT: &'static str = DOT;
            fn name(self) -> &'static str { self.as_str() }
            fn event_name(event: Event) -> &'static str { event.as_str() }
            fn guard_name(guard: Guard) -> &'static str { guard.as_str() }
            fn is_terminal(self) -> bool { #ident::is_terminal(self) }
            fn is_declared_only(self) -> bool { #ident::is_declared_only(self) }
            fn rank(self) -> u8 { #ident::rank(self) }
            fn transition(
                self,
                event: Event,
                guard: &dyn Fn(Guard) -> bool,
            ) -> ::core::result::Result<Self, #lc::Rejection<Self>> {
                #ident::transition(self, event, guard)
            }
        }

        #[doc = #doc_statig]
        #[derive(::core::fmt::Debug, ::core::default::Default, ::core::clone::Clone)]
        #vis struct StatigMachine {
            /// Every transition taken, in order.
            pub trace: ::std::vec::Vec<(#ident, #ident)>,
            /// Every event the lifecycle rejected, in order.
            pub rejected: ::std::vec::Vec<#lc::Rejection<#ident>>,
        }

        /// The statig context: answers the guard questions for one dispatch.
        #vis struct GuardContext<'g>(pub &'g dyn Fn(Guard) -> bool);

        impl #statig::blocking::IntoStateMachine for StatigMachine {
            type Event<'evt> = Event;
            type Context<'ctx> = GuardContext<'ctx>;
            type State = #ident;
            type Superstate<'sub> = () where Self::State: 'sub;
            fn initial() -> #ident { #ident::INITIAL }
            fn after_transition(&mut self, source: &#ident, target: &#ident, _: &mut GuardContext<'_>) {
                self.trace.push((*source, *target));
            }
        }

        impl #statig::blocking::State<StatigMachine> for #ident {
            fn call_handler(
                &mut self,
                machine: &mut StatigMachine,
                event: &Event,
                context: &mut GuardContext<'_>,
            ) -> #statig::Outcome<#ident> {
                match #ident::transition(*self, *event, context.0) {
                    ::core::result::Result::Ok(next) => #statig::Outcome::Transition(next),
                    ::core::result::Result::Err(rejection) => {
                        machine.rejected.push(rejection);
                        #statig::Outcome::Handled
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn generates_a_folded_guard_chain_per_arm() {
        let spec = crate::parse::lifecycle(
            quote!(name = "Demo", events(Go)),
            quote!(
                enum P {
                    #[initial]
                    #[on(Go => Done if ok, Go => Bad)]
                    Start,
                    #[terminal]
                    Done,
                    #[terminal]
                    Bad,
                }
            ),
        )
        .unwrap();
        let out =
            lifecycle(crate::lower::lower(crate::analyze::analyze(spec).unwrap())).to_string();
        let arm = "(Self :: Start , Event :: Go) => if guard (Guard :: Ok) { :: core :: result :: Result :: Ok (Self :: Done) } else { :: core :: result :: Result :: Ok (Self :: Bad) }";
        assert!(out.contains(arm), "{out}");
        assert!(out.contains("impl :: stash_machines :: lifecycle :: Lifecycle for P"));
        assert!(out.contains("# [serde (crate = \":: stash_machines :: __private :: serde\")]"));
        // The output is valid Rust.
        syn::parse_file(&out).unwrap();
    }

    #[test]
    fn an_all_guarded_arm_ends_in_a_guards_failed_rejection() {
        let spec = crate::parse::lifecycle(
            quote!(name = "Demo", events(Go), crates(machines = crate)),
            quote!(
                enum P {
                    #[initial]
                    #[on(Go => Done if ok)]
                    Start,
                    #[terminal]
                    Done,
                }
            ),
        )
        .unwrap();
        let out =
            lifecycle(crate::lower::lower(crate::analyze::analyze(spec).unwrap())).to_string();
        assert!(
            out.contains("kind : crate :: lifecycle :: RejectionKind :: GuardsFailed"),
            "{out}"
        );
        syn::parse_file(&out).unwrap();
    }

    #[test]
    fn phase_enum_gets_derives_and_names() {
        let e = crate::parse::phase_enum(
            quote!(),
            quote!(
                pub enum H {
                    Succeeded,
                    Failed,
                }
            ),
        )
        .unwrap();
        let out = phase_enum(e).to_string();
        assert!(
            out.contains("pub const ALL : [Self ; 2usize] = [Self :: Succeeded , Self :: Failed]"),
            "{out}"
        );
        syn::parse_file(&out).unwrap();
    }
}
