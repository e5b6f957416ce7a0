//! The job model's pure parts (stash-api.md §4, §6.3, §6.4, §11.2).
//!
//! * [`envsubst`]: variable substitution (§4);
//! * [`resolve`]: Task + Functions + inputs → init-containers, container and volumes;
//! * [`inputs`]: the implicit inputs of a backup or restore Job;
//! * [`builtin`]: the Functions and Tasks the operator creates at start-up (§11.2);
//! * [`output`]: `output.json`, written by a backup/restore step and read by `update-status`.
pub mod builtin;
pub mod envsubst;
pub mod inputs;
pub mod output;
pub mod resolve;
