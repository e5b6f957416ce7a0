//! Stage 2: [`Spec`] → [`Model`]: resolve names to indices and prove the lifecycle is sound.
//!
//! Every rule below is a compile error spanned on the culprit; all errors found in one pass are
//! reported together.

use crate::parse::Spec;
use syn::{Attribute, Ident, LitStr, Path, Visibility};

/// A validated lifecycle: names resolved to indices, ranks computed.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct Model {
    pub vis: Visibility,
    pub ident: Ident,
    pub attrs: Vec<Attribute>,
    pub name: LitStr,
    pub krate: Path,
    pub phases: Vec<Phase>,
    pub events: Vec<Ident>,
    /// Guard names (`snake_case`), in order of first use.
    pub guards: Vec<Ident>,
    /// In declaration order.
    pub edges: Vec<Edge>,
}

/// A phase after analysis.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct Phase {
    pub ident: Ident,
    pub attrs: Vec<Attribute>,
    pub initial: bool,
    pub terminal: bool,
    pub declared_only: bool,
    /// Length of the longest path from the initial phase (declared-only phases get the maximum).
    pub rank: u8,
}

/// A transition after analysis (indices into [`Model`]).
#[derive(Clone, Copy)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub struct Edge {
    pub from: usize,
    pub event: usize,
    pub guard: Option<usize>,
    pub to: usize,
}

struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: proc_macro2::Span, msg: impl std::fmt::Display) {
        let e = syn::Error::new(span, msg);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Validates the spec.
pub fn analyze(spec: Spec) -> syn::Result<Model> {
    let mut errors = Errors(None);
    let phase_index = |id: &Ident| spec.phases.iter().position(|p| p.ident == *id);
    let event_index = |id: &Ident| spec.events.iter().position(|e| e == id);

    // Names.
    for (i, e) in spec.events.iter().enumerate() {
        if spec.events[..i].contains(e) {
            errors.push(e.span(), format!("event `{e}` is declared twice"));
        }
    }
    if spec.phases.is_empty() {
        errors.push(spec.ident.span(), "a lifecycle needs at least one phase");
    }
    let initials: Vec<_> = spec
        .phases
        .iter()
        .filter_map(|p| p.initial.as_ref())
        .collect();
    match initials.as_slice() {
        [] => errors.push(spec.ident.span(), "no phase is marked #[initial]"),
        [_] => {}
        [_, rest @ ..] => {
            for m in rest {
                errors.push(m.span(), "only one phase can be #[initial]");
            }
        }
    }

    // Edges.
    let mut guards: Vec<Ident> = Vec::new();
    let mut edges = Vec::new();
    let mut used_events = vec![false; spec.events.len()];
    for (from, phase) in spec.phases.iter().enumerate() {
        let p = &phase.ident;
        if let Some(t) = &phase.terminal {
            if let Some(first) = phase.edges.first() {
                errors.push(
                    first.event.span(),
                    format!(
                        "terminal phase `{p}` cannot have an outgoing transition (`{}`)",
                        first.event
                    ),
                );
            }
            if let Some(i) = &phase.initial {
                errors.push(
                    i.span(),
                    format!("the initial phase `{p}` cannot be #[{t}]"),
                );
            }
        } else if phase.edges.is_empty() && phase.declared_only.is_none() {
            errors.push(
                p.span(),
                format!("phase `{p}` is not terminal and has no way out: add #[on(..)] or mark it #[terminal]"),
            );
        }
        if let Some(d) = &phase.declared_only {
            if phase.terminal.is_none() {
                errors.push(
                    d.span(),
                    format!("#[declared_only] phase `{p}` must also be #[terminal]"),
                );
            }
            if phase.initial.is_some() {
                errors.push(
                    d.span(),
                    format!("the initial phase `{p}` cannot be #[declared_only]"),
                );
            }
        }
        for (k, edge) in phase.edges.iter().enumerate() {
            let event = event_index(&edge.event);
            let to = phase_index(&edge.target);
            if event.is_none() {
                errors.push(
                    edge.event.span(),
                    format!("unknown event `{}`; declare it in `events(..)`", edge.event),
                );
            }
            if to.is_none() {
                errors.push(
                    edge.target.span(),
                    format!("unknown phase `{}`", edge.target),
                );
            }
            // Duplicate or shadowed: an earlier edge of this phase on the same event that
            // either has the same guard or no guard at all.
            if let Some(prev) = phase.edges[..k].iter().find(|prev| {
                prev.event == edge.event && (prev.guard.is_none() || prev.guard == edge.guard)
            }) {
                let what = match &prev.guard {
                    None => "an unguarded".to_string(),
                    Some(g) => format!("an `if {g}`"),
                };
                errors.push(
                    edge.event.span(),
                    format!(
                        "duplicate transition: `{p}` already has {what} `{}` transition (to `{}`), so this one can never fire",
                        edge.event, prev.target
                    ),
                );
            }
            let guard = edge
                .guard
                .as_ref()
                .map(|g| match guards.iter().position(|x| x == g) {
                    Some(i) => i,
                    None => {
                        guards.push(g.clone());
                        guards.len() - 1
                    }
                });
            if let Some(event) = event {
                used_events[event] = true;
            }
            if let (Some(event), Some(to)) = (event, to) {
                edges.push(Edge {
                    from,
                    event,
                    guard,
                    to,
                });
            }
        }
    }
    for (e, used) in spec.events.iter().zip(&used_events) {
        if !used && spec.events.iter().filter(|x| *x == e).count() == 1 {
            errors.push(
                e.span(),
                format!("event `{e}` is declared but no transition uses it"),
            );
        }
    }
    errors.finish()?;

    // Cycles: a phase may never come back (this is what makes "no phase goes back" hold).
    let n = spec.phases.len();
    let mut errors = Errors(None);
    let mut color = vec![0u8; n]; // 0 white, 1 grey, 2 black
    for start in 0..n {
        if color[start] != 0 {
            continue;
        }
        // Iterative DFS: (node, next edge position).
        let mut stack = vec![(start, 0usize)];
        color[start] = 1;
        while let Some((node, pos)) = stack.last_mut() {
            let node = *node;
            let out: Vec<_> = edges
                .iter()
                .enumerate()
                .filter(|(_, e)| e.from == node)
                .collect();
            if *pos < out.len() {
                let (edge_pos, e) = out[*pos];
                *pos += 1;
                match color[e.to] {
                    0 => {
                        color[e.to] = 1;
                        stack.push((e.to, 0));
                    }
                    1 if errors.0.is_none() => {
                        let spec_edge = spec_edge(&spec, edge_pos);
                        errors.push(
                            spec_edge.target.span(),
                            format!(
                                "transition `{} --{}--> {}` goes back: phases only move forward (no cycles)",
                                spec.phases[e.from].ident, spec.events[e.event], spec.phases[e.to].ident
                            ),
                        );
                    }
                    _ => {}
                }
            } else {
                color[node] = 2;
                stack.pop();
            }
        }
    }
    errors.finish()?;

    // Reachability and ranks (longest path from the initial phase; the graph is a DAG now).
    let initial = spec
        .phases
        .iter()
        .position(|p| p.initial.is_some())
        .expect("checked above");
    let mut rank: Vec<Option<u8>> = vec![None; n];
    rank[initial] = Some(0);
    // Relax n times (n is tiny); longest paths in a DAG converge within n rounds.
    for _ in 0..n {
        for e in &edges {
            if let Some(r) = rank[e.from]
                && rank[e.to].is_none_or(|t| t < r + 1)
            {
                rank[e.to] = Some(r + 1);
            }
        }
    }
    let max_rank = rank.iter().flatten().copied().max().unwrap_or(0);
    let mut errors = Errors(None);
    for (i, p) in spec.phases.iter().enumerate() {
        match (&p.declared_only, rank[i]) {
            (None, None) => errors.push(
                p.ident.span(),
                format!(
                    "phase `{}` is unreachable from the initial phase `{}`; mark it #[declared_only] if it is part of the API but never set",
                    p.ident, spec.phases[initial].ident
                ),
            ),
            (Some(d), Some(_)) => {
                let via = edges.iter().find(|e| e.to == i).expect("reachable means an edge");
                errors.push(
                    d.span(),
                    format!(
                        "phase `{}` is #[declared_only] but `{} --{}-->` reaches it",
                        p.ident, spec.phases[via.from].ident, spec.events[via.event]
                    ),
                );
            }
            _ => {}
        }
    }
    errors.finish()?;

    let krate = spec
        .krate
        .unwrap_or_else(|| syn::parse_quote!(::stash_machines));
    let phases = spec
        .phases
        .into_iter()
        .zip(rank)
        .map(|(p, r)| Phase {
            ident: p.ident,
            attrs: p.attrs,
            initial: p.initial.is_some(),
            terminal: p.terminal.is_some(),
            declared_only: p.declared_only.is_some(),
            rank: r.unwrap_or(max_rank),
        })
        .collect();
    Ok(Model {
        vis: spec.vis,
        ident: spec.ident,
        attrs: spec.attrs,
        name: spec.name,
        krate,
        phases,
        events: spec.events,
        guards,
        edges,
    })
}

/// The `k`-th edge in declaration order.
fn spec_edge(spec: &Spec, k: usize) -> &crate::parse::EdgeSpec {
    spec.phases
        .iter()
        .flat_map(|p| &p.edges)
        .nth(k)
        .expect("edge index in range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::TokenStream;
    use quote::quote;
    use syn::parse_quote;

    fn run(args: TokenStream, item: TokenStream) -> syn::Result<Model> {
        analyze(crate::parse::lifecycle(args, item).unwrap())
    }

    fn error(item: TokenStream) -> String {
        let events = quote!(name = "T", events(Go, Stop));
        run(events, item)
            .expect_err("should be rejected")
            .to_string()
    }

    #[test]
    fn computes_indices_guards_and_ranks() {
        let m = run(
            quote!(name = "T", events(Go, Stop)),
            quote!(
                enum P {
                    #[initial]
                    #[on(Go => Mid, Stop => End)]
                    Start,
                    #[on(Go => End if ok, Go => Bad)]
                    Mid,
                    #[terminal]
                    End,
                    #[terminal]
                    Bad,
                    #[terminal]
                    #[declared_only]
                    Unknown,
                }
            ),
        )
        .unwrap();
        assert_eq!(m.guards, vec![parse_quote!(ok)] as Vec<Ident>);
        assert_eq!(
            m.edges,
            vec![
                Edge {
                    from: 0,
                    event: 0,
                    guard: None,
                    to: 1
                },
                Edge {
                    from: 0,
                    event: 1,
                    guard: None,
                    to: 2
                },
                Edge {
                    from: 1,
                    event: 0,
                    guard: Some(0),
                    to: 2
                },
                Edge {
                    from: 1,
                    event: 0,
                    guard: None,
                    to: 3
                },
            ]
        );
        let ranks: Vec<_> = m.phases.iter().map(|p| p.rank).collect();
        assert_eq!(ranks, vec![0, 1, 2, 2, 2]);
        assert!(m.phases[4].declared_only && m.phases[4].terminal);
        assert_eq!(m.krate, parse_quote!(::stash_machines));
    }

    #[test]
    fn rejects_an_unknown_phase() {
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => Nowhere, Stop => End)]
                A,
                #[terminal]
                End,
            }
        ));
        assert_eq!(e, "unknown phase `Nowhere`");
    }

    #[test]
    fn rejects_an_unknown_or_unused_event() {
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End, Jump => End, Stop => End)]
                A,
                #[terminal]
                End,
            }
        ));
        assert_eq!(e, "unknown event `Jump`; declare it in `events(..)`");
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End)]
                A,
                #[terminal]
                End,
            }
        ));
        assert_eq!(e, "event `Stop` is declared but no transition uses it");
    }

    #[test]
    fn rejects_duplicate_and_shadowed_transitions() {
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End, Stop => End, Go => End)]
                A,
                #[terminal]
                End,
            }
        ));
        assert!(
            e.starts_with("duplicate transition: `A` already has an unguarded `Go`"),
            "{e}"
        );
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End if x, Stop => End, Go => B if x)]
                A,
                #[terminal]
                End,
                #[terminal]
                B,
            }
        ));
        assert!(
            e.starts_with("duplicate transition: `A` already has an `if x` `Go`"),
            "{e}"
        );
    }

    #[test]
    fn rejects_terminal_with_edges_and_dead_ends() {
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End)]
                A,
                #[terminal]
                #[on(Stop => A)]
                End,
            }
        ));
        assert_eq!(
            e,
            "terminal phase `End` cannot have an outgoing transition (`Stop`)"
        );
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => Mid, Stop => End)]
                A,
                Mid,
                #[terminal]
                End,
            }
        ));
        assert_eq!(
            e,
            "phase `Mid` is not terminal and has no way out: add #[on(..)] or mark it #[terminal]"
        );
    }

    #[test]
    fn rejects_unreachable_and_falsely_declared_only_phases() {
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End, Stop => End)]
                A,
                #[terminal]
                End,
                #[terminal]
                Lost,
            }
        ));
        assert!(
            e.starts_with("phase `Lost` is unreachable from the initial phase `A`"),
            "{e}"
        );
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End, Stop => End)]
                A,
                #[terminal]
                #[declared_only]
                End,
            }
        ));
        assert_eq!(
            e,
            "phase `End` is #[declared_only] but `A --Go-->` reaches it"
        );
    }

    #[test]
    fn rejects_cycles_and_bad_initials() {
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => B)]
                A,
                #[on(Stop => A, Go => End)]
                B,
                #[terminal]
                End,
            }
        ));
        assert_eq!(
            e,
            "transition `B --Stop--> A` goes back: phases only move forward (no cycles)"
        );
        let e = error(quote!(
            enum P {
                #[on(Go => End, Stop => End)]
                A,
                #[terminal]
                End,
            }
        ));
        assert_eq!(e, "no phase is marked #[initial]");
        let e = error(quote!(
            enum P {
                #[initial]
                #[on(Go => End, Stop => End)]
                A,
                #[initial]
                #[terminal]
                End,
            }
        ));
        assert!(e.contains("only one phase can be #[initial]"), "{e}");
    }
}
